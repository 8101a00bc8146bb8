"""ERNIE 3.0's universal knowledge-text prediction (UKTP): a KB triple and a sentence mentioning its
head and tail, as `[CLS] head relation tail [SEP] sentence [SEP]` (token type 1 for the triple
part, 0 for the sentence). One side is masked and predicted with the other's help: the relation or
an entity in the triple (the sentence states it), or the entity words in the sentence (the triple
states them). ERNIE 3.0 published no code; this is our reading of the paper.
"""
from __future__ import annotations

import bisect
import functools
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from wenzhi.model.corpora import TripleSentence
from wenzhi.model.masking import IGNORE_INDEX, Encoded, MaskSpan, apply_masks, encode_texts, special_ids

MODES = ("relation", "triple_entity", "sentence_entity")
DESCRIPTION_RELATIONS = ("Information", "描述", "简介")  # long texts, not facts a sentence states
TRIPLE_TYPE, SENTENCE_TYPE = 1, 0


@dataclass
class UKTPConfig:
    """Mix of the three masking modes (normalised weights)."""

    relation: float = 0.5
    triple_entity: float = 0.25
    sentence_entity: float = 0.25

    def probs(self) -> np.ndarray:
        w = np.array([self.relation, self.triple_entity, self.sentence_entity], dtype=float)
        if w.min() < 0 or w.sum() <= 0:
            raise ValueError(f"UKTP mode weights must be >= 0 with a positive sum, got {w.tolist()}")
        return w / w.sum()

    @functools.cached_property
    def cumulative(self) -> list[float]:
        return np.cumsum(self.probs()).tolist()


@dataclass
class UKTPExample:
    input_ids: np.ndarray
    labels: np.ndarray
    token_type_ids: np.ndarray
    mode: str
    spans: list[MaskSpan]  # what was masked (token spans with their kind)
    pair: TripleSentence


def triple_key(head: str, relation: str, tail: str) -> str:
    return f"{head}\t{relation}\t{tail}"


