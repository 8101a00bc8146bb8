"""The shipped DeepSpeed and FSDP configs, as they are, with the trainer.

On CPU, accelerate runs DeepSpeed in one process (it forms no multi-process CPU group for it), so
ZeRO-2/3 are checked single-process here: same weights as a plain run, save/resume, the "auto"
values filled from the training config, DeepSpeed's pickles refused when they hold more than its
own state. FSDP runs only on GPUs under accelerate: on CPU the trainer must refuse it clearly;
the GPU test runs it where CUDA is there.
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from wenzhi.model.distributed import fill_deepspeed_config
from wenzhi.model.trainer import TrainConfig, load_config, train

ROOT = Path(__file__).parents[2]
CONFIGS = ROOT / "model" / "configs"
TINY = {"hidden_size": 32, "num_attention_heads": 4, "intermediate_size": 64, "num_universal_layers": 2,
        "num_nlu_layers": 1, "num_nlg_layers": 1, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


@pytest.fixture(scope="module")
def run_config(tmp_path_factory):
    from wenzhi.kg.datadir import data_path
    from wenzhi.model.devdata import bert_chinese_tokenizer, read_corpus_lines, tokenize_lines, write_text_shards

    root = tmp_path_factory.mktemp("ds")
    tok = bert_chinese_tokenizer()
    write_text_shards(root / "pd128", tokenize_lines(read_corpus_lines("people_daily", limit=300), tok, 128), 128, tok,
                      seed=0, tokenizer_name=str(data_path("vocab/bert_chinese_vocab.txt")))
    cfg = dict(shards=str(root / "pd128"), steps=8, batch_size=4, gradient_accumulation_steps=2, model=TINY,
               learning_rate=1e-3, warmup_steps=2, lm_weight=0.5, checkpoint_every=3, keep_checkpoints=3,
               log_every=2, num_threads=1, seed=5, report_to="none")
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def plain(run_config, tmp_path_factory):
    out = tmp_path_factory.mktemp("plain") / "run"
    train(load_config(run_config, [f"output_dir={out}"]), resume=False, show_progress=False)
    return out


def _accelerate(config_file: str, run_config: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / "accelerate" / config_file),
           "--num_processes", "1", "--main_process_port", port, "-m", "wenzhi", "pretrain", "run",
           "--config", str(run_config), "--output", str(out), "--no-progress", *extra]
    return subprocess.run(cmd, cwd=ROOT, env=os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=400)


def _weights(run_dir: Path) -> dict:
    return load_file(run_dir / "model" / "model.safetensors")


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _interrupt(out: Path, keep: str) -> None:
    """As if the run had been killed after checkpoint `keep`: later checkpoints and the model gone."""
    shutil.rmtree(out / "model")
    for ckpt in (out / "checkpoints").glob("step-*"):
        if ckpt.name > keep:
            shutil.rmtree(ckpt)


def _check_zero(stage: int, run_config: Path, plain: Path, out: Path) -> None:
    done = _accelerate(f"deepspeed_zero{stage}.yaml", run_config, out)
    assert done.returncode == 0, done.stderr[-3000:]
    start = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()][0]
    assert start["distributed"] == "DEEPSPEED"
    uninterrupted = _weights(out)
    assert _max_diff(_weights(plain), uninterrupted) <= 1e-5  # the full model gathered, accumulation right
    _interrupt(out, "step-00000003")
    done = _accelerate(f"deepspeed_zero{stage}.yaml", run_config, out)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()][-1]
    assert summary["resumed_from"].endswith("step-00000003") and summary["steps_this_run"] == 5
    assert _max_diff(uninterrupted, _weights(out)) <= 1e-6


def test_deepspeed_zero2_trains_like_a_plain_run_and_resumes(run_config, plain, tmp_path):
    pytest.importorskip("deepspeed")
    from wenzhi.model.checkpoint import CheckpointError, verify_checkpoint

    out = tmp_path / "zero2"
    _check_zero(2, run_config, plain, out)
    # DeepSpeed loads its own files with weights_only=False: a planted pickle must be refused first
    ckpt = out / "checkpoints" / "step-00000006"
    verify_checkpoint(ckpt)
    target = ckpt / "pytorch_model" / "mp_rank_00_model_states.pt"
    target.write_bytes(pickle.dumps(os.system))  # a callable global: what a payload needs
    manifest = json.loads((ckpt / "COMPLETE").read_text())
    manifest["files"]["pytorch_model/mp_rank_00_model_states.pt"] = target.stat().st_size
    (ckpt / "COMPLETE").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="restricted unpickler"):
        verify_checkpoint(ckpt)


@pytest.mark.slow
def test_deepspeed_zero3_gathers_the_full_model_and_resumes(run_config, plain, tmp_path):
    pytest.importorskip("deepspeed")
    _check_zero(3, run_config, plain, tmp_path / "zero3")


def test_deepspeed_auto_values_come_from_the_training_config(tmp_path):
    shipped = json.loads((CONFIGS / "deepspeed" / "zero2.json").read_text())
    cfg = TrainConfig.from_dict({"output_dir": str(tmp_path), "shards": str(tmp_path), "steps": 5, "batch_size": 6,
                                 "gradient_accumulation_steps": 3, "max_grad_norm": 0.5}, tmp_path)
    filled = fill_deepspeed_config(dict(shipped), cfg, num_processes=4)
    assert (filled["train_micro_batch_size_per_gpu"], filled["gradient_accumulation_steps"],
            filled["train_batch_size"], filled["gradient_clipping"]) == (6, 3, 72, 0.5)
    with pytest.raises(ValueError, match="train_micro_batch_size_per_gpu=8"):
        fill_deepspeed_config(dict(shipped, train_micro_batch_size_per_gpu=8), cfg, 4)
    with pytest.raises(ValueError, match="optimizer"):
        fill_deepspeed_config(dict(shipped, optimizer={"type": "Adam"}), cfg, 4)
    two_phases = TrainConfig.from_dict({"output_dir": str(tmp_path), "phases": [
        {"shards": str(tmp_path), "steps": 1, "gradient_accumulation_steps": 1},
        {"shards": str(tmp_path), "steps": 1, "gradient_accumulation_steps": 2}]}, tmp_path)
    with pytest.raises(ValueError, match="same gradient_accumulation_steps"):
        fill_deepspeed_config(dict(shipped), two_phases, 4)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_fsdp_config_on_cpu_is_refused_not_run_as_ddp(run_config, tmp_path):
    done = _accelerate("fsdp.yaml", run_config, tmp_path / "fsdp")
    assert done.returncode != 0
    assert "FSDP was asked for, but accelerate set up MULTI_CPU" in done.stdout + done.stderr
    assert not (tmp_path / "fsdp" / "checkpoints").exists()


@pytest.mark.gpu
def test_fsdp_on_gpu_gathers_the_full_model_and_resumes(run_config, tmp_path):
    """FSDP2 with FULL_STATE_DICT checkpoints, one GPU (world 1 still goes through FSDP's sharding
    and gathering code); against a plain GPU run, fp32 both, and resumed."""
    plain_gpu = tmp_path / "plain"
    train(load_config(run_config, [f"output_dir={plain_gpu}", "mixed_precision=no"]), resume=False, show_progress=False)
    out = tmp_path / "fsdp"
    done = _accelerate("fsdp.yaml", run_config, out, "--set", "mixed_precision=no")
    assert done.returncode == 0, done.stderr[-3000:]
    uninterrupted = _weights(out)
    assert _max_diff(_weights(plain_gpu), uninterrupted) <= 1e-4  # TF32/kernel choice may differ
    _interrupt(out, "step-00000003")
    done = _accelerate("fsdp.yaml", run_config, out, "--set", "mixed_precision=no")
    assert done.returncode == 0, done.stderr[-3000:]
    assert _max_diff(uninterrupted, _weights(out)) <= 1e-6
