"""Knowledge masking (ERNIE 1.0, OBERT): entity and phrase units masked whole, strategies mixed by
weight, and a curriculum from fine to coarse units and from short to long sequences."""
from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np

from wenzhi.model.corpora import named_entity_spans
from wenzhi.model.masking import MaskingExample, cached_units, fill_with_words, select_units
from wenzhi.model.segment import tagged_words


class EntityMasker:
    """Masks entity mentions whole: spans from `kg.EntityLinker` (linked to a KB entity), plus the
    corpus's own named-entity tags where it has them (People's Daily nr/ns/nt/nz). The rest of the
    budget goes to whole words so every strategy masks about the same ratio."""

    name = "entity"

    def __init__(self, linker=None, min_chars: int = 2):
        self.linker = linker
        self.min_chars = min_chars

    def link(self, example: MaskingExample) -> None:
        mentions = self.linker.link(example.text) if self.linker is not None else []
        spans, ids = entity_spans(mentions, example.pos_words, self.min_chars)
        example.entity_spans = [tuple(s) for s in spans.tolist()]
        example.entity_ids = {tuple(s): i for s, i in zip(spans.tolist(), ids.tolist()) if i >= 0}

    def select_spans(self, example, rng, budget):
        if example.entity_spans is None and "entity" not in example.units:
            self.link(example)
        units = cached_units(example, "entity", lambda: example.entity_spans)
        chosen = select_units(units, budget, rng)
        return fill_with_words(example, chosen, budget, rng, protect=units)


def entity_spans(mentions, pos_words=None, min_chars: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Entity character spans [n, 2] sorted, and the KB entity id of each (-1: a named entity the
    corpus tagged that the linker did not tie to the KB), from `kg.EntityLinker` mentions of at
    least `min_chars` characters and the corpus's named-entity tags."""
    spans: dict[tuple[int, int], int] = {}
    for m in mentions:
        if m.entity is not None and m.end - m.start >= min_chars:
            spans[(m.start, m.end)] = m.entity.id
    if pos_words is not None:
        for span in named_entity_spans(pos_words):
            spans.setdefault(span, -1)
    keys = sorted(spans)
    return (np.array(keys, dtype=np.int64).reshape(-1, 2), np.array([spans[k] for k in keys], dtype=np.int64))


# Tags (jieba and PKU share the ICTCLAS set) that may sit inside a noun phrase, and those that
# may end one. A phrase is a run of two or more such words: "新/a 世纪/n", "１/m 张/q", "国家/n 主席/n".
_PHRASE_INNER = ("n", "a", "b", "m", "q", "t", "j", "vn", "an", "eng", "f")
_PHRASE_END = ("n", "q", "t", "j", "vn", "an", "eng")
MAX_PHRASE_WORDS = 4


def _tag_in(tag: str, tags) -> bool:
    return tag in tags or (tag[:1] == "n" and "n" in tags)


def pos_chunks(words: list[tuple[int, int, str]]) -> list[tuple[int, int]]:
    """Noun and quantity phrases from POS-tagged words (start, end, tag), as character spans."""
    chunks: list[tuple[int, int]] = []
    run: list[tuple[int, int, str]] = []
    for word in words + [(0, 0, "")]:
        if word[2] and _tag_in(word[2], _PHRASE_INNER) and (not run or run[-1][1] == word[0]):
            run.append(word)
            continue
        while run and not _tag_in(run[-1][2], _PHRASE_END):
            run.pop()
        for i in range(0, len(run), MAX_PHRASE_WORDS):
            piece = run[i:i + MAX_PHRASE_WORDS]
            if len(piece) >= 2:
                chunks.append((piece[0][0], piece[-1][1]))
        run = [word] if word[2] and _tag_in(word[2], _PHRASE_INNER) else []
    return chunks


def pos_words(text: str, segmenter: str = "rjieba") -> list[tuple[int, int, str]]:
    """Words with POS tags as (start, end, tag) (model/segment.py)."""
    return tagged_words(text, segmenter)


class PhraseMasker:
    """Masks POS-based phrases whole (People's Daily tags where present, jieba.posseg otherwise),
    then fills the budget with whole words."""

    name = "phrase"

    def select_spans(self, example, rng, budget):
        def spans():
            if example.phrase_spans is None:
                if example.pos_words is None:
                    example.pos_words = pos_words(example.text, example.segmenter)
                example.phrase_spans = pos_chunks(example.pos_words)
            return example.phrase_spans

        units = cached_units(example, "phrase", spans)
        chosen = select_units(units, budget, rng)
        return fill_with_words(example, chosen, budget, rng, protect=units)


class MixedMasker:
    """Picks one masker per example with the given weights."""

    name = "mixed"

    def __init__(self, maskers: dict, weights: dict[str, float]):
        unknown = set(weights) - set(maskers)
        if unknown:
            raise ValueError(f"weights name unknown maskers {sorted(unknown)}; known: {sorted(maskers)}")
        self.maskers = maskers
        self.names = [n for n, w in weights.items() if w > 0]
        if not self.names:
            raise ValueError("MixedMasker needs at least one positive weight")
        w = np.array([weights[n] for n in self.names], dtype=float)
        self.probs = w / w.sum()

    def choose(self, rng: np.random.Generator) -> str:
        return self.names[int(rng.choice(len(self.names), p=self.probs))]

    def select_spans(self, example, rng, budget):
        return self.maskers[self.choose(rng)].select_spans(example, rng, budget)


@dataclass
class CurriculumStage:
    until: float  # this stage covers training progress up to this fraction (0, 1]
    weights: dict[str, float]  # strategy -> weight
    max_len: int  # longest example (tokens, specials included) in this stage


class Curriculum:
    """Stages over training progress: fine units and short sequences first, coarse units and long
    sequences later (ERNIE 1.0's basic -> phrase -> entity; OBERT's length 64 -> 512).

    Progress is the position in the prepared data (the trainer reads shards in order)."""

    def __init__(self, stages: list[CurriculumStage]):
        if not stages:
            raise ValueError("a curriculum needs at least one stage")
        ends = [s.until for s in stages]
        if ends != sorted(ends) or ends[-1] < 1.0 or ends[0] <= 0:
            raise ValueError(f"stage ends must increase and the last must be 1.0, got {ends}")
        self.stages = stages
        self._ends = ends

    def stage_at(self, progress: float) -> CurriculumStage:
        progress = min(max(progress, 0.0), 1.0)
        return self.stages[min(bisect.bisect_left(self._ends, progress), len(self.stages) - 1)]

    def index_at(self, progress: float) -> int:
        progress = min(max(progress, 0.0), 1.0)
        return min(bisect.bisect_left(self._ends, progress), len(self.stages) - 1)

    @classmethod
    def from_config(cls, items: list[dict], default_len: int) -> "Curriculum":
        return cls([CurriculumStage(float(i["until"]), dict(i["strategies"]), int(i.get("seq_len", default_len)))
                    for i in items])

    @classmethod
    def default(cls, seq_len: int, strategies: dict[str, float]) -> "Curriculum":
        """Three stages: characters and words on quarter-length sequences; phrases joining on
        half-length ones; then the configured mix at full length."""
        fine = {k: v for k, v in strategies.items() if k in ("char", "word")} or {"word": 1.0}
        middle = {k: v for k, v in strategies.items() if k in ("char", "word", "phrase")} or fine
        return cls([
            CurriculumStage(0.2, fine, max(16, seq_len // 4)),
            CurriculumStage(0.5, middle, max(16, seq_len // 2)),
            CurriculumStage(1.0, dict(strategies), seq_len),
        ])
