"""`wenzhi finetune ner|sim|gen`: fine-tune the encoder's heads on KBQA questions.

Each task starts from a `wenzhi pretrain` checkpoint (any directory `from_pretrained` reads) or,
without one, from a fresh tiny config (tests). The universal module is frozen by default (ERNIE
3.0's fine-tuning), so the heads fine-tuned from one checkpoint share it bit for bit and the
service runs it once per question for all of them. Output: `OUT/<task>/` (weights, config,
vocab.txt, finetune.json with data coverage, losses and wall time).
"""
from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from wenzhi.model.conventions import IGNORE_INDEX

log = logging.getLogger(__name__)

TASKS = ("ner", "sim", "gen")
NER_LABELS = 3  # O, B, I


@dataclass
class FinetuneConfig:
    task: str
    out: Path
    kb: Path
    questions: list[Path]
    init: Path | None = None  # pretrain checkpoint; None = fresh tiny model
    holdout_nlpcc: float = 0.2  # share of NLPCC train never trained on (kept for evaluation)
    limit: int | None = None
    epochs: float = 1.0
    max_steps: int | None = None
    batch_size: int = 32
    lr: float = 5e-4
    warmup: float = 0.06
    negatives: int = 5
    freeze_universal: bool = True
    seed: int = 0
    threads: int | None = None
    size: str = "tiny"  # fresh model size when there is no `init`: tiny (tests) or small
    interaction: str = "late"  # SIM: pair_interaction of the head (see model.modeling.WenzhiConfig)


SIZES = {
    "tiny": dict(hidden_size=64, num_universal_layers=1, num_nlu_layers=1, num_nlg_layers=1,
                 num_attention_heads=2, intermediate_size=128),
    "small": dict(hidden_size=128, num_universal_layers=2, num_nlu_layers=1, num_nlg_layers=1,
                  num_attention_heads=2, intermediate_size=512),
}


def resolve_checkpoint(path: Path) -> Path:
    """A directory with config.json, or the newest sub-directory of a run that has one."""
    path = Path(path)
    if (path / "config.json").exists():
        return path
    found = sorted((p for p in path.glob("**/config.json")), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"no model checkpoint (config.json) under {path}")
    return found[-1].parent


def load_tokenizer_for(path: Path | None):
    """The checkpoint's own tokenizer (model/pretrained.py); the BERT Chinese vocabulary without one."""
    from wenzhi.model.pretrained import checkpoint_tokenizer
    from wenzhi.model.tokenizer import load_tokenizer

    return checkpoint_tokenizer(path) if path is not None else load_tokenizer(None)


def save_vocab(tokenizer, out: Path) -> None:
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    (out / "vocab.txt").write_text("".join(f"{tok}\n" for tok, _ in vocab), encoding="utf-8")


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


def _model(cfg: FinetuneConfig, tokenizer, cls, **extra):
    from wenzhi.model.modeling import WenzhiConfig

    if cfg.init is not None:  # a wenzhi checkpoint (e.g. NER from SIM: all but the classifier) or a BERT/ERNIE folder
        from wenzhi.model.pretrained import load_for_init

        vocabulary = [t for t, _ in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])]
        model, _ = load_for_init(cls, cfg.init, vocabulary=vocabulary, vocabulary_source="the task's tokenizer", **extra)
        if extra.get("pair_interaction") == "late" and not model.config.position_independent_segments:
            raise ValueError(f"{cfg.init}: a late-interaction SIM head caches relation states, which needs rotary "
                             "positions and pre-LN blocks; this checkpoint is BERT-style: use --interaction full")
        return model
    config = WenzhiConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                          cls_token_id=tokenizer.cls_token_id, sep_token_id=tokenizer.sep_token_id,
                          mask_token_id=tokenizer.mask_token_id, **SIZES[cfg.size], **extra)
    import torch

    torch.manual_seed(cfg.seed)
    return cls(config)


