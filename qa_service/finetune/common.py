"""What every fine-tuning task shares: the training questions, the model a task starts from, the
run on the training toolkit (model/training_loop.py: accelerate, checkpoints and exact resume,
train_log.jsonl, the atomic final save), and the layout of `OUT/<task>/`. A task module (ner.py,
sim.py, gen.py) holds only its data, batches and loss: `setup(cfg, tokenizer, examples, store,
report)` returns a `Task`.

A run's checkpoints, log and curves go to `OUT/training/<task>/`; the head to `OUT/<task>/`,
swapped into place whole. A finished run deletes its checkpoints (the head is its result), so
running the same command again trains afresh; a killed one resumes from its newest intact
checkpoint when run again with the same settings (`--no-resume --overwrite` starts over).
"""
from __future__ import annotations

import importlib
import json
import logging
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from wenzhi.qa_service.finetune.config import SIZES, TASKS, FinetuneConfig
from wenzhi.qa_service.heads import load_tokenizer_for, resolve_checkpoint, save_vocab

log = logging.getLogger(__name__)


@dataclass
class Task:
    """What a task module hands to the run."""

    model: torch.nn.Module
    items: int  # training items (questions, or NER's questions whose mention was found)
    loss: Callable[[list[int]], torch.Tensor]  # the mean loss over these items
    terms: Callable[[list[int]], int] = len  # how many terms that mean averages (weights it across ranks)


class TaskLoss(torch.nn.Module):
    """A task's loss as one module, so that accelerate's wrappers (DDP's gradient synchronisation,
    mixed-precision autocast) see a single forward however the task reaches into its model (the
    SIM pair head runs its layers one by one); Lightning wraps its training_step the same way."""

    def __init__(self, model: torch.nn.Module, loss: Callable):
        super().__init__()
        self.model = model
        self.loss = loss

    def forward(self, rows: list[int]) -> torch.Tensor:
        return self.loss(rows)


def training_questions(cfg: FinetuneConfig):
    """Examples from each question file; NLPCC's held-out share is removed here, always the same."""
    from wenzhi.qa_service.data import holdout_split, read_qa

    out = []
    for path in cfg.questions:
        rows = read_qa(path)
        if "nlpcc" in str(path).lower() and cfg.holdout_nlpcc > 0:
            rows, _ = holdout_split(rows, cfg.holdout_nlpcc, seed=0)
        out.extend(rows)
    random.Random(cfg.seed).shuffle(out)
    return out[: cfg.limit] if cfg.limit else out


def build_model(cfg: FinetuneConfig, tokenizer, cls, **extra):
    """The task's model `cls`: loaded from `cfg.init` (a wenzhi checkpoint, e.g. NER from SIM: all
    but the classifier, or a BERT/ERNIE folder), else fresh at `cfg.size`; `extra` goes to its config."""
    from wenzhi.model.modeling import WenzhiConfig

    if cfg.nlu_layers is not None:
        extra["num_nlu_layers"] = cfg.nlu_layers
    if cfg.dropout is not None:
        extra |= {"hidden_dropout_prob": cfg.dropout, "attention_probs_dropout_prob": cfg.dropout}
    if cfg.init is not None:
        from wenzhi.model.pretrained import load_for_init

        vocabulary = [t for t, _ in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])]
        model, _ = load_for_init(cls, cfg.init, vocabulary=vocabulary, vocabulary_source="the task's tokenizer", **extra)
        if extra.get("pair_interaction") == "late" and not model.config.position_independent_segments:
            raise ValueError(f"{cfg.init}: a late-interaction SIM head caches relation states, which needs rotary "
                             "positions and pre-LN blocks; this checkpoint is BERT-style: use --interaction full")
        for key, value in extra.items():  # keys the config class does not declare (the GEN's copy_source)
            setattr(model.config, key, value)
        return model
    config = WenzhiConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                          cls_token_id=tokenizer.cls_token_id, sep_token_id=tokenizer.sep_token_id,
                          mask_token_id=tokenizer.mask_token_id, **SIZES[cfg.size], **extra)
    torch.manual_seed(cfg.seed)
    return cls(config)


class QuestionOrder:
    """Which training items global batch `step` holds: consecutive slices of one seeded shuffle of
    the items after another (refilled when fewer than a batch remain), a pure function of the step,
    so a resumed run continues exactly where the killed one was (replayed from the start: cheap)."""

    def __init__(self, n: int, global_batch: int, seed: int):
        self.n, self.global_batch, self.seed = n, global_batch, seed
        self._restart()

    def _restart(self):
        self._stream, self._next, self._current = self._batches(), 0, None

    def _batches(self):
        rng = random.Random(self.seed)
        order: list[int] = []
        while True:
            if len(order) < self.global_batch:
                fresh = list(range(self.n))
                rng.shuffle(fresh)
                order.extend(fresh)
            yield order[: self.global_batch]
            del order[: self.global_batch]

    def batch(self, step: int) -> list[int]:
        if step < self._next - 1:
            self._restart()
        while self._next <= step:
            self._current, self._next = next(self._stream), self._next + 1
        return self._current


def _record(cfg: FinetuneConfig) -> dict:
    return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()
            if k not in ("questions",)} | {"questions": [str(q) for q in cfg.questions]}


# settings a resumed run may change: they do not change what is trained
RESUMABLE_CHANGES = ("threads", "log_every", "report_to")


