"""AliasIndex: an Aho-Corasick automaton over normalised aliases -> candidate entities + prior.

Aliases of an entity: its base name, its full name when it carries a disambiguation (so text
quoting the full name matches it exactly), and the tails of alias relations. The prior
p(entity | alias) is proportional to the entity's number of triples (how well the KB knows it:
the only popularity signal a bare triple dump has), halved for aliases taken from alias
relations, which are less reliable than the name itself.

Keys are stored two letters per character (see `_encode`). The automaton stores plain ints (STORE_INTS: no Python object per key): key_id << 10 | length,
and the candidates of key k are entity_ids[offsets[k]:offsets[k+1]] with their priors.
Each alias also carries how often it occurs in ordinary text (a sample of the shared corpus,
per million characters): names that are everyday words (是什么, 地方, 的) are rarely what a
text is about, the "keyphraseness" signal of entity-linking work, estimated without labels.
One-character aliases (汉字 entries such as 瘢) live in a dict beside the automaton instead:
in running text nearly every character would match one, which would cost the linker most of
its time for mentions it does not use unless asked (`rank`, NER spans).
"""
from __future__ import annotations

import functools
import logging
import os
import pickle
import re
from array import array
import time
from pathlib import Path


from wenzhi.kg.names import normalize

log = logging.getLogger(__name__)

_LEN_BITS = 10
_LEN_MASK = (1 << _LEN_BITS) - 1
_FORMAT_VERSION = 4  # bump when normalisation or layout changes
_NON_BMP = re.compile("[\U00010000-\U0010FFFF]")


def _encode(text: str) -> str:
    """Each character as two 'letters' (its UTF-16 bytes).

    pyahocorasick finds a node's child by a linear scan of its children; over Chinese aliases
    the root has thousands of children (one per distinct first character), which made
    scanning text ~25x slower than with a small automaton. Two bytes per character bound every
    node's fan-out at 256: about 4x faster scanning for twice the nodes. Matches are kept only
    at even offsets (character boundaries). Astral-plane characters (rare) become U+FFFD so
    every character is exactly two letters."""
    if text and max(text) > "\uffff":
        text = _NON_BMP.sub("\ufffd", text)
    return text.encode("utf-16-be").decode("latin-1")
ALIAS_RELATION_WEIGHT = 0.5


