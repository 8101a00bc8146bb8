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
from wenzhi.qa_service.heads import load_tokenizer_for, pad_rows, resolve_checkpoint, save_vocab

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
    negatives: int = 15
    freeze_universal: bool = True
    seed: int = 0
    threads: int | None = None
    size: str = "tiny"  # fresh model size when there is no `init`: tiny (tests) or small
    interaction: str = "match"  # SIM: "match" (model.relation_matching), or a pair head's pair_interaction
    sim_loss: str = "listwise"  # SIM: softmax over each question's candidates, or per-pair BCE ("pointwise")
    relation_prior: bool = True  # SIM (match): fit the learned relation prior (qa_service/relation_prior.py)
    nlu_layers: int | None = None  # NLU layers of the head (None: the checkpoint's; added ones start fresh)
    copy_source: bool = True  # GEN: a pointer over the question's tokens (model.copying.CopyHead)
    target_layout: str = "relation-first"  # GEN: how a (head, relation) is spelt (qa_service.trie.LAYOUTS)


SIZES = {
    "tiny": dict(hidden_size=64, num_universal_layers=1, num_nlu_layers=1, num_nlg_layers=1,
                 num_attention_heads=2, intermediate_size=128),
    "small": dict(hidden_size=128, num_universal_layers=2, num_nlu_layers=1, num_nlg_layers=1,
                  num_attention_heads=2, intermediate_size=512),
}


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

    if cfg.nlu_layers is not None:
        extra["num_nlu_layers"] = cfg.nlu_layers
    if cfg.init is not None:  # a wenzhi checkpoint (e.g. NER from SIM: all but the classifier) or a BERT/ERNIE folder
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


def _ner_task(cfg: FinetuneConfig, tokenizer, examples, store, report: dict):
    """(model, number of training items, step function) of the NER head."""
    from wenzhi.model.modeling import WenzhiForTokenClassification

    from wenzhi.qa_service import data

    items, coverage = data.ner_examples(examples, store)
    report["coverage"] = coverage
    feats = data.ner_features(tokenizer, items)
    model = _model(cfg, tokenizer, WenzhiForTokenClassification, num_labels=NER_LABELS)
    pad = tokenizer.pad_token_id

    def step(idx):
        ids = pad_rows([feats["input_ids"][i] for i in idx], pad)
        labels = pad_rows([feats["labels"][i] for i in idx], IGNORE_INDEX)
        return model(ids, attention_mask=(ids != pad).long(), labels=labels).loss

    return model, len(items), step


def _sim_task(cfg: FinetuneConfig, tokenizer, examples, store, report: dict):
    """The SIM head: each question with its gold relation among negatives drawn as evaluation draws
    candidates (data.NegativeSampler), softmax cross-entropy over them (or BCE per pair)."""
    import torch

    from wenzhi.qa_service import data
    from wenzhi.qa_service.packing import relation_segments

    groups = data.sim_groups(examples, store, negatives=cfg.negatives, seed=cfg.seed)
    rng = random.Random(cfg.seed)
    for _, rels in groups:  # the gold relation must not always be the first segment
        rng.shuffle(rels)
    gold_at = [rels.index(ex.relation) for ex, (_, rels) in zip(examples, groups)]
    report["candidates_per_question"] = round(sum(len(rels) for _, rels in groups) / max(1, len(groups)), 1)
    pad = tokenizer.pad_token_id
    if cfg.interaction == "match":
        from wenzhi.model.relation_matching import WenzhiForRelationMatching

        enc = tokenizer([g[0] for g in groups], max_length=48, truncation=True, return_offsets_mapping=True)
        # the entity mention is left out of the match, as the pipeline leaves out what NER found
        spans = [data.find_mention(ex.question, data.mention_names(ex.head, store)) for ex in examples]
        keep = [[not (span and s < span[1] and e > span[0]) for s, e in offsets]
                for span, offsets in zip(spans, enc["offset_mapping"])]
        q_ids = enc["input_ids"]
        model = _model(cfg, tokenizer, WenzhiForRelationMatching)

        def step(idx):
            names = list(dict.fromkeys(r for i in idx for r in groups[i][1]))
            slot = {r: j for j, r in enumerate(names)}
            rel_ids = pad_rows(relation_segments(tokenizer, names), pad)
            candidates = pad_rows([[slot[r] for r in groups[i][1]] for i in idx], -1)
            ids = pad_rows([q_ids[i] for i in idx], pad)
            token_mask = pad_rows([keep[i] for i in idx], 0).bool()
            return model(ids, relation_input_ids=rel_ids, candidates=candidates, token_mask=token_mask,
                         labels=torch.as_tensor([gold_at[i] for i in idx])).loss

        return model, len(groups), step

    from wenzhi.model.modeling import WenzhiForSequencePairClassification

    from wenzhi.qa_service.packing import packed_batch, sim_logits, universal_packed

    q_ids = tokenizer([g[0] for g in groups], max_length=48, truncation=True)["input_ids"]
    segs = [relation_segments(tokenizer, g[1]) for g in groups]
    model = _model(cfg, tokenizer, WenzhiForSequencePairClassification, num_labels=1,
                   pair_interaction=cfg.interaction)

    def step(idx):
        batch = packed_batch([q_ids[i] for i in idx], [segs[i] for i in idx], pad)
        hidden = model.wenzhi.nlu(universal_packed(model, batch))
        logits = sim_logits(model, hidden, batch.segment_starts).float()
        sizes = [len(segs[i]) for i in idx]
        owner = torch.repeat_interleave(torch.arange(len(idx)), torch.as_tensor(sizes))
        col = torch.cat([torch.arange(n) for n in sizes])
        gold = torch.as_tensor([gold_at[i] for i in idx])
        if cfg.sim_loss == "pointwise":
            return torch.nn.functional.binary_cross_entropy_with_logits(logits, (col == gold[owner]).float())
        # listwise: softmax cross-entropy of the gold among its own question's candidates
        per_q = logits.new_full((len(idx), max(sizes)), float("-inf"))
        per_q[owner, col] = logits
        return torch.nn.functional.cross_entropy(per_q, gold)

    return model, len(groups), step


