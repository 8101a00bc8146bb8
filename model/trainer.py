"""`wenzhi pretrain run --config FILE`: pretrain WenzhiForPretraining on packed shards with Accelerate.

One process, or one N-rank job under any launcher (`batch_size` is per process, accelerate's
convention): `torchrun --nproc_per_node N -m wenzhi pretrain run ...`, `accelerate launch
--multi_gpu --num_processes N ...` or `accelerate launch --config_file model/configs/accelerate/
{ddp,fsdp,deepspeed_zero2,deepspeed_zero3}.yaml ...` (model/configs/README.md; on CPU the DDP
ones form a gloo group). A launch that accelerate would run as N separate copies is refused.
bf16 autocast on CUDA.

Exactness across process counts: the data position is a pure function of the optimizer step (a
seeded permutation per phase and epoch, sliced by rank); every random draw of an example is
seeded by its position in that stream; the loss is a sum over the global batch's masked tokens
(and LM predictions) divided by their global count. So N processes at batch_size B/N train what
one process trains at B, up to float rounding (tests/model/test_ddp.py), and a checkpoint needs
only the step to resume the data exactly. Checkpoints (model/checkpoint.py) are atomic, hold no
pickle of ours, are verified before use, and resuming falls back to the newest intact one.
Curves go to train_log.jsonl and the trackers in `report_to` (model/tracking.py). All of that
(accelerator, checkpoints, resume, log, final save) is the training toolkit's, which fine-tuning
shares (model/training_loop.py); this module holds pretraining's data position and losses.

Config (JSON or YAML); see model/configs/*.yaml:
  output_dir            where checkpoints/, model/, tensorboard/ and train_log.jsonl go
  model                 WenzhiConfig fields (vocab_size defaults to the shards' meta)
  init_from             start from a wenzhi checkpoint (a model folder or a run's output_dir) or a Hugging
                        Face BERT/ERNIE folder (imported exactly, model/hf_convert.py); `--init` sets it.
                        The architecture then comes from the checkpoint: of `model`, only the dropout
                        settings apply. Its vocabulary must be the shards' tokenizer's.
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
  peak_flops (null: looked up for known GPUs), num_threads (null), save_final (true),
  report_to ("tensorboard" | "wandb" | "none" | a list; TensorBoard, local files, by default)
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from wenzhi.model.conventions import EXAMPLE_KINDS, IGNORE_INDEX
from wenzhi.model.training_loop import OutputDirInUse


@dataclass
class Phase:
    shards: str
    steps: int
    batch_size: int = 16
    gradient_accumulation_steps: int | None = None
    # "shuffle": a seeded permutation per epoch; "sequential": file order, for shards whose rows are
    # already ordered by a masking curriculum; "auto": sequential when meta.json declares a curriculum
    order: str = "auto"


SINGLE_PHASE_KEYS = ("shards", "steps", "batch_size")  # shorthand for phases: [{shards, steps, batch_size}]


@dataclass
class TrainConfig:
    output_dir: str
    phases: list[Phase] = field(default_factory=list)
    model: dict = field(default_factory=dict)
    init_from: str | None = None
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
    report_to: str | list = "tensorboard"

    @classmethod
    def from_dict(cls, raw: dict, base_dir: Path) -> "TrainConfig":
        raw = dict(raw)
        if "init_from_bert" in raw:
            raise ValueError("init_from_bert is now init_from (or --init): it takes a wenzhi checkpoint or a "
                             "BERT/ERNIE folder and imports it exactly")
        known = {f.name for f in fields(cls)}
        single = {k: raw.pop(k) for k in SINGLE_PHASE_KEYS if k in raw}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; known: {sorted(known | set(SINGLE_PHASE_KEYS))}")
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
        from wenzhi.model.tracking import parse_report_to

        parse_report_to(cfg.report_to)
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
    """A config file, or a shipped one by name (`tiny`: model/config_files.py), with `--set`
    overrides (dotted keys reach `model.*` and `phases.N.*`)."""
    from wenzhi.model.config_files import apply_overrides, read_config

    raw, base_dir = read_config(path)
    raw = apply_overrides(raw, overrides or [], TrainConfig, extra_keys=SINGLE_PHASE_KEYS,
                          dict_keys={"model": _model_config_keys()})
    return TrainConfig.from_dict(raw, base_dir)


def _model_config_keys() -> set[str]:
    """What `model:` may set: WenzhiConfig's own arguments and PretrainedConfig's common ones."""
    import inspect

    from transformers import PretrainedConfig

    from wenzhi.model.configuration import WenzhiConfig

    keys = set(inspect.signature(WenzhiConfig.__init__).parameters) | set(PretrainedConfig().to_dict())
    return keys - {"self", "kwargs"}


# ----------------------------------------------------------------------------- data position


class PhaseData:
    """Deterministic batches of one curriculum phase. The global batch of micro-step m is rows
    [m * world * bs, (m + 1) * world * bs) of the phase's example stream (a seeded permutation per
    epoch); rank r takes its r-th slice. Every random draw of an example is seeded by (seed, phase,
    its position in that stream), so the global batch, its LM targets and hence the update are the
    same for any number of processes at the same global batch size, and for a resumed run."""

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
        flat = np.arange(start, start + bs)  # positions in the phase's example stream
        idx = np.concatenate([self._perm(int(e))[flat[flat // self.n == e] % self.n] for e in np.unique(flat // self.n)])
        batch = self.reader.batch(idx)
        batch["lm_prefix_lengths"], batch["lm_targets"] = lm_prefixes(
            batch["document_ids"], [[self.seed, self.index, int(f)] for f in flat], self.lm_target_fraction
        )
        return batch


def lm_prefixes(document_ids, row_seeds, target_fraction: float = 1.0) -> tuple["np.ndarray", "np.ndarray"]:
    """For the NLG prefix-LM loss: per token, the prefix length of its document, drawn uniformly
    from [1, length - 1] (UniLM-style: sometimes nearly causal, sometimes a long bidirectional
    source); and which target tokens (after the prefix) are predicted, a `target_fraction` sample,
    because the vocabulary projection dominates a small model's step just as it does for MLM.
    Row r's draws come from its own generator seeded by `row_seeds[r]` (the example's coordinates),
    so they do not depend on which rank, batch or run the row lands in."""
    import numpy as np

    prefix = np.zeros(document_ids.shape, np.int64)
    positions = np.zeros(document_ids.shape, np.int64)
    targets = np.zeros(document_ids.shape, bool)
    for r in range(document_ids.shape[0]):
        rng = np.random.default_rng(row_seeds[r])
        docs, starts, counts = np.unique(document_ids[r], return_index=True, return_counts=True)
        for d, s, c in zip(docs, starts, counts):
            if d >= 0:
                prefix[r, s : s + c] = rng.integers(1, c) if c > 1 else 1
                positions[r, s : s + c] = np.arange(c)
        targets[r] = (document_ids[r] >= 0) & (positions[r] >= prefix[r])
        if target_fraction < 1.0:
            targets[r] &= rng.random(document_ids.shape[1]) < target_fraction
    return prefix, targets


def lm_predicted(lm_targets, document_ids):
    """How many next-token predictions the LM loss makes: target t + 1 is predicted from t when both
    lie in one document (what WenzhiForPretraining.lm_from_universal keeps)."""
    return int((lm_targets[:, 1:] & (document_ids[:, 1:] == document_ids[:, :-1])).sum())


def locate(cfg: TrainConfig, step: int) -> tuple[int, int]:
    """(phase index, step within phase) of global optimizer step `step` (0-based)."""
    for i, phase in enumerate(cfg.phases):
        if step < phase.steps:
            return i, step
        step -= phase.steps
    return len(cfg.phases) - 1, cfg.phases[-1].steps


# ----------------------------------------------------------------------------- training


# `model` keys that still apply when the architecture comes from an --init checkpoint
INIT_OVERRIDES = ("hidden_dropout_prob", "attention_probs_dropout_prob", "residual_in_fp32")  # no weight changes


def build_model(cfg: TrainConfig, tokenizer):
    """A fresh model from `cfg.model`, or the --init checkpoint (model/pretrained.py: a wenzhi or
    BERT/ERNIE folder whose vocabulary must be `tokenizer`'s, the one the shards were made with)."""
    from wenzhi.model.modeling import WenzhiConfig, WenzhiForPretraining

    if cfg.init_from:
        from wenzhi.model.pretrained import load_for_init

        overrides = {k: v for k, v in cfg.model.items() if k in INIT_OVERRIDES}
        vocabulary = [t for t, _ in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])]
        model, _ = load_for_init(WenzhiForPretraining, cfg.init_from, vocabulary=vocabulary,
                                 vocabulary_source="the shards' tokenizer", **overrides)
        return model
    model_cfg = dict(cfg.model)
    model_cfg.setdefault("vocab_size", len(tokenizer))
    for name in ("pad", "cls", "sep", "mask"):
        model_cfg.setdefault(f"{name}_token_id", getattr(tokenizer, f"{name}_token_id"))
    return WenzhiForPretraining(WenzhiConfig(**model_cfg))


