"""The masking interface: a `MaskingExample` (one tokenised sequence with character offsets), the
`Masker` protocol that picks token spans to mask whole, and `apply_masks` (80/10/10).

Whole-word masking segments with jieba through spaCy, so no external (LTP) reference file is
needed: words are character spans, mapped onto WordPiece tokens through the offsets.
Knowledge maskers (entity, phrase) live in model/knowledge_masking.py.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from wenzhi.model.conventions import IGNORE_INDEX
MASK_RATIO = 0.15


class MaskSpan(tuple):
    """A token span (start, end) to mask whole; unpacks like a pair and also says what kind of
    unit it is (char, word, phrase, entity, relation, ...) for the per-kind statistics."""

    def __new__(cls, start: int, end: int, kind: str = "token"):
        span = super().__new__(cls, (int(start), int(end)))
        span.kind = kind
        return span

    def __reduce__(self):  # keep `kind` through pickling/copying
        return (MaskSpan, (self[0], self[1], self.kind))


@dataclass
class MaskingExample:
    """One sequence as the model sees it (specials included). `offsets[i]` is token i's character
    span in `text`; specials have (0, 0). Character spans (entities, phrases, words) are optional
    hints from linking or an annotated corpus."""

    text: str
    input_ids: list[int]
    offsets: list[tuple[int, int]]
    entity_spans: list[tuple[int, int]] | None = None
    phrase_spans: list[tuple[int, int]] | None = None
    word_spans: list[tuple[int, int]] | None = None
    pos_words: list[tuple[int, int, str]] | None = None  # (start, end, POS) when the corpus has tags
    entity_ids: dict[tuple[int, int], int] = field(default_factory=dict)  # linked entity per span
    special_mask: list[bool] | None = None

    def __post_init__(self):
        if self.special_mask is None:
            self.special_mask = [s == e for s, e in self.offsets]

    @property
    def num_maskable(self) -> int:
        return sum(not s for s in self.special_mask)


class Masker(Protocol):
    name: str

    def select_spans(self, example: MaskingExample, rng: np.random.Generator, budget: int) -> list[tuple[int, int]]:
        """Token spans [start, end) to mask whole, together at most `budget` tokens, never a special."""


def mask_budget(num_maskable: int, ratio: float = MASK_RATIO) -> int:
    if num_maskable <= 0:
        return 0
    return max(1, int(round(num_maskable * ratio)))


def token_units(example: MaskingExample, char_spans, kind: str) -> list[MaskSpan]:
    """Token spans covering each character span; spans sharing a token are merged so a token is
    never split between two units (a WordPiece may straddle a word boundary)."""
    starts = np.array([s for s, _ in example.offsets])
    ends = np.array([e for _, e in example.offsets])
    normal = ~np.array(example.special_mask, dtype=bool)
    raw = []
    for cs, ce in char_spans:
        hit = np.nonzero(normal & (starts < ce) & (ends > cs))[0]
        if len(hit):
            raw.append((int(hit[0]), int(hit[-1]) + 1))
    raw.sort()
    units: list[MaskSpan] = []
    for s, e in raw:
        if units and s < units[-1][1]:
            units[-1] = MaskSpan(units[-1][0], max(e, units[-1][1]), kind)
        else:
            units.append(MaskSpan(s, e, kind))
    # A unit must not swallow a special between its ends (two segments): keep contiguous ones only.
    return [u for u in units if not any(example.special_mask[u[0]:u[1]])]


def select_units(units: list[MaskSpan], budget: int, rng: np.random.Generator,
                 taken: np.ndarray | None = None) -> list[MaskSpan]:
    """Units in random order, each kept if it fits the remaining budget and overlaps nothing taken."""
    chosen: list[MaskSpan] = []
    if budget <= 0 or not units:
        return chosen
    for i in rng.permutation(len(units)):
        s, e = units[i]
        if e - s > budget or (taken is not None and taken[s:e].any()):
            continue
        chosen.append(units[i])
        if taken is not None:
            taken[s:e] = True
        budget -= e - s
        if budget == 0:
            break
    return sorted(chosen)


class CharMasker:
    """ERNIE's basic masking: every WordPiece is its own unit (a Chinese character, mostly)."""

    name = "char"

    def select_spans(self, example, rng, budget):
        units = [MaskSpan(i, i + 1, "char") for i, special in enumerate(example.special_mask) if not special]
        return select_units(units, budget, rng)


