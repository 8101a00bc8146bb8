"""`wenzhi pretrain probe`: a knowledge cloze probe. Each item is a KB fact (head, relation, tail)
shown as `head relation [MASK]… [SEP] sentence` with every occurrence of the answer (the tail, or
the head when the item asks for it) masked; the answer is determined by the triple and the
sentence together. The checkpoint ranks candidate answers (the gold one plus distractors: tails
of the same relation elsewhere in the pool) by the mean log-probability of the candidate's
WordPieces at the masked positions (all masked at once, so candidates of any length compete).
Reported: accuracy@1, accuracy@5 and mean rank, per split.

Splits: a triple is "heldout" when `model.uktp.heldout_triple` says so; `prepare` leaves those
triples (their pairs, dialogue turns and verbalised facts) out of the shards, so heldout items
measure what the model could not have memorised, "seen" items what it could.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from wenzhi.model.conventions import IGNORE_INDEX
from wenzhi.model.uktp import heldout_triple


@dataclass
class ProbeItem:
    head: str
    relation: str
    tail: str
    sentence: str | None
    target: str  # "tail" or "head"
    heldout: bool
    candidates: list[str] = field(default_factory=list)  # gold first

    @property
    def answer(self) -> str:
        return getattr(self, self.target)

    def sentence_text(self) -> str:
        return self.sentence or ""


def items_from_pairs(pairs, heldout_fraction: float = 0.1, target: str = "tail") -> list[ProbeItem]:
    """One item per distinct triple (the first sentence seen for it), answer in the sentence."""
    items, seen = [], set()
    for p in pairs:
        key = (p.head, p.relation, p.tail)
        answer = getattr(p, target)
        if key in seen or p.head == p.tail or answer not in p.sentence or (target == "head" and p.tail in p.head):
            continue
        seen.add(key)
        items.append(ProbeItem(p.head, p.relation, p.tail, p.sentence, target,
                               heldout_triple(p.head, p.relation, p.tail, heldout_fraction)))
    return items


def items_from_store(store, limit: int, heldout_fraction: float = 0.1, max_tail_chars: int = 12) -> list[ProbeItem]:
    """Triple-only items from a KB store: short tails of non-description relations."""
    items = []
    for t in store.iter_triples():
        if not 2 <= len(t.tail) <= max_tail_chars:
            continue
        entity = store.entity(t.head_id)
        head = entity.base if entity else t.head
        items.append(ProbeItem(head, t.relation, t.tail, None, "tail",
                               heldout_triple(head, t.relation, t.tail, heldout_fraction)))
        if len(items) >= limit:
            break
    return items


def add_candidates(items: list[ProbeItem], n: int = 20, seed: int = 0) -> list[ProbeItem]:
    """Gold plus n-1 distinct distractors: answers of the same relation first, then any answer."""
    by_relation: dict[str, list[str]] = defaultdict(list)
    pool: list[str] = []
    for it in items:
        if it.answer not in by_relation[it.relation]:
            by_relation[it.relation].append(it.answer)
        if it.answer not in pool:
            pool.append(it.answer)
    for it in items:
        digest = hashlib.blake2b(f"{seed}\t{it.head}\t{it.relation}\t{it.tail}".encode(), digest_size=8).digest()
        rng = np.random.default_rng(int.from_bytes(digest, "big"))
        same = [a for a in by_relation[it.relation] if a != it.answer and a not in it.sentence_text()]
        chosen = [same[i] for i in rng.permutation(len(same))[: n - 1]]
        if len(chosen) < n - 1:  # only then the whole pool (a set for `same`: thousands of answers)
            excluded = set(same)
            other = [a for a in pool if a != it.answer and a not in excluded and a not in it.sentence_text()]
            chosen += [other[i] for i in rng.permutation(len(other))[: n - 1 - len(chosen)]]
        it.candidates = [it.answer] + chosen
    return items


def encode_cloze(item: ProbeItem, candidate: str, tokenizer, max_len: int = 128):
    """(input_ids, token_type_ids, labels) with the candidate's WordPieces at every place the
    answer stands (in the triple and the sentence), masked and used as labels."""
    cand = tokenizer(candidate, add_special_tokens=False)["input_ids"]
    mask = tokenizer.mask_token_id
    ids, types, labels = [tokenizer.cls_token_id], [1], [IGNORE_INDEX]

    def add(text: str, type_id: int, masked_answer: bool):
        parts = text.split(item.answer) if masked_answer else [text]
        for i, part in enumerate(parts):
            if i:
                ids.extend([mask] * len(cand))
                labels.extend(cand)
                types.extend([type_id] * len(cand))
            piece = tokenizer(part, add_special_tokens=False)["input_ids"] if part else []
            ids.extend(piece)
            labels.extend([IGNORE_INDEX] * len(piece))
            types.extend([type_id] * len(piece))

    for name in ("head", "relation", "tail"):
        if name == item.target:
            add(item.answer, 1, True)
        else:
            add(getattr(item, name), 1, False)
    ids.append(tokenizer.sep_token_id), types.append(1), labels.append(IGNORE_INDEX)
    if item.sentence:
        add(item.sentence, 0, True)
        ids.append(tokenizer.sep_token_id), types.append(0), labels.append(IGNORE_INDEX)
    if len(ids) > max_len:  # keep the triple's mask; cut the sentence's end
        ids, types, labels = ids[: max_len - 1] + [tokenizer.sep_token_id], types[:max_len], labels[: max_len - 1] + [IGNORE_INDEX]
    return ids, types, labels


def _masked_logits(model, batch):
    out = model(**batch)
    if getattr(out, "mlm_logits", None) is not None:  # WenzhiForPretraining: masked rows only
        return out.mlm_logits
    return out.logits[batch["labels"] != IGNORE_INDEX]  # any *ForMaskedLM: [B, L, V]


def score_item(model, tokenizer, item: ProbeItem, max_len: int = 128) -> list[float]:
    """Mean log-probability of each candidate's WordPieces at the masked positions."""
    import torch

    encoded = [encode_cloze(item, c, tokenizer, max_len) for c in item.candidates]
    width = max(len(e[0]) for e in encoded)
    pad = tokenizer.pad_token_id
    ids = torch.tensor([e[0] + [pad] * (width - len(e[0])) for e in encoded])
    types = torch.tensor([e[1] + [0] * (width - len(e[1])) for e in encoded])
    labels = torch.tensor([e[2] + [IGNORE_INDEX] * (width - len(e[2])) for e in encoded])
    attention = torch.tensor([[1] * len(e[0]) + [0] * (width - len(e[0])) for e in encoded])
    batch = {"input_ids": ids, "token_type_ids": types, "labels": labels, "attention_mask": attention}
    with torch.no_grad():
        logits = _masked_logits(model, batch).float()
    logp = torch.log_softmax(logits, -1).gather(1, labels[labels != IGNORE_INDEX][:, None])[:, 0]
    row = torch.arange(len(encoded))[:, None].expand_as(labels)[labels != IGNORE_INDEX]
    sums = torch.zeros(len(encoded)).index_add_(0, row, logp)
    counts = torch.bincount(row, minlength=len(encoded)).clamp(min=1)
    return (sums / counts).tolist()


