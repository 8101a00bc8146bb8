"""The training toolkit that pretraining (model/trainer.py) and fine-tuning (qa_service/finetune/)
share: one way to set a run up, step it, checkpoint it, resume it, log it and save what it made.

    run = TrainingRun(RunSettings(output_dir=..., total_steps=..., ...), resume=True, overwrite=False)
    optimizer = adamw(model, lr)                    # or the caller's own (the trainer's LAMB)
    scheduler = lr_schedule("linear", optimizer, warmup, total_steps)
    model, optimizer = run.prepare(model, optimizer, scheduler, reseed=seed)
    saved = run.resume()                            # the newest intact checkpoint's state, or None
    run.start(config_record)
    while run.step < total_steps:
        for m in range(accum):                      # the caller's data position and loss
            with run.micro_batch(model, m, accum):
                run.backward(loss, accum)
        run.optimizer_step(model)
        run.end_step(state)                         # progress; a checkpoint when one is due
    weights = run.final_state_dict(model)           # every rank (it gathers FSDP / ZeRO-3 shards)
    if run.is_main:                                 # the final folder, swapped into place whole
        save_model_folder(unwrapped, target, tokenizer, weights)   # model/checkpoint.py
    run.finish(summary)                             # the `done` record

What stays with the caller is what its run computes: the data position (a pure function of the
optimizer step, so a checkpoint needs only the step to resume the data exactly) and the losses.
`train_mean_loss` is the whole loop for a loss that is a mean over counted terms (fine-tuning's).

Guarantees, for every caller: the Accelerator is the job the launcher started, or an error
(model/distributed.py); only the main process writes; a fresh start (`resume=False`) refuses a
folder that holds an earlier run unless `overwrite`; checkpoints are atomic, verified, hold each
rank's generator state and are resumed from the newest intact one (model/checkpoint.py); the
learning-rate schedule is stepped once per optimizer step here and saved as JSON; curves go to
train_log.jsonl and the trackers (model/tracking.py).
"""
from __future__ import annotations

import contextlib
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


class OutputDirInUse(RuntimeError):
    """A fresh start asked for in a folder that holds an earlier run's checkpoints or model."""


@dataclass
class RunSettings:
    output_dir: Path  # checkpoints/, train_log.jsonl, tensorboard/ (and the final folder, if inside)
    total_steps: int  # may be set after TrainingRun(), before start() (fine-tuning knows it once its data is read)
    mixed_precision: str = "auto"  # "auto": bf16 on CUDA, no on CPU; or no | bf16 | fp16
    max_grad_norm: float = 1.0  # 0: no clipping
    checkpoint_every: int = 100  # optimizer steps; 0: none
    keep_checkpoints: int = 2
    log_every: int = 10
    num_threads: int | None = None
    report_to: str | list = "tensorboard"
    find_unused_parameters: bool = False  # DDP: parameters that get no gradient on some steps
    project: str = "wenzhi"  # the trackers' project name
    final_dir: str | None = "model"  # the final model's folder inside output_dir (None: elsewhere)
    desc: str = "train"  # the progress bar's label


def adamw(model, lr: float, weight_decay: float = 0.01, betas=(0.9, 0.999), eps: float = 1e-8,
          decay_norms_and_biases: bool = True):
    """AdamW over the trainable parameters. `decay_norms_and_biases=False` leaves LayerNorm
    weights and biases undecayed (BERT's recipe, the pretrainer's).

    The fused implementation where every parameter allows it (floating point, on CPU or CUDA), as
    the Hugging Face Trainer's default optimizer (`adamw_torch_fused`) is: one kernel over all
    parameters instead of the loop of small ops per parameter that PyTorch otherwise runs on CPU
    (`bench/pretrain_throughput.py --levers`: 1.01-1.12x the small model's training tokens per
    CPU-second on one core; the same update within rounding, tests/model/test_model_training.py)."""
    import torch

    groups = parameter_groups(model, weight_decay, decay_norms_and_biases)
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, fused=fused or None)


