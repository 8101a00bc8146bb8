"""The middle stages of preparation, over one partition's items at once:

    link      words (rjieba, or the corpus's own), POS tags for phrases, KB mentions (kg.EntityLinker)
    tokenise  every text and every triple of the partition in one call of the Rust tokenizer
    mask      chunks, whole-unit masking, UKTP pairs, knowledge segments -> PackedExamples

Strategies for text: char / word (kind 0), phrase / entity (kind 1), retrieval (entity masking
plus a knowledge segment: kind 3, or kind 1 when nothing was found), uktp (pairs found by
linking the text against the KB: kind 2; entity masking when none). Triple corpora always give
UKTP examples (kind 2).

Determinism: every item draws from its own generator seeded by (seed, corpus, item index), and
its curriculum stage comes from its position in the interleaved stream, so an item's examples do
not depend on which partition, worker or machine prepares it.
"""
from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from wenzhi.model.conventions import IGNORE_INDEX, ExampleKind
from wenzhi.model.masking import (Encoded, MaskingExample, Units, apply_masks, encode_texts, mask_budget,
                                  special_ids, units_of_spans, word_spans)
from wenzhi.model.shards import PackedExample

KIND_PLAIN, KIND_KNOWLEDGE, KIND_UKTP, KIND_RETRIEVAL = ExampleKind
LINKED_STRATEGIES = ("entity", "retrieval", "uktp")
LINK_BATCH = 32  # texts per EntityLinker.link_many call (its docstring: 16 to 64)
_ENCODE_HERE = object()  # _pair's default: no encoding from the tokenise stage
_SENTENCE_END = np.zeros(0x110000, dtype=bool)  # per code point: does a chunk cut after it
_SENTENCE_END[[ord(c) for c in "。！？!?；;\n"]] = True


@dataclass
class Item:
    """One thing a corpus holds: a document ("doc"), a triple-sentence pair ("pair"), or a KdConv
    dialogue with its grounded pairs ("dialogue"), at `position` in the interleaved stream."""

    position: int
    corpus: int
    index: int  # within its corpus
    tag: str
    payload: object

    @property
    def chars(self) -> int:
        if self.tag == "doc":
            return len(self.payload.text)
        if self.tag == "pair":
            return len(self.payload.sentence)
        return len(self.payload[0].text)


@dataclass
class _Text:
    """A document to chunk and mask, with what the link and tokenise stages found for it."""

    doc: object
    strategy: str
    words: np.ndarray | None = None  # [n, 2] character spans
    phrases: np.ndarray | None = None
    entities: np.ndarray | None = None  # [n, 2] character spans ...
    entity_ids: np.ndarray | None = None  # ... and their KB ids (-1: none)
    mentions: list | None = None
    encoded: Encoded | None = None


@dataclass
class _Planned:
    item: Item
    rng: np.random.Generator
    stage: int
    text: _Text | None = None
    pairs: list = field(default_factory=list)
    pair_encodings: list = field(default_factory=list)  # EncodedPair (None: unencodable) per pair


def new_stats() -> dict:
    return {
        "items": 0, "chars": 0, "documents": 0, "chunks": 0, "pairs": 0, "examples": 0, "tokens": 0,
        "masked_tokens": 0, "unk_tokens": 0, "heldout_pairs_excluded": 0, "heldout_turns_removed": 0,
        "pairs_unencodable": 0, "uktp_fallback_to_entity": 0,
        "examples_per_strategy": Counter(), "examples_per_kind": Counter(),
        "masked_tokens_per_unit": Counter(), "masked_tokens_per_kind": Counter(),
        "tokens_per_kind": Counter(), "uktp_modes": Counter(), "uktp_sources": Counter(),
        "examples_per_stage": Counter(), "documents_per_corpus": Counter(),
    }


