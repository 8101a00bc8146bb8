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


def test_the_shared_adamw_is_fused_and_steps_as_torchs_per_parameter_adamw():
    """The toolkit's AdamW (pretraining and fine-tuning) runs PyTorch's fused kernel on CPU, and
    that is only a speed-up: the same steps as the per-parameter loop with BERT's two groups."""
    from wenzhi.model.modeling import WenzhiConfig, WenzhiForPretraining
    from wenzhi.model.training_loop import adamw

    config = WenzhiConfig(vocab_size=300, **(TINY | {"num_nlg_layers": 0}))
    torch.manual_seed(0)
    fused_model = WenzhiForPretraining(config)
    loop_model = WenzhiForPretraining(config)
    loop_model.load_state_dict(fused_model.state_dict())
    fused_model.eval(), loop_model.eval()  # no dropout: the two see the same gradients
    start = [p.detach().clone() for p in fused_model.parameters()]
    fused = adamw(fused_model, 1e-2, weight_decay=0.1, decay_norms_and_biases=False)
    assert fused.defaults["fused"] is True
    assert [g["weight_decay"] for g in fused.param_groups] == [0.1, 0.0]
    decay, no_decay = [], []
    for name, p in loop_model.named_parameters():
        (no_decay if p.ndim < 2 or "norm" in name else decay).append(p)  # biases and LayerNorms undecayed
    loop = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                             lr=1e-2, foreach=False)
    ids = torch.randint(5, 300, (2, 16))
    for _ in range(5):
        for model, optimizer in ((fused_model, fused), (loop_model, loop)):
            model(input_ids=ids, labels=ids).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    apart = max((p - q).abs().max().item() for p, q in zip(fused_model.parameters(), loop_model.parameters()))
    moved = max((p - q).abs().max().item() for p, q in zip(fused_model.parameters(), start))
    # Adam divides by sqrt(v): rounding differences grow to ~1e-5 here; a wrong decay group moves a LayerNorm 5e-3
    assert apart < 1e-4 and moved > 1e-2


