"""Fine-tuning data derived from KBQA questions (KgCLUE / NLPCC JSON lines) and the KB.

- NER: the topic-entity mention = the question span matching the gold head's full name, base
  name or one of its aliases (longest first); questions where none occurs are counted, not guessed.
- SIM: per question the gold relation and negatives drawn the way evaluation draws candidates
  (`NegativeSampler`: the entity's and its homonyms' relations, relations sharing characters with
  the question, the KB's most frequent relations, random ones).
- GEN: (question, head, relation) whose target is `encode_target(head, relation, layout)`, the trie key.
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



def selection_candidates(store, ex: QAExample, top: Sequence[str]) -> tuple[list[str], list[str]]:
    """The relations relation selection offers for `ex`, deduplicated in order: (`top` — the KB's most
    frequent relations — then the head's own, its homonyms' and the gold; the same without `top`).
    One definition for `wenzhi evaluate`, the SIM relation prior's counts and the recipes bench."""
    own, homonyms = homonym_relations(store, ex.head)
    return (list(dict.fromkeys([*top, *own, *homonyms, ex.relation])),
            list(dict.fromkeys([*own, *homonyms, ex.relation])))

class NegativeSampler:
    """Wrong relations for a question, drawn the way evaluation draws candidates.

    Evaluation offers the gold relation among the KB's most frequent relations, the entity's own
    relations and its homonyms' (`wenzhi evaluate`'s relation selection; every candidate entity's
    relations in the pipeline; the frequent ones again with `--distractor-relations`). So the
    `n` negatives are, in this order: the entity's other relations, its homonyms', relations that
    share characters with the question (the lexical rule's confusions: what a head that reads must
    tell apart) and random ones among the 2,000 most frequent; then, beyond `n`, every one of the
    KB's `frequent` most frequent relations. The baseline drew random relations only, which never
    teaches the model to separate an entity's own relations.
    """

    def __init__(self, store, frequent: int = 30, seed: int = 0):
        counts = store.relation_counts()
        self.store = store
        self.frequent = [r for r, _ in counts[:frequent]]
        self.pool = [r for r, _ in counts[:2000]]
        # characters x relations incidence, so the relations sharing most characters with a question
        # are one sum of a few rows (a Python loop over every relation per question is too slow)
        import numpy as np

        self.relations = [r for r, _ in counts]
        self.char_index: dict[str, int] = {}
        cols: list[tuple[int, int]] = []
        for j, rel in enumerate(self.relations):
            for ch in set(rel.lower()) - {" "}:
                cols.append((self.char_index.setdefault(ch, len(self.char_index)), j))
        self.incidence = np.zeros((len(self.char_index), len(self.relations)), dtype=np.float32)
        for i, j in cols:
            self.incidence[i, j] = 1.0
        self.rel_len = np.asarray([max(1, len(r)) for r in self.relations], dtype=np.float32)
        self.rng = random.Random(seed)

    def sharing_characters(self, text: str, exclude: set[str], k: int, shortlist: int = 40) -> list[str]:
        """Up to `k` relations with the highest lexical score against `text`, among the `shortlist`
        sharing the largest share of their characters with it."""
        import numpy as np

        from wenzhi.qa_service.lexical import lexical_score

        rows = [self.char_index[ch] for ch in set(text.lower()) if ch in self.char_index]
        if not rows or k <= 0:
            return []
        share = self.incidence[rows].sum(0) / self.rel_len
        top = np.argpartition(-share, min(shortlist, len(share) - 1))[:shortlist]
        found = [self.relations[j] for j in top if share[j] > 0 and self.relations[j] not in exclude]
        ranked = sorted(found, key=lambda r: (-lexical_score(text, r), self.rng.random()))
        return ranked[:k]

    def negatives(self, ex: QAExample, n: int) -> list[str]:
        from wenzhi.kg import parse_name

        from wenzhi.qa_service.lexical import strip_mention

        rng = self.rng
        own, homonyms = homonym_relations(self.store, ex.head)
        chosen: list[str] = []
        taken = {ex.relation}
        own_group = [r for r in own + homonyms if r not in taken]
        rng.shuffle(own_group)
        text = strip_mention(ex.question, parse_name(ex.head)[0])
        # up to half the entity's and its homonyms' own, then as many sharing characters with the
        # question as make up half the rest; random ones fill up
        for rel in own_group[: n // 2]:
            chosen.append(rel)
            taken.add(rel)
        for rel in self.sharing_characters(text, taken, (n - len(chosen)) // 2):
            chosen.append(rel)
            taken.add(rel)
        while len(chosen) < n and len(taken) < len(self.pool):
            rel = rng.choice(self.pool)
            if rel not in taken:
                chosen.append(rel)
                taken.add(rel)
        # and every one of the KB's most frequent relations: evaluation offers all of them to every
        # question (and `--distractor-relations` to every entity)
        return chosen + [r for r in self.frequent if r not in taken]


def sim_groups(examples: Sequence[QAExample], store, negatives: int = 15, seed: int = 0
               ) -> list[tuple[str, list[str]]]:
    """(question, [gold relation, negative, ...]) per example (see `NegativeSampler`)."""
    sampler = NegativeSampler(store, seed=seed)
    return [(ex.question, [ex.relation, *sampler.negatives(ex, negatives)]) for ex in examples]


def sim_features(tokenizer, pairs: Sequence[tuple[str, str]], max_length: int = 64):
    enc = tokenizer([q for q, _ in pairs], [r for _, r in pairs], max_length=max_length,
                    truncation="only_first")
    return {"input_ids": enc["input_ids"], "token_type_ids": enc["token_type_ids"]}


# -- GEN ------------------------------------------------------------------------------------
def gen_features(tokenizer, examples: Sequence[QAExample], max_question: int = 48,
                 max_target: int = 48, layout: str = "head-relation"):
    """Prefix = `[CLS] question [SEP]`; target = the (head, relation) in `layout` (the trie key)."""
    from wenzhi.qa_service.trie import encode_targets

    prefixes = tokenizer([ex.question for ex in examples], max_length=max_question,
                         truncation=True)["input_ids"]
    targets = encode_targets(tokenizer, [(ex.head, ex.relation) for ex in examples], layout)
    keep = [i for i, t in enumerate(targets) if len(t) <= max_target]
    return {"prefix_ids": [prefixes[i] for i in keep], "target_ids": [targets[i] for i in keep],
            "dropped_too_long": len(examples) - len(keep)}
