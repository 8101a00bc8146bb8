"""The read stage: which items a partition holds, and reading them.

1. `index_corpus`: one streaming pass counts a corpus's items and keeps a `Checkpoint` every
   `STRIDE` items, so any item range can later be read without reading what comes before it.
2. Interleaving: the corpora are mixed in proportion to their sizes, always taking from the
   corpus furthest behind its share (ties: the earlier corpus). That is a merge of the corpora
   by the key (k / total_c, c) of item k of corpus c, so the position of any item has a closed
   form (`position`), and the items of positions [start, stop) are, per corpus, one contiguous
   range, found by binary search.
3. `plan_partitions`: partition p holds positions [p * partition_items, (p + 1) * partition_items);
   its plan is a few numbers per corpus (JSON-able: what a worker on another machine is sent).
4. `read_partition`: a plan's items in position order, each with its position.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from wenzhi.model.corpora import (Checkpoint, Document, document_records, kdconv_dialogue_records,
                                  kdconv_pairs_of_dialogue, pair_records)
from wenzhi.model.prepare_config import CorpusSpec
from wenzhi.model.prepare_examples import Item

STRIDE = 256  # items between two checkpoints: reading a range skips fewer than this many


# -- a corpus as one stream of (tag, item) --------------------------------------------------------
def corpus_records(spec: CorpusSpec, path: Path, start: Checkpoint = Checkpoint(), parse: bool = True):
    """(checkpoint, (tag, item)) of a corpus in file order, from `start` on, before skip/limit.
    Tags: 'doc' (Document), 'pair' (TripleSentence), 'dialogue' ((Document, pairs, turns): a
    KdConv dialogue with its grounded pairs, so a held-out fact can leave the text too).
    parse=False: items may be None where that is cheaper (counting)."""
    if spec.format == "kdconv" and spec.use in ("text", "both"):
        for cp, turns in kdconv_dialogue_records(path, start):
            pairs = list(kdconv_pairs_of_dialogue(turns)) if spec.use == "both" else []
            yield cp, ("dialogue", (Document("\n".join(t.text for t in turns if t.text), "kdconv"), pairs, turns))
        return
    streams = []
    if spec.use in ("triples", "both"):
        streams.append(("pair", lambda cp: pair_records(path, spec.format, cp)))
    if spec.use in ("text", "both"):
        streams.append(("doc", lambda cp: document_records(path, spec.format, cp, spec.text_field, parse)))
    for number, (tag, records) in enumerate(streams):
        if number < start.stream:
            continue
        first = start if number == start.stream else Checkpoint()
        for cp, item in records(Checkpoint(first.offset, first.line, first.state)):
            yield Checkpoint(cp.offset, cp.line, cp.state, number), (tag, item)


@dataclass
class CorpusIndex:
    total: int  # items after skip and limit
    checkpoints: list[Checkpoint]  # of items 0, STRIDE, 2 * STRIDE, ...

    def to_dict(self) -> dict:
        return {"total": self.total, "checkpoints": [c.to_list() for c in self.checkpoints]}

    @classmethod
    def from_dict(cls, raw: dict) -> "CorpusIndex":
        return cls(int(raw["total"]), [Checkpoint.from_list(c) for c in raw["checkpoints"]])


def index_corpus(spec: CorpusSpec, path: Path) -> CorpusIndex:
    total, checkpoints = 0, []
    stop = None if spec.limit is None else spec.skip + spec.limit
    for cp, _ in islice(corpus_records(spec, path, parse=False), spec.skip, stop):
        if total % STRIDE == 0:
            checkpoints.append(cp)
        total += 1
    return CorpusIndex(total, checkpoints)


def read_range(spec: CorpusSpec, path: Path, index: CorpusIndex, first: int, stop: int):
    """(tag, item) of items [first, stop) of the corpus (after skip)."""
    if first >= stop:
        return
    start = index.checkpoints[first // STRIDE]
    yield from (item for _, item in islice(corpus_records(spec, path, start), first % STRIDE, stop - first // STRIDE * STRIDE))


# -- interleaving -----------------------------------------------------------------------------
def position(k: int, c: int, totals: list[int]) -> int:
    """Position in the interleaved stream of item k of corpus c: the number of items of every
    corpus whose key (k' / total_i, i) is smaller than (k / total_c, c)."""
    tc = totals[c]
    pos = k
    for i, ti in enumerate(totals):
        if i == c or ti == 0:
            continue
        before = -(-k * ti // tc)  # items k' of corpus i with k' / ti < k / tc: ceil(k * ti / tc)
        if i < c and (k * ti) % tc == 0:
            before += 1  # k' / ti == k / tc, and corpus i comes first
        pos += min(before, ti)
    return pos


def items_before(p: int, c: int, totals: list[int]) -> int:
    """How many items of corpus c sit at positions < p (position() increases with k)."""
    lo, hi = 0, totals[c]
    while lo < hi:
        mid = (lo + hi) // 2
        if position(mid, c, totals) < p:
            lo = mid + 1
        else:
            hi = mid
    return lo


@dataclass
class PartitionPlan:
    number: int
    start: int  # first position
    stop: int
    ranges: list[tuple[int, int]]  # per corpus: items [first, stop)

    def to_dict(self) -> dict:
        return {"number": self.number, "start": self.start, "stop": self.stop, "ranges": self.ranges}

    @classmethod
    def from_dict(cls, raw: dict) -> "PartitionPlan":
        return cls(raw["number"], raw["start"], raw["stop"], [tuple(r) for r in raw["ranges"]])


def plan_partitions(totals: list[int], partition_items: int) -> list[PartitionPlan]:
    grand_total = sum(totals)
    plans = []
    bounds = list(range(0, grand_total, partition_items)) + [grand_total]
    before = [[items_before(b, c, totals) for c in range(len(totals))] for b in bounds]
    for number in range(len(bounds) - 1):
        ranges = [(before[number][c], before[number + 1][c]) for c in range(len(totals))]
        plans.append(PartitionPlan(number, bounds[number], bounds[number + 1], ranges))
    return plans


def read_partition(plan: PartitionPlan, corpora: list[CorpusSpec], paths: list[Path],
                   indexes: list[CorpusIndex]) -> list[Item]:
    """The plan's items in position order."""
    totals = [ix.total for ix in indexes]
    items = []
    for c, ((first, stop), spec, path, index) in enumerate(zip(plan.ranges, corpora, paths, indexes)):
        for k, (tag, payload) in enumerate(read_range(spec, path, index, first, stop), first):
            items.append(Item(position(k, c, totals), c, k, tag, payload))
    items.sort(key=lambda it: it.position)
    if [it.position for it in items] != list(range(plan.start, plan.stop)):
        raise RuntimeError(f"partition {plan.number}: corpora changed since they were indexed "
                           f"(read {len(items)} items, expected {plan.stop - plan.start})")
    return items
