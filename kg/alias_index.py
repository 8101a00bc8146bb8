"""AliasIndex: an Aho-Corasick automaton over normalised aliases -> candidate entities + prior.

Aliases of an entity: its base name, its full name when it carries a disambiguation (so text
quoting the full name matches it exactly), and the tails of alias relations. The prior
p(entity | alias) is proportional to the entity's number of triples (how well the KB knows it:
the only popularity signal a bare triple dump has), halved for aliases taken from alias
relations, which are less reliable than the name itself.

Each distinct normalised alias is a key; the candidates of key k are
entity_ids[offsets[k]:offsets[k+1]] with their priors. Each key also carries how often it
occurs in ordinary text (a sample of the shared corpus, per million characters): names that are
everyday words (是什么, 地方, 的) are rarely what a text is about, the "keyphraseness" signal of
entity-linking work, estimated without labels. One-character keys (汉字 entries such as 瘢) stay
out of the automaton, in a code point table beside it: in running text nearly every character
would match one, which would cost the linker most of its time for mentions it does not use
unless asked (`rank`, NER spans).

The automaton is daachorse's character-wise double array (Rust): a state's child is found by
one array lookup, where pyahocorasick scanned a node's children one by one (thousands at the
root over Chinese names). bench/alias_matchers.py measured it against pyahocorasick and
ahocorasick-rs on the index's own keys (bench/RESULTS.md). It is rebuilt from the keys when the
index is loaded rather than deserialised: the file holds only UTF-8 text and numeric arrays
(safetensors), so a file someone hands you can be wrong but cannot run code -- no pickle, and no
library deserialiser trusted with bytes it cannot check.
"""
from __future__ import annotations

import functools
import logging
import os
import re
import time
from array import array
from pathlib import Path

import numpy as np

from wenzhi.kg.names import normalize

log = logging.getLogger(__name__)

FORMAT = "wenzhi-alias-index"
FORMAT_VERSION = 5  # bump when normalisation or layout changes
MAX_ALIAS_CHARS = 1023  # longer "names" are data errors, never worth matching
ALIAS_RELATION_WEIGHT = 0.5
# Keys are normalised, so never hold whitespace: one newline between keys in the stored text, and
# between texts when a batch is matched in one pass (no key can match across it).
SEPARATOR = "\n"
_SURROGATE = re.compile("[\ud800-\udfff]")


class AliasIndexError(ValueError):
    """An alias index file that is not one, is of another version, or does not hold together."""


