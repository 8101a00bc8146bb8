"""`wenzhi pretrain run --config FILE`: pretrain WenzhiForPretraining on packed shards with Accelerate.

One CPU process for tests; on GPUs launch with `accelerate launch` (DDP, FSDP or DeepSpeed as the
accelerate config says) and get bf16 autocast. The data position is a pure function of the optimizer
step (a seeded permutation per phase and epoch, rank-strided), so a checkpoint needs only the step
to resume the data exactly; model, optimizer, scheduler and RNG states go through
`accelerator.save_state`. Checkpoints are written to a temporary directory and renamed, so a kill
at any moment leaves the previous checkpoint intact, and resuming reaches the same weights as an
uninterrupted run.

Config (JSON or YAML); see model/configs/*.yaml:
  output_dir            where checkpoints/, model/ and train_log.jsonl go
  model                 WenzhiConfig fields (vocab_size defaults to the shards' meta)
  init_from             a save_pretrained directory to start from (instead of `model`)
  init_from_bert        a Hugging Face BERT checkpoint directory for the universal module
  phases                list of {shards, steps, batch_size, gradient_accumulation_steps?, order?}: the
                        sequence-length curriculum (e.g. 128-token shards, then 512); order "auto"
                        keeps file order for shards whose meta.json declares a masking curriculum
  shards/steps/batch_size   shorthand for a single phase
  gradient_accumulation_steps (1), optimizer ("adamw" | "lamb"), learning_rate (5e-4),
  weight_decay (0.01), betas ([0.9, 0.98]), eps (1e-6), max_grad_norm (1.0),
  lr_scheduler ("linear" | "cosine" | "constant"), warmup_steps (0) or warmup_ratio,
  lm_weight (0.5; 0 skips the NLG pass), lm_target_fraction (0.15: share of the tokens after each
  document's random prefix that the LM loss predicts), mixed_precision ("auto": bf16 on CUDA, no on CPU),
  compile (false), seed (42), checkpoint_every (100), keep_checkpoints (2), log_every (10),
  peak_flops (null: looked up for known GPUs), num_threads (null), save_final (true)
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

KIND_NAMES = ["text", "knowledge", "uktp", "retrieval"]


@dataclass
class Phase:
    shards: str
    steps: int
    batch_size: int = 16
    gradient_accumulation_steps: int | None = None
    # "shuffle": a seeded permutation per epoch; "sequential": file order, for shards whose rows are
    # already ordered by a masking curriculum; "auto": sequential when meta.json declares a curriculum
    order: str = "auto"


@dataclass
class TrainConfig:
    output_dir: str
    phases: list = field(default_factory=list)
    model: dict = field(default_factory=dict)
    init_from: str | None = None
    init_from_bert: str | None = None
    gradient_accumulation_steps: int = 1
    optimizer: str = "adamw"
    learning_rate: float = 5e-4
    weight_decay: float = 0.01
    betas: list = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-6
    max_grad_norm: float = 1.0
    lr_scheduler: str = "linear"
    warmup_steps: int | None = None
    warmup_ratio: float = 0.0
    lm_weight: float = 0.5
    lm_target_fraction: float = 0.15
    mixed_precision: str = "auto"
    compile: bool = False
    seed: int = 42
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    log_every: int = 10
    peak_flops: float | None = None
    num_threads: int | None = None
    save_final: bool = True

    @classmethod
    def from_dict(cls, raw: dict, base_dir: Path) -> "TrainConfig":
        raw = dict(raw)
        known = {f.name for f in fields(cls)}
        single = {k: raw.pop(k) for k in ("shards", "steps", "batch_size") if k in raw}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; known: {sorted(known | {'shards', 'steps', 'batch_size'})}")
        if "output_dir" not in raw:
            raise ValueError("config needs output_dir")
        if single:
            if raw.get("phases"):
                raise ValueError("give either phases or shards/steps/batch_size, not both")
            if "shards" not in single or "steps" not in single:
                raise ValueError("a single-phase config needs shards and steps")
            raw["phases"] = [single]
        if not raw.get("phases"):
            raise ValueError("config needs phases (or shards + steps)")
        cfg = cls(**raw)
        phases = []
        for i, p in enumerate(cfg.phases):
            bad = sorted(set(p) - {f.name for f in fields(Phase)})
            if bad:
                raise ValueError(f"phase {i}: unknown keys {bad}")
            phase = Phase(**p)
            phase.shards = str(_resolve(phase.shards, base_dir))
            phases.append(phase)
        cfg.phases = phases
        cfg.output_dir = str(_resolve(cfg.output_dir, base_dir, must_exist=False))
        if cfg.optimizer not in ("adamw", "lamb"):
            raise ValueError(f"optimizer must be adamw or lamb, not {cfg.optimizer!r}")
        return cfg

    @property
    def total_steps(self) -> int:
        return sum(p.steps for p in self.phases)


def _resolve(path: str, base_dir: Path, must_exist: bool = True) -> Path:
    """Relative paths: from the working directory when they exist there, else from the config's folder."""
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists() or not must_exist:
        return p.resolve()
    return (base_dir / p).resolve()