def _pad(rows, value):
    import torch

    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.as_tensor(r, dtype=torch.long)
    return out


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

    from wenzhi.qa_service import data

    if cfg.task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, not {cfg.task!r}")
    started = time.time()
    torch.manual_seed(cfg.seed)
    tokenizer = load_tokenizer_for(resolve_checkpoint(cfg.init) if cfg.init else None)
    examples = training_questions(cfg)
    if not examples:
        raise ValueError("no training questions")
    store = TripleStore(cfg.kb)
    report: dict = {"task": cfg.task, "questions": len(examples)}
    pad = tokenizer.pad_token_id
    if cfg.task == "ner":
        from wenzhi.model.modeling import WenzhiForTokenClassification

        items, coverage = data.ner_examples(examples, store)
        report["coverage"] = coverage
        feats = data.ner_features(tokenizer, items)
        model = _model(cfg, tokenizer, WenzhiForTokenClassification, num_labels=NER_LABELS)

        def step(idx):
            ids = _pad([feats["input_ids"][i] for i in idx], pad)
            labels = _pad([feats["labels"][i] for i in idx], IGNORE_INDEX)
            return model(ids, attention_mask=(ids != pad).long(), labels=labels).loss

        report.update(_train(cfg, model, len(items), step))
    elif cfg.task == "sim":
        from wenzhi.model.modeling import WenzhiForSequencePairClassification

        from wenzhi.qa_service.packing import packed_batch, relation_segments, sim_logits, universal_packed

        pairs = data.sim_pairs(examples, store, negatives=cfg.negatives, seed=cfg.seed)
        groups: list[tuple[str, list[str], list[int]]] = []
        for q, rel, label in pairs:  # one row per question: gold relation + its negatives
            if label == 1:
                groups.append((q, [], []))
            groups[-1][1].append(rel)
            groups[-1][2].append(label)
        rng = random.Random(cfg.seed)
        for _, rels, labels in groups:  # the gold relation must not always be the first segment
            order = list(range(len(rels)))
            rng.shuffle(order)
            rels[:] = [rels[i] for i in order]
            labels[:] = [labels[i] for i in order]
        q_ids = tokenizer([g[0] for g in groups], max_length=48, truncation=True)["input_ids"]
        segs = [relation_segments(tokenizer, g[1]) for g in groups]
        report["pairs"] = len(pairs)
        model = _model(cfg, tokenizer, WenzhiForSequencePairClassification, num_labels=1,
                       pair_interaction=cfg.interaction)

        def step(idx):
            batch = packed_batch([q_ids[i] for i in idx], [segs[i] for i in idx], pad)
            hidden = model.wenzhi.nlu(universal_packed(model, batch))
            logits = sim_logits(model, hidden, batch.segment_starts)
            labels = torch.as_tensor([l for i in idx for l in groups[i][2]], dtype=torch.float)
            return torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), labels)

        report.update(_train(cfg, model, len(groups), step))
    else:
        from wenzhi.model.modeling import WenzhiForPrefixLM

        feats = data.gen_features(tokenizer, examples)
        report["dropped_too_long"] = feats["dropped_too_long"]
        prefixes, targets = feats["prefix_ids"], feats["target_ids"]
        model = _model(cfg, tokenizer, WenzhiForPrefixLM)

        def step(idx):
            rows = [prefixes[i] + targets[i] for i in idx]
            ids = _pad(rows, pad)
            labels = _pad([[IGNORE_INDEX] * len(prefixes[i]) + targets[i] for i in idx], IGNORE_INDEX)
            prefix_lengths = torch.as_tensor([len(prefixes[i]) for i in idx])
            return model(ids, prefix_lengths, attention_mask=(ids != pad).long(), labels=labels).loss

        report.update(_train(cfg, model, len(prefixes), step))
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
        if cfg.task == "gen":  # the trie is the GEN head's vocabulary of answers: build it with it
            from wenzhi.qa_service.pipeline import ensure_trie

            report["trie"] = ensure_trie(tmp, store, tokenizer).meta
    store.close()
    log.info("finetune %s: %s", cfg.task, json.dumps({k: v for k, v in report.items() if k != "config"}, ensure_ascii=False))
    return report