class ExampleBuilder:
    """Turns a partition's items into PackedExamples and keeps the partition's statistics.
    `resources` holds what a worker loads once (model/prepare_job.py: Resources)."""

    def __init__(self, resources, grand_total: int):
        from wenzhi.model.augment import AugmentStats

        self.res = resources
        self.cfg = resources.cfg
        self.tokenizer = resources.tokenizer
        self.special = special_ids(resources.tokenizer)
        self.grand_total = max(grand_total, 1)
        self.stats = new_stats()
        if resources.augmenter is not None:
            resources.augmenter.stats = AugmentStats()  # this partition's alone

    # -- the stages (model/prepare_job.py runs them in this order) ------------------------------
    def plan(self, items: list[Item]) -> tuple[list[_Text], list[_Planned]]:
        """Each item's generator, curriculum stage and, for text, masking strategy."""
        from wenzhi.model.prepare_seeds import generators

        rngs = generators(self.cfg.seed, [item.corpus for item in items], [item.index for item in items])
        planned = [self._plan(item, rng) for item, rng in zip(items, rngs)]
        return [p.text for p in planned if p.text is not None], planned

    def link(self, texts: list[_Text]) -> None:
        """Words, phrases and KB entity mentions of each text its strategy needs."""
        from wenzhi.model.knowledge_masking import entity_spans, pos_chunks, pos_words

        segmenter = self.cfg.segmenter
        linked = [t for t in texts if t.strategy in LINKED_STRATEGIES]
        mentions = self._mentions([t.doc.text for t in linked])
        for t, found in zip(linked, mentions):
            t.mentions = found
        for t in texts:
            if t.strategy == "char":
                continue
            tagged = t.doc.words
            if tagged is None and t.strategy == "phrase":
                tagged = pos_words(t.doc.text, segmenter)
            if tagged is not None:
                t.words = np.array([(s, e) for s, e, _ in tagged], dtype=np.int64).reshape(-1, 2)
            else:
                t.words = word_spans(t.doc.text, segmenter)
            if t.strategy == "phrase":
                t.phrases = np.array(pos_chunks(tagged), dtype=np.int64).reshape(-1, 2)
            if t.strategy in LINKED_STRATEGIES:
                t.entities, t.entity_ids = entity_spans(t.mentions, t.doc.words)

    def _mentions(self, texts: list[str]) -> list[list]:
        """The linker's mentions of each text, through `link_many` in batches of LINK_BATCH texts
        (the same mentions as `link` text by text, faster: kg/linker.py)."""
        linker = self.res.linker
        if linker is None:
            return [[] for _ in texts]
        return [found for i in range(0, len(texts), LINK_BATCH) for found in linker.link_many(texts[i : i + LINK_BATCH])]

    def tokenise(self, texts: list[_Text], planned: list[_Planned]) -> None:
        """All documents, and the triple and sentence of every pair (each distinct text once), of
        the partition in a few calls of the Rust tokenizer."""
        from wenzhi.model.uktp import encode_pairs, triple_text

        for t, enc in zip(texts, encode_texts(self.tokenizer, [t.doc.text for t in texts])):
            t.encoded = enc
        jobs = [(p, i, pair) for p in planned for i, pair in enumerate(p.pairs)
                if not self.res.is_heldout(pair.head, pair.relation, pair.tail)]
        for p in planned:
            p.pair_encodings = [None] * len(p.pairs)
        unique = list(dict.fromkeys(text for _, _, pair in jobs for text in (triple_text(pair), pair.sentence)))
        encoded = dict(zip(unique, encode_texts(self.tokenizer, unique)))
        stages = self.res.curriculum.stages
        pairs = [pair for _, _, pair in jobs]
        for (p, i, _), enc in zip(jobs, encode_pairs(pairs, self.tokenizer, [stages[p.stage].max_len for p, _, _ in jobs],
                                                     [encoded[triple_text(q)] for q in pairs],
                                                     [encoded[q.sentence] for q in pairs])):
            p.pair_encodings[i] = enc

    def mask(self, p: _Planned, out: list) -> None:
        max_len = self.res.curriculum.stages[p.stage].max_len
        if p.text is not None:
            self._document(p.text, p.rng, p.stage, out)
        for pair, encoded in zip(p.pairs, p.pair_encodings):
            self._pair(pair, p.rng, max_len, p.stage, out, encoded)

    # -- planning: generator, stage, strategy, held-out turns -----------------------------------
    def _plan(self, item: Item, rng: np.random.Generator) -> _Planned:
        """`rng`: the item's own, np.random.default_rng([seed, corpus, item index])."""
        s = self.stats
        s["items"] += 1
        s["chars"] += item.chars
        stage = self.res.curriculum.index_at(item.position / self.grand_total)
        planned = _Planned(item, rng, stage)
        if item.tag == "doc":
            planned.text = self._text(item.payload, rng, stage)
        elif item.tag == "pair":
            planned.pairs = [item.payload]
        elif item.tag == "dialogue":
            doc, pairs, turns = item.payload
            heldout = self.res.is_heldout
            keep, dropped = [], 0
            for turn in turns:
                if any(heldout(q.head, q.relation, q.tail) for q in pairs if q.sentence == turn.text):
                    dropped += 1
                elif turn.text:
                    keep.append(turn.text)
            s["heldout_turns_removed"] += dropped
            if keep:
                doc.text = "\n".join(keep)
                planned.text = self._text(doc, rng, stage)
            planned.pairs = list(pairs)
        return planned

    def _text(self, doc, rng, stage: int) -> _Text:
        names, cumulative = self.res.stage_strategies[stage]
        strategy = names[min(bisect.bisect_right(cumulative, rng.random()), len(names) - 1)]
        self.stats["documents"] += 1
        self.stats["documents_per_corpus"][doc.source] += 1
        return _Text(doc, strategy)

    # -- masking ------------------------------------------------------------------------------
    def _chunks(self, t: _Text, max_tokens: int) -> list[tuple[int, int]]:
        """Token ranges of at most max_tokens, cut after a sentence end where one falls in the
        second half of the chunk, never inside a word's WordPieces."""
        ids, offsets = t.encoded.ids, t.encoded.offsets
        n = len(ids)
        if n <= max_tokens:
            return [(0, n)] if n else []
        codepoints = np.frombuffer(t.doc.text.encode("utf-32-le"), dtype=np.uint32)
        ends_sentence = _SENTENCE_END[codepoints[offsets[:, 1] - 1]]
        continuation = self.res.is_continuation[ids]
        out, start = [], 0
        while start < n:
            end = min(start + max_tokens, n)
            if end < n:
                lo = start + max_tokens // 2
                hits = np.flatnonzero(ends_sentence[lo:end])
                cut = lo + int(hits[-1]) + 1 if len(hits) else end
                while cut > start + 1 and continuation[cut]:
                    cut -= 1
                end = cut
            out.append((start, end))
            start = end
        return out

    def _document(self, t: _Text, rng, stage: int, out: list) -> None:
        cfg, res = self.cfg, self.res
        stage_len = res.curriculum.stages[stage].max_len
        limit = stage_len - 2
        if t.strategy == "retrieval":  # leave room for the knowledge segment
            limit = max(8, limit - min(res.augmenter.config.max_tokens + 1, limit // 2))
        units = self._document_units(t)
        self.stats["unk_tokens"] += int(np.count_nonzero(t.encoded.ids == self.special.unk))  # chunks cover it all
        for t0, t1 in self._chunks(t, limit):
            self.stats["chunks"] += 1
            ex = self._example(t, t0, t1, units)
            if t.strategy == "uktp" and self._linked_uktp(t, ex, rng, stage_len, stage, out):
                continue
            used = "entity" if t.strategy == "uktp" else t.strategy
            if t.strategy == "uktp":
                self.stats["uktp_fallback_to_entity"] += 1
            spans = res.maskers[used].select_spans(ex, rng, mask_budget(t1 - t0, cfg.mask_ratio))
            ids, labels = apply_masks(ex.input_ids, spans, rng, self.tokenizer, ex.special_mask)
            types = np.zeros(len(ids), np.int8)
            kind = KIND_PLAIN if used in ("char", "word") else KIND_KNOWLEDGE
            if used == "retrieval":
                entity_ids = [ex.entity_ids[k] for k in _masked_entity_keys(ex, spans)]
                ids, labels, types, sources = res.augmenter.augment(ids, labels, types, entity_ids, stage_len)
                if sources:
                    kind = KIND_RETRIEVAL
            self._emit(out, ids, labels, types, kind, used, spans, stage)

    @staticmethod
    def _document_units(t: _Text) -> dict[str, Units]:
        """Word, phrase and entity units over the whole document's tokens, once: each chunk takes
        the units wholly inside it (a word straddling a chunk's edge is no unit of either)."""
        n = len(t.encoded.ids)
        bounds = (t.encoded.offsets[:, 0], t.encoded.offsets[:, 1], np.arange(n))
        units = {}
        for kind, spans in (("word", t.words), ("phrase", t.phrases), ("entity", t.entities)):
            if spans is not None:
                units[kind] = units_of_spans(*bounds, spans, kind)
        return units

    def _example(self, t: _Text, t0: int, t1: int, units: dict[str, Units]) -> MaskingExample:
        """[CLS] chunk [SEP] with offsets into the document and the units inside the chunk."""
        n = t1 - t0
        ids = np.empty(n + 2, np.int32)
        ids[0], ids[1:-1], ids[-1] = self.special.cls, t.encoded.ids[t0:t1], self.special.sep
        offsets = np.zeros((n + 2, 2), np.int64)
        offsets[1:-1] = t.encoded.offsets[t0:t1]
        special = np.zeros(n + 2, dtype=bool)
        special[0] = special[-1] = True
        ex = MaskingExample(text=t.doc.text, input_ids=ids, offsets=offsets, special_mask=special,
                            segmenter=self.cfg.segmenter,
                            units={kind: u.within(t0, t1, 1 - t0) for kind, u in units.items()})
        ex.set_token_bounds(offsets[1:-1, 0], offsets[1:-1, 1], np.arange(1, n + 1))
        if t.strategy == "retrieval":  # which KB entity each masked mention is
            c0, c1 = int(offsets[1, 0]), int(offsets[-2, 1])
            keep = (t.entities[:, 0] >= c0) & (t.entities[:, 1] <= c1)
            ex.entity_spans = t.entities[keep]
            ex.entity_ids = {(a, b): i for (a, b), i in zip(t.entities[keep].tolist(), t.entity_ids[keep].tolist())
                             if i >= 0}
        return ex

    def _linked_uktp(self, t: _Text, ex: MaskingExample, rng, max_len: int, stage: int, out: list) -> bool:
        from wenzhi.model.uktp import pairs_from_mentions, sentence_spans

        if self.res.linker is None or not t.mentions:
            return False
        c0, c1 = int(ex.offsets[1, 0]), int(ex.offsets[-2, 1])
        pairs = []
        for a, b in sentence_spans(t.doc.text[c0:c1]):
            a, b = a + c0, b + c0
            inside = [m for m in t.mentions if a <= m.start and m.end <= b]
            if inside:
                pairs.extend(p for p in pairs_from_mentions(t.doc.text[a:b], inside, self.res.store, a)
                             if not self.res.is_heldout(p.head, p.relation, p.tail))
        if not pairs:
            return False
        emitted = False
        for i in rng.permutation(len(pairs))[: self.cfg.max_linked_pairs]:
            emitted |= self._pair(pairs[int(i)], rng, max_len, stage, out)
        return emitted

    def _pair(self, pair, rng, max_len: int, stage: int, out: list, encoded=_ENCODE_HERE) -> bool:
        """One UKTP example; `encoded`: the pair as the tokenise stage encoded it (None: it does
        not fit), or encoded here."""
        from wenzhi.model.uktp import build_uktp_example, encode_pair

        self.stats["pairs"] += 1
        if self.res.is_heldout(pair.head, pair.relation, pair.tail):
            self.stats["heldout_pairs_excluded"] += 1
            return False
        if encoded is _ENCODE_HERE:
            encoded = encode_pair(pair, self.tokenizer, max_len)
        ex = (build_uktp_example(pair, self.tokenizer, rng, max_len, self.res.uktp_config, encoded=encoded)
              if encoded is not None else None)
        if ex is None:
            self.stats["pairs_unencodable"] += 1
            return False
        self.stats["uktp_modes"][ex.mode] += 1
        self.stats["uktp_sources"][pair.source] += 1
        self._emit(out, ex.input_ids, ex.labels, ex.token_type_ids, KIND_UKTP, "uktp", ex.spans, stage)
        return True

    def _emit(self, out: list, ids, labels, types, kind: int, strategy: str, spans, stage: int) -> None:
        s = self.stats
        n = len(ids)
        masked = int(np.count_nonzero(labels != IGNORE_INDEX))
        s["examples"] += 1
        s["tokens"] += n
        s["masked_tokens"] += masked
        s["examples_per_strategy"][strategy] += 1
        s["examples_per_kind"][str(kind)] += 1
        s["masked_tokens_per_kind"][str(kind)] += masked
        s["tokens_per_kind"][str(kind)] += n
        s["examples_per_stage"][str(stage)] += 1
        per_unit = s["masked_tokens_per_unit"]
        for span in spans:  # the maskers' units never hold a special, so every position is labelled
            per_unit[getattr(span, "kind", "token")] += span[1] - span[0]
        out.append(PackedExample(ids, labels, types, kind))

    def summary(self) -> dict:
        s = {k: (dict(v) if isinstance(v, Counter) else v) for k, v in self.stats.items()}
        if self.res.augmenter is not None:
            s["augmentation"] = self.res.augmenter.stats.as_dict()
        return s


def _masked_entity_keys(ex: MaskingExample, spans) -> list[tuple[int, int]]:
    """Char spans of masked entity units that the linker tied to a KB entity."""
    keys = []
    for span in spans:
        if getattr(span, "kind", "") != "entity":
            continue
        s, e = span
        a, b = int(ex.offsets[s][0]), int(ex.offsets[e - 1][1])
        for key in ex.entity_ids:  # unit may be wider than the mention (WordPiece edges)
            if a <= key[0] and key[1] <= b:
                keys.append(key)
    return keys