def parameter_groups(model, weight_decay: float, decay_norms_and_biases: bool = False) -> list:
    """The trainable parameters as optimizer groups: one decayed group, or BERT's two (no decay on
    LayerNorm weights and biases)."""
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if decay_norms_and_biases:
        return [{"params": [p for _, p in trainable], "weight_decay": weight_decay}]
    decay = [p for n, p in trainable if not (p.ndim < 2 or "norm" in n)]
    no_decay = [p for n, p in trainable if p.ndim < 2 or "norm" in n]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_schedule(name: str, optimizer, warmup_steps: int, total_steps: int):
    """The learning-rate multiplier per optimizer step: a transformers schedule by name (`linear`,
    `cosine`, `constant_with_warmup`, ...), or `linear_nonzero`, fine-tuning's: step s (from 0) trains at
    min((s + 1) / W, (T - s) / (T - W)), so the first step is not spent at learning rate 0.
    (Written here because no library ships this shape; fine-tuning has always used it, and the
    recorded fine-tunes must stay reproducible.)"""
    import torch

    if name == "linear_nonzero":
        warm = max(1, warmup_steps)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(
            (s + 1) / warm, max(0.0, (total_steps - s) / max(1, total_steps - warm))))
    from transformers import get_scheduler

    return get_scheduler(name, optimizer, num_warmup_steps=warmup_steps, num_training_steps=total_steps)


def _is_main_env() -> bool:
    return os.environ.get("RANK", "0") == "0"


