"""Fine-tuning data derived from KBQA questions (KgCLUE / NLPCC JSON lines) and the KB.

- NER: the topic-entity mention = the question span matching the gold head's full name, base
  name or one of its aliases (longest first); questions where none occurs are counted, not guessed.
- SIM: (question, relation, label) pairs; negatives are the entity's other relations first, then
  relations of its homonyms, then frequent KB relations at random (the baseline used random ones
  only, which never teaches the model to separate an entity's own relations).
- GEN: (question, head, relation) whose target is `encode_target(head, relation)`, the trie key.
"""
from __future__ import annotations

import random
from collections.abc import Iterable, Sequence

from wenzhi.kg.questions import QAExample  # noqa: F401  the one KBQA-question reader (kg/questions.py)
from wenzhi.kg.questions import read_questions as read_qa  # noqa: F401
from wenzhi.model.conventions import IGNORE_INDEX

TAGS = ("O", "B", "I")  # BIO over the topic-entity mention


def holdout_split(examples: Sequence[QAExample], fraction: float, seed: int = 0):
    """(train, held out): a seeded shuffle, so the held-out part never reaches training."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_hold = int(round(len(examples) * fraction))
    hold = sorted(order[:n_hold])
    keep = sorted(order[n_hold:])
    return [examples[i] for i in keep], [examples[i] for i in hold]


# -- NER ------------------------------------------------------------------------------------
def find_mention(question: str, names: Iterable[str]) -> tuple[int, int] | None:
    """Character span of the longest name occurring in the question (exact, then ignoring case)."""
    names = sorted({n.strip() for n in names if n and n.strip()}, key=len, reverse=True)
    for name in names:
        i = question.find(name)
        if i >= 0:
            return i, i + len(name)
    lowered = question.lower()
    if len(lowered) == len(question):
        for name in names:
            i = lowered.find(name.lower())
            if i >= 0:
                return i, i + len(name)
    return None


def mention_names(head: str, store=None) -> list[str]:
    from wenzhi.kg import parse_name

    base, _ = parse_name(head)
    names = [head, base]
    if store is not None:
        entity = store.entity_by_name(head)
        if entity is not None:
            names.extend(store.aliases(entity.id))
    return names


def ner_examples(examples: Sequence[QAExample], store=None):
    """[(question, span or None)] and a coverage report."""
    items = []
    by_kind = {"full_name": 0, "base_or_alias": 0, "none": 0}
    for ex in examples:
        span = find_mention(ex.question, mention_names(ex.head, store))
        if span is None:
            by_kind["none"] += 1
        elif ex.question[span[0]:span[1]] == ex.head:
            by_kind["full_name"] += 1
        else:
            by_kind["base_or_alias"] += 1
        items.append((ex.question, span))
    n = max(len(examples), 1)
    coverage = {"n": len(examples), "covered": len(examples) - by_kind["none"],
                "coverage": round((len(examples) - by_kind["none"]) / n, 4), **by_kind}
    return items, coverage


def ner_features(tokenizer, items: Sequence[tuple[str, tuple[int, int] | None]], max_length: int = 64):
    """Token ids and BIO labels (-100 on special and padding tokens) as lists."""
    enc = tokenizer([q for q, _ in items], max_length=max_length, truncation=True,
                    return_offsets_mapping=True)
    labels = []
    for (question, span), offsets, ids in zip(items, enc["offset_mapping"], enc["input_ids"]):
        row = []
        first = True
        for (start, end), tid in zip(offsets, ids):
            if tid in (tokenizer.cls_token_id, tokenizer.sep_token_id) or start == end:
                row.append(IGNORE_INDEX)
            elif span is not None and start < span[1] and end > span[0]:
                row.append(1 if first else 2)
                first = False
            else:
                row.append(0)
        labels.append(row)
    return {"input_ids": enc["input_ids"], "labels": labels}


# -- SIM ------------------------------------------------------------------------------------
def frequent_relations(store, n: int) -> list[str]:
    return [rel for rel, _ in store.relation_counts()[:n]]


def homonym_relations(store, head: str) -> tuple[list[str], list[str]]:
    """(the entity's own relations, relations of its homonyms), each deduplicated in KB order."""
    from wenzhi.kg import parse_name

    own: list[str] = []
    others: list[str] = []
    entity = store.entity_by_name(head)
    if entity is not None:
        own = list(dict.fromkeys(t.relation for t in store.triples(entity.id)))
    for other in store.entities_by_base(parse_name(head)[0]):
        if entity is None or other.id != entity.id:
            others.extend(t.relation for t in store.triples(other.id))
    others = [r for r in dict.fromkeys(others) if r not in own]
    return own, others


def sim_pairs(examples: Sequence[QAExample], store, negatives: int = 5, seed: int = 0,
              random_pool: Sequence[str] | None = None) -> list[tuple[str, str, int]]:
    """(question, relation, 1|0): the gold relation and up to `negatives` wrong ones."""
    rng = random.Random(seed)
    pool = list(random_pool) if random_pool is not None else frequent_relations(store, 2000)
    out: list[tuple[str, str, int]] = []
    for ex in examples:
        own, homonyms = homonym_relations(store, ex.head)
        chosen: list[str] = []
        for group in (own, homonyms):
            group = [r for r in group if r != ex.relation and r not in chosen]
            rng.shuffle(group)
            chosen.extend(group[: negatives - len(chosen)])
        while len(chosen) < negatives and pool:
            rel = rng.choice(pool)
            if rel != ex.relation and rel not in chosen:
                chosen.append(rel)
        out.append((ex.question, ex.relation, 1))
        out.extend((ex.question, rel, 0) for rel in chosen)
    return out


def sim_features(tokenizer, pairs: Sequence[tuple[str, str]], max_length: int = 64):
    enc = tokenizer([q for q, _ in pairs], [r for _, r in pairs], max_length=max_length,
                    truncation="only_first")
    return {"input_ids": enc["input_ids"], "token_type_ids": enc["token_type_ids"]}


# -- GEN ------------------------------------------------------------------------------------
def gen_features(tokenizer, examples: Sequence[QAExample], max_question: int = 48,
                 max_target: int = 48):
    """Prefix = `[CLS] question [SEP]`; target = `head [unused1] relation [SEP]` (the trie key)."""
    from wenzhi.qa_service.trie import encode_targets

    prefixes = tokenizer([ex.question for ex in examples], max_length=max_question,
                         truncation=True)["input_ids"]
    targets = encode_targets(tokenizer, [(ex.head, ex.relation) for ex in examples])
    keep = [i for i, t in enumerate(targets) if len(t) <= max_target]
    return {"prefix_ids": [prefixes[i] for i in keep], "target_ids": [targets[i] for i in keep],
            "dropped_too_long": len(examples) - len(keep)}