def load_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"config {path} not found")
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        import yaml

        raw = yaml.safe_load(text)
    else:
        raw = json.loads(text)
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    for item in overrides or []:  # --set key=value (value parsed as YAML: numbers, bools, lists)
        import yaml

        key, _, value = item.partition("=")
        if not _:
            raise ValueError(f"--set expects key=value, got {item!r}")
        raw[key.strip()] = yaml.safe_load(value)
    return TrainConfig.from_dict(raw, path.parent)


# ----------------------------------------------------------------------------- data position


class PhaseData:
    """Deterministic batches of one curriculum phase: micro-batch m of rank r is a pure function
    of (seed, phase, m), independent of when the run was interrupted."""

    def __init__(self, phase: Phase, index: int, seed: int, rank: int, world: int, lm_target_fraction: float = 1.0):
        from wenzhi.model.shards import ShardReader

        self.lm_target_fraction = lm_target_fraction
        self.reader = ShardReader(phase.shards)
        self.phase, self.index, self.seed, self.rank, self.world = phase, index, seed, rank, world
        self.n = len(self.reader)
        if self.n == 0:
            raise ValueError(f"{phase.shards} holds no sequences")
        self._perms: dict[int, "np.ndarray"] = {}
        order = phase.order
        if order == "auto":
            order = "sequential" if self.reader.meta.get("curriculum") else "shuffle"
        if order not in ("shuffle", "sequential"):
            raise ValueError(f"phase {index}: order must be auto, shuffle or sequential, not {phase.order!r}")
        self.order = order

    def _perm(self, epoch: int):
        import numpy as np

        if epoch not in self._perms:
            self._perms = {epoch: np.random.default_rng([self.seed, self.index, epoch]).permutation(self.n)
                           if self.order == "shuffle" else np.arange(self.n)}
        return self._perms[epoch]

    def batch(self, micro_index: int):
        import numpy as np

        bs = self.phase.batch_size
        start = (micro_index * self.world + self.rank) * bs
        flat = np.arange(start, start + bs)
        idx = np.concatenate([self._perm(int(e))[flat[flat // self.n == e] % self.n] for e in np.unique(flat // self.n)])
        batch = self.reader.batch(idx)
        batch["lm_prefix_lengths"], batch["lm_targets"] = lm_prefixes(
            batch["document_ids"], [self.seed, self.index, micro_index, self.rank], self.lm_target_fraction
        )
        return batch


def lm_prefixes(document_ids, seed, target_fraction: float = 1.0) -> tuple["np.ndarray", "np.ndarray"]:
    """For the NLG prefix-LM loss: per token, the prefix length of its document, drawn uniformly
    from [1, length - 1] (UniLM-style: sometimes nearly causal, sometimes a long bidirectional
    source); and which target tokens (after the prefix) are predicted, a `target_fraction` sample,
    because the vocabulary projection dominates a small model's step just as it does for MLM.
    The generator is seeded by the batch's coordinates, so a resumed run redraws the same."""
    import numpy as np

    rng = np.random.default_rng(seed)
    prefix = np.zeros(document_ids.shape, np.int64)
    positions = np.zeros(document_ids.shape, np.int64)
    for r in range(document_ids.shape[0]):
        docs, starts, counts = np.unique(document_ids[r], return_index=True, return_counts=True)
        for d, s, c in zip(docs, starts, counts):
            if d >= 0:
                prefix[r, s : s + c] = rng.integers(1, c) if c > 1 else 1
                positions[r, s : s + c] = np.arange(c)
    targets = (document_ids >= 0) & (positions >= prefix)
    if target_fraction < 1.0:
        targets &= rng.random(document_ids.shape) < target_fraction
    return prefix, targets


def locate(cfg: TrainConfig, step: int) -> tuple[int, int]:
    """(phase index, step within phase) of global optimizer step `step` (0-based)."""
    for i, phase in enumerate(cfg.phases):
        if step < phase.steps:
            return i, step
        step -= phase.steps
    return len(cfg.phases) - 1, cfg.phases[-1].steps


# ----------------------------------------------------------------------------- checkpoints


class TrainState:
    """Checkpointed with accelerate's custom objects: the step (hence the data position)."""

    def __init__(self):
        self.step = 0
        self.tokens = 0

    def state_dict(self):
        return {"step": self.step, "tokens": self.tokens}

    def load_state_dict(self, state):
        self.step, self.tokens = int(state["step"]), int(state["tokens"])


def latest_checkpoint(ckpt_root: Path) -> Path | None:
    done = sorted(p for p in ckpt_root.glob("step-*") if (p / "COMPLETE").exists()) if ckpt_root.exists() else []
    return done[-1] if done else None


def save_checkpoint(accelerator, ckpt_root: Path, step: int, keep: int) -> Path:
    final = ckpt_root / f"step-{step:08d}"
    tmp = ckpt_root / f".tmp-step-{step:08d}"
    if accelerator.is_main_process:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / "COMPLETE").write_text(json.dumps({"step": step, "time": time.time()}))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in sorted(p for p in ckpt_root.glob("step-*"))[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


# ----------------------------------------------------------------------------- training


def build_model(cfg: TrainConfig, vocab_size: int):
    from wenzhi.model.modeling import WenzhiConfig, WenzhiForPretraining

    if cfg.init_from:
        return WenzhiForPretraining.from_pretrained(cfg.init_from)
    if cfg.init_from_bert:
        return WenzhiForPretraining.from_bert(cfg.init_from_bert, **cfg.model)
    model_cfg = dict(cfg.model)
    model_cfg.setdefault("vocab_size", vocab_size)
    return WenzhiForPretraining(WenzhiConfig(**model_cfg))


def build_optimizer(cfg: TrainConfig, model):
    import torch

    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "norm" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "lamb":
        from wenzhi.model.optim import Lamb

        return Lamb(groups, lr=cfg.learning_rate, betas=tuple(cfg.betas), eps=cfg.eps)
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=tuple(cfg.betas), eps=cfg.eps)


def train(cfg: TrainConfig, resume: bool = True, show_progress: bool = True) -> dict:
    """Run (or resume) the configured pretraining; returns the summary that is also logged."""
    import torch

    threads = torch.get_num_threads()
    try:
        return _train(cfg, resume, show_progress)
    finally:  # callers in the same process (tests) keep their own thread setting
        torch.set_num_threads(threads)


def _train(cfg: TrainConfig, resume: bool, show_progress: bool) -> dict:
    import numpy as np
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    from wenzhi.model.flops import peak_flops_for, training_step_flops
    from wenzhi.model.shards import batch_to_tensors

    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    mixed = cfg.mixed_precision
    if mixed == "auto":
        mixed = "bf16" if torch.cuda.is_available() else "no"
    from accelerate.utils import DistributedDataParallelKwargs

    # Without the LM loss the NLG branch gets no gradient, which DDP must be told about.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=cfg.lm_weight <= 0)
    accelerator = Accelerator(mixed_precision=mixed, kwargs_handlers=[ddp])
    set_seed(cfg.seed)
    out = Path(cfg.output_dir)
    ckpt_root = out / "checkpoints"
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
    phases = [PhaseData(p, i, cfg.seed, accelerator.process_index, accelerator.num_processes, cfg.lm_target_fraction)
              for i, p in enumerate(cfg.phases)]
    meta = phases[0].reader.meta
    model = build_model(cfg, int(meta["vocab_size"]))
    if model.config.vocab_size < int(meta["vocab_size"]):
        raise ValueError(f"model vocab {model.config.vocab_size} < shards' vocab {meta['vocab_size']}")
    optimizer = build_optimizer(cfg, model)
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else int(cfg.warmup_ratio * cfg.total_steps)
    scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=warmup, num_training_steps=cfg.total_steps)
    if cfg.compile:
        model = torch.compile(model)
    model, optimizer = accelerator.prepare(model, optimizer)
    state = TrainState()
    accelerator.register_for_checkpointing(scheduler)
    accelerator.register_for_checkpointing(state)

    log_path = out / "train_log.jsonl"
    resumed_from = None
    ckpt = latest_checkpoint(ckpt_root) if resume else None
    if ckpt is not None:
        accelerator.load_state(str(ckpt))
        resumed_from = str(ckpt)
    elif accelerator.is_main_process:  # a fresh start: no stale checkpoints or log lines
        if ckpt_root.exists():
            shutil.rmtree(ckpt_root)
        log_path.unlink(missing_ok=True)

    def log(record: dict):
        if accelerator.is_main_process:
            with open(log_path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record, ensure_ascii=False) + "\n")

    device = accelerator.device
    peak = cfg.peak_flops or (peak_flops_for(torch.cuda.get_device_name()) if device.type == "cuda" and mixed == "bf16" else None)
    config = accelerator.unwrap_model(model).config
    log({"event": "start", "resumed_from": resumed_from, "step": state.step, "total_steps": cfg.total_steps,
         "device": str(device), "processes": accelerator.num_processes, "mixed_precision": mixed,
         "data_order": [d.order for d in phases],
         "parameters": sum(p.numel() for p in model.parameters()), "config": asdict(cfg) | {"phases": [asdict(p) for p in cfg.phases]}})

    window = {"loss": 0.0, "mlm": 0.0, "lm": 0.0, "n": 0, "tokens": 0, "flops": 0.0, "correct": 0, "masked": 0,
              "kind_sum": np.zeros(config.num_kinds), "kind_count": np.zeros(config.num_kinds)}
    first_loss = last_loss = None
    start_step = state.step
    bar = tqdm(total=cfg.total_steps, initial=state.step, disable=not (show_progress and accelerator.is_main_process),
               desc="pretrain", unit="step", dynamic_ncols=True)
    model.train()
    t_window = t_start = time.perf_counter()
    while state.step < cfg.total_steps:
        phase_index, phase_step = locate(cfg, state.step)
        data, phase = phases[phase_index], cfg.phases[phase_index]
        accum = phase.gradient_accumulation_steps or cfg.gradient_accumulation_steps
        step_loss = 0.0
        for micro in range(accum):
            batch = batch_to_tensors(data.batch(phase_step * accum + micro))
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            sync = micro == accum - 1
            ctx = accelerator.no_sync(model) if not sync else contextlib.nullcontext()
            use_lm = cfg.lm_weight > 0
            original = torch.where(batch["labels"] != -100, batch["labels"], batch["input_ids"])
            with ctx:
                output = model(
                    input_ids=batch["input_ids"], labels=batch["labels"], token_type_ids=batch["token_type_ids"],
                    document_ids=batch["document_ids"], kind=batch["kind"],
                    lm_input_ids=original if use_lm else None,
                    lm_prefix_lengths=batch["lm_prefix_lengths"] if use_lm else None,
                    lm_labels=torch.where(batch["lm_targets"].bool(), original, -100) if use_lm else None,
                    lm_weight=cfg.lm_weight,
                )
                accelerator.backward(output.loss / accum)
            real = int((batch["document_ids"] >= 0).sum())
            masked = int((batch["labels"] != -100).sum())
            lm_targets = int(batch["lm_targets"].sum()) if use_lm else 0
            step_loss += output.loss.item() / accum
            window["mlm"] += output.mlm_loss.item() / accum
            window["lm"] += (output.lm_loss.item() if output.lm_loss is not None else 0.0) / accum
            window["tokens"] += real
            window["correct"] += int(output.mlm_correct)
            window["masked"] += masked
            window["kind_sum"] += output.kind_loss_sum.float().cpu().numpy()
            window["kind_count"] += output.kind_count.cpu().numpy()
            slots = batch["input_ids"].numel()
            window["flops"] += training_step_flops(config, slots, batch["input_ids"].shape[1], masked,
                                                   slots if cfg.lm_weight > 0 else 0, lm_targets)
            state.tokens += real
        if cfg.max_grad_norm:
            accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state.step += 1
        first_loss = step_loss if first_loss is None else first_loss
        last_loss = step_loss
        window["loss"] += step_loss
        window["n"] += 1
        bar.update(1)
        if state.step % cfg.log_every == 0 or state.step == cfg.total_steps:
            now = time.perf_counter()
            elapsed = now - t_window
            n = window["n"]
            tokens = window["tokens"] * accelerator.num_processes
            record = {
                "step": state.step, "phase": phase_index, "seq_len": data.reader.seq_len,
                "loss": window["loss"] / n, "mlm_loss": window["mlm"] / n, "lm_loss": window["lm"] / n,
                "mlm_accuracy": window["correct"] / max(window["masked"], 1),
                "lr": scheduler.get_last_lr()[0], "tokens_per_s": tokens / elapsed,
                "kind_loss": {KIND_NAMES[k] if k < len(KIND_NAMES) else str(k): window["kind_sum"][k] / window["kind_count"][k]
                              for k in range(config.num_kinds) if window["kind_count"][k]},
                "elapsed_s": now - t_start,
            }
            if peak:
                record["mfu"] = window["flops"] * accelerator.num_processes / elapsed / (peak * accelerator.num_processes)
            log(record)
            bar.set_postfix(loss=f"{record['loss']:.3f}", tok_s=f"{record['tokens_per_s']:.0f}")
            window.update(loss=0.0, mlm=0.0, lm=0.0, n=0, tokens=0, flops=0.0, correct=0, masked=0)
            window["kind_sum"][:] = 0
            window["kind_count"][:] = 0
            t_window = now
        if state.step % cfg.checkpoint_every == 0 and state.step < cfg.total_steps:
            path = save_checkpoint(accelerator, ckpt_root, state.step, cfg.keep_checkpoints)
            log({"event": "checkpoint", "step": state.step, "path": str(path)})
    bar.close()
    elapsed = time.perf_counter() - t_start
    summary = {"event": "done", "steps": state.step, "resumed_from": resumed_from, "steps_this_run": state.step - start_step,
               "first_loss_this_run": first_loss, "last_loss": last_loss, "tokens_total": state.tokens,
               "elapsed_s": round(elapsed, 2), "output_dir": str(out)}
    if cfg.save_final and accelerator.is_main_process:
        summary["model_dir"] = str(save_final(accelerator.unwrap_model(model), out / "model", meta))
    accelerator.wait_for_everyone()
    log(summary)
    return summary


def save_final(model, target: Path, meta: dict) -> Path:
    """save_pretrained into a temporary directory, add the shards' tokenizer, then rename into place."""
    model = getattr(model, "_orig_mod", model)
    tmp = target.with_name(target.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    tokenizer_name = meta.get("tokenizer")
    if tokenizer_name:
        from wenzhi.model.devdata import bert_chinese_tokenizer

        try:
            bert_chinese_tokenizer(tokenizer_name).save_pretrained(tmp)
            # load_tokenizer(model_dir) reads vocab.txt, which a fast tokenizer does not always write
            source = Path(tokenizer_name)
            source = source / "vocab.txt" if source.is_dir() else source
            if not (tmp / "vocab.txt").exists() and source.is_file():
                shutil.copyfile(source, tmp / "vocab.txt")
        except (OSError, ValueError) as exc:  # the model is still worth keeping; say what is missing
            print(f"warning: could not save the shards' tokenizer {tokenizer_name!r} with the model: {exc}")
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
    return target


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="training config, JSON or YAML (see model/configs/)")
    parser.add_argument("--output-dir", help="override the config's output_dir")
    parser.add_argument("--no-resume", action="store_true", help="start over, deleting old checkpoints")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a top-level config key (value parsed as YAML), repeatable")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def main(args: argparse.Namespace) -> int:
    overrides = list(args.set)
    if args.output_dir:
        overrides.append(f"output_dir={args.output_dir}")
    try:
        cfg = load_config(args.config, overrides)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}")
        return 2
    summary = train(cfg, resume=not args.no_resume, show_progress=not args.no_progress)
    print(json.dumps(summary, ensure_ascii=False))
    return 0