class _Payload:
    """Unpickling this runs code: it writes `marker`."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def _short_run(shards, tmp_path, name="run", **extra) -> Path:
    cfg = dict(output_dir=str(tmp_path / name), shards=str(shards / "pd128"), steps=6, batch_size=4,
               model=TINY | {"hidden_size": 32, "intermediate_size": 64}, learning_rate=1e-3, lm_weight=0.5,
               checkpoint_every=2, keep_checkpoints=3, log_every=2, num_threads=1, seed=5, report_to="none") | extra
    return _write_config(tmp_path / f"{name}.yaml", **cfg)


def _weights(run_dir: Path) -> dict:
    return load_file(run_dir / "model" / "model.safetensors")


@pytest.mark.parametrize("planted", ["custom_checkpoint_0.pkl", "optimizer.bin"])
def test_a_pickle_planted_in_a_checkpoint_does_not_run_on_resume(shards, tmp_path, planted):
    import pickle

    config = _short_run(shards, tmp_path)
    train(load_config(config), resume=False, show_progress=False)
    reference = _weights(tmp_path / "run")
    latest = tmp_path / "run" / "checkpoints" / "step-00000004"
    marker = tmp_path / "payload-ran"
    (latest / planted).write_bytes(pickle.dumps(_Payload(marker)))
    if planted == "optimizer.bin":  # a careful attacker also rewrites the manifest to match
        manifest = json.loads((latest / "COMPLETE").read_text())
        manifest["files"][planted] = (latest / planted).stat().st_size
        (latest / "COMPLETE").write_text(json.dumps(manifest))
    import shutil

    shutil.rmtree(tmp_path / "run" / "model")
    summary = train(load_config(config), resume=True, show_progress=False)
    assert not marker.exists(), "the planted pickle ran"
    assert summary["resumed_from"].endswith("step-00000002")  # the tampered one was skipped
    start = [r for r in _log(tmp_path / "run") if r.get("event") == "start"][-1]
    assert "step-00000004" in start["skipped_checkpoints"][0]
    got = _weights(tmp_path / "run")
    assert all(torch.equal(reference[k], got[k]) for k in reference)


def test_a_truncated_latest_checkpoint_falls_back_to_the_newest_intact_one(shards, tmp_path):
    config = _short_run(shards, tmp_path, steps=8)
    train(load_config(config), resume=False, show_progress=False)
    reference = _weights(tmp_path / "run")
    latest = tmp_path / "run" / "checkpoints" / "step-00000006"
    weights = latest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    import shutil

    shutil.rmtree(tmp_path / "run" / "model")
    summary = train(load_config(config), resume=True, show_progress=False)
    assert summary["resumed_from"].endswith("step-00000004") and summary["steps_this_run"] == 4
    got = _weights(tmp_path / "run")
    assert all(torch.equal(reference[k], got[k]) for k in reference)


def test_no_resume_keeps_an_earlier_run_unless_told_to_overwrite(shards, tmp_path, capsys):
    import argparse

    from wenzhi.model import trainer

    config = _short_run(shards, tmp_path, steps=4)
    parser = argparse.ArgumentParser()
    trainer.add_arguments(parser)
    assert trainer.main(parser.parse_args(["--config", str(config), "--no-progress"])) == 0
    before = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert before == ["step-00000002"]
    assert trainer.main(parser.parse_args(["--config", str(config), "--no-resume", "--no-progress"])) == 2
    assert "holds an earlier run" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == before
    assert (tmp_path / "run" / "model" / "model.safetensors").exists()
    assert trainer.main(parser.parse_args(["--config", str(config), "--no-resume", "--overwrite", "--no-progress"])) == 0
    starts = [r for r in _log(tmp_path / "run") if r.get("event") == "start"]
    assert len(starts) == 1 and starts[0]["resumed_from"] is None  # a fresh log too


def test_training_curves_go_to_tensorboard_beside_the_jsonl_log(shards, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = _short_run(shards, tmp_path, report_to="tensorboard", checkpoint_every=1000)
    train(load_config(config), resume=False, show_progress=False)
    events = list((tmp_path / "run" / "tensorboard").rglob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file written"
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"loss", "mlm_loss", "lm_loss", "lr", "tokens_per_s", "kind_loss/text"} <= tags, tags
    logged = {r["step"]: r for r in _log(tmp_path / "run") if "mlm_loss" in r}
    curve = acc.Scalars("mlm_loss")
    assert [e.step for e in curve] == sorted(logged) == [2, 4, 6]
    assert all(e.value == pytest.approx(logged[e.step]["mlm_loss"], rel=1e-6) for e in curve)


def test_report_to_is_checked():
    from wenzhi.model.tracking import parse_report_to, scalars

    assert parse_report_to("none") == [] and parse_report_to(["tensorboard", "wandb"]) == ["tensorboard", "wandb"]
    with pytest.raises(ValueError, match="not understood"):
        parse_report_to("mlflw")
    assert scalars({"step": 1, "loss": 2.0, "kind_loss": {"text": 3.0}, "event": "x", "ok": True}) == \
        {"step": 1.0, "loss": 2.0, "kind_loss/text": 3.0}


def test_no_intact_checkpoint_is_a_clear_error_not_a_fresh_start(shards, tmp_path, capsys):
    import argparse

    from wenzhi.model import trainer

    config = _short_run(shards, tmp_path, steps=4)
    train(load_config(config), resume=False, show_progress=False)
    ckpt = tmp_path / "run" / "checkpoints" / "step-00000002"
    (ckpt / "trainer_state.json").write_text("{}")  # the only checkpoint, damaged
    parser = argparse.ArgumentParser()
    trainer.add_arguments(parser)
    assert trainer.main(parser.parse_args(["--config", str(config), "--no-progress"])) == 2
    out = capsys.readouterr().out
    assert "no usable checkpoint" in out and "trainer_state.json" in out and ckpt.exists()
