"""Retrieval-augmented masking (OBERT eq. 2, REALM): when an entity mention is masked, append what
the KB knows about that entity as an extra segment (token type 2), so the model learns
P(w | context without w, K_w).

K_w is, in the order of preference `AugmentConfig.sources`: the entity's encyclopedia description
(kg store); its triples written out as `relation：tail；...` (most entities here have no
description, but do have triples); passages retrieved by the entity's name through a
`retrieval.Retriever` (REALM's retrieved blocks; put "retrieval" before "triples" to prefer them).
"""
from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from wenzhi.model.masking import IGNORE_INDEX, special_ids

KNOWLEDGE_TYPE = 2


@dataclass
class AugmentConfig:
    max_tokens: int = 96  # at most this many knowledge tokens per example
    min_tokens: int = 8  # less room than this: no augmentation (a stub of knowledge helps nobody)
    use_triples: bool = True  # verbalise triples when there is no description
    max_triples: int = 8
    retrieval_k: int = 1
    sources: tuple[str, ...] = ("description", "triples", "retrieval")

    def __post_init__(self):
        self.sources = tuple(self.sources)
        unknown = set(self.sources) - {"description", "triples", "retrieval"}
        if unknown:
            raise ValueError(f"augment sources {sorted(unknown)}: choose from description, triples, retrieval")


@dataclass
class AugmentStats:
    attempts: int = 0  # examples with at least one masked, linked entity
    augmented: int = 0  # examples that got a knowledge segment
    no_knowledge: int = 0  # nothing known about any masked entity
    no_room: int = 0  # knowledge found but the example left no room for it
    sources: Counter = field(default_factory=Counter)  # description / triples / retrieval

    @property
    def hit_rate(self) -> float:
        return self.augmented / self.attempts if self.attempts else 0.0

    def as_dict(self) -> dict:
        return {"attempts": self.attempts, "augmented": self.augmented, "no_knowledge": self.no_knowledge,
                "no_room": self.no_room, "hit_rate": round(self.hit_rate, 4), "sources": dict(self.sources)}


class KnowledgeAugmenter:
    def __init__(self, store, tokenizer, retriever=None, config: AugmentConfig | None = None,
                 exclude_triple=None):
        self.store = store
        self.tokenizer = tokenizer
        self.retriever = retriever
        self.config = config or AugmentConfig()
        # exclude_triple(head, relation, tail) -> True hides a triple (the probe's held-out split)
        self.exclude_triple = exclude_triple
        self.stats = AugmentStats()
        # what is known about an entity, tokenised, once per entity (the KB does not change while
        # preparing; an entity is masked again and again)
        self._known_ids = functools.lru_cache(maxsize=100_000)(self._tokenised_knowledge)

    def _tokenised_knowledge(self, entity_id: int) -> tuple[list[int], str] | None:
        known = self.knowledge(entity_id)
        if known is None:
            return None
        return self.tokenizer.backend_tokenizer.encode(known[0], add_special_tokens=False).ids, known[1]

    def knowledge(self, entity_id: int) -> tuple[str, str] | None:
        """(text, source) about an entity, or None."""
        entity = self.store.entity(entity_id)
        if entity is None:
            return None
        for source in self.config.sources:
            found = self._from_source(source, entity, entity_id)
            if found:
                return found, source
        return None

    def _from_source(self, source: str, entity, entity_id: int) -> str | None:
        if source == "description":
            return entity.description or None
        if source == "triples" and self.config.use_triples:
            facts = []
            for t in self.store.triples(entity_id):
                if self.exclude_triple and self.exclude_triple(entity.base, t.relation, t.tail):
                    continue
                facts.append(f"{t.relation}：{t.tail}")
                if len(facts) >= self.config.max_triples:
                    break
            return f"{entity.base}：" + "；".join(facts) if facts else None
        if source == "retrieval" and self.retriever is not None:
            try:
                hits = self.retriever.search(entity.base, k=self.config.retrieval_k)
            except ValueError:  # a name with nothing searchable in it (punctuation only)
                return None
            texts = [h.fields.get("text") for h in hits if h.fields.get("text")]
            return "；".join(texts) if texts else None
        return None

    def augment(self, input_ids, labels, token_type_ids, entity_ids: list[int], max_len: int):
        """Append `knowledge [SEP]` (type 2, nothing predicted) for the masked entities, within
        max_len. Returns (ids, labels, types, sources used); sources empty = not augmented."""
        if not entity_ids:
            return input_ids, labels, token_type_ids, []
        self.stats.attempts += 1
        room = min(max_len - len(input_ids), self.config.max_tokens + 1)
        pieces, sources, found = [], [], False
        for entity_id in dict.fromkeys(entity_ids):  # first masked first, no repeats
            known = self._known_ids(entity_id)
            if known is None:
                continue
            found = True
            ids = known[0]
            take = min(len(ids), room - 1)  # keep one slot for [SEP]
            if take < min(self.config.min_tokens, len(ids)):  # a short text that fits whole is fine
                break
            pieces.extend(ids[:take] + [special_ids(self.tokenizer).sep])
            sources.append(known[1])
            room -= take + 1
        if not pieces:
            if found:
                self.stats.no_room += 1
            else:
                self.stats.no_knowledge += 1
            return input_ids, labels, token_type_ids, []
        self.stats.augmented += 1
        self.stats.sources.update(sources)
        extra = np.asarray(pieces, dtype=np.int32)
        return (np.concatenate([np.asarray(input_ids, np.int32), extra]),
                np.concatenate([np.asarray(labels, np.int32), np.full(len(extra), IGNORE_INDEX, np.int32)]),
                np.concatenate([np.asarray(token_type_ids, np.int8), np.full(len(extra), KNOWLEDGE_TYPE, np.int8)]),
                sources)
