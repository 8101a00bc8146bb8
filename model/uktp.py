"""ERNIE 3.0's universal knowledge-text prediction (UKTP): a KB triple and a sentence mentioning its
head and tail, as `[CLS] head relation tail [SEP] sentence [SEP]` (token type 1 for the triple
part, 0 for the sentence). One side is masked and predicted with the other's help: the relation or
an entity in the triple (the sentence states it), or the entity words in the sentence (the triple
states them). ERNIE 3.0 published no code; this is our reading of the paper.
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from wenzhi.model.corpora import TripleSentence
from wenzhi.model.masking import IGNORE_INDEX, MaskSpan, apply_masks

MODES = ("relation", "triple_entity", "sentence_entity")
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
    if not needle:
        return []
    return [(m.start(), m.start() + len(needle)) for m in re.finditer(re.escape(needle), text)]


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


def encode_pair(pair: TripleSentence, tokenizer, max_len: int):
    """Tokenise `triple [SEP] sentence` within max_len tokens; None if the triple alone is too long.
    Returns (input_ids, token_type_ids, special_mask, field token spans, sentence, sentence offsets)."""
    triple_text = f"{pair.head} {pair.relation} {pair.tail}"
    fields = {"head": (0, len(pair.head)),
              "relation": (len(pair.head) + 1, len(pair.head) + 1 + len(pair.relation)),
              "tail": (len(pair.head) + len(pair.relation) + 2, len(triple_text))}
    n_triple = len(tokenizer(triple_text, add_special_tokens=False)["input_ids"])
    room = max_len - n_triple - 3  # [CLS] triple [SEP] sentence [SEP]
    if room < 4:
        return None
    sentence, budget = pair.sentence, room
    for _ in range(6):
        sentence = _fit_sentence(pair, budget)
        enc = tokenizer(triple_text, sentence, return_offsets_mapping=True)
        excess = len(enc["input_ids"]) - max_len
        if excess <= 0:
            break
        budget -= max(excess, 1)  # NFKC may expand a character into several tokens
        if budget < 4:
            return None
    else:
        return None
    seq = enc.sequence_ids()
    ids = np.asarray(enc["input_ids"], dtype=np.int32)
    offsets = [tuple(o) for o in enc["offset_mapping"]]
    special = np.array([s is None for s in seq], dtype=bool)
    first_sep = seq.index(1) - 1 if 1 in seq else len(seq) - 1
    types = np.full(len(ids), SENTENCE_TYPE, dtype=np.int8)
    types[: first_sep + 1] = TRIPLE_TYPE  # [CLS] triple [SEP]
    field_spans = {}
    for name, (cs, ce) in fields.items():
        hit = [i for i, (s, (a, b)) in enumerate(zip(seq, offsets)) if s == 0 and a < ce and b > cs]
        field_spans[name] = (hit[0], hit[-1] + 1) if hit else None
    sent_offsets = [(a, b) if s == 1 else None for s, (a, b) in zip(seq, offsets)]
    return ids, types, special, field_spans, sentence, sent_offsets


def _sentence_units(sentence: str, sent_offsets, needle: str, kind: str) -> list[MaskSpan]:
    units = []
    for cs, ce in _occurrences(sentence, needle):
        hit = [i for i, o in enumerate(sent_offsets) if o is not None and o[0] < ce and o[1] > cs]
        if hit:
            units.append(MaskSpan(hit[0], hit[-1] + 1, kind))
    return units


def build_uktp_example(pair: TripleSentence, tokenizer, rng: np.random.Generator, max_len: int,
                       config: UKTPConfig | None = None, mode: str | None = None) -> UKTPExample | None:
    """One UKTP example, or None when the pair cannot be encoded within max_len."""
    config = config or UKTPConfig()
    encoded = encode_pair(pair, tokenizer, max_len)
    if encoded is None:
        return None
    ids, types, special, fields, sentence, sent_offsets = encoded
    if mode is None:
        mode = MODES[int(rng.choice(len(MODES), p=config.probs()))]
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
        options = [f for f in ("head", "tail") if _sentence_units(sentence, sent_offsets, getattr(pair, f), "x")]
        if options:
            f = options[int(rng.integers(len(options)))]
            spans = _sentence_units(sentence, sent_offsets, getattr(pair, f), "sentence_entity")
    if not spans:  # the chosen mode had nothing to mask (e.g. relation lost in tokenisation)
        if mode != "relation" and fields["relation"]:
            mode, spans = "relation", [MaskSpan(*fields["relation"], "relation")]
        else:
            return None
    masked, labels = apply_masks(ids, spans, rng, tokenizer, special)
    return UKTPExample(masked, labels, types, mode, spans, pair)


def linked_pairs(text: str, linker, store, max_tail_chars: int = 20,
                 description_relations: tuple[str, ...] = ("Information", "描述", "简介")) -> Iterator[TripleSentence]:
    """Triple-sentence pairs found by linking: for each linked mention in a sentence, the entity's
    triples whose tail (2..max_tail_chars chars) the sentence also states, outside the mention."""
    for sentence in split_sentences(text):
        seen = set()
        for m in linker.link(sentence):
            if m.entity is None or m.entity.id in seen:
                continue
            seen.add(m.entity.id)
            for t in store.triples(m.entity.id):
                if t.relation in description_relations or not 2 <= len(t.tail) <= max_tail_chars:
                    continue
                if any(b <= m.start or a >= m.end for a, b in _occurrences(sentence, t.tail)):
                    yield TripleSentence(m.entity.base or m.text, t.relation, t.tail, sentence, "linked")


_SENTENCE_END = re.compile(r"(?<=[。！？!?；;\n])")


def split_sentences(text: str, max_chars: int = 256) -> list[str]:
    out = []
    for piece in _SENTENCE_END.split(text):
        piece = piece.strip()
        while len(piece) > max_chars:
            out.append(piece[:max_chars])
            piece = piece[max_chars:]
        if piece:
            out.append(piece)
    return out


def check_labels(example: UKTPExample) -> None:
    """Invariant used by prepare and tests: labels sit on exactly one side."""
    sides = set(example.token_type_ids[example.labels != IGNORE_INDEX].tolist())
    if len(sides) != 1:
        raise AssertionError(f"UKTP labels on sides {sides}")