class AliasIndex:
    def __init__(self, patterns: list[str], pattern_keys: array, single_chars: str, single_keys: array,
                 offsets: array, entity_ids: array, priors: array, fingerprint: str,
                 text_frequency: array | None = None):
        """The keys (normalised aliases) of more than one character, `patterns`, go to the
        automaton: pattern i is key pattern_keys[i]; the 1-character ones are `single_chars`, one
        character each, key single_keys[i]. `offsets`, `entity_ids`, `priors`: the candidates of
        each key (see the module docstring). `build` makes an index, `load` reads a saved one."""
        import daachorse

        n = len(offsets) - 1
        if len(patterns) != len(pattern_keys) or len(single_chars) != len(single_keys):
            raise AliasIndexError("keys and key ids do not pair up")
        self.offsets = offsets
        self.entity_ids = entity_ids
        self.priors = priors
        self.fingerprint = fingerprint
        # occurrences per million characters of ordinary text, per key
        self.text_frequency = text_frequency if text_frequency is not None else array("f", bytes(4 * n))
        self._pattern_key = pattern_keys
        # (empty when no name has 2+ characters: it then matches nothing)
        self._automaton = daachorse.CharwiseDoubleArrayAhoCorasick(patterns)
        self._single_chars = dict(zip(single_chars, single_keys))
        self._single_table = np.full(0x10000, -1, dtype=np.int32)  # the BMP; others via the dict
        for key, k in self._single_chars.items():
            if ord(key) < 0x10000:
                self._single_table[ord(key)] = k
        self._unsaved: tuple | None = None  # what `save` writes, kept by `build` until then

    @classmethod
    def from_keys(cls, keys: list[str], offsets: array, entity_ids: array, priors: array, fingerprint: str,
                  text_frequency: array | None = None) -> "AliasIndex":
        """An index over `keys` (key id = position in the list), with their candidates."""
        patterns = [key for key in keys if len(key) > 1]
        pattern_keys = array("i", (k for k, key in enumerate(keys) if len(key) > 1))
        single_chars = "".join(key for key in keys if len(key) == 1)
        single_keys = array("i", (k for k, key in enumerate(keys) if len(key) == 1))
        index = cls(patterns, pattern_keys, single_chars, single_keys, offsets, entity_ids, priors, fingerprint,
                    text_frequency)
        index._unsaved = (patterns, single_chars)
        return index

    def __len__(self) -> int:
        return len(self.offsets) - 1

    # -- building -------------------------------------------------------------------------
    @classmethod
    def build(cls, store, progress: bool = False, corpus: list[str] | None = None) -> "AliasIndex":
        """`corpus`: ordinary text for the alias frequencies (default: `reference_corpus()`)."""
        from tqdm import tqdm

        start = time.perf_counter()
        # alias -> entity id, or {entity id: weight} once a second entity shares it; most
        # aliases name one entity, and a bare int keeps memory down at KgCLUE scale.
        table: dict[str, object] = {}
        weights: dict[int, float] = {}

        def add(alias: str, entity_id: int, weight: float) -> None:
            key = normalize(alias)
            if not key or len(key) > MAX_ALIAS_CHARS:
                return
            cur = table.get(key)
            if cur is None:
                if weight == 1.0:
                    table[key] = entity_id
                else:
                    table[key] = {entity_id: weight}
            elif isinstance(cur, dict):
                cur[entity_id] = max(cur.get(entity_id, 0.0), weight)
            elif cur != entity_id:
                table[key] = {cur: 1.0, entity_id: weight}

        for e in tqdm(store.iter_entities(), total=store.n_entities(), desc="alias index", unit=" entities",
                      disable=not progress):
            weights[e.id] = float(max(e.n_triples, 1))
            add(e.base, e.id, 1.0)
            if e.disambiguation:
                add(e.name, e.id, 1.0)
        for entity_id, alias in store.iter_aliases():
            add(alias, entity_id, ALIAS_RELATION_WEIGHT)

        offsets = array("q", [0])
        ids = array("i")
        priors = array("f")
        for cands in table.values():
            if isinstance(cands, dict):
                scored = sorted(((weights[e] * w, e) for e, w in cands.items()), reverse=True)
                total = sum(s for s, _ in scored)
                for s, e in scored:
                    ids.append(e)
                    priors.append(s / total)
            else:
                ids.append(cands)
                priors.append(1.0)
            offsets.append(len(ids))
        keys = list(table)
        del table, weights
        index = cls.from_keys(keys, offsets, ids, priors, store.fingerprint)
        index.count_text_frequency(reference_corpus() if corpus is None else corpus)
        log.info("alias index: %d aliases -> %d candidates in %.1fs", len(index), len(ids),
                 time.perf_counter() - start)
        return index

    # -- persistence ----------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write the index as safetensors (numeric arrays, and the keys as UTF-8 text), atomically."""
        from safetensors.numpy import save

        if self._unsaved is None:
            raise ValueError("only a freshly built index can be saved (a loaded one is already on disk)")
        patterns, single_chars = self._unsaved
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tensors = {
            "patterns": _utf8(SEPARATOR.join(patterns)),
            "pattern_keys": np.frombuffer(self._pattern_key, dtype=np.int32),
            "single_chars": _utf8(single_chars),
            "single_keys": np.array(list(self._single_chars.values()), dtype=np.int32),
            "offsets": np.frombuffer(self.offsets, dtype=np.int64),
            "entity_ids": np.frombuffer(self.entity_ids, dtype=np.int32),
            "priors": np.frombuffer(self.priors, dtype=np.float32),
            "text_frequency": np.frombuffer(self.text_frequency, dtype=np.float32),
        }
        metadata = {"format": FORMAT, "version": str(FORMAT_VERSION), "fingerprint": self.fingerprint}
        try:
            with open(tmp, "wb") as fh:  # (not save_file: that one makes the file private to its owner)
                fh.write(save(tensors, metadata=metadata))
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self._unsaved = None

    @classmethod
    def load(cls, path: str | Path) -> "AliasIndex":
        """Read an index written by `save`; AliasIndexError when the file is not one, is of
        another version, or its parts do not fit together. Nothing in it is executed."""
        want = {"patterns": np.uint8, "pattern_keys": np.int32, "single_chars": np.uint8, "single_keys": np.int32,
                "offsets": np.int64, "entity_ids": np.int32, "priors": np.float32, "text_frequency": np.float32}
        meta, arrays = read_arrays(path, FORMAT, FORMAT_VERSION, want, AliasIndexError, "alias index")
        try:
            text = arrays["patterns"].tobytes().decode("utf-8")
            single_chars = arrays["single_chars"].tobytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise AliasIndexError(f"{path}: keys are not UTF-8 ({exc})") from exc
        patterns = text.split(SEPARATOR) if text else []
        offsets, n_cands = arrays["offsets"], len(arrays["entity_ids"])
        n = len(offsets) - 1
        key_ids = np.concatenate([arrays["pattern_keys"], arrays["single_keys"]])
        # every key id once, patterns of 2+ characters, candidate slices in bounds
        if (n < 0 or len(key_ids) != n or len(patterns) != len(arrays["pattern_keys"])
                or len(single_chars) != len(arrays["single_keys"]) or len(arrays["text_frequency"]) != n
                or len(arrays["priors"]) != n_cands or offsets[0] != 0 or offsets[-1] != n_cands
                or np.any(np.diff(offsets) < 0) or (n and (key_ids.min() < 0 or key_ids.max() >= n))
                or np.any(np.bincount(key_ids, minlength=n) != 1)
                or (patterns and min(map(len, patterns)) < 2)):
            raise AliasIndexError(f"{path}: keys, candidates and offsets do not fit together")
        return cls(patterns, array("i", arrays["pattern_keys"].tobytes()), single_chars,
                   array("i", arrays["single_keys"].tobytes()), array("q", offsets.tobytes()),
                   array("i", arrays["entity_ids"].tobytes()), array("f", arrays["priors"].tobytes()),
                   meta.get("fingerprint", ""), array("f", arrays["text_frequency"].tobytes()))

    @staticmethod
    def default_path(store) -> Path:
        return store.path.with_name(store.path.name + ".aliases")

    @classmethod
    def for_store(cls, store, path: str | Path | None = None, progress: bool = False) -> "AliasIndex":
        """Load the index saved beside the store, rebuilding (and saving) it if the store changed
        or the file is not a valid index (another version, truncated, foreign)."""
        path = Path(path) if path else cls.default_path(store)
        if path.exists():
            try:
                index = cls.load(path)
                if index.fingerprint == store.fingerprint:
                    return index
                log.info("alias index %s is stale (store re-imported): rebuilding", path)
            except (ValueError, OSError) as exc:  # AliasIndexError is a ValueError
                log.warning("alias index %s unusable (%s): rebuilding", path, exc)
        index = cls.build(store, progress=progress)
        try:
            index.save(path)
        except OSError as exc:  # e.g. a read-only KB directory: keep the in-memory index
            log.warning("could not save alias index to %s: %s", path, exc)
        return index

    # -- lookups --------------------------------------------------------------------------
    def count_text_frequency(self, texts) -> None:
        """Occurrences of each key per million characters of `texts` (every occurrence,
        1-character keys included)."""
        norms = [normalize(t) for t in texts]
        chars = sum(map(len, norms))
        found = self.matches(SEPARATOR.join(norms), single_chars=True)
        counts = np.bincount(np.fromiter((k for _, _, k in found), np.int64, len(found)),
                             minlength=len(self)).astype(np.float64)
        if chars:
            counts *= 1e6 / chars
        self.text_frequency = array("f", counts.astype(np.float32).tobytes())

    def _slice(self, key_id: int, limit: int | None = None) -> list[tuple[int, float]]:
        a, b = self.offsets[key_id], self.offsets[key_id + 1]
        if b - a == 1:
            return [(self.entity_ids[a], 1.0)]
        if limit is not None:  # the first `limit` (highest priors): not a whole homonym group of thousands
            b = min(b, a + limit)
        return list(zip(self.entity_ids[a:b], self.priors[a:b]))

    def key_id(self, alias: str, normalized: bool = False) -> int | None:
        key = alias if normalized else normalize(alias)
        if len(key) == 1:
            return self._single_chars.get(key)
        for start, end, pattern in self._find(key):
            if start == 0 and end == len(key):
                return self._pattern_key[pattern]
        return None

    def candidates(self, alias: str, normalized: bool = False) -> list[tuple[int, float]]:
        """(entity id, prior) for an alias, highest prior first; [] when unknown."""
        key_id = self.key_id(alias, normalized)
        return [] if key_id is None else self._slice(key_id)

    def candidate_count(self, key_id: int) -> int:
        return self.offsets[key_id + 1] - self.offsets[key_id]

    def first_candidate(self, key_id: int) -> int:
        """The entity id of the key's first candidate (highest prior)."""
        return self.entity_ids[self.offsets[key_id]]

    def key_candidates(self, key_id: int, limit: int | None = None) -> list[tuple[int, float]]:
        """(entity id, prior) of a key, highest prior first; the first `limit` of them if given."""
        return self._slice(key_id, limit)

    def matches(self, normalized_text: str, single_chars: bool = False) -> list[tuple[int, int, int]]:
        """Alias occurrences in normalised text: (start, end, key_id), end exclusive, in order of
        their end (longest first at one end); then the 1-character ones, when asked, in text order."""
        key = self._pattern_key
        found = [(s, e, key[p]) for s, e, p in self._find(normalized_text)]
        if single_chars and self._single_chars:
            found += self._single_char_matches(normalized_text)
        return found

    def longest_matches(self, normalized_text: str, single_chars: bool = False) -> list[tuple[int, int, int]]:
        """The occurrences a reader would take as mentions: longest first, then leftmost, each
        overlapping none taken before it. (start, end, key_id) in text order."""
        if single_chars:  # key ids throughout (1-character matches have no automaton pattern)
            found, key = self.matches(normalized_text, single_chars=True), None
        else:  # automaton pattern ids, turned into key ids only for the matches taken
            found, key = self._find(normalized_text), self._pattern_key
        # In start order, a match overlapping none before it (it starts at or after the furthest
        # end so far) begins a run of overlapping matches that no choice crosses. Most runs hold
        # one match, taken as it is; only the others need the longest-first pass.
        found.sort()  # (start, end, id) from end order: nearly sorted already
        # runs are found[first:i] (positions, not lists: a list per run was one more object per
        # match for the garbage collector)
        chosen, first, i, furthest = [], 0, 0, -1
        found.append((furthest, furthest, -1))  # a sentinel ends the last run
        for m in found:
            if m[0] >= furthest or m[2] < 0:
                if i - first == 1:
                    s, e, p = found[first]
                    chosen.append((s, e, p if key is None else key[p]))
                elif i - first == 2:  # two that overlap: the longer, else the first (leftmost)
                    s, e, p = found[first]
                    s2, e2, p2 = found[first + 1]
                    if e2 - s2 > e - s:
                        s, e, p = s2, e2, p2
                    chosen.append((s, e, p if key is None else key[p]))
                elif i > first:
                    chosen += _longest_first(found[first:i], key, furthest)
                first = i
            if m[1] > furthest:
                furthest = m[1]
            i += 1
        return chosen

    def _find(self, text: str) -> list[tuple[int, int, int]]:
        """(start, end, pattern id) of every automaton match, in order of their end."""
        try:
            return self._automaton.find_overlapping(text)
        except UnicodeEncodeError:  # a lone surrogate (no alias holds one): same length, no match
            return self._automaton.find_overlapping(_SURROGATE.sub("\ufffd", text))

    def _single_char_matches(self, text: str) -> list[tuple[int, int, int]]:
        if len(text) < 256 or max(text) > "\uffff":  # short (a question) or astral: one dict lookup each
            get = self._single_chars.get
            return [(i, i + 1, k) for i, ch in enumerate(text) if (k := get(ch)) is not None]
        codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        ids = self._single_table[codes]
        at = np.flatnonzero(ids >= 0)
        return list(zip(at.tolist(), (at + 1).tolist(), ids[at].tolist()))