_NLP = None


def chinese_nlp():
    """spaCy's blank Chinese pipeline segmenting with jieba (offline; no model download)."""
    global _NLP
    if _NLP is None:
        import logging

        import jieba
        import spacy

        jieba.setLogLevel(logging.WARNING)
        _NLP = spacy.blank("zh", config={"nlp": {"tokenizer": {"segmenter": "jieba"}}})
    return _NLP


def segment_words(text: str) -> list[tuple[int, int]]:
    """Character spans of jieba's words (spaCy tokens), whitespace left out."""
    doc = chinese_nlp().make_doc(text)
    return [(t.idx, t.idx + len(t.text)) for t in doc if not t.is_space]


def word_units(example: MaskingExample) -> list[MaskSpan]:
    if example.word_spans is None:
        if example.pos_words is not None:
            example.word_spans = [(s, e) for s, e, _ in example.pos_words]
        else:
            example.word_spans = segment_words(example.text)
    return token_units(example, example.word_spans, "word")


class WholeWordMasker:
    """Whole-word masking: a word's WordPieces are masked together or not at all."""

    name = "word"

    def select_spans(self, example, rng, budget):
        return select_units(word_units(example), budget, rng)


def fill_with_words(example: MaskingExample, chosen: list[MaskSpan], budget: int,
                    rng: np.random.Generator, protect: list[MaskSpan] = ()) -> list[MaskSpan]:
    """Top up a knowledge masker's choice with whole words so every strategy masks about the
    same ratio (otherwise entity-poor text would be barely masked). Words overlapping a
    `protect`ed unit (an entity not chosen) are skipped, so a unit is masked whole or not at all."""
    used = sum(e - s for s, e in chosen)
    if used >= budget:
        return sorted(chosen)
    taken = np.zeros(len(example.input_ids), dtype=bool)
    for s, e in list(chosen) + list(protect):
        taken[s:e] = True
    return sorted(chosen + select_units(word_units(example), budget - used, rng, taken))


_REPLACEMENT_IDS: dict[int, np.ndarray] = {}


def replacement_ids(tokenizer) -> np.ndarray:
    """Ids a random replacement may draw: no specials, no [unusedN] placeholders."""
    key = id(tokenizer)
    if key not in _REPLACEMENT_IDS:
        special = set(tokenizer.all_special_ids)
        vocab = tokenizer.get_vocab()
        ids = [i for t, i in vocab.items() if i not in special and not t.startswith("[")]
        _REPLACEMENT_IDS[key] = np.array(sorted(ids), dtype=np.int32)
    return _REPLACEMENT_IDS[key]


def apply_masks(input_ids, spans, rng: np.random.Generator, tokenizer, special_mask,
                mask_prob: float = 0.8, random_prob: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Mask the spans: per span, 80% -> [MASK], 10% -> random tokens, 10% -> unchanged (one
    decision per span, so a whole word is never half hidden). Labels hold the original id at every
    position of a chosen span and IGNORE_INDEX elsewhere; specials are never touched."""
    ids = np.asarray(input_ids, dtype=np.int32).copy()
    labels = np.full(len(ids), IGNORE_INDEX, dtype=np.int32)
    special = np.asarray(special_mask, dtype=bool)
    pool = replacement_ids(tokenizer)
    mask_id = tokenizer.mask_token_id
    for s, e in spans:
        positions = np.arange(s, e)[~special[s:e]]
        if not len(positions):
            continue
        labels[positions] = ids[positions]
        draw = rng.random()
        if draw < mask_prob:
            ids[positions] = mask_id
        elif draw < mask_prob + random_prob:
            ids[positions] = pool[rng.integers(0, len(pool), size=len(positions))]
    return ids, labels


def encode_example(tokenizer, text: str, **hints) -> MaskingExample:
    """`[CLS] text [SEP]` with offsets, as a MaskingExample."""
    enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=True)
    return MaskingExample(text=text, input_ids=list(enc["input_ids"]),
                          offsets=[tuple(o) for o in enc["offset_mapping"]], **hints)
