"""bench/qa_load.py serves the model as its pipeline.json asks (GEN where the fusion weighs it), and the
service does not load a GEN head that its fusion weighs at 0."""
import importlib.util
import json
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def qa_load():
    spec = importlib.util.spec_from_file_location("qa_load", ROOT / "bench" / "qa_load.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_weights(model: Path, w_gen: float, w_gen_head: float) -> None:
    path = model / "pipeline.json"
    weights = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps(weights | {"w_gen": w_gen, "w_gen_head": w_gen_head}))


def test_the_load_command_serves_what_pipeline_json_asks(tmp_path):
    bench = qa_load()
    model = tmp_path / "qa"
    (model / "gen").mkdir(parents=True)
    (model / "gen" / "config.json").write_text("{}")
    args = bench.parse_args(["--model", str(model), "--kb", "kb.sqlite"])
    for w_gen, w_gen_head, served in ((2.0, 0.0, True), (0.0, 1.0, True), (0.0, 0.0, False)):
        write_weights(model, w_gen, w_gen_head)
        assert bench.gen_weighted(str(model)) is served
        # no --no-gen by default: `wenzhi serve` decodes GEN exactly where the weights ask
        assert "--no-gen" not in bench.server_command(args, 8000, [])
    write_weights(model, 2.0, 2.0)
    (model / "gen" / "config.json").unlink()  # weighed, but no GEN head to serve
    assert not bench.gen_weighted(str(model))
    forced = bench.parse_args(["--model", str(model), "--kb", "kb.sqlite", "--no-gen", "--threads", "1"])
    cmd = bench.server_command(forced, 8000, ["--max-batch", "1"])
    assert cmd[cmd.index("--model") + 1] == str(model) and "--no-gen" in cmd
    assert cmd[cmd.index("--threads") + 1] == "1" and cmd[cmd.index("--max-batch") + 1] == "1"
    pooled = bench.parse_args(["--model", str(model), "--kb", "kb.sqlite", "--workers", "2"])
    cmd = bench.server_command(pooled, 8000, [])
    assert cmd[cmd.index("--workers") + 1] == "2"
    # the arms of --compare-workers / --compare-in-process say their own count
    assert bench.server_command(pooled, 8000, ["--workers", "1"]).count("--workers") == 1
    assert "--workers" not in bench.server_command(pooled, 8000, ["--in-process"])


def test_the_service_loads_gen_only_where_the_fusion_weighs_it(model_dir, kb_db, tmp_path):
    from wenzhi.qa_service.backend import load_local

    model = tmp_path / "qa"
    shutil.copytree(model_dir, model)
    for w_gen, w_gen_head, loaded in ((0.0, 0.0, False), (1.0, 0.0, True)):
        write_weights(model, w_gen, w_gen_head)
        local = load_local(str(model), str(kb_db), threads=1)
        try:
            assert (local.pipeline.gen is not None) is loaded
            assert local.answer_batch([("刘晓华主要讲什么课啊？", 3)])[0]  # answers either way
        finally:
            local.close()