def shards_tokenizer(reader):
    """The tokenizer the shards were made with (meta.json's `tokenizer`: a vocab.txt or folder,
    None for the BERT Chinese vocabulary of the data directory); a clear error when it is gone,
    since the model saved at the end must carry it."""
    from wenzhi.model.tokenizer import load_tokenizer

    name = reader.meta.get("tokenizer")
    if not name:
        return load_tokenizer(None)
    for candidate in (Path(name), reader.dir / name):
        if candidate.exists():
            return load_tokenizer(candidate)
    raise FileNotFoundError(f"{reader.dir}: the shards' tokenizer {name!r} is not there any more; the model "
                            "is saved with its tokenizer, so put the vocabulary back or prepare the shards again")


def build_optimizer(cfg: TrainConfig, model):
    """AdamW or LAMB over BERT's two parameter groups (no decay on LayerNorm weights and biases)."""
    from wenzhi.model.training_loop import adamw, parameter_groups

    if cfg.optimizer == "lamb":
        from wenzhi.model.optim import Lamb

        return Lamb(parameter_groups(model, cfg.weight_decay), lr=cfg.learning_rate, betas=tuple(cfg.betas), eps=cfg.eps)
    return adamw(model, cfg.learning_rate, cfg.weight_decay, cfg.betas, cfg.eps, decay_norms_and_biases=False)


