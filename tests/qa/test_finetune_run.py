"""Fine-tuning runs on the training toolkit (model/training_loop.py) as pretraining does: a
SIGKILLed fine-tune resumes from its newest checkpoint to the weights of an uninterrupted one
(dropout on: the generator state resumes too), a fresh start or other settings never silently
take over an interrupted run, a 2-process torchrun fine-tune is one gloo job that trains what one
process does at the same global batch (as gradient accumulation does), and --bf16 runs."""
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
from safetensors.torch import load_file

from wenzhi.model.training_loop import OutputDirInUse
from wenzhi.qa_service.finetune import FinetuneConfig, finetune

ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def questions(data_dir, tmp_path_factory) -> Path:
    """The first 120 KgCLUE train questions (their heads are in the test KB slice)."""
    path = tmp_path_factory.mktemp("ft_questions") / "train.json"
    with open(data_dir / "kgclue" / "train.json", encoding="utf-8") as src:
        path.write_text("".join(next(src) for _ in range(120)), encoding="utf-8")
    return path


def _argv(kb: Path, questions: Path, out: Path, *extra: str) -> list[str]:
    return ["-m", "wenzhi", "finetune", "sim", "--kb", str(kb), "--output", str(out), "--questions", str(questions),
            "--negatives", "3", "--threads", "1", "--no-progress", *extra]


def _env() -> dict:
    return os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _weights(folder: Path) -> dict:
    return load_file(folder / "model.safetensors")


def test_killed_fine_tune_resumes_to_the_uninterrupted_weights(kb_db, questions, tmp_path):
    common = dict(task="sim", kb=kb_db, questions=[questions], negatives=3, threads=1, batch_size=4, epochs=20.0,
                  max_steps=60, lr=2e-3, freeze_universal=False, checkpoint_every=5)
    reference = finetune(FinetuneConfig(out=tmp_path / "reference", **common), show_progress=False)
    assert reference["last_loss"] < reference["first_loss"]
    assert not (tmp_path / "reference" / "training" / "sim" / "checkpoints").exists()  # a finished run drops them

    out = tmp_path / "killed"
    argv = _argv(kb_db, questions, out, "--batch-size", "4", "--epochs", "20", "--max-steps", "60", "--lr", "2e-3",
                 "--unfreeze", "--checkpoint-every", "5")
    proc = subprocess.Popen([sys.executable, *argv], env=_env(), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    checkpoints = out / "training" / "sim" / "checkpoints"
    deadline = time.time() + 120
    while not list(checkpoints.glob("step-*")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the fine-tune ended before it could be killed"
    assert not (out / "sim").exists()

    # settings that change what is trained are refused rather than resumed into; so is a fresh start
    with pytest.raises(OutputDirInUse, match=r"other settings \(lr\)"):
        finetune(FinetuneConfig(out=out, **common | {"lr": 1e-3}), show_progress=False)
    with pytest.raises(OutputDirInUse, match="--overwrite"):
        finetune(FinetuneConfig(out=out, **common), resume=False, show_progress=False)

    resumed = finetune(FinetuneConfig(out=out, **common), show_progress=False)
    assert resumed["resumed_from"] and resumed["steps"] == 60
    assert (resumed["first_loss"], resumed["last_loss"]) == (reference["first_loss"], reference["last_loss"])
    ref, got = _weights(tmp_path / "reference" / "sim"), _weights(out / "sim")
    assert ref.keys() == got.keys()
    assert max(float((ref[k] - got[k]).abs().max()) for k in ref) == 0.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_what_one_process_does(kb_db, questions, tmp_path):
    """torchrun's 2 CPU processes at --batch-size 4 form one gloo job and, dropout off, reach the
    weights of one process at batch size 8: NER's loss is a mean over the global batch's labelled
    tokens, not the mean of each rank's means."""
    common = dict(task="ner", kb=kb_db, questions=[questions], threads=1, lr=2e-3, epochs=1.0, dropout=0.0)
    one = finetune(FinetuneConfig(out=tmp_path / "one", batch_size=8, **common), show_progress=False)
    out = tmp_path / "two"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           *_argv(kb_db, questions, out, "--batch-size", "4", "--epochs", "1", "--lr", "2e-3", "--set", "dropout=0")]
    cmd[cmd.index("sim")] = "ner"
    done = subprocess.run(cmd, env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "ner" / "finetune.json").read_text(encoding="utf-8"))
    assert report["processes"] == 2 and report["steps"] == one["steps"] > 5
    log = [json.loads(line) for line in (out / "training" / "ner" / "train_log.jsonl").read_text().splitlines()]
    starts = [r for r in log if r.get("event") == "start"]
    assert len(starts) == 1 and starts[0]["processes"] == 2 and starts[0]["distributed"] == "MULTI_CPU"
    assert sum(r.get("event") == "done" for r in log) == 1  # only the main process writes
    assert report["last_loss"] == pytest.approx(one["last_loss"], abs=2e-4)  # the global batch's loss, not rank 0's
    ref, got = _weights(tmp_path / "one" / "ner"), _weights(out / "ner")
    assert max(float((ref[k] - got[k]).abs().max()) for k in ref) <= 1e-5