def heldout_triple(head: str, relation: str, tail: str, fraction: float, salt: str = "wenzhi-probe") -> bool:
    """Whether a triple belongs to the probe's held-out split: a stable hash, so `prepare` (which
    excludes these from pretraining data) and `probe` agree without sharing a file."""
    if fraction <= 0:
        return False
    digest = hashlib.blake2b(f"{salt}\t{triple_key(head, relation, tail)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < fraction


def _occurrences(text: str, needle: str) -> list[tuple[int, int]]:
    """Non-overlapping occurrences of `needle`, left to right."""
    out: list[tuple[int, int]] = []
    if not needle:
        return out
    n, i = len(needle), text.find(needle)
    while i >= 0:
        out.append((i, i + n))
        i = text.find(needle, i + n)
    return out


def _fit_sentence(pair: TripleSentence, budget_chars: int) -> str:
    """The sentence cut to about `budget_chars` characters around its first tail (and head) mention."""
    s = pair.sentence
    if len(s) <= budget_chars:
        return s
    spans = _occurrences(s, pair.tail)[:1] + _occurrences(s, pair.head)[:1]
    lo = min((a for a, _ in spans), default=0)
    hi = max((b for _, b in spans), default=0)
    if hi - lo > budget_chars:  # head and tail too far apart: keep the tail
        lo, hi = spans[0]
    centre = (lo + hi) // 2
    start = max(0, min(centre - budget_chars // 2, len(s) - budget_chars))
    return s[start:start + budget_chars]


def triple_text(pair: TripleSentence) -> str:
    return f"{pair.head} {pair.relation} {pair.tail}"


@dataclass
class EncodedPair:
    """`[CLS] triple [SEP] sentence [SEP]`: ids, segment types, which positions are specials, the
    token span of each triple field, the sentence kept, and its tokens' offsets (which start at
    position `sentence_start`)."""

    ids: np.ndarray
    types: np.ndarray
    special: np.ndarray
    fields: dict[str, tuple[int, int] | None]
    sentence: str
    sentence_offsets: np.ndarray
    sentence_start: int


def encode_pair(pair: TripleSentence, tokenizer, max_len: int) -> EncodedPair | None:
    """Tokenise `triple [SEP] sentence` within max_len tokens; None if it cannot fit."""
    return encode_pairs([pair], tokenizer, [max_len])[0]


def encode_pairs(pairs: list[TripleSentence], tokenizer, max_lens: list[int], triples: list[Encoded] | None = None,
                 sentences: list[Encoded] | None = None) -> list[EncodedPair | None]:
    """`encode_pair` for many pairs, each text tokenised in one batch: `triples` / `sentences`,
    when given, are the triple texts and whole sentences already tokenised. A sentence of more
    characters or tokens than there is room for is cut around its mentions (`_fit_sentence`)
    and tokenised again, with less room each round while NFKC expands it past the limit."""
    if triples is None:
        triples = encode_texts(tokenizer, [triple_text(p) for p in pairs])
    if sentences is None:
        sentences = encode_texts(tokenizer, [p.sentence for p in pairs])
    rooms = [max_len - len(t.ids) - 3 for max_len, t in zip(max_lens, triples)]  # [CLS] triple [SEP] s [SEP]
    kept: list[tuple[str, Encoded] | None] = [None] * len(pairs)
    todo = []  # (pair index, character budget)
    for i, (pair, sentence, room) in enumerate(zip(pairs, sentences, rooms)):
        if room < 4:
            continue
        if len(pair.sentence) <= room and len(sentence.ids) <= room:
            kept[i] = (pair.sentence, sentence)
        else:
            todo.append((i, room))
    for _ in range(6):
        if not todo:
            break
        texts = [_fit_sentence(pairs[i], budget) for i, budget in todo]
        again = []
        for (i, budget), text, enc in zip(todo, texts, encode_texts(tokenizer, texts)):
            excess = len(enc.ids) - rooms[i]
            if excess <= 0:
                kept[i] = (text, enc)
            elif budget - max(excess, 1) >= 4:  # NFKC may expand a character into several tokens
                again.append((i, budget - max(excess, 1)))
        todo = again
    return [_assemble(pair, triple, k, tokenizer) if k else None for pair, triple, k in zip(pairs, triples, kept)]


def _assemble(pair: TripleSentence, triple: Encoded, kept: tuple[str, Encoded], tokenizer) -> EncodedPair:
    sentence_text, sentence = kept
    n_triple = len(triple.ids)
    tokens = special_ids(tokenizer)
    ids = np.concatenate(([tokens.cls], triple.ids, [tokens.sep], sentence.ids, [tokens.sep])).astype(np.int32)
    n = len(ids)
    types = np.full(n, SENTENCE_TYPE, dtype=np.int8)
    types[: n_triple + 2] = TRIPLE_TYPE  # [CLS] triple [SEP]
    special = np.zeros(n, dtype=bool)
    special[[0, n_triple + 1, n - 1]] = True
    h, r = len(pair.head), len(pair.relation)
    fields = {}
    for name, (cs, ce) in {"head": (0, h), "relation": (h + 1, h + 1 + r),
                           "tail": (h + r + 2, h + r + 2 + len(pair.tail))}.items():
        fields[name] = _token_span(triple.offsets, cs, ce, 1)
    return EncodedPair(ids, types, special, fields, sentence_text, sentence.offsets, n_triple + 2)


def _token_span(offsets: np.ndarray, cs: int, ce: int, shift: int) -> tuple[int, int] | None:
    """Positions (shifted) of the tokens overlapping characters [cs, ce), or None."""
    first = int(np.searchsorted(offsets[:, 1], cs, side="right"))
    last = int(np.searchsorted(offsets[:, 0], ce, side="left")) - 1
    return (first + shift, last + shift + 1) if first <= last else None


def _sentence_units(encoded: EncodedPair, needle: str, kind: str) -> list[MaskSpan]:
    units = []
    for cs, ce in _occurrences(encoded.sentence, needle):
        span = _token_span(encoded.sentence_offsets, cs, ce, encoded.sentence_start)
        if span:
            units.append(MaskSpan(*span, kind))
    return units


def build_uktp_example(pair: TripleSentence, tokenizer, rng: np.random.Generator, max_len: int,
                       config: UKTPConfig | None = None, mode: str | None = None,
                       encoded: EncodedPair | None = None) -> UKTPExample | None:
    """One UKTP example, or None when the pair cannot be encoded within max_len. `encoded`: the
    pair already encoded for this max_len (see `encode_pair`)."""
    config = config or UKTPConfig()
    if encoded is None:
        encoded = encode_pair(pair, tokenizer, max_len)
    if encoded is None:
        return None
    fields, sentence = encoded.fields, encoded.sentence
    if mode is None:
        mode = MODES[min(bisect.bisect_right(config.cumulative, rng.random()), len(MODES) - 1)]
    spans: list[MaskSpan] = []
    if mode == "relation" and fields["relation"]:
        spans = [MaskSpan(*fields["relation"], "relation")]
    elif mode == "triple_entity":
        # mask whichever of head/tail the sentence states (both: pick one)
        options = [f for f in ("head", "tail") if fields[f] and getattr(pair, f) in sentence]
        if options:
            f = options[int(rng.integers(len(options)))]
            spans = [MaskSpan(*fields[f], "triple_entity")]
    elif mode == "sentence_entity":
        found = {f: _sentence_units(encoded, getattr(pair, f), "sentence_entity") for f in ("head", "tail")}
        options = [f for f in ("head", "tail") if found[f]]
        if options:
            spans = found[options[int(rng.integers(len(options)))]]
    if not spans:  # the chosen mode had nothing to mask (e.g. relation lost in tokenisation)
        if mode != "relation" and fields["relation"]:
            mode, spans = "relation", [MaskSpan(*fields["relation"], "relation")]
        else:
            return None
    masked, labels = apply_masks(encoded.ids, spans, rng, tokenizer, encoded.special)
    return UKTPExample(masked, labels, encoded.types, mode, spans, pair)


def linked_pairs(text: str, linker, store, max_tail_chars: int = 20,
                 description_relations: tuple[str, ...] = DESCRIPTION_RELATIONS) -> Iterator[TripleSentence]:
    """Triple-sentence pairs found by linking: for each linked mention in a sentence, the entity's
    triples whose tail (2..max_tail_chars chars) the sentence also states, outside the mention."""
    for sentence in split_sentences(text):
        yield from pairs_from_mentions(sentence, linker.link(sentence), store, 0, max_tail_chars, description_relations)


def pairs_from_mentions(sentence: str, mentions, store, offset: int = 0, max_tail_chars: int = 20,
                        description_relations: tuple[str, ...] = DESCRIPTION_RELATIONS) -> Iterator[TripleSentence]:
    """`linked_pairs` for one sentence whose mentions are known: `mentions` are linker Mentions
    whose offsets are `offset` characters ahead of the sentence's (a whole document's)."""
    seen = set()
    for m in mentions:
        if m.entity is None or m.entity.id in seen:
            continue
        seen.add(m.entity.id)
        start, end = m.start - offset, m.end - offset
        for t in store.triples(m.entity.id):
            if t.relation in description_relations or not 2 <= len(t.tail) <= max_tail_chars:
                continue
            if any(b <= start or a >= end for a, b in _occurrences(sentence, t.tail)):
                yield TripleSentence(m.entity.base or m.text, t.relation, t.tail, sentence, "linked")


_SENTENCE_END = re.compile(r"(?<=[。！？!?；;\n])")


def sentence_spans(text: str, max_chars: int = 256) -> list[tuple[int, int]]:
    """Character spans of the sentences of `text` (split after sentence-ending marks, stripped,
    cut every `max_chars` characters)."""
    out, start = [], 0
    for piece in _SENTENCE_END.split(text):
        end = start + len(piece)
        a = start + (len(piece) - len(piece.lstrip()))
        b = end - (len(piece) - len(piece.rstrip()))
        while b - a > max_chars:
            out.append((a, a + max_chars))
            a += max_chars
        if b > a:
            out.append((a, b))
        start = end
    return out


def split_sentences(text: str, max_chars: int = 256) -> list[str]:
    return [text[a:b] for a, b in sentence_spans(text, max_chars)]


def check_labels(example: UKTPExample) -> None:
    """Invariant used by prepare and tests: labels sit on exactly one side."""
    sides = set(example.token_type_ids[example.labels != IGNORE_INDEX].tolist())
    if len(sides) != 1:
        raise AssertionError(f"UKTP labels on sides {sides}")