def read_arrays(path, fmt: str, version: int, dtypes: dict, error: type[Exception], what: str):
    """(metadata, arrays) of a safetensors file written with metadata {format: fmt, version},
    holding at least the 1-d arrays `dtypes` names with those dtypes; `error` (with the path and
    what is wrong) otherwise. Only numeric arrays and a JSON header are read: nothing runs."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as fh:
            meta = fh.metadata() or {}
            if meta.get("format") != fmt or meta.get("version") != str(version):
                raise error(f"{path}: not a version {version} {what} "
                            f"(format {meta.get('format')!r}, version {meta.get('version')!r})")
            arrays = {name: fh.get_tensor(name) for name in fh.keys()}
    except SafetensorError as exc:
        raise error(f"{path}: not a safetensors {what} ({exc})") from exc
    for name, dtype in dtypes.items():
        a = arrays.get(name)
        if a is None or a.dtype != dtype or a.ndim != 1:
            raise error(f"{path}: array {name!r} missing or not 1-d {np.dtype(dtype).name}")
    return meta, arrays


def _utf8(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8)


def _longest_first(run: list[tuple[int, int, int]], key, end: int) -> list[tuple[int, int, int]]:
    """Of overlapping (start, end, id) matches in start order, ending at `end` at the furthest,
    the longest first, then the leftmost, skipping any that overlaps one taken: (start, end, key
    id) in text order; `key` maps ids to key ids (None: they are key ids)."""
    # (-length, start, ...) tuples sort longest first, then leftmost, with no key function
    ordered = sorted((s - e, s, e, p) for s, e, p in run)
    origin = run[0][0]
    taken = bytearray(end - origin)
    chosen = []
    for _, s, e, p in ordered:
        if taken.find(1, s - origin, e - origin) == -1:
            taken[s - origin : e - origin] = b"\x01" * (e - s)
            chosen.append((s, e, p if key is None else key[p]))
    chosen.sort()
    return chosen


REFERENCE_CORPUS = (("corpus/people_daily_1998_pos.txt", 600_000), ("corpus/reviews_pos.txt", 300_000),
                    ("corpus/reviews_neg.txt", 300_000))
_POS_TAG = re.compile(r"/[a-zA-Z]+\s*")


@functools.lru_cache(maxsize=1)
def reference_corpus() -> tuple[str, ...]:
    """About 1.2M characters of news (tags and segmentation removed) and reviews from the data
    directory; [] (frequencies all 0) when the data directory lacks them."""
    from wenzhi.kg.datadir import DataMissingError, data_path

    texts = []
    for rel, budget in REFERENCE_CORPUS:
        try:
            path = data_path(rel)
        except DataMissingError as exc:
            log.warning("alias text frequencies without %s: %s", rel, exc)
            continue
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                text = _POS_TAG.sub("", line).replace(" ", "").strip() if "/" in line else line.strip()
                if text:
                    texts.append(text)
                    budget -= len(text)
                    if budget <= 0:
                        break
    return tuple(texts)