def test_gradient_accumulation_trains_the_whole_batch(kb_db, questions, tmp_path):
    """Two micro-batches of 4 make the step one batch of 8 makes: NER's mean over labelled tokens."""
    common = dict(task="ner", kb=kb_db, questions=[questions], threads=1, lr=2e-3, max_steps=6, dropout=0.0)
    whole = finetune(FinetuneConfig(out=tmp_path / "whole", batch_size=8, **common), show_progress=False)
    split = finetune(FinetuneConfig(out=tmp_path / "split", batch_size=4, gradient_accumulation_steps=2, **common),
                     show_progress=False)
    assert split["steps"] == whole["steps"] == 6
    ref, got = _weights(tmp_path / "whole" / "ner"), _weights(tmp_path / "split" / "ner")
    assert max(float((ref[k] - got[k]).abs().max()) for k in ref) <= 1e-5


@pytest.mark.parametrize("task,fields", [("gen", {}), ("ner", {}), ("sim", {"sim_loss": "pointwise", "interaction": "full"}),
                                         ("sim", {})])
def test_each_task_counts_the_terms_its_loss_averages(kb_db, kb_store, questions, tmp_path, task, fields):
    """What weights a micro-batch across ranks and accumulation: the batch's mean loss equals its
    halves' means weighted by their `terms` (target tokens, labelled tokens, pairs, questions)."""
    import importlib

    import torch

    from wenzhi.qa_service.finetune import training_questions
    from wenzhi.qa_service.heads import load_tokenizer_for

    cfg = FinetuneConfig(task=task, out=tmp_path, kb=kb_db, questions=[questions], dropout=0.0, negatives=3, **fields)
    setup = importlib.import_module(f"wenzhi.qa_service.finetune.{task}").setup
    t = setup(cfg, load_tokenizer_for(None), training_questions(cfg), kb_store, {})
    rows = list(range(8))
    with torch.no_grad():
        whole = float(t.loss(rows))
        halves = [(float(t.loss(half)), t.terms(half)) for half in (rows[:4], rows[4:])]
    assert t.terms(rows) == sum(c for _, c in halves) > 0
    assert sum(loss * c for loss, c in halves) / t.terms(rows) == pytest.approx(whole, rel=1e-5)


def test_bf16_fine_tune_runs_on_cpu(kb_db, questions, tmp_path):
    """`--bf16`: accelerate's CPU autocast (its own process: accelerate's state is one per process)."""
    argv = _argv(kb_db, questions, tmp_path, "--batch-size", "8", "--max-steps", "6", "--bf16")
    argv[argv.index("sim")] = "ner"
    done = subprocess.run([sys.executable, *argv], env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "ner" / "finetune.json").read_text(encoding="utf-8"))
    assert report["mixed_precision"] == "bf16" and report["steps"] == 6