def train(cfg: TrainConfig, resume: bool = True, show_progress: bool = True, overwrite: bool = False) -> dict:
    """Run (or resume) the configured pretraining; returns the summary that is also logged.
    `resume=False` starts fresh and refuses a folder holding an earlier run unless `overwrite`."""
    import torch

    threads = torch.get_num_threads()
    try:
        return _train(cfg, resume, show_progress, overwrite)
    finally:  # callers in the same process (tests) keep their own thread setting
        torch.set_num_threads(threads)


# The logged figures are the global batch's. Those the host knows from the numpy batches are summed
# across ranks at the start of each step (one collective; nothing at all for one process); those the
# model computes stay on the device, summed over the logging window, and are read (and all-reduced)
# only when a line is logged: reading them every step would make the host wait for the device, and
# the device then waits for the host to build and send the next batch.
_HOST_SUMS = ["masked", "lm_predicted", "tokens", "flops"]
_DEVICE_SUMS = ["loss", "mlm_sum", "lm_sum", "correct"]  # + kind loss sums, kind counts


def _train(cfg: TrainConfig, resume: bool, show_progress: bool, overwrite: bool) -> dict:
    """Pretraining's own part of the run: the data position, the MLM + LM loss over the global
    batch and its figures; the rest (accelerator, checkpoints, resume, log, final save) is the
    training toolkit's (model/training_loop.py)."""
    import numpy as np
    import torch
    from accelerate.utils import set_seed

    from wenzhi.model.compiling import compile_for_training
    from wenzhi.model.distributed import fill_deepspeed_config
    from wenzhi.model.flops import peak_flops_for, training_step_flops
    from wenzhi.model.shards import batch_to_tensors
    from wenzhi.model.training_loop import RunSettings, TrainingRun, lr_schedule

    out = Path(cfg.output_dir)
    run = TrainingRun(RunSettings(
        output_dir=out, total_steps=cfg.total_steps, mixed_precision=cfg.mixed_precision,
        max_grad_norm=cfg.max_grad_norm, checkpoint_every=cfg.checkpoint_every, keep_checkpoints=cfg.keep_checkpoints,
        log_every=cfg.log_every, num_threads=cfg.num_threads, report_to=cfg.report_to,
        # without the LM loss the NLG branch gets no gradient
        find_unused_parameters=cfg.lm_weight <= 0, project="pretrain", final_dir="model", desc="pretrain",
    ), resume=resume, overwrite=overwrite, show_progress=show_progress)
    accelerator, world, device = run.accelerator, run.world, run.device
    set_seed(cfg.seed)
    phases = [PhaseData(p, i, cfg.seed, run.rank, world, cfg.lm_target_fraction) for i, p in enumerate(cfg.phases)]
    meta = phases[0].reader.meta
    tokenizer = shards_tokenizer(phases[0].reader)
    if len(tokenizer) != int(meta["vocab_size"]):
        raise ValueError(f"{phases[0].reader.dir}: meta.json says {meta['vocab_size']} tokens, its tokenizer has {len(tokenizer)}")
    model = build_model(cfg, tokenizer)
    if model.config.vocab_size < int(meta["vocab_size"]):
        raise ValueError(f"model vocab {model.config.vocab_size} < shards' vocab {meta['vocab_size']}")
    optimizer = build_optimizer(cfg, model)
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else int(cfg.warmup_ratio * cfg.total_steps)
    scheduler = lr_schedule(cfg.lr_scheduler, optimizer, warmup, cfg.total_steps)
    if run.deepspeed:
        fill_deepspeed_config(accelerator.state.deepspeed_plugin.deepspeed_config, cfg, world)
    if cfg.compile:
        model = compile_for_training(model)
    # The model was built from one seed on every rank (FSDP and ZeRO-3 shard each rank's copy);
    # dropout from here on draws per rank, so ranks do not drop the same units on different rows.
    model, optimizer = run.prepare(model, optimizer, scheduler, reseed=cfg.seed)
    saved = run.resume()
    tokens = int(saved["tokens"]) if saved else 0

    peak = cfg.peak_flops or (peak_flops_for(torch.cuda.get_device_name())
                              if device.type == "cuda" and run.mixed_precision == "bf16" else None)
    config = accelerator.unwrap_model(model).config
    cfg_record = asdict(cfg) | {"phases": [asdict(p) for p in cfg.phases]}
    run.start(cfg_record, data_order=[d.order for d in phases])

    num_kinds = config.num_kinds
    window_host = np.zeros(len(_HOST_SUMS))
    window_device = torch.zeros(len(_DEVICE_SUMS) + 2 * num_kinds, dtype=torch.float64, device=device)
    window_steps = 0
    first_loss = last_loss = None
    use_lm = cfg.lm_weight > 0
    model.train()
    t_window = time.perf_counter()
    while run.step < cfg.total_steps:
        phase_index, phase_step = locate(cfg, run.step)
        data, phase = phases[phase_index], cfg.phases[phase_index]
        accum = phase.gradient_accumulation_steps or cfg.gradient_accumulation_steps
        micro_batches = [data.batch(phase_step * accum + m) for m in range(accum)]
        accelerator.step = 0  # accumulate()'s micro-batch counter: the last of these `accum` ends the step
        # The loss is a mean over the whole optimizer step's masked tokens (and LM predictions) on
        # all ranks: each rank's sum is divided by the global count, times `world` because DDP,
        # FSDP and DeepSpeed average gradients over ranks.
        local = [(int((b["labels"] != IGNORE_INDEX).sum()), lm_predicted(b["lm_targets"], b["document_ids"]) if use_lm else 0)
                 for b in micro_batches]
        host = np.array([[masked, lm_count, int((b["document_ids"] >= 0).sum()),
                          training_step_flops(config, b["input_ids"].size, b["input_ids"].shape[1], masked,
                                              b["input_ids"].size if use_lm else 0, lm_count)]
                         for b, (masked, lm_count) in zip(micro_batches, local)], dtype=np.float64).sum(axis=0)
        host = np.asarray(run.reduce_sum(host.tolist()))  # the global step's counts
        global_masked, global_lm = max(host[0], 1.0), max(host[1], 1.0)
        step_device = torch.zeros(len(_DEVICE_SUMS) - 1 + 2 * num_kinds, dtype=torch.float64, device=device)
        for micro, (np_batch, (masked, lm_count)) in enumerate(zip(micro_batches, local)):
            batch = {k: v.to(device, non_blocking=True) for k, v in batch_to_tensors(np_batch).items()}
            original = torch.where(batch["labels"] != IGNORE_INDEX, batch["labels"], batch["input_ids"])
            with run.micro_batch(model, micro, accum):
                output = model(
                    input_ids=batch["input_ids"], labels=batch["labels"], token_type_ids=batch["token_type_ids"],
                    document_ids=batch["document_ids"], kind=batch["kind"],
                    lm_input_ids=original if use_lm else None,
                    lm_prefix_lengths=batch["lm_prefix_lengths"] if use_lm else None,
                    lm_labels=torch.where(batch["lm_targets"].bool(), original, IGNORE_INDEX) if use_lm else None,
                    lm_weight=cfg.lm_weight,
                )
                mlm_sum = output.mlm_loss * masked
                lm_sum = output.lm_loss * lm_count if use_lm else torch.zeros((), device=device)
                run.backward((mlm_sum / global_masked + cfg.lm_weight * lm_sum / global_lm) * world, accum)
            step_device += torch.cat([
                torch.stack([mlm_sum.detach().double(), lm_sum.detach().double(), output.mlm_correct.double()]),
                output.kind_loss_sum.double(), output.kind_count.double()])
        run.optimizer_step(model)
        # this rank's share of the global step's loss (the sum over ranks is the step's loss)
        step_loss = step_device[0] / global_masked + cfg.lm_weight * step_device[1] / global_lm
        window_device += torch.cat([step_loss[None], step_device])
        window_host += host
        window_steps += 1
        tokens += int(host[2])
        first_of_run, last_of_run = first_loss is None, run.step + 1 == cfg.total_steps
        if first_of_run or last_of_run:  # (a read from the device; every rank takes part)
            loss_now = float(run.reduce_sum_on_device(step_loss))
            first_loss = loss_now if first_of_run else first_loss
            last_loss = loss_now if last_of_run else last_loss
        run.end_step({"tokens": tokens})
        if run.log_due():
            now = time.perf_counter()
            elapsed = now - t_window
            device_sums = run.reduce_sum_on_device(window_device).cpu().numpy()
            sums = dict(zip(_HOST_SUMS, window_host)) | dict(zip(_DEVICE_SUMS, device_sums[: len(_DEVICE_SUMS)]))
            kind_sum = device_sums[len(_DEVICE_SUMS) : len(_DEVICE_SUMS) + num_kinds]
            kind_count = device_sums[len(_DEVICE_SUMS) + num_kinds :]
            record = {
                "step": run.step, "phase": phase_index, "seq_len": data.reader.seq_len,
                "loss": sums["loss"] / window_steps,
                "mlm_loss": sums["mlm_sum"] / max(sums["masked"], 1),
                "lm_loss": sums["lm_sum"] / max(sums["lm_predicted"], 1),
                "mlm_accuracy": sums["correct"] / max(sums["masked"], 1),
                "lr": run.lr, "tokens_per_s": sums["tokens"] / elapsed,
                "kind_loss": {EXAMPLE_KINDS[k] if k < len(EXAMPLE_KINDS) else str(k): kind_sum[k] / kind_count[k]
                              for k in range(num_kinds) if kind_count[k]},
                "elapsed_s": run.elapsed(),
            }
            if peak:
                record["mfu"] = sums["flops"] / elapsed / (peak * world)
            run.log(record)
            run.bar.set_postfix(loss=f"{record['loss']:.3f}", tok_s=f"{record['tokens_per_s']:.0f}")
            window_host[:] = 0
            window_device.zero_()
            window_steps, t_window = 0, now
    summary = {"event": "done", "steps": run.step, "resumed_from": run.resumed_from,
               "steps_this_run": run.step - run.start_step, "first_loss_this_run": first_loss,
               "last_loss": last_loss, "tokens_total": tokens, "elapsed_s": round(run.elapsed(), 2),
               "processes": world, "output_dir": str(out)}
    if cfg.save_final:
        full_state = run.final_state_dict(model)  # every rank calls it
        if run.is_main:
            summary["model_dir"] = str(save_final(accelerator.unwrap_model(model), out / "model", tokenizer, full_state))
    return run.finish(summary)


