"""What every fine-tuning task shares: the training questions, the model a task starts from, the
training loop, and the atomic save of `OUT/<task>/`. A task module (ner.py, sim.py, gen.py) holds
only its data, batches and loss: `setup(cfg, tokenizer, examples, store, report)` returns
(model, number of training items, step function `indices -> loss`)."""
from __future__ import annotations

import importlib
import json
import logging
import math
import random
import time
from dataclasses import asdict
from pathlib import Path

from wenzhi.qa_service.finetune.config import SIZES, TASKS, FinetuneConfig
from wenzhi.qa_service.heads import load_tokenizer_for, resolve_checkpoint, save_vocab

log = logging.getLogger(__name__)


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
    import torch

    torch.manual_seed(cfg.seed)
    return cls(config)


def _batches(n: int, batch_size: int, epochs: float, seed: int):
    rng = random.Random(seed)
    total = max(1, math.ceil(n * epochs / batch_size))
    order: list[int] = []
    for _ in range(total):
        if len(order) < batch_size:
            fresh = list(range(n))
            rng.shuffle(fresh)
            order.extend(fresh)
        yield order[:batch_size]
        del order[:batch_size]


def _train(cfg: FinetuneConfig, model, n_items: int, step_fn) -> dict:
    """AdamW with linear warmup/decay over `step_fn(indices) -> loss`; returns loss figures."""
    import torch
    from tqdm import tqdm

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.freeze_universal:
        model.freeze_universal(True)
    params = [p for p in model.parameters() if p.requires_grad]
    steps = max(1, math.ceil(n_items * cfg.epochs / cfg.batch_size))
    if cfg.max_steps:
        steps = min(steps, cfg.max_steps)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    warm = max(1, int(steps * cfg.warmup))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (steps - s) / max(1, steps - warm))))
    model.train()
    losses = []
    bar = tqdm(zip(range(steps), _batches(n_items, cfg.batch_size, cfg.epochs + 1, cfg.seed)),
               total=steps, desc=f"finetune {cfg.task}", unit="step")
    for step, idx in bar:
        loss = step_fn(idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 20 == 0:
            bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.4f}")
    model.eval()
    k = max(1, min(50, len(losses) // 5))
    return {"steps": steps, "first_loss": round(sum(losses[:k]) / k, 4),
            "last_loss": round(sum(losses[-k:]) / k, 4)}


def finetune(cfg: FinetuneConfig) -> dict:
    import torch
    from wenzhi.kg import TripleStore

    if cfg.task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, not {cfg.task!r}")
    task = importlib.import_module(f"wenzhi.qa_service.finetune.{cfg.task}")
    started = time.time()
    torch.manual_seed(cfg.seed)
    tokenizer = load_tokenizer_for(resolve_checkpoint(cfg.init) if cfg.init else None)
    examples = training_questions(cfg)
    if not examples:
        raise ValueError("no training questions")
    store = TripleStore(cfg.kb)
    report: dict = {"task": cfg.task, "questions": len(examples)}
    model, n_items, step = task.setup(cfg, tokenizer, examples, store, report)
    report.update(_train(cfg, model, n_items, step))
    from wenzhi.model.tokenizer import save_tokenizer
    from wenzhi.retrieval.atomic import atomic_directory

    with atomic_directory(Path(cfg.out) / cfg.task) as tmp:  # an interrupted run keeps the previous head
        model.save_pretrained(tmp)
        save_tokenizer(tokenizer, tmp, model.config.max_position_embeddings)
        save_vocab(tokenizer, Path(cfg.out))
        report["train_seconds"] = round(time.time() - started, 1)
        report["config"] = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()
                            if k not in ("questions",)} | {"questions": [str(q) for q in cfg.questions]}
        (tmp / "finetune.json").write_text(json.dumps(report, ensure_ascii=False, indent=1), encoding="utf-8")
        if hasattr(task, "after_save"):  # what a task builds beside its weights (GEN: the trie)
            task.after_save(cfg, tmp, tokenizer, store, report)
    store.close()
    log.info("finetune %s: %s", cfg.task, json.dumps({k: v for k, v in report.items() if k != "config"}, ensure_ascii=False))
    return report