class TrainingRun:
    """One training run's accelerator, output folder, checkpoints, log and progress bar."""

    def __init__(self, settings: RunSettings, resume: bool = True, overwrite: bool = False, show_progress: bool = True):
        import torch

        from wenzhi.model.checkpoint import complete_checkpoints
        from wenzhi.model.distributed import make_accelerator
        from wenzhi.model.tracking import RunLog, available_trackers, parse_report_to

        self.settings, self.resuming = settings, resume
        self.mixed_precision = settings.mixed_precision
        if self.mixed_precision == "auto":
            self.mixed_precision = "bf16" if torch.cuda.is_available() else "no"
        self.out = out = Path(settings.output_dir)
        self.ckpt_root = out / "checkpoints"
        final = out / settings.final_dir if settings.final_dir else None
        # Trackers whose package is missing are named (once, by the main process) and left out.
        self.trackers = available_trackers(parse_report_to(settings.report_to),
                                           warn=print if _is_main_env() else lambda m: None)
        self.accelerator = accelerator = make_accelerator(self.mixed_precision, out, self.trackers,
                                                          find_unused_parameters=settings.find_unused_parameters)
        if settings.num_threads:  # after the Accelerator: a multi-CPU launch sets its own thread count
            torch.set_num_threads(settings.num_threads)
        self.world, self.rank = accelerator.num_processes, accelerator.process_index
        self.is_main = accelerator.is_main_process
        self.device = accelerator.device
        if not resume and (complete_checkpoints(self.ckpt_root) or (final and final.exists())) and not overwrite:
            raise OutputDirInUse(f"{out} holds an earlier run (checkpoints/ or {settings.final_dir}/): resume it "
                                 "(leave out --no-resume), choose another --output, or add --overwrite to delete it")
        accelerator.wait_for_everyone()
        if self.is_main:
            out.mkdir(parents=True, exist_ok=True)
            if not resume:  # a fresh start that was allowed: no stale checkpoints, model, curves or log lines
                for stale in (self.ckpt_root, final, out / "tensorboard"):
                    if stale:
                        shutil.rmtree(stale, ignore_errors=True)
                (out / "train_log.jsonl").unlink(missing_ok=True)
            for partial in self.ckpt_root.glob(".tmp-step-*"):  # left by a killed run; never complete
                shutil.rmtree(partial, ignore_errors=True)
        accelerator.wait_for_everyone()
        self.log_file = RunLog(accelerator, out, self.trackers, settings.project)
        self.step = 0
        self.scheduler = None
        self.resumed_from, self.skipped = None, []
        self.show_progress = show_progress
        self.bar = None

    @property
    def deepspeed(self) -> bool:
        return self.accelerator.distributed_type.name == "DEEPSPEED"

    def prepare(self, model, optimizer, scheduler, reseed: int | None = None):
        """Hand model and optimizer to accelerate; the scheduler stays here (stepped once per optimizer
        step and saved as JSON, where accelerate would step it once per process and pickle it).
        `reseed`: seed each rank's generator with seed + rank from here on (dropout then differs
        across ranks, as it should: the model was built from one seed on every rank)."""
        from accelerate.utils import set_seed

        self.scheduler = scheduler
        model, optimizer = self.accelerator.prepare(model, optimizer)
        if reseed is not None:
            set_seed(reseed, device_specific=True)
        self.model, self.optimizer = model, optimizer
        return model, optimizer

    def resume(self) -> dict | None:
        """With `resume`, load the newest intact checkpoint (model, optimizer, generators, schedule)
        and return its saved state; None when there is nothing to resume; an error when every
        checkpoint there is unusable (a silent fresh start would throw the run away)."""
        from wenzhi.model.checkpoint import CheckpointError, complete_checkpoints, resume_newest_intact

        if not self.resuming:
            return None

        def warn(message):
            if self.is_main:
                print(f"warning: {message}", flush=True)

        found = complete_checkpoints(self.ckpt_root)
        path, saved, self.skipped = resume_newest_intact(self.accelerator, self.ckpt_root, warn)
        if path is None and found:
            raise CheckpointError(f"no usable checkpoint in {self.ckpt_root}: " + "; ".join(self.skipped)
                                  + " (start over with --no-resume --overwrite, or into another --output)")
        if path is None:
            return None
        self.resumed_from = str(path)
        self.step = int(saved["step"])
        self.scheduler.load_state_dict(saved["scheduler"])
        return saved

    def start(self, config: dict, **fields) -> None:
        """The trackers' run and the log's `start` record; the progress bar."""
        from tqdm.auto import tqdm

        self.log_file.start(config)
        self.log({"event": "start", "resumed_from": self.resumed_from, "skipped_checkpoints": self.skipped,
                  "step": self.step, "total_steps": self.settings.total_steps, "device": str(self.device),
                  "processes": self.world, "distributed": self.accelerator.distributed_type.name,
                  "mixed_precision": self.mixed_precision, "report_to": self.trackers,
                  "parameters": sum(p.numel() for p in self.model.parameters())} | fields | {"config": config})
        self.bar = tqdm(total=self.settings.total_steps, initial=self.step, dynamic_ncols=True, unit="step",
                        desc=self.settings.desc, disable=not (self.show_progress and self.is_main))
        self.started = time.perf_counter()
        self.start_step = self.step

    def micro_batch(self, model, micro: int, accum: int):
        """The context of micro-batch `micro` of `accum`: gradients are synchronised across ranks on
        the last one only (DeepSpeed marks the boundary itself through accumulate())."""
        if self.deepspeed:
            return self.accelerator.accumulate(model)
        return contextlib.nullcontext() if micro == accum - 1 else self.accelerator.no_sync(model)

    def backward(self, loss, accum: int = 1) -> None:
        self.accelerator.backward(loss * accum if self.deepspeed else loss)  # DeepSpeed divides by accum

    def reduce_sum(self, values: list[float]) -> list[float]:
        """The sum over ranks of per-rank figures the host knows (float64); one process: the figures,
        without a round trip through the device (which would wait for its queued work)."""
        import torch

        if self.world == 1:
            return [float(v) for v in values]
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        return self.accelerator.reduce(tensor, reduction="sum").tolist()

    def reduce_sum_on_device(self, tensor):
        """The sum over ranks of a tensor the model computed, left on the device."""
        return tensor if self.world == 1 else self.accelerator.reduce(tensor, reduction="sum")

    def optimizer_step(self, model) -> None:
        if self.settings.max_grad_norm:
            self.accelerator.clip_grad_norm_(model.parameters(), self.settings.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    @property
    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def end_step(self, state: dict | Callable[[], dict] | None = None) -> None:
        """Count the optimizer step; every `checkpoint_every` steps (not the last), an atomic checkpoint
        holding the step, the schedule and the caller's JSON `state` (or what `state()` returns: a
        callable is asked only when a checkpoint is written, so figures that wait for the device
        need not be read on the other steps)."""
        from wenzhi.model.checkpoint import save_checkpoint

        self.step += 1
        self.bar.update(1)
        every = self.settings.checkpoint_every
        if every and self.step % every == 0 and self.step < self.settings.total_steps:
            state = state() if callable(state) else state
            path = save_checkpoint(self.accelerator, self.ckpt_root, self.step, self.settings.keep_checkpoints,
                                   (state or {}) | {"step": self.step, "scheduler": self.scheduler.state_dict()})
            self.log({"event": "checkpoint", "step": self.step, "path": str(path)})

    def log_due(self) -> bool:
        return self.step % self.settings.log_every == 0 or self.step == self.settings.total_steps

    def log(self, record: dict) -> None:
        """A line of train_log.jsonl (main process), and its numbers to the trackers."""
        self.log_file.log(record)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def final_state_dict(self, model) -> dict:
        """The full weights; every rank calls it (it gathers FSDP / ZeRO-3 shards)."""
        return self.accelerator.get_state_dict(model)

    def finish(self, summary: dict) -> dict:
        """After the final save: the `done` record, trackers closed; the summary returned."""
        self.bar.close()
        self.accelerator.wait_for_everyone()
        self.log(summary)
        self.log_file.finish()
        return summary


def train_mean_loss(run: TrainingRun, model, micro_loss, micro_count, micro_rows, accum: int = 1,
                    state: dict | None = None, keep: dict | None = None) -> list[float]:
    """The step loop for a loss that is a mean over counted terms (a batch's questions, its labelled
    tokens): `micro_rows(step, micro) -> rows` of this rank, `micro_count(rows) -> terms`,
    `micro_loss(rows) -> mean loss tensor` (through `model`, the prepared one). Each step's loss is
    the mean over the terms of all its micro-batches on all ranks: each micro-batch's mean is
    weighted by its share of the global count (times the world size, since DDP averages gradients
    over ranks), a factor of exactly 1 for one micro-batch on one process. Returns every step's
    loss, resumed ones included (they travel in the checkpoint's state as `losses`, beside `keep`).

    The steps' losses stay on the device (float64, summed in micro-batch order as the host would)
    until a log line or a checkpoint needs them: reading one waits for all the device's queued
    work, which on a GPU would stall every micro-batch."""
    import torch

    losses = list((state or {}).get("losses", []))
    total = run.settings.total_steps
    pending: list[tuple[torch.Tensor, float]] = []  # per unread step: its loss sum (device), its global count
    window: list[float] = []
    examples = 0

    def settled() -> list[float]:
        """Every step's loss as a float: the pending ones read in one wait for the device."""
        if pending:
            sums = torch.stack([s for s, _ in pending]).tolist()
            read = [s / count for s, (_, count) in zip(sums, pending)]
            losses.extend(read)
            window.extend(read)
            pending.clear()
        return losses

    while run.step < total:
        rows = [micro_rows(run.step, m) for m in range(accum)]
        counts = [micro_count(r) for r in rows]
        global_count = max(run.reduce_sum([sum(counts)])[0], 1.0)  # (one process: no collective)
        loss_sum = None
        for m, (r, count) in enumerate(zip(rows, counts)):
            with run.micro_batch(model, m, accum):
                loss = micro_loss(r)
                weight = count * run.world / global_count
                run.backward(loss if weight == 1 else loss * weight, accum)
            term = loss.detach().double() * count
            loss_sum = term if loss_sum is None else loss_sum + term
            examples += len(r)
        run.optimizer_step(model)
        pending.append((run.reduce_sum_on_device(loss_sum), global_count))
        run.end_step(lambda: (keep or {}) | {"losses": settled()})
        if run.log_due():
            settled()
            elapsed = run.elapsed()
            run.log({"step": run.step, "loss": sum(window) / len(window), "lr": run.lr,
                     "examples_per_s": examples * run.world / max(elapsed, 1e-9), "elapsed_s": elapsed})
            run.bar.set_postfix(loss=f"{sum(window) / len(window):.4f}")
            window.clear()
    return settled()


def first_last_loss(losses: list[float]) -> dict:
    """Mean loss over the first and the last k steps (k = a fifth of them, 1 to 50)."""
    k = max(1, min(50, len(losses) // 5))
    return {"first_loss": round(sum(losses[:k]) / k, 4), "last_loss": round(sum(losses[-k:]) / k, 4)}


def steps_for(items: int, epochs: float, batch_size: int, max_steps: int | None = None) -> int:
    steps = max(1, math.ceil(items * epochs / batch_size))
    return min(steps, max_steps) if max_steps else steps
