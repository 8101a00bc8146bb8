"""One installable `wenzhi` package: the wheel's contents, an install into a fresh virtualenv that
runs `wenzhi --help`, `python -m wenzhi` and a shipped config by name from outside the
repository, and a saved spaCy pipeline that loads in a fresh process."""
from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("wenzhi", "kg", "retrieval", "model", "qa_service")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from a copy of the tree (the build leaves build/ and egg-info behind)."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in PACKAGES:
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(root / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return next((root / "dist").glob("wenzhi-*.whl"))


def test_wheel_holds_one_wenzhi_package_with_its_configs(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.startswith("wenzhi-")}
    assert top == {"wenzhi"}, top  # no top-level kg/ model/ ...: a user's own model.py cannot shadow it
    for needed in ("wenzhi/__main__.py", "wenzhi/model/modeling.py", "wenzhi/model/configuration.py",
                   "wenzhi/kg/questions.py", "wenzhi/retrieval/atomic.py", "wenzhi/qa_service/service.py",
                   "wenzhi/model/configs/tiny.yaml", "wenzhi/model/configs/prepare_tiny.yaml",
                   "wenzhi/model/configs/deepspeed/zero2.json", "wenzhi/model/configs/accelerate/ddp.yaml"):
        assert needed in names, needed
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "wenzhi = wenzhi.cli:main" in entry_points
    assert "[spacy_factories]" in entry_points and "wenzhi_entity_linker = wenzhi.kg.spacy_component" in entry_points


def test_wheel_in_a_fresh_virtualenv_runs_a_shipped_config_anywhere(wheel, tmp_path, data_dir):
    fresh = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(fresh)], check=True, timeout=120)
    python, wenzhi = fresh / "bin" / "python", fresh / "bin" / "wenzhi"
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                           "--no-index", "--ignore-installed", str(wheel)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    # the dependencies (torch, transformers, ...) from this environment; not its editable wenzhi
    fresh_site = next((fresh / "lib").glob("python3*/site-packages"))
    (fresh_site / "dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("WENZHI_DATA", "PYTHONPATH")}

    def run(*args, **extra):
        return subprocess.run([*map(str, args)], cwd=outside, capture_output=True, text=True, timeout=300,
                              env=env | extra)

    where = run(python, "-c", "import wenzhi.model.modeling as m; print(m.__file__)")
    assert where.returncode == 0 and where.stdout.startswith(str(fresh_site)), where.stdout + where.stderr
    for cmd in ((wenzhi, "--help"), (python, "-m", "wenzhi", "pretrain", "--help")):
        out = run(*cmd)
        assert out.returncode == 0 and "pretrain" in out.stdout, out.stderr[-2000:]
    # no data directory configured and no ../shared/data here: a clear error, not a traceback
    missing = run(wenzhi, "index", "bm25", "--kind", "passages", "--output", "bm25")  # reads cmrc2018/ by default
    assert missing.returncode != 0 and "data directory" in missing.stdout + missing.stderr
    assert "Traceback" not in missing.stderr
    # a shipped config by name, its relative paths from the working directory
    from wenzhi.model.devdata import bert_chinese_tokenizer, read_corpus_lines, tokenize_lines, write_text_shards

    tok = bert_chinese_tokenizer()
    write_text_shards(outside / "shards", tokenize_lines(read_corpus_lines("people_daily", limit=30), tok, 64), 64, tok)
    trained = run(wenzhi, "pretrain", "run", "--config", "tiny", "--set", "shards=shards", "--set", "steps=2",
                  "--set", "batch_size=2", "--output", "run", "--no-progress", WENZHI_DATA=str(data_dir))
    assert trained.returncode == 0, trained.stdout[-2000:] + trained.stderr[-2000:]
    assert {"tokenizer.json", "vocab.txt", "modeling.py", "model.safetensors"} <= {p.name for p in (outside / "run" / "model").iterdir()}


def test_saved_spacy_pipeline_loads_in_a_fresh_process(kb_db, tmp_path):
    from wenzhi.kg.spacy_component import make_nlp

    nlp = make_nlp(kb_db)
    nlp.to_disk(tmp_path / "pipeline")
    config = (tmp_path / "pipeline" / "config.cfg").read_text()
    assert str(kb_db) not in config and "kb.sqlite" not in config  # no KB path pinned
    kb_db.rename(kb_db.with_name("moved.sqlite"))  # the pipeline carries its own copy of the KB
    try:
        code = ("import spacy, sys; nlp = spacy.load(sys.argv[1]); "
                "print([(e.text, e.kb_id_) for e in nlp('我很好奇龙编站的坐标是什么啊？').ents])")
        done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "pipeline")], capture_output=True, text=True,
                              timeout=300, cwd=tmp_path)
    finally:
        kb_db.with_name("moved.sqlite").rename(kb_db)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "('龙编站', '龙编站')" in done.stdout
