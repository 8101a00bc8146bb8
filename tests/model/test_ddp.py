"""Multi-process pretraining is one N-rank job that trains exactly what one process would.

Two CPU ranks (gloo) at `batch_size=8` each must reach the weights of one process at
`batch_size=16` (accelerate's convention: batch_size is per process), within float rounding, with
dropout off; a 2-rank run SIGKILLed after a checkpoint resumes to the same weights; a world size
that accelerate does not see is refused.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from wenzhi.model.distributed import LaunchError, check_launch
from wenzhi.model.trainer import load_config, train

ROOT = Path(__file__).parents[2]
TINY = {"hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 256, "num_universal_layers": 2,
        "num_nlu_layers": 1, "num_nlg_layers": 1, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
STEPS = 20


@pytest.fixture(scope="module")
def run_config(tmp_path_factory):
    """People's Daily shards, and a 20-step tiny config with the NLG loss on and accumulation 2."""
    from wenzhi.kg.datadir import data_path
    from wenzhi.model.devdata import bert_chinese_tokenizer, read_corpus_lines, tokenize_lines, write_text_shards

    root = tmp_path_factory.mktemp("ddp")
    tok = bert_chinese_tokenizer()
    lines = read_corpus_lines("people_daily", limit=700)
    write_text_shards(root / "pd128", tokenize_lines(lines, tok, 128), 128, tok, seed=0,
                      tokenizer_name=str(data_path("vocab/bert_chinese_vocab.txt")))
    cfg = dict(shards=str(root / "pd128"), steps=STEPS, batch_size=16, gradient_accumulation_steps=2, model=TINY,
               learning_rate=2e-3, warmup_steps=4, lr_scheduler="cosine", lm_weight=0.5, lm_target_fraction=0.5,
               log_every=5, checkpoint_every=1000, num_threads=1, seed=3, report_to="none")
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def one_process(run_config, tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "run"
    train(load_config(run_config, [f"output_dir={out}"]), resume=False, show_progress=False)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(launcher: str, run_config: Path, out: Path, *extra: str) -> list[str]:
    port = str(_free_port())
    if launcher == "torchrun":
        head = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port]
    elif launcher == "accelerate":  # the shipped accelerate config, as it is
        head = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                str(ROOT / "model" / "configs" / "accelerate" / "ddp.yaml"), "--main_process_port", port]
    else:  # accelerate's CPU launcher: one process, whatever --num_processes says
        head = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2"]
    return head + ["-m", "wenzhi", "pretrain", "run", "--config", str(run_config), "--output", str(out),
                   "--set", "batch_size=8", "--no-progress", *extra]


def _env() -> dict:
    return os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _log(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]


def _max_diff(a: Path, b: Path) -> float:
    ref, got = load_file(a / "model" / "model.safetensors"), load_file(b / "model" / "model.safetensors")
    assert ref.keys() == got.keys()
    return max(float((ref[k] - got[k]).abs().max()) for k in ref)


def test_two_ranks_train_what_one_process_does(run_config, one_process, tmp_path):
    out = tmp_path / "two"
    done = subprocess.run(_launch("torchrun", run_config, out, "--no-resume"), env=_env(), cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    log = _log(out)
    starts = [r for r in log if r.get("event") == "start"]
    assert len(starts) == 1 and starts[0]["processes"] == 2 and starts[0]["distributed"] == "MULTI_CPU"
    assert sum(r.get("event") == "done" for r in log) == 1  # only the main process writes
    assert _max_diff(one_process, out) <= 1e-5
    # the logged losses are the global batch's, not rank 0's
    ref = [r for r in _log(one_process) if "mlm_loss" in r]
    got = [r for r in log if "mlm_loss" in r]
    assert [r["step"] for r in ref] == [r["step"] for r in got]
    for a, b in zip(ref, got):
        for key in ("loss", "mlm_loss", "lm_loss", "mlm_accuracy"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), (key, a, b)
        assert b["kind_loss"]["text"] == pytest.approx(a["kind_loss"]["text"], rel=1e-5)


def test_two_rank_run_killed_after_a_checkpoint_resumes_to_the_same_weights(run_config, one_process, tmp_path):
    out = tmp_path / "killed"
    cmd = _launch("accelerate", run_config, out, "--set", "checkpoint_every=5")
    proc = subprocess.Popen(cmd, env=_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)  # its own process group: the kill takes the ranks too
    target = out / "checkpoints" / "step-00000010"
    deadline = time.time() + 240
    while not target.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert target.exists(), proc.stderr.read().decode()[-3000:]
    assert not (out / "model").exists(), "the run ended before it could be killed"

    done = subprocess.run(cmd, env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = [r for r in _log(out) if r.get("event") == "done"][-1]
    assert summary["resumed_from"] and summary["processes"] == 2 and 0 < summary["steps_this_run"] < STEPS
    assert _max_diff(one_process, out) <= 1e-5


def test_accelerate_cpu_launcher_starting_one_process_for_two_is_refused(run_config, tmp_path):
    done = subprocess.run(_launch("accelerate-cpu", run_config, tmp_path / "x"), env=_env(), cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "asked for 2 processes but started 1" in done.stdout + done.stderr
    assert not (tmp_path / "x" / "checkpoints").exists()


def test_a_world_size_accelerate_does_not_see_is_refused():
    with pytest.raises(LaunchError, match="asked for 4 processes but started 1"):
        check_launch(1, "NO", {}, ["/v/bin/python", "/v/bin/accelerate", "launch", "--cpu", "--num_processes", "4", "x.py"])
    check_launch(2, "MULTI_CPU", {"WORLD_SIZE": "2"}, ["/v/bin/accelerate", "launch", "--num_processes=2", "x.py"])
    check_launch(1, "NO", {}, ["/usr/bin/bash", "-c", "python -m wenzhi --num_processes 4"])  # not a launcher
    with pytest.raises(LaunchError, match="launched as 2 processes"):
        check_launch(1, "NO", {"WORLD_SIZE": "2"})
    with pytest.raises(LaunchError, match="FSDP was asked for"):
        check_launch(2, "MULTI_CPU", {"WORLD_SIZE": "2", "ACCELERATE_USE_FSDP": "true"})
    check_launch(2, "MULTI_CPU", {"WORLD_SIZE": "2"})
    check_launch(1, "NO", {})
