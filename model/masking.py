"""The masking interface: a `MaskingExample` (one tokenised sequence with character offsets), the
`Masker` protocol that picks token spans to mask whole, and `apply_masks` (80/10/10).

Whole-word masking segments with jieba (model/segment.py), so no external (LTP) reference file is
needed: words are character spans, mapped onto WordPiece tokens through the offsets.
Knowledge maskers (entity, phrase) live in model/knowledge_masking.py.

Candidate units are arrays (`Units`), not Python objects per word: preparation maps every word
of every document onto tokens, and per-unit objects were a tenth of its time (bench/RESULTS.md).
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

import numpy as np

from wenzhi.model.conventions import IGNORE_INDEX
from wenzhi.model.segment import chinese_nlp, word_spans  # noqa: F401  (chinese_nlp: public name)
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
    hints from linking or an annotated corpus: lists of pairs or [n, 2] arrays."""

    text: str
    input_ids: list[int] | np.ndarray
    offsets: list[tuple[int, int]] | np.ndarray
    entity_spans: list[tuple[int, int]] | np.ndarray | None = None
    phrase_spans: list[tuple[int, int]] | np.ndarray | None = None
    word_spans: list[tuple[int, int]] | np.ndarray | None = None
    pos_words: list[tuple[int, int, str]] | None = None  # (start, end, POS) when the corpus has tags
    entity_ids: dict[tuple[int, int], int] = field(default_factory=dict)  # linked entity per span
    special_mask: list[bool] | np.ndarray | None = None
    segmenter: str = "rjieba"
    # token units per kind ("word", "entity", "phrase"), computed once (or given by the caller)
    units: dict[str, "Units"] = field(default_factory=dict)
    _bounds: tuple | None = field(default=None, init=False, repr=False)

    def __post_init__(self):
        if self.special_mask is None:
            self.special_mask = [s == e for s, e in self.offsets]

    @property
    def num_maskable(self) -> int:
        return len(self.special_mask) - int(np.count_nonzero(self.special_mask))

    def set_token_bounds(self, starts: np.ndarray, ends: np.ndarray, positions: np.ndarray) -> None:
        """What `token_bounds` would compute, from a caller that already has it."""
        self._bounds = (starts, ends, positions)

    def token_bounds(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(char starts, char ends, positions) of the non-special tokens, as arrays."""
        if self._bounds is None:
            offsets = np.asarray(self.offsets, dtype=np.int64).reshape(-1, 2)
            positions = np.flatnonzero(~np.asarray(self.special_mask, dtype=bool))
            self._bounds = (offsets[positions, 0], offsets[positions, 1], positions)
        return self._bounds


@dataclass
class Units:
    """Candidate units to mask whole: token spans [starts[i], ends[i]), sorted, not overlapping.
    Plain lists: a chunk has a few dozen units, and picking among them one by one in Python costs
    less than the dozen numpy calls a vectorised pick needs on arrays that small."""

    starts: list[int]
    ends: list[int]
    kind: str

    def __len__(self) -> int:
        return len(self.starts)

    def spans(self) -> list[MaskSpan]:
        return [MaskSpan(s, e, self.kind) for s, e in zip(self.starts, self.ends)]

    def within(self, first: int, stop: int, shift: int = 0) -> "Units":
        """The units wholly inside tokens [first, stop), moved by `shift` positions."""
        a, b = bisect.bisect_left(self.starts, first), bisect.bisect_right(self.ends, stop)
        return Units([x + shift for x in self.starts[a:b]], [x + shift for x in self.ends[a:b]], self.kind)


class Masker(Protocol):
    name: str

    def select_spans(self, example: MaskingExample, rng: np.random.Generator, budget: int) -> list[tuple[int, int]]:
        """Token spans [start, end) to mask whole, together at most `budget` tokens, never a special."""


def mask_budget(num_maskable: int, ratio: float = MASK_RATIO) -> int:
    if num_maskable <= 0:
        return 0
    return max(1, int(round(num_maskable * ratio)))


def _as_spans(char_spans) -> np.ndarray:
    spans = np.asarray(char_spans if len(char_spans) else np.empty((0, 2)), dtype=np.int64)
    return spans.reshape(-1, 2) if spans.ndim != 2 else spans[:, :2]


def token_units(example: MaskingExample, char_spans, kind: str) -> Units:
    """Token spans covering each character span; spans sharing a token are merged so a token is
    never split between two units (a WordPiece may straddle a word boundary). A unit never
    reaches across a special token (two segments)."""
    return units_of_spans(*example.token_bounds(), char_spans, kind)


def units_of_spans(starts: np.ndarray, ends: np.ndarray, positions: np.ndarray, char_spans, kind: str) -> Units:
    """`token_units` over tokens given as arrays: character starts and ends (non-decreasing) and
    the positions the tokens sit at."""
    spans = _as_spans(char_spans)
    if not len(spans) or not len(positions):
        return Units([], [], kind)
    # first token ending after the span starts, last token starting before it ends
    first = np.searchsorted(ends, spans[:, 0], side="right")
    last = np.searchsorted(starts, spans[:, 1], side="left") - 1
    hit = (first <= last) & (positions[np.minimum(last, len(positions) - 1)] - positions[np.minimum(first, len(positions) - 1)] == last - first)
    s, e = positions[first[hit]], positions[last[hit]] + 1
    if len(s) < 2:
        return Units(s.tolist(), e.tolist(), kind)
    if (s[1:] < s[:-1]).any():
        order = np.lexsort((e, s))
        s, e = s[order], e[order]
    if (s[1:] < e[:-1]).any():  # some share a token: merge them
        reach = np.maximum.accumulate(e)
        new = np.ones(len(s), dtype=bool)
        new[1:] = s[1:] >= reach[:-1]
        heads = np.flatnonzero(new)
        s, e = s[heads], np.maximum.reduceat(e, heads)
    return Units(s.tolist(), e.tolist(), kind)


def cached_units(example: MaskingExample, kind: str, char_spans) -> Units:
    """The example's units of a kind, computed from `char_spans()` on first use."""
    units = example.units.get(kind)
    if units is None:
        units = example.units[kind] = token_units(example, char_spans(), kind)
    return units


def select_units(units: Units, budget: int, rng: np.random.Generator,
                 taken: bytearray | None = None) -> list[MaskSpan]:
    """Units in random order, each kept if it fits the remaining budget and overlaps nothing
    `taken` (a flag per token position)."""
    if budget <= 0 or not len(units):
        return []
    starts, ends = units.starts, units.ends
    chosen: list[int] = []
    for i in rng.permutation(len(starts)).tolist():
        s, e = starts[i], ends[i]
        if e - s > budget or (taken is not None and any(taken[s:e])):
            continue
        chosen.append(i)
        budget -= e - s
        if budget == 0:
            break
    chosen.sort()
    return [MaskSpan(starts[i], ends[i], units.kind) for i in chosen]


class CharMasker:
    """ERNIE's basic masking: every WordPiece is its own unit (a Chinese character, mostly)."""

    name = "char"

    def select_spans(self, example, rng, budget):
        positions = example.token_bounds()[2].tolist()
        return select_units(Units(positions, [p + 1 for p in positions], "char"), budget, rng)


def segment_words(text: str, segmenter: str = "rjieba") -> list[tuple[int, int]]:
    """Character spans of the words of `text`, whitespace left out."""
    return [tuple(span) for span in word_spans(text, segmenter).tolist()]


def word_units(example: MaskingExample) -> Units:
    def spans():
        if example.word_spans is None:
            if example.pos_words is not None:
                example.word_spans = [(s, e) for s, e, _ in example.pos_words]
            else:
                example.word_spans = word_spans(example.text, example.segmenter)
        return example.word_spans

    return cached_units(example, "word", spans)


class WholeWordMasker:
    """Whole-word masking: a word's WordPieces are masked together or not at all."""

    name = "word"

    def select_spans(self, example, rng, budget):
        return select_units(word_units(example), budget, rng)


def fill_with_words(example: MaskingExample, chosen: list[MaskSpan], budget: int,
                    rng: np.random.Generator, protect: Units | None = None) -> list[MaskSpan]:
    """Top up a knowledge masker's choice with whole words so every strategy masks about the
    same ratio (otherwise entity-poor text would be barely masked). Words overlapping a
    `protect`ed unit (an entity not chosen) are skipped, so a unit is masked whole or not at all."""
    used = sum(e - s for s, e in chosen)
    if used >= budget:
        return sorted(chosen)
    taken = bytearray(len(example.input_ids))
    blocked = list(chosen) + (list(zip(protect.starts, protect.ends)) if protect is not None else [])
    for s, e in blocked:
        taken[s:e] = b"\x01" * (e - s)
    return sorted(chosen + select_units(word_units(example), budget - used, rng, taken))


class SpecialIds(NamedTuple):
    cls: int
    sep: int
    mask: int
    unk: int
    pad: int


# Per tokenizer, kept with it (so its id() is not reused): transformers looks special ids up on
# every attribute access, which cost more than masking itself when done per example.
_TOKENIZER_CACHE: dict[int, tuple] = {}


def _cached(tokenizer) -> tuple:
    key = id(tokenizer)
    if key not in _TOKENIZER_CACHE:
        special = set(tokenizer.all_special_ids)
        vocab = tokenizer.get_vocab()
        pool = np.array(sorted(i for t, i in vocab.items() if i not in special and not t.startswith("[")), dtype=np.int32)
        ids = SpecialIds(tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.mask_token_id,
                         tokenizer.unk_token_id, tokenizer.pad_token_id)
        continuation = np.zeros(max(vocab.values()) + 1, dtype=bool)
        continuation[[i for t, i in vocab.items() if t.startswith("##")]] = True
        _TOKENIZER_CACHE[key] = (tokenizer, ids, pool, continuation)
    return _TOKENIZER_CACHE[key]


def special_ids(tokenizer) -> SpecialIds:
    return _cached(tokenizer)[1]


def replacement_ids(tokenizer) -> np.ndarray:
    """Ids a random replacement may draw: no specials, no [unusedN] placeholders."""
    return _cached(tokenizer)[2]


def continuation_ids(tokenizer) -> np.ndarray:
    """Per id, whether the token continues a word (`##x`): a cut must not fall before one."""
    return _cached(tokenizer)[3]


def apply_masks(input_ids, spans, rng: np.random.Generator, tokenizer, special_mask,
                mask_prob: float = 0.8, random_prob: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Mask the spans: per span, 80% -> [MASK], 10% -> random tokens, 10% -> unchanged (one
    decision per span, so a whole word is never half hidden). Labels hold the original id at every
    position of a chosen span and IGNORE_INDEX elsewhere; specials are never touched."""
    ids = np.array(input_ids, dtype=np.int32)
    original = ids.copy()
    labels = np.full(len(ids), IGNORE_INDEX, dtype=np.int32)
    special = np.asarray(special_mask, dtype=np.uint8).tobytes()
    _, tokens, pool, _ = _cached(tokenizer)
    for s, e in spans:
        if special.find(1, s, e) >= 0:  # rare: keep the span's ordinary tokens only
            where = np.array([p for p in range(s, e) if not special[p]], dtype=np.int64)
            count = len(where)
        else:
            where, count = slice(s, e), e - s
        if count <= 0:
            continue
        labels[where] = original[where]
        draw = rng.random()
        if draw < mask_prob:
            ids[where] = tokens.mask
        elif draw < mask_prob + random_prob:
            ids[where] = pool[rng.integers(0, len(pool), size=count)]
    return ids, labels


@dataclass
class Encoded:
    """A text's WordPieces without specials: ids and character offsets as arrays."""

    ids: np.ndarray  # int32 [n]
    offsets: np.ndarray  # int64 [n, 2]


def encode_texts(tokenizer, texts: list[str]) -> list[Encoded]:
    """Tokenise many texts at once, as the Rust tokenizer's `encode_batch` does (the transformers
    wrapper's per-call overhead was a third of the tokenising time): through the code-point table
    of model/tokenizer.py (`CharTableEncoder`, the same ids and offsets about 10x faster) for
    the BERT-style tokenizers it supports."""
    if not texts:
        return []
    fast = _fast_encoder(tokenizer)
    if fast is not None:
        return [Encoded(ids, offsets) for ids, offsets in fast.encode_batch(texts)]
    out = []
    for enc in tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False):
        ids = np.array(enc.ids, dtype=np.int32)
        offsets = np.array(enc.offsets, dtype=np.int64).reshape(-1, 2)
        out.append(Encoded(ids, offsets))
    return out


_FAST_ENCODERS: dict[int, tuple] = {}  # per tokenizer (kept with it, so its id() is not reused)


def _fast_encoder(tokenizer):
    key = id(tokenizer)
    if key not in _FAST_ENCODERS:
        from wenzhi.model.tokenizer import CharTableEncoder

        backend = getattr(tokenizer, "backend_tokenizer", None)
        fast = CharTableEncoder(backend) if backend is not None and CharTableEncoder.supports(backend) else None
        _FAST_ENCODERS[key] = (tokenizer, fast)
    return _FAST_ENCODERS[key][1]


def encode_example(tokenizer, text: str, **hints) -> MaskingExample:
    """`[CLS] text [SEP]` with offsets, as a MaskingExample."""
    enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=True)
    return MaskingExample(text=text, input_ids=list(enc["input_ids"]),
                          offsets=[tuple(o) for o in enc["offset_mapping"]], **hints)