def save_final(model, target: Path, tokenizer, state_dict: dict | None = None) -> Path:
    """The model with its tokenizer, written aside and swapped into place (model/checkpoint.py).
    `state_dict`: the full weights where the model's own are sharded (FSDP, ZeRO-3), kept in float32."""
    from wenzhi.model.checkpoint import save_model_folder

    model = getattr(model, "_orig_mod", model)
    if state_dict is not None:
        state_dict = {k.removeprefix("_orig_mod."): v.float() if v.is_floating_point() else v for k, v in state_dict.items()}
    return save_model_folder(model, target, tokenizer, state_dict=state_dict)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from wenzhi.cli_conventions import add_config, add_output

    add_config(parser, "training config: JSON or YAML, or a shipped one by name (tiny, small, base)",
               "steps=200 or model.num_hidden_layers=2")
    add_output(parser, "the run's folder (checkpoints, model/, curves); shorthand for --set output_dir=PATH "
               "(default: the config's output_dir)", old=["--output-dir"], required=False)
    parser.add_argument("--init", metavar="CHECKPOINT",
                        help="start from a wenzhi checkpoint or a Hugging Face BERT/ERNIE folder; shorthand for "
                             "--set init_from=CHECKPOINT")
    parser.add_argument("--no-resume", action="store_true",
                        help="start a fresh run; refused where output_dir holds an earlier run, unless --overwrite")
    parser.add_argument("--overwrite", action="store_true",
                        help="with --no-resume: delete the earlier run's checkpoints, model and curves first")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def main(args: argparse.Namespace) -> int:
    from wenzhi.model.checkpoint import CheckpointError
    from wenzhi.model.distributed import LaunchError
    from wenzhi.model.pretrained import InitError

    overrides = list(args.set)
    if args.output:
        overrides.append(f"output_dir={json.dumps(args.output)}")  # quoted: a path stays a string in YAML
    if args.init:
        overrides.append(f"init_from={json.dumps(args.init)}")
    try:
        cfg = load_config(args.config, overrides)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}")
        return 2
    if args.overwrite and not args.no_resume:
        print("error: --overwrite only goes with --no-resume (a resumed run keeps its checkpoints)")
        return 2
    try:
        summary = train(cfg, resume=not args.no_resume, show_progress=not args.no_progress, overwrite=args.overwrite)
    except (OutputDirInUse, LaunchError, CheckpointError, InitError) as exc:
        print(f"error: {exc}")
        return 2
    print(json.dumps(summary, ensure_ascii=False))
    return 0
