"""EntityFeatureTable: every entity's context-side features, written beside the alias index.

What `ProfileTable` (kg/entity_features.py) builds from store rows on first sight of an entity --
its relation names, short tails, disambiguation and description as characters and bigrams -- is
computed here once for the whole KB and kept as flat numeric arrays, so that a fresh linker reads
arrays instead of SQLite rows and builds no Python sets (bench/RESULTS.md, issue 14: on a cold
linker the first sight of each ambiguous alias's candidates was most of linking's time). The
arrays are what the compiled scorer (kg/context_scorer.py) works on.

Layout (CSR: `X_offsets[i]:X_offsets[i + 1]` slices `X_values`):
  entity_profile[entity id]          -> profile id (-1: no such entity); profile 0 is the empty one
  profile_relations[p], profile_tails[p] -> relation set, tail set (interned: many entities share them)
  profile_disambiguation (CSR)       sorted distinct code points of the normalised disambiguation
  profile_description (CSR)          sorted distinct bigram keys of the normalised description[:500]
  relation_set (CSR)                 -> relation-name ids (distinct non-empty normalised names)
  relation_chars / relation_bigrams (CSR, per relation name): sorted distinct code points / bigram keys
  tail_set (CSR)                     -> tail ids (distinct non-empty character sets of short tails)
  tail_chars (CSR, per tail)         sorted distinct code points
A bigram key is `first code point << 21 | second`. Entities whose features are the same share one
profile (the replicas of a grown KB, homonyms of one kind), so the table grows with the number of
distinct profiles, plus one int32 per entity.

The file is safetensors (numeric arrays only, format and version in its metadata, every array
and every index into another array checked on load: the scorer reads them unchecked), keyed by
the store's fingerprint and by `max_triples` (features come from each entity's first
`max_triples` triples). A stale, foreign or damaged file is rebuilt, as the alias index is.
"""
from __future__ import annotations

import itertools
import logging
import operator
import os
import time
from pathlib import Path

import numpy as np

from wenzhi.kg.alias_index import read_arrays
from wenzhi.kg.entity_features import SHORT_TAIL
from wenzhi.kg.names import normalize_each

log = logging.getLogger(__name__)

FORMAT = "wenzhi-entity-features"
FORMAT_VERSION = 1  # bump when normalisation, the features' definitions or the layout change
MAX_CODE_POINT = 0x10FFFF
_SECOND = operator.itemgetter(1)
_SEPARATOR = "\x01"  # between a head's short tails in the aggregate query (a head with one in a tail is read row by row)

# name -> (dtype, what its values index: an array whose length bounds them, or None)
_CSR = ("profile_disambiguation", "profile_description", "relation_set", "relation_chars", "relation_bigrams",
        "tail_set", "tail_chars")
_DTYPES = {"entity_profile": np.int32, "profile_relations": np.int32, "profile_tails": np.int32,
           **{f"{name}_offsets": np.int64 for name in _CSR},
           "profile_disambiguation_values": np.int32, "profile_description_values": np.int64,
           "relation_set_values": np.int32, "relation_chars_values": np.int32, "relation_bigrams_values": np.int64,
           "tail_set_values": np.int32, "tail_chars_values": np.int32}
# the order the scorer takes them in (kg/context_scorer.py)
KERNEL_ARRAYS = ("profile_relations", "profile_tails", "profile_disambiguation_offsets",
                 "profile_disambiguation_values", "profile_description_offsets", "profile_description_values",
                 "relation_set_offsets", "relation_set_values", "relation_chars_offsets", "relation_chars_values",
                 "relation_bigrams_offsets", "relation_bigrams_values", "tail_set_offsets", "tail_set_values",
                 "tail_chars_offsets", "tail_chars_values")


class FeatureTableError(ValueError):
    """A feature table file that is not one, is of another version, or does not hold together."""


def code_points(text: str) -> list[int]:
    """Sorted distinct code points of `text`."""
    return sorted(set(map(ord, text)))


def bigram_keys(text: str) -> list[int]:
    """Sorted distinct bigram keys of `text` (see the module docstring)."""
    return sorted({ord(a) << 21 | ord(b) for a, b in zip(text, text[1:])})