class AliasIndex:
    def __init__(self, automaton, single_chars: dict[str, int], offsets: array,
                 entity_ids: array, priors: array, fingerprint: str, text_frequency: array | None = None):
        self.automaton = automaton
        self.single_chars = single_chars
        self.offsets = offsets
        self.entity_ids = entity_ids
        self.priors = priors
        self.fingerprint = fingerprint
        # occurrences per million characters of ordinary text, per key
        self.text_frequency = text_frequency if text_frequency is not None else array("f", bytes(4 * len(self)))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    # -- building -------------------------------------------------------------------------
    @classmethod
    def build(cls, store, progress: bool = False, corpus: list[str] | None = None) -> "AliasIndex":
        """`corpus`: ordinary text for the alias frequencies (default: `reference_corpus()`)."""
        import ahocorasick
        from tqdm import tqdm

        start = time.perf_counter()
        # alias -> entity id, or {entity id: weight} once a second entity shares it; most
        # aliases name one entity, and a bare int keeps memory down at KgCLUE scale.
        table: dict[str, object] = {}
        weights: dict[int, float] = {}

        def add(alias: str, entity_id: int, weight: float) -> None:
            key = normalize(alias)
            if not key or len(key) > _LEN_MASK:
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

        automaton = ahocorasick.Automaton(ahocorasick.STORE_INTS)
        single_chars: dict[str, int] = {}
        offsets = array("q", [0])
        ids = array("i")
        priors = array("f")
        for key_id, (alias, cands) in enumerate(table.items()):
            if len(alias) == 1:
                single_chars[alias] = key_id
            elif not _NON_BMP.search(alias):
                automaton.add_word(_encode(alias), (key_id << _LEN_BITS) | len(alias))
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
        del table, weights
        automaton.make_automaton()
        index = cls(automaton, single_chars, offsets, ids, priors, store.fingerprint)
        index.count_text_frequency(reference_corpus() if corpus is None else corpus)
        log.info("alias index: %d aliases -> %d candidates in %.1fs", len(index), len(ids),
                 time.perf_counter() - start)
        return index

    # -- persistence ----------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        payload = {
            "version": _FORMAT_VERSION,
            "fingerprint": self.fingerprint,
            "offsets": self.offsets,
            "entity_ids": self.entity_ids,
            "priors": self.priors,
            "automaton": self.automaton,
            "single_chars": self.single_chars,
            "text_frequency": self.text_frequency,
        }
        try:
            with open(tmp, "wb") as fh:
                pickle.dump(payload, fh, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | Path) -> "AliasIndex":
        with open(path, "rb") as fh:
            payload = pickle.load(fh)
        if payload.get("version") != _FORMAT_VERSION:
            raise ValueError(f"{path}: alias index format {payload.get('version')} is not {_FORMAT_VERSION}")
        return cls(payload["automaton"], payload["single_chars"], payload["offsets"], payload["entity_ids"], payload["priors"],
                   payload["fingerprint"], payload["text_frequency"])

    @staticmethod
    def default_path(store) -> Path:
        return store.path.with_name(store.path.name + ".aliases")

    @classmethod
    def for_store(cls, store, path: str | Path | None = None, progress: bool = False) -> "AliasIndex":
        """Load the index saved beside the store, rebuilding (and saving) it if the store changed."""
        path = Path(path) if path else cls.default_path(store)
        if path.exists():
            try:
                index = cls.load(path)
                if index.fingerprint == store.fingerprint:
                    return index
                log.info("alias index %s is stale (store re-imported): rebuilding", path)
            except Exception as exc:  # a truncated or foreign file: rebuild rather than fail
                log.warning("alias index %s unreadable (%s): rebuilding", path, exc)
        index = cls.build(store, progress=progress)
        try:
            index.save(path)
        except OSError as exc:  # e.g. a read-only KB directory: keep the in-memory index
            log.warning("could not save alias index to %s: %s", path, exc)
        return index

    # -- lookups --------------------------------------------------------------------------
    def count_text_frequency(self, texts) -> None:
        counts = array("f", bytes(4 * len(self)))
        chars = 0
        for text in texts:
            norm = normalize(text)
            chars += len(norm)
            for _, _, key_id in self.matches(norm, single_chars=True):
                counts[key_id] += 1
        if chars:
            scale = 1e6 / chars
            for i, c in enumerate(counts):
                if c:
                    counts[i] = c * scale
        self.text_frequency = counts

    def _slice(self, key_id: int) -> list[tuple[int, float]]:
        a, b = self.offsets[key_id], self.offsets[key_id + 1]
        if b - a == 1:
            return [(self.entity_ids[a], 1.0)]
        return list(zip(self.entity_ids[a:b], self.priors[a:b]))

    def key_id(self, alias: str, normalized: bool = False) -> int | None:
        key = alias if normalized else normalize(alias)
        if len(key) == 1:
            return self.single_chars.get(key)
        value = self.automaton.get(_encode(key), None)
        return None if value is None else value >> _LEN_BITS

    def candidates(self, alias: str, normalized: bool = False) -> list[tuple[int, float]]:
        """(entity id, prior) for an alias, highest prior first; [] when unknown."""
        key_id = self.key_id(alias, normalized)
        return [] if key_id is None else self._slice(key_id)

    def key_candidates(self, key_id: int) -> list[tuple[int, float]]:
        return self._slice(key_id)

    def matches(self, normalized_text: str, single_chars: bool = False) -> list[tuple[int, int, int]]:
        """Alias occurrences in normalised text: (start, end, key_id), end exclusive; the
        1-character ones only when asked."""
        # A match ending at encoded letter `end` covers characters [(end+1)/2 - length, (end+1)/2)
        # when end + 1 is even; an odd `end` is a match across a character boundary: no match.
        found = [((end + 1 >> 1) - (value & _LEN_MASK), end + 1 >> 1, value >> _LEN_BITS)
                 for end, value in self.automaton.iter(_encode(normalized_text)) if end & 1]
        if single_chars and self.single_chars:
            get = self.single_chars.get
            found += [(i, i + 1, key_id) for i, ch in enumerate(normalized_text)
                      if (key_id := get(ch)) is not None]
        return found


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
