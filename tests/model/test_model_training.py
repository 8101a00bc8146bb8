"""`wenzhi pretrain run` on real People's Daily text: the loss falls, and a SIGKILLed run resumes exactly."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from wenzhi.model.trainer import load_config, train

TINY = {"hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 256,
        "num_universal_layers": 2, "num_nlu_layers": 1, "num_nlg_layers": 1}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from wenzhi.model.devdata import bert_chinese_tokenizer, read_corpus_lines, tokenize_lines, write_text_shards

    root = tmp_path_factory.mktemp("shards")
    tok = bert_chinese_tokenizer()
    lines = read_corpus_lines("people_daily", limit=1200)
    from wenzhi.kg.datadir import data_path

    vocab = str(data_path("vocab/bert_chinese_vocab.txt"))
    write_text_shards(root / "pd128", tokenize_lines(lines[:900], tok, 128), 128, tok, seed=0, tokenizer_name=vocab)
    write_text_shards(root / "pd256", tokenize_lines(lines[900:], tok, 256), 256, tok, seed=1)
    return root


def _write_config(path: Path, **cfg) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def _log(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]


def test_tiny_model_loss_falls_on_real_text(shards, tmp_path):
    cfg_path = _write_config(
        tmp_path / "tiny.yaml", output_dir=str(tmp_path / "run"), shards=str(shards / "pd128"), steps=60,
        batch_size=8, model=TINY | {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
        learning_rate=5e-3, warmup_steps=6, lm_weight=0.25, log_every=10, checkpoint_every=1000, num_threads=1)
    summary = train(load_config(cfg_path), resume=False, show_progress=False)
    records = [r for r in _log(tmp_path / "run") if "mlm_loss" in r]
    first, last = records[0], records[-1]
    # ln(21128) = 9.96 at initialisation; a clear fall, on the MLM and the NLG (prefix-LM) losses
    assert first["mlm_loss"] > 9.0 and last["mlm_loss"] < first["mlm_loss"] - 2.0, (first, last)
    assert last["lm_loss"] < first["lm_loss"] - 2.0
    assert last["mlm_accuracy"] > first["mlm_accuracy"] and last["tokens_per_s"] > 0 and "text" in last["kind_loss"]
    model_dir = Path(summary["model_dir"])
    assert (model_dir / "config.json").exists() and (model_dir / "model.safetensors").exists()
    from wenzhi.model.devdata import bert_chinese_tokenizer  # the shards' tokenizer travels with the model

    assert bert_chinese_tokenizer(model_dir)("中国")["input_ids"] == [101, 704, 1744, 102]


@pytest.mark.slow
def test_tiny_model_beats_the_unigram_baseline_in_a_few_hundred_steps(shards, tmp_path):
    """Below the unigram cross-entropy of the masked tokens (fitted on the same shards, so the
    baseline is optimistic) the model must be using context, not just token frequencies."""
    from wenzhi.model.shards import ShardReader

    reader = ShardReader(shards / "pd128")
    labels = reader.batch(np.arange(len(reader)))["labels"]
    targets = labels[labels != -100]
    freq = np.bincount(targets).astype(float)
    unigram = float(-np.log(freq[targets] / freq.sum()).mean())
    cfg_path = _write_config(
        tmp_path / "tiny.yaml", output_dir=str(tmp_path / "run"), shards=str(shards / "pd128"), steps=300,
        batch_size=16, model=TINY | {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
        learning_rate=3e-3, warmup_steps=20, lm_weight=0.25, log_every=25, checkpoint_every=1000, num_threads=2)
    train(load_config(cfg_path), resume=False, show_progress=False)
    last = [r for r in _log(tmp_path / "run") if "mlm_loss" in r][-1]
    assert last["mlm_loss"] < unigram, (last, unigram)


def test_sigkilled_run_resumes_to_the_same_weights(shards, tmp_path):
    common = dict(
        phases=[{"shards": str(shards / "pd128"), "steps": 8, "batch_size": 4},
                {"shards": str(shards / "pd256"), "steps": 6, "batch_size": 2}],  # curriculum 128 -> 256
        model=TINY | {"hidden_size": 32, "intermediate_size": 64},  # dropout on: RNG state must resume too
        gradient_accumulation_steps=2, learning_rate=1e-3, warmup_steps=3, lr_scheduler="cosine",
        lm_weight=0.5, checkpoint_every=3, keep_checkpoints=2, log_every=1, num_threads=1, seed=7)
    reference = _write_config(tmp_path / "ref.yaml", output_dir=str(tmp_path / "ref"), **common)
    train(load_config(reference), resume=False, show_progress=False)

    killed = _write_config(tmp_path / "killed.yaml", output_dir=str(tmp_path / "killed"), **common)
    proc = subprocess.Popen([sys.executable, "-m", "wenzhi", "pretrain", "run", "--config", str(killed), "--no-progress"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=Path(__file__).parents[2])
    target = tmp_path / "killed" / "checkpoints" / "step-00000006"  # in the second curriculum phase soon after
    deadline = time.time() + 120
    while not target.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (tmp_path / "killed" / "model").exists()

    summary = train(load_config(killed), resume=True, show_progress=False)
    assert summary["resumed_from"] and summary["steps"] == 14 and 0 < summary["steps_this_run"] < 14
    ref = load_file(tmp_path / "ref" / "model" / "model.safetensors")
    got = load_file(tmp_path / "killed" / "model" / "model.safetensors")
    assert ref.keys() == got.keys()
    for name in ref:
        assert torch.equal(ref[name], got[name]), name
    seq_lens = {r["seq_len"] for r in _log(tmp_path / "ref") if "seq_len" in r}
    assert seq_lens == {128, 256}
    assert len(list((tmp_path / "killed" / "checkpoints").glob("step-*"))) <= 2


def test_bad_config_is_refused_clearly(tmp_path):
    path = _write_config(tmp_path / "bad.yaml", output_dir=str(tmp_path / "x"), shards="nowhere", steps=3, lr=1)
    with pytest.raises(ValueError, match="unknown config keys \\['lr'\\]"):
        load_config(path)


def test_lamb_optimizer_minimises():
    from wenzhi.model.optim import Lamb

    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(20, 20))
    target = torch.randn(20, 20)
    opt = Lamb([w], lr=0.05, weight_decay=0.0)
    start = ((w - target) ** 2).mean().item()
    for _ in range(200):
        loss = ((w - target) ** 2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert loss.item() < start * 0.05
