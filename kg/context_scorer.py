"""ContextScorer: the linear scores of ambiguous mentions' candidates, compiled, a batch at a time.

`DefinitionScorer.occurrence_scores` (kg/linker_definition.py) defines the score of a candidate at an alias
occurrence: its six context features (kg/entity_features.py: relation, tail, disambiguation and
description overlap with the text around the mention) times their weights, then the context-free
terms, summed in that order by Python's `sum`. In Python each feature costs set building and set
intersections per candidate; here the same numbers come from the feature table's arrays
(kg/feature_table.py) in one numba-compiled call for every ambiguous mention of a batch. The
result is the same floats, not close ones: the features are ratios of the same integer counts,
multiplied by the same weights, summed in the same order the running Python's `sum` uses (plain
left to right before 3.12, Neumaier's compensated sum from 3.12); tests/kg checks equality.

The kernel is hand-written because it is this project's own feature definition; numba compiles
it (`cache=True`: the machine code is written beside this file, or to numba's user cache, the
first time and loaded by later processes). Nothing here runs without the feature table.
"""
from __future__ import annotations

import math

import numba
import numpy as np

from wenzhi.kg.feature_table import EntityFeatureTable

# Does this Python's sum() of floats compensate (3.12+)? The scores must be its floats.
NEUMAIER_SUM = sum([0.1] * 10) == 1.0
N_FIXED = 8  # context-free terms per candidate (FEATURES after the context ones)