def evaluate(model, tokenizer, items: list[ProbeItem], max_len: int = 128, show_progress: bool = False) -> dict:
    """accuracy@1, accuracy@5 and mean rank of the gold answer, per split and overall."""
    from tqdm import tqdm

    model.eval()
    ranks: dict[str, list[int]] = defaultdict(list)
    for item in tqdm(items, desc="probe", disable=not show_progress, file=sys.stderr):
        if len(item.candidates) < 2:
            continue
        scores = score_item(model, tokenizer, item, max_len)
        rank = 1 + sum(s > scores[0] for s in scores[1:])
        ranks["heldout" if item.heldout else "seen"].append(rank)
        ranks["all"].append(rank)
    result = {}
    for split, r in ranks.items():
        r = np.array(r)
        result[split] = {"items": int(len(r)), "acc@1": round(float((r <= 1).mean()), 4),
                         "acc@5": round(float((r <= 5).mean()), 4), "mean_rank": round(float(r.mean()), 3)}
    return result


def load_items(sources: list[str], heldout_fraction: float, limit: int, kb: str | None = None) -> list[ProbeItem]:
    from wenzhi.kg.datadir import data_path
    from wenzhi.model.corpora import kdconv_pairs, read_agrikg

    items: list[ProbeItem] = []
    for source in sources:
        if source == "agrikg":
            items += items_from_pairs(read_agrikg(data_path("corpus/agrikg_distant_supervision.tsv")), heldout_fraction)
        elif source == "kdconv":
            items += items_from_pairs(kdconv_pairs(data_path("kdconv")), heldout_fraction)
        elif source == "kb":
            if not kb:
                raise ValueError("source 'kb' needs --kb STORE")
            from wenzhi.kg import TripleStore

            with TripleStore(kb) as store:
                items += items_from_store(store, limit * 20, heldout_fraction)
        else:
            raise ValueError(f"unknown probe source {source!r}: agrikg, kdconv or kb")
    return items