class EntityFeatureTable:
    def __init__(self, arrays: dict[str, np.ndarray], fingerprint: str, max_triples: int):
        self.arrays = arrays
        self.fingerprint = fingerprint
        self.max_triples = max_triples
        self.entity_profile = arrays["entity_profile"]
        self.kernel_arrays = tuple(arrays[name] for name in KERNEL_ARRAYS)

    @property
    def n_profiles(self) -> int:
        return len(self.arrays["profile_relations"])

    def profiles_of(self, entity_ids) -> list[int]:
        """The profile of each entity (0, the empty profile, for an id the table lacks)."""
        table, n = self.entity_profile, len(self.entity_profile)
        return [max(int(table[i]), 0) if 0 <= i < n else 0 for i in entity_ids]

    # -- building -------------------------------------------------------------------------
    @classmethod
    def build(cls, store, max_triples: int, progress: bool = False) -> "EntityFeatureTable":
        """One pass over the entities and one over per-head summaries of the triples (relation
        ids and short tails aggregated by SQLite: Python works per head, not per triple), both in
        id order."""
        from tqdm import tqdm

        start = time.perf_counter()
        lo, hi = SHORT_TAIL
        relation_sets: dict[frozenset, int] = {frozenset(): 0}  # relation ids -> set id
        tail_sets: dict[frozenset, int] = {frozenset(): 0}  # raw short tails -> set id
        # the aggregated texts -> set id (heads of a kind share them: each text is split once)
        relations_of: dict[str, int] = {}
        tails_of: dict[str | None, int] = {None: 0}
        profiles: dict[tuple, int] = {(0, 0, None, None): 0}  # (relations, tails, disambiguation, description)
        entity_profile = np.full(store.max_entity_id() + 1, -1, dtype=np.int32)
        heads = store.iter_head_summaries(lo, hi, _SEPARATOR)
        head = next(heads, None)
        for entity_id, disambiguation, description in tqdm(store.iter_entity_context(500), total=store.n_entities(),
                                                           desc="feature table", unit=" entities", disable=not progress):
            while head is not None and head[0] < entity_id:  # triples of a head the entities table lacks
                head = next(heads, None)
            if head is None or head[0] != entity_id:
                relations = tails = 0
            elif head[1] > max_triples or head[2]:
                # features from the first max_triples triples only, or a tail holding the
                # separator: this head's rows as the linker reads them
                rows = store.triple_rows([entity_id], max_triples)[entity_id]
                relations = relation_sets.setdefault(frozenset(map(_SECOND, rows)), len(relation_sets))
                tails = tail_sets.setdefault(frozenset([t for _, _, t in rows if lo <= len(t) <= hi]), len(tail_sets))
            else:
                _, _, _, relation_text, tail_text = head
                relations = relations_of.get(relation_text)
                if relations is None:
                    ids = frozenset(map(int, relation_text.split(",")))
                    relations = relations_of[relation_text] = relation_sets.setdefault(ids, len(relation_sets))
                tails = tails_of.get(tail_text)
                if tails is None:
                    tails = tails_of[tail_text] = tail_sets.setdefault(frozenset(tail_text.split(_SEPARATOR)),
                                                                       len(tail_sets))
            key = (relations, tails, disambiguation or None, description or None)
            entity_profile[entity_id] = profiles.setdefault(key, len(profiles))
        arrays = {"entity_profile": entity_profile}
        arrays.update(_relation_arrays(relation_sets, store.relation_names()))
        arrays.update(_tail_arrays(tail_sets))
        arrays.update(_profile_arrays(profiles))
        log.info("feature table: %d entities -> %d profiles, %d relation sets, %d tail sets in %.1fs",
                 int((entity_profile >= 0).sum()), len(profiles), len(relation_sets), len(tail_sets),
                 time.perf_counter() - start)
        return cls(arrays, store.fingerprint, max_triples)

    # -- persistence ----------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write the table as safetensors, atomically."""
        from safetensors.numpy import save

        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        metadata = {"format": FORMAT, "version": str(FORMAT_VERSION), "fingerprint": self.fingerprint,
                    "max_triples": str(self.max_triples)}
        try:
            with open(tmp, "wb") as fh:
                fh.write(save(self.arrays, metadata=metadata))
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | Path) -> "EntityFeatureTable":
        """Read a table written by `save`; FeatureTableError when the file is not one, is of
        another version, or an array or an index into another array is out of bounds."""
        meta, arrays = read_arrays(path, FORMAT, FORMAT_VERSION, _DTYPES, FeatureTableError, "feature table")
        problem = _check(arrays)
        if problem:
            raise FeatureTableError(f"{path}: {problem}")
        try:
            max_triples = int(meta.get("max_triples", ""))
        except ValueError as exc:
            raise FeatureTableError(f"{path}: max_triples {meta.get('max_triples')!r} is not a number") from exc
        return cls({name: arrays[name] for name in _DTYPES}, meta.get("fingerprint", ""), max_triples)

    @staticmethod
    def default_path(store) -> Path:
        return store.path.with_name(store.path.name + ".features")

    @classmethod
    def for_store(cls, store, max_triples: int, path: str | Path | None = None,
                  progress: bool = False) -> "EntityFeatureTable":
        """Load the table saved beside the store, rebuilding (and saving) it if the store
        changed, it was made for another `max_triples`, or the file is not a valid table."""
        path = Path(path) if path else cls.default_path(store)
        if path.exists():
            try:
                table = cls.load(path)
                if table.fingerprint == store.fingerprint and table.max_triples == max_triples:
                    return table
                log.info("feature table %s is stale (store re-imported or max_triples changed): rebuilding", path)
            except (ValueError, OSError) as exc:  # FeatureTableError is a ValueError
                log.warning("feature table %s unusable (%s): rebuilding", path, exc)
        table = cls.build(store, max_triples, progress=progress)
        try:
            table.save(path)
        except OSError as exc:  # e.g. a read-only KB directory: keep the in-memory table
            log.warning("could not save feature table to %s: %s", path, exc)
        return table