class ContextScorer:
    """The candidates of every alias scored so far, as arrays the kernel reads (key slot ->
    candidates' profiles and weighted context-free terms), and the call that scores a batch."""

    def __init__(self, table: EntityFeatureTable, weights, context_window: int, max_keys: int = 200_000):
        self.table = table
        self.context_weights = np.array(weights[:6], dtype=np.float64)
        self.window = context_window
        self.max_keys = max_keys
        self._present = np.zeros(0x110000, dtype=np.uint8)  # the window's code points, set and reset per mention
        self.clear()
        # load the compiled kernel now (from numba's cache, or compile it the first time ever),
        # not inside the first batch
        self.score(np.frombuffer(b"", dtype=np.uint32), (), (), (), (), ())  # read-only, as the batches' codes

    def clear(self) -> None:
        self.slots: dict[int, int] = {}  # key id -> slot
        self._slot_start = np.zeros(1024, dtype=np.int64)
        self._slot_count = np.zeros(1024, dtype=np.int64)
        self._profile = np.zeros(4096, dtype=np.int32)
        self._fixed = np.zeros((4096, N_FIXED), dtype=np.float64)
        self._fixed_score = np.zeros(4096, dtype=np.float64)
        self._n = 0  # candidate rows used

    def __contains__(self, key_id: int) -> bool:
        return key_id in self.slots

    def make_room(self, n_keys: int) -> bool:
        """Before adding `n_keys` aliases: start over if they would pass `max_keys` (bounded
        memory, as the linker's other caches; never in the middle of a batch's additions).
        True when it did: the caller registers the batch's other aliases again."""
        if len(self.slots) + n_keys > self.max_keys:
            self.clear()
            return True
        return False

    def add(self, key_id: int, entity_ids, fixed_terms, fixed_scores) -> None:
        """Register an alias: its candidates' entity ids, each one's weighted context-free terms
        (N_FIXED floats) and their Python sum."""
        slot, n, k = len(self.slots), self._n, len(entity_ids)
        if slot >= len(self._slot_start):
            self._slot_start = np.resize(self._slot_start, 2 * slot)
            self._slot_count = np.resize(self._slot_count, 2 * slot)
        if n + k > len(self._profile):
            size = 2 * (n + k)
            self._profile = np.resize(self._profile, size)
            self._fixed = np.resize(self._fixed, (size, N_FIXED))
            self._fixed_score = np.resize(self._fixed_score, size)
        self._slot_start[slot], self._slot_count[slot] = n, k
        self._profile[n : n + k] = self.table.profiles_of(entity_ids)
        self._fixed[n : n + k] = fixed_terms
        self._fixed_score[n : n + k] = fixed_scores
        self._n = n + k
        self.slots[key_id] = slot

    def score(self, codes: np.ndarray, text_start, text_end, start, end, key_ids) -> tuple[list[float], list[int]]:
        """The scores of the candidates of each occurrence (start, end, key id) in `codes` (the
        code points of the batch's normalised texts, joined), whose text spans
        [text_start, text_end): one flat list, and where each occurrence's scores begin (and the
        last ends)."""
        out, offsets = self.score_arrays(codes, text_start, text_end, start, end, key_ids)
        return out.tolist(), offsets.tolist()

    def score_arrays(self, codes: np.ndarray, text_start, text_end, start, end, key_ids) -> tuple[np.ndarray, np.ndarray]:
        """`score` as the numpy arrays (float64 scores, int64 offsets)."""
        slots = np.fromiter(map(self.slots.__getitem__, key_ids), dtype=np.int64, count=len(key_ids))
        counts = self._slot_count[slots]
        offsets = np.zeros(len(slots) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        out = np.empty(int(offsets[-1]), dtype=np.float64)
        _score(codes, np.asarray(text_start, dtype=np.int64), np.asarray(text_end, dtype=np.int64),
               np.asarray(start, dtype=np.int64), np.asarray(end, dtype=np.int64), slots, self.window,
               self._slot_start, self._slot_count, self._profile, self._fixed, self._fixed_score,
               self.context_weights, NEUMAIER_SUM, self._present, self.table.kernel_arrays, offsets, out)
        return out, offsets


@numba.njit(cache=True)
def _contains(sorted_values, lo, hi, value) -> bool:
    """Binary search in sorted_values[lo:hi]."""
    end = hi
    while lo < hi:
        mid = (lo + hi) >> 1
        if sorted_values[mid] < value:
            lo = mid + 1
        else:
            hi = mid
    return lo < end and sorted_values[lo] == value


_EMPTY = -1  # a free slot of the window's bigram set (keys are >= 0)


@numba.njit(cache=True)
def _slot(key, mask):
    """A bigram key's first slot in the window's set: middle bits of a multiplicative hash (its
    low bits would be those of the second character alone)."""
    return ((key * 0x9E3779B1) >> 29) & mask


@numba.njit(cache=True)
def _in_grams(table, key) -> bool:
    """Is `key` in the open-addressing set `table` (size a power of two, over twice its keys)?"""
    mask = len(table) - 1
    i = _slot(key, mask)
    while table[i] != _EMPTY:
        if table[i] == key:
            return True
        i = (i + 1) & mask
    return False


@numba.njit(cache=True)
def _python_sum(terms, n, neumaier) -> float:
    """sum(terms[:n]) as CPython computes it for floats (the start 0 is an int)."""
    total = 0.0 + terms[0]
    c = 0.0
    for i in range(1, n):
        x = terms[i]
        if neumaier:
            t = total + x
            if abs(total) >= abs(x):
                c += (total - t) + x
            else:
                c += (x - t) + total
            total = t
        else:
            total += x
    if neumaier and c != 0.0 and math.isfinite(c):
        total += c
    return total


@numba.njit(cache=True)
def _hits(offsets, values, g, present) -> int:
    """How many of group g's characters (values[offsets[g]:offsets[g + 1]]) the window holds."""
    hits = 0
    for q in range(offsets[g], offsets[g + 1]):
        hits += present[values[q]]
    return hits


@numba.njit(cache=True)
def _max_cover(set_offsets, set_values, offsets, values, s, present) -> float:
    """The largest fraction of a group's characters in the window, over the groups of set s."""
    best = 0.0
    for r in range(set_offsets[s], set_offsets[s + 1]):
        g = set_values[r]
        hits = _hits(offsets, values, g, present)
        if hits > 0:
            cover = hits / (offsets[g + 1] - offsets[g])
            if cover > best:
                best = cover
    return best


@numba.njit(cache=True)
def _context_terms(p, present, grams, distinct, n_grams, weights, table, terms) -> bool:
    """The weighted context features of profile p into terms[:6]; False when the context gives
    it no evidence (no character shared, no description): its score is then the fixed sum.
    `grams`: the window's bigrams as a set (see `_in_grams`), `distinct` the same in a list,
    `n_grams` how many."""
    (profile_relations, profile_tails, dis_offsets, dis_chars, desc_offsets, desc_grams, rs_offsets, rs_values,
     rc_offsets, rc_values, rb_offsets, rb_values, ts_offsets, ts_values, tc_offsets, tc_values) = table
    shared = False
    rel_cover = 0.0
    best_hits = 0
    gram_cover = 0.0
    rs = profile_relations[p]
    for r in range(rs_offsets[rs], rs_offsets[rs + 1]):
        g = rs_values[r]
        hits = _hits(rc_offsets, rc_values, g, present)
        if hits > 0:
            shared = True
            cover = hits / (rc_offsets[g + 1] - rc_offsets[g])
            if cover > rel_cover:
                rel_cover = cover
            if hits > best_hits:
                best_hits = hits
            n_relation_grams = rb_offsets[g + 1] - rb_offsets[g]
            if n_relation_grams > 0:
                found = 0
                for q in range(rb_offsets[g], rb_offsets[g + 1]):
                    if _in_grams(grams, rb_values[q]):
                        found += 1
                cover = found / n_relation_grams
                if cover > gram_cover:
                    gram_cover = cover
    tail_cover = _max_cover(ts_offsets, ts_values, tc_offsets, tc_values, profile_tails[p], present)
    if tail_cover > 0.0:
        shared = True
    dis_cover = 0.0
    n_dis = dis_offsets[p + 1] - dis_offsets[p]
    if n_dis > 0:
        hits = _hits(dis_offsets, dis_chars, p, present)
        if hits > 0:
            shared = True
        dis_cover = hits / n_dis
    description = 0.0
    n_desc = desc_offsets[p + 1] - desc_offsets[p]
    if n_desc > 0 and n_grams > 0:
        found = 0
        for i in range(n_grams):
            if _contains(desc_grams, desc_offsets[p], desc_offsets[p + 1], distinct[i]):
                found += 1
        description = found / n_grams
    if not shared and n_desc == 0:
        return False
    terms[0] = weights[0] * rel_cover
    terms[1] = weights[1] * (min(best_hits, 4) / 4.0)
    terms[2] = weights[2] * gram_cover
    terms[3] = weights[3] * tail_cover
    terms[4] = weights[4] * dis_cover
    terms[5] = weights[5] * description
    return True


@numba.njit(cache=True)
def _score(codes, text_start, text_end, start, end, slots, window, slot_start, slot_count, profile, fixed,
           fixed_score, weights, neumaier, present, table, offsets, out):
    """out[offsets[m] + j] = the score of candidate j of occurrence m (see `ContextScorer.score`)."""
    chars = np.empty(2 * window + 1, dtype=np.int64)
    distinct = np.empty(2 * window, dtype=np.int64)
    used = np.empty(2 * window, dtype=np.int64)  # the set's slot of each of `distinct`
    size = 4
    while size < 4 * window:
        size *= 2
    grams = np.full(size, _EMPTY, dtype=np.int64)
    most = 0
    for m in range(len(slots)):
        most = max(most, slot_count[slots[m]])
    memo_profile = np.empty(most, dtype=np.int64)
    memo_terms = np.empty((most, 6), dtype=np.float64)
    memo_evidence = np.empty(most, dtype=np.bool_)
    terms = np.empty(6 + fixed.shape[1], dtype=np.float64)
    mask = size - 1
    for m in range(len(slots)):
        # the text of `EntityLinker._context`: `window` characters each side, "\x00" between
        n = 0
        for i in range(max(text_start[m], start[m] - window), start[m]):
            chars[n] = codes[i]
            n += 1
        chars[n] = 0
        n += 1
        for i in range(end[m], min(text_end[m], end[m] + window)):
            chars[n] = codes[i]
            n += 1
        for i in range(n):
            present[chars[i]] = 1
        n_grams = 0  # the window's distinct bigrams, into the set and the list
        for i in range(n - 1):
            key = chars[i] << 21 | chars[i + 1]
            h = _slot(key, mask)
            while grams[h] != _EMPTY and grams[h] != key:
                h = (h + 1) & mask
            if grams[h] == _EMPTY:
                grams[h] = key
                distinct[n_grams] = key
                used[n_grams] = h
                n_grams += 1
        n_memo = 0
        first = slot_start[slots[m]]
        for j in range(slot_count[slots[m]]):
            c = first + j
            p = profile[c]
            k = 0
            while k < n_memo and memo_profile[k] != p:  # homonyms sharing a profile: computed once
                k += 1
            if k == n_memo:
                memo_profile[k] = p
                memo_evidence[k] = _context_terms(p, present, grams, distinct, n_grams, weights, table,
                                                  memo_terms[k])
                n_memo += 1
            if not memo_evidence[k]:
                out[offsets[m] + j] = fixed_score[c]
                continue
            terms[:6] = memo_terms[k]
            terms[6:] = fixed[c]
            out[offsets[m] + j] = _python_sum(terms, len(terms), neumaier)
        for i in range(n):
            present[chars[i]] = 0
        for i in range(n_grams):  # empty the set: clear exactly the slots used
            grams[used[i]] = _EMPTY