def select(items: list[ProbeItem], split: str, limit: int, seed: int) -> list[ProbeItem]:
    """`limit` items per split (a seeded sample), so both splits are measured on equal footing."""
    rng = np.random.default_rng(seed)
    out = []
    for name in (["seen", "heldout"] if split == "both" else [split]):
        pool = [it for it in items if it.heldout == (name == "heldout")]
        out += [pool[i] for i in sorted(rng.permutation(len(pool))[:limit])]
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from wenzhi.cli_conventions import add_kb, add_option

    parser.add_argument("--checkpoint", required=True, help="a saved WenzhiForPretraining (or any *ForMaskedLM) directory")
    parser.add_argument("--tokenizer", help="vocab.txt or directory (default: the checkpoint's own)")
    parser.add_argument("--sources", default="agrikg,kdconv", help="comma-separated: agrikg, kdconv, kb")
    add_kb(parser, required=False, help="the KB store for --sources kb")
    parser.add_argument("--shards", help="prepared shard dir: take heldout_fraction from its meta.json")
    parser.add_argument("--heldout-fraction", type=float, default=0.1,
                        help="share of triples held out of pretraining (as the prepare config's heldout_fraction)")
    parser.add_argument("--split", choices=["seen", "heldout", "both"], default="both",
                        help="probe triples pretraining saw, held-out ones, or both (one score each)")
    parser.add_argument("--items", type=int, default=200, help="items per split")
    parser.add_argument("--candidates", type=int, default=20, help="answers ranked per item (the gold one included)")
    add_option(parser, "--max-length", old=["--max-len"], type=int, default=128, help="tokens per probe sentence")
    parser.add_argument("--seed", type=int, default=0, help="seed of the item sample and the candidates")


def load_model(path: str):
    """Any masked-LM folder: a wenzhi checkpoint (as WenzhiForPretraining, registered with the Auto
    classes on `import wenzhi`) or a transformers one; a run's output_dir means its model/."""
    from transformers import AutoConfig, AutoModelForMaskedLM, AutoModelForPreTraining

    from wenzhi.model.pretrained import resolve_model_dir

    path = resolve_model_dir(path)
    # a wenzhi folder loads as WenzhiForPretraining: given labels it projects to the vocabulary at the
    # masked rows only (`mlm_logits`), where a *ForMaskedLM projects every position and takes a loss
    # over them all: the same scores at a third of the CPU (a probe item's rows are mostly unmasked)
    if AutoConfig.from_pretrained(path).model_type == "wenzhi":
        return AutoModelForPreTraining.from_pretrained(path)
    return AutoModelForMaskedLM.from_pretrained(path)


def main(args: argparse.Namespace) -> int:
    from pathlib import Path

    from wenzhi.model.pretrained import checkpoint_tokenizer
    from wenzhi.model.tokenizer import load_tokenizer

    fraction = args.heldout_fraction
    if args.shards:
        meta = json.loads((Path(args.shards) / "meta.json").read_text())
        fraction = float(meta.get("heldout_fraction", fraction))
    try:
        items = load_items([s.strip() for s in args.sources.split(",") if s.strip()], fraction, args.items, args.kb)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    items = add_candidates(items, args.candidates, args.seed)
    items = select(items, args.split, args.items, args.seed)
    if not items:
        print("error: no probe items for this split", file=sys.stderr)
        return 2
    tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer else checkpoint_tokenizer(args.checkpoint)
    model = load_model(args.checkpoint)
    result = evaluate(model, tokenizer, items, args.max_length, show_progress=True)
    result["candidates"] = args.candidates
    result["heldout_fraction"] = fraction
    print(json.dumps(result, ensure_ascii=False))
    return 0