def finetune(cfg: FinetuneConfig, resume: bool = True, overwrite: bool = False, show_progress: bool = True) -> dict:
    """Fine-tune `cfg.task`'s head into `OUT/<task>/`; returns the report saved there as finetune.json."""
    if cfg.task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, not {cfg.task!r}")
    threads = torch.get_num_threads()
    try:
        return _finetune(cfg, resume, overwrite, show_progress)
    finally:  # callers in the same process (tests) keep their own thread setting
        torch.set_num_threads(threads)


def _finetune(cfg: FinetuneConfig, resume: bool, overwrite: bool, show_progress: bool) -> dict:
    from wenzhi.kg import TripleStore
    from wenzhi.model.checkpoint import save_model_folder
    from wenzhi.model.training_loop import (OutputDirInUse, RunSettings, TrainingRun, adamw, first_last_loss,
                                            lr_schedule, steps_for, train_mean_loss)

    module = importlib.import_module(f"wenzhi.qa_service.finetune.{cfg.task}")
    started = time.time()
    out = Path(cfg.out)
    settings = RunSettings(output_dir=out / "training" / cfg.task, total_steps=0, mixed_precision=cfg.mixed_precision,
                           max_grad_norm=1.0, checkpoint_every=cfg.checkpoint_every, keep_checkpoints=2,
                           log_every=cfg.log_every, num_threads=cfg.threads, report_to=cfg.report_to,
                           find_unused_parameters=True, project=f"finetune-{cfg.task}", final_dir=None,
                           desc=f"finetune {cfg.task}")
    run = TrainingRun(settings, resume=resume, overwrite=overwrite, show_progress=show_progress)
    if run.accelerator.distributed_type.name in ("DEEPSPEED", "FSDP"):
        from wenzhi.model.distributed import LaunchError

        raise LaunchError("fine-tuning runs on one process or as a DDP job (torchrun, accelerate launch "
                          "--multi_gpu); its heads are small enough not to need DeepSpeed or FSDP sharding")
    torch.manual_seed(cfg.seed)
    tokenizer = load_tokenizer_for(resolve_checkpoint(cfg.init) if cfg.init else None)
    examples = training_questions(cfg)
    if not examples:
        raise ValueError("no training questions")
    store = TripleStore(cfg.kb)
    report: dict = {"task": cfg.task, "questions": len(examples)}
    task = module.setup(cfg, tokenizer, examples, store, report)
    model = task.model
    if cfg.freeze_universal:
        model.freeze_universal(True)

    accum, bs = cfg.gradient_accumulation_steps, cfg.batch_size
    global_batch = bs * run.world * accum
    if global_batch > bs and task.items < global_batch:
        raise ValueError(f"{task.items} training items cannot fill a global batch of {global_batch} "
                         f"({run.world} processes x {accum} micro-batches x batch_size {bs})")
    settings.total_steps = steps = steps_for(task.items, cfg.epochs, global_batch, cfg.max_steps)
    optimizer = adamw(model, cfg.lr, weight_decay=0.01)
    # the shape fine-tuning has always had (model/training_loop.py), so earlier fine-tunes stay reproducible
    scheduler = lr_schedule("linear_nonzero", optimizer, int(steps * cfg.warmup), steps)
    # One process keeps the generator where model construction left it (as fine-tuning always
    # did); N processes draw dropout per rank.
    loss_module, optimizer = run.prepare(TaskLoss(model, task.loss), optimizer, scheduler,
                                         reseed=cfg.seed if run.world > 1 else None)
    saved = run.resume()
    record = _record(cfg)
    if saved is not None:
        changed = sorted(k for k in set(record) | set(saved.get("config", {}))
                         if k not in RESUMABLE_CHANGES and record.get(k) != saved["config"].get(k))
        if changed:
            raise OutputDirInUse(f"{settings.output_dir} holds an interrupted fine-tune with other settings "
                                 f"({', '.join(changed)}): run it again with the same ones to resume it, or start "
                                 "over with --no-resume --overwrite")
    run.start(record, task=cfg.task, items=task.items)
    order = QuestionOrder(task.items, global_batch, cfg.seed)

    def micro_rows(step: int, micro: int) -> list[int]:
        k = micro * run.world + run.rank
        return order.batch(step)[k * bs : (k + 1) * bs]

    loss_module.train()
    losses = train_mean_loss(run, loss_module, loss_module, task.terms, micro_rows, accum, state=saved,
                             keep={"config": record})
    model.eval()
    report.update({"steps": steps} | first_last_loss(losses))
    if run.world > 1 or run.mixed_precision != "no":
        report.update(processes=run.world, mixed_precision=run.mixed_precision)
    if run.resumed_from:
        report["resumed_from"] = run.resumed_from

    def write_report(folder: Path) -> None:
        save_vocab(tokenizer, out)
        report["train_seconds"] = round(time.time() - started, 1)
        report["config"] = record
        if hasattr(module, "after_save"):  # what a task builds beside its weights (GEN: the trie, SIM: the prior)
            module.after_save(cfg, folder, tokenizer, store, report)
        (folder / "finetune.json").write_text(json.dumps(report, ensure_ascii=False, indent=1), encoding="utf-8")

    if run.is_main:  # an interrupted save keeps the previous head
        save_model_folder(model, out / cfg.task, tokenizer, extra=write_report)
        shutil.rmtree(run.ckpt_root, ignore_errors=True)  # finished: the head is the result
    store.close()
    run.finish({"event": "done", "steps": run.step, "steps_this_run": run.step - run.start_step,
                "resumed_from": run.resumed_from, "processes": run.world, "head": str(out / cfg.task)}
               | first_last_loss(losses))
    log.info("finetune %s: %s", cfg.task, json.dumps({k: v for k, v in report.items() if k != "config"}, ensure_ascii=False))
    return report