def _csr(rows, dtype, prefix: str) -> dict[str, np.ndarray]:
    """{prefix_offsets, prefix_values} of a list of integer sequences."""
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    values = np.fromiter(itertools.chain.from_iterable(rows), dtype=dtype, count=int(offsets[-1]))
    return {f"{prefix}_offsets": offsets, f"{prefix}_values": values}


def _relation_arrays(relation_sets: dict[frozenset, int], relation_names: dict[int, str]) -> dict[str, np.ndarray]:
    """Each relation set as the ids of its distinct non-empty normalised names (sorted, so the
    file does not depend on set order); each name as code points and bigram keys."""
    normalized = dict(zip(relation_names, normalize_each(relation_names.values())))
    name_ids: dict[str, int] = {}
    sets = [sorted({name_ids.setdefault(normalized[r], len(name_ids)) for r in ids if normalized[r]})
            for ids in relation_sets]  # (dicts keep insertion order: set ids are positions)
    names = list(name_ids)
    return {**_csr(sets, np.int32, "relation_set"), **_csr([code_points(n) for n in names], np.int32, "relation_chars"),
            **_csr([bigram_keys(n) for n in names], np.int64, "relation_bigrams")}


def _tail_arrays(tail_sets: dict[frozenset, int]) -> dict[str, np.ndarray]:
    """Each tail set as the ids of its distinct non-empty character sets (sorted)."""
    distinct = list(set().union(*tail_sets))
    chars_of = {t: tuple(code_points(n)) for t, n in zip(distinct, normalize_each(distinct))}  # one fold
    tail_ids: dict[tuple[int, ...], int] = {}
    sets = []
    for tails in tail_sets:
        chars = {chars_of[t] for t in tails} - {()}
        sets.append(sorted(tail_ids.setdefault(c, len(tail_ids)) for c in sorted(chars)))
    return {**_csr(sets, np.int32, "tail_set"), **_csr(list(tail_ids), np.int32, "tail_chars")}


def _profile_arrays(profiles: dict[tuple, int]) -> dict[str, np.ndarray]:
    keys = list(profiles)
    disambiguations = normalize_each([d or "" for _, _, d, _ in keys])
    descriptions = normalize_each([d or "" for _, _, _, d in keys])
    return {"profile_relations": np.array([r for r, _, _, _ in keys], dtype=np.int32),
            "profile_tails": np.array([t for _, t, _, _ in keys], dtype=np.int32),
            **_csr([code_points(d) for d in disambiguations], np.int32, "profile_disambiguation"),
            **_csr([bigram_keys(d) for d in descriptions], np.int64, "profile_description")}


def _check(a: dict[str, np.ndarray]) -> str | None:
    """What is wrong with the arrays, or None: the scorer indexes them without bounds checks."""
    n_profiles = len(a["profile_relations"])
    for name in _CSR:
        offsets, values = a[f"{name}_offsets"], a[f"{name}_values"]
        if len(offsets) == 0 or offsets[0] != 0 or offsets[-1] != len(values) or np.any(np.diff(offsets) < 0):
            return f"offsets of {name} do not fit its values"
    sizes = {"profile": n_profiles, "relation_set": len(a["relation_set_offsets"]) - 1,
             "relation": len(a["relation_chars_offsets"]) - 1, "tail_set": len(a["tail_set_offsets"]) - 1,
             "tail": len(a["tail_chars_offsets"]) - 1}
    bounded = (("entity_profile", "profile", -1), ("profile_relations", "relation_set", 0),
               ("profile_tails", "tail_set", 0), ("relation_set_values", "relation", 0),
               ("tail_set_values", "tail", 0))
    if n_profiles == 0 or len(a["profile_tails"]) != n_profiles:
        return "profile arrays of different lengths"
    for name in ("profile_disambiguation", "profile_description"):
        if len(a[f"{name}_offsets"]) != n_profiles + 1:
            return f"{name} does not have one entry per profile"
    if (len(a["relation_bigrams_offsets"]) != sizes["relation"] + 1):
        return "relation_bigrams does not have one entry per relation name"
    for name, of, low in bounded:
        values = a[name]
        if len(values) and (values.min() < low or values.max() >= sizes[of]):
            return f"{name} indexes outside {of}"
    for name in ("profile_disambiguation_values", "relation_chars_values", "tail_chars_values"):
        values = a[name]
        if len(values) and (values.min() < 0 or values.max() > MAX_CODE_POINT):
            return f"{name} holds a value that is no code point"
    for name in ("profile_description_values", "relation_bigrams_values"):
        values = a[name]
        if len(values) and (values.min() < 0 or values.max() >= 1 << 42):
            return f"{name} holds a value that is no bigram key"
    return None


__all__ = ["EntityFeatureTable", "FeatureTableError", "FORMAT_VERSION", "KERNEL_ARRAYS", "bigram_keys", "code_points"]