def _gen_task(cfg: FinetuneConfig, tokenizer, examples, store, report: dict):
    """The GEN head: `[CLS] question [SEP]` -> the trie key `head [unused1] relation [SEP]`."""
    import torch
    from wenzhi.model.modeling import WenzhiForPrefixLM

    from wenzhi.qa_service import data

    feats = data.gen_features(tokenizer, examples, layout=cfg.target_layout)
    report["dropped_too_long"] = feats["dropped_too_long"]
    prefixes, targets = feats["prefix_ids"], feats["target_ids"]
    # both recorded in the head's config: serving reads them from there
    model = _model(cfg, tokenizer, WenzhiForPrefixLM, copy_source=cfg.copy_source, target_layout=cfg.target_layout)
    pad = tokenizer.pad_token_id

    def step(idx):
        ids = pad_rows([prefixes[i] + targets[i] for i in idx], pad)
        labels = pad_rows([[IGNORE_INDEX] * len(prefixes[i]) + targets[i] for i in idx], IGNORE_INDEX)
        prefix_lengths = torch.as_tensor([len(prefixes[i]) for i in idx])
        return model(ids, prefix_lengths, attention_mask=(ids != pad).long(), labels=labels).loss

    return model, len(prefixes), step


TASK_SETUP = {"ner": _ner_task, "sim": _sim_task, "gen": _gen_task}


def finetune(cfg: FinetuneConfig) -> dict:
    import torch
    from wenzhi.kg import TripleStore

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
    model, n_items, step = TASK_SETUP[cfg.task](cfg, tokenizer, examples, store, report)
    report.update(_train(cfg, model, n_items, step))
    from wenzhi.model.tokenizer import save_tokenizer
    from wenzhi.retrieval.atomic import atomic_directory

    with atomic_directory(Path(cfg.out) / cfg.task) as tmp:  # an interrupted run keeps the previous head
        model.save_pretrained(tmp)
        save_tokenizer(tokenizer, tmp, model.config.max_position_embeddings)
        save_vocab(tokenizer, Path(cfg.out))
        if cfg.task == "sim" and cfg.interaction == "match" and cfg.relation_prior:
            from wenzhi.qa_service.relation_prior import RelationPrior

            prior = RelationPrior.fit(examples, store)  # the questions the head trained on, nothing else
            prior.save(tmp)
            report["relation_prior"] = {"questions": prior.questions, "relations_asked": len(prior.asked)}
        report["train_seconds"] = round(time.time() - started, 1)
        report["config"] = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()
                            if k not in ("questions",)} | {"questions": [str(q) for q in cfg.questions]}
        (tmp / "finetune.json").write_text(json.dumps(report, ensure_ascii=False, indent=1), encoding="utf-8")
        if cfg.task == "gen":  # the trie is the GEN head's vocabulary of answers: build it with it
            from wenzhi.qa_service.trie import ensure_trie

            report["trie"] = ensure_trie(tmp, store, tokenizer, cfg.target_layout).meta
    store.close()
    log.info("finetune %s: %s", cfg.task, json.dumps({k: v for k, v in report.items() if k != "config"}, ensure_ascii=False))
    return report
