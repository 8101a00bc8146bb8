"""A compact, off-heap prefix trie over the tokenised (head, relation) pairs of a KB.

Two layouts of a pair (`LAYOUTS`; the GEN head records the one it was trained on):
- "relation-first": `base [unused1] relation [SEP]`, or `base [unused1] relation [unused2]
  disambiguation [SEP]` for a head with a disambiguation suffix. The base name is what a question
  contains (a generator copies it), the relation is what the question asks, and only then comes the
  disambiguation, which the relation usually leaves one choice for: homonyms differ in relations.
- "head-relation": `head [unused1] relation [SEP]` with the full head name (the first layout).

Why hand-written: the seq2seq + trie KgCLUE system keeps a pointer-based Python trie, which needs
about 30 GB of RAM for 20M triples. Here the trie is implicit: every distinct (head, relation)
sequence is stored once, sorted lexicographically, as a flat token array plus row offsets
(numpy files opened with mmap). The children of a prefix are found by binary search over the rows
sharing that prefix, so memory is ~2 bytes per token on disk and nothing on the Python heap.

Agreement with the tokenizer is by construction: the sequences are made by `encode_target`, the
same function that makes the GEN training targets, and the tokenizer's fingerprint is stored
and checked on load. A walk through `allowed_next` can only end on a stored row, so constrained
decoding can never produce a (head, relation) the KB does not hold.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from wenzhi.retrieval.atomic import atomic_directory

log = logging.getLogger(__name__)

FORMAT = "wenzhi-kb-trie-3"
LAYOUTS = ("relation-first", "head-relation")
MAX_TOKENS = 96  # longer (head, relation) sequences are skipped and counted
SCAN_ROWS = 4096  # ranges up to this many rows are read as one numpy column, larger ones binary-searched


def tokenizer_fingerprint(tokenizer) -> str:
    vocab = tokenizer.get_vocab()
    digest = hashlib.sha256()
    for token, idx in sorted(vocab.items(), key=lambda kv: kv[1]):
        digest.update(f"{idx}\t{token}\n".encode())
    digest.update(f"lower={getattr(tokenizer, 'do_lower_case', None)}".encode())
    return digest.hexdigest()[:16]


def field_separator(tokenizer) -> int:
    """The token between head and relation. Not [SEP]: [SEP] is the decoder's end of sequence,
    so it must occur once, at the end, where the trie path is complete."""
    return tokenizer.convert_tokens_to_ids("[unused1]")  # the unknown token's id where there is none


def disambiguation_separator(tokenizer) -> int:
    """The token before a head's disambiguation in the relation-first layout."""
    return tokenizer.convert_tokens_to_ids("[unused2]")


def encode_target(tokenizer, head: str, relation: str, layout: str = "head-relation") -> list[int]:
    """Token ids of one (head, relation) in `layout`: the GEN target and the trie's key."""
    return encode_targets(tokenizer, [(head, relation)], layout)[0]


def token_ids(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Ids of each text without special tokens, as `tokenizer(texts, add_special_tokens=False)`.
    A fast tokenizer's backend encodes the batch directly: transformers' wrapper builds a Python
    encoding object per text, two thirds of a KB trie's build (200k pairs). The backend is copied so
    that truncation or padding left set by an earlier call (and another thread's calls) stay apart."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    from tokenizers import Tokenizer

    own = Tokenizer.from_str(backend.to_str())
    own.no_truncation()
    own.no_padding()
    return [e.ids for e in own.encode_batch(list(texts), add_special_tokens=False)]


def encode_targets(tokenizer, pairs: Sequence[tuple[str, str]], layout: str = "head-relation") -> list[list[int]]:
    """Token ids of each (head, relation) in `layout` (one tokenizer call per field)."""
    from wenzhi.kg import parse_name

    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, not {layout!r}")
    if not pairs:
        return []
    sep, mid = tokenizer.sep_token_id, field_separator(tokenizer)
    rels = token_ids(tokenizer, [r for _, r in pairs])
    if layout == "head-relation":
        heads = token_ids(tokenizer, [h for h, _ in pairs])
        return [[*h, mid, *r, sep] for h, r in zip(heads, rels)]
    names = [parse_name(h) for h, _ in pairs]
    bases = token_ids(tokenizer, [b for b, _ in names])
    dis = token_ids(tokenizer, [d or "" for _, d in names])
    dsep = disambiguation_separator(tokenizer)
    return [[*b, mid, *r, *([dsep, *d] if name[1] else []), sep]
            for b, r, d, name in zip(bases, rels, dis, names)]


@dataclass
class TrieHit:
    head_id: int
    relation: str


class KBTrie:
    """Read-only view of a trie directory written by `KBTrie.build`."""

    def __init__(self, path: str | os.PathLike, tokenizer=None):
        self.path = Path(path)
        meta_file = self.path / "meta.json"
        if not meta_file.exists():
            raise FileNotFoundError(f"no KB trie at {self.path} (missing meta.json)")
        self.meta = json.loads(meta_file.read_text(encoding="utf-8"))
        if self.meta.get("format") != FORMAT:
            raise ValueError(f"{self.path}: unknown trie format {self.meta.get('format')!r}")
        if tokenizer is not None and tokenizer_fingerprint(tokenizer) != self.meta["tokenizer"]:
            raise ValueError(
                f"{self.path}: trie was built with another tokenizer; rebuild it with this one"
            )
        self.tokens = np.load(self.path / "tokens.npy", mmap_mode="r")
        self.offsets = np.load(self.path / "offsets.npy", mmap_mode="r")
        self.head_ids = np.load(self.path / "head_ids.npy", mmap_mode="r")
        self.relation_ids = np.load(self.path / "relation_ids.npy", mmap_mode="r")
        self.relations: list[str] = json.loads((self.path / "relations.json").read_text(encoding="utf-8"))
        self.sep_id = int(self.meta["sep_id"])
        self.layout = self.meta["layout"]
        self.n = int(self.meta["num_sequences"])
        self._children = lru_cache(maxsize=65536)(self._children_uncached)
        self._range = lru_cache(maxsize=262144)(self._range_uncached)

    # -- building ---------------------------------------------------------------------------
    @classmethod
    def build(cls, pairs: Iterable[tuple[int, str, str]], tokenizer, out: str | os.PathLike,
              batch_size: int = 4096, progress: bool = False, layout: str = "head-relation") -> dict:
        """Write a trie for (head_id, head, relation) pairs in `layout`; atomic (retrieval/atomic.py)."""
        out = Path(out)
        width = ">u2" if len(tokenizer) < 2**16 else ">u4"
        relation_index: dict[str, int] = {}
        # Big-endian bytes of the ids sort exactly like the id sequences (a prefix sorts first),
        # so one sort of compact bytes keys orders the rows without a padded matrix.
        keys: list[bytes] = []
        head_ids: list[int] = []
        rel_ids: list[int] = []
        seen: set[tuple[int, str]] = set()
        skipped_long = 0
        batch: list[tuple[int, str, str]] = []

        def flush() -> None:
            nonlocal skipped_long
            for (hid, _, rel), ids in zip(batch, encode_targets(tokenizer, [(h, r) for _, h, r in batch], layout)):
                if len(ids) > MAX_TOKENS:
                    skipped_long += 1
                    continue
                keys.append(np.asarray(ids, dtype=width).tobytes())
                head_ids.append(hid)
                rel_ids.append(relation_index.setdefault(rel, len(relation_index)))
            batch.clear()

        iterator = pairs
        if progress:
            from tqdm import tqdm

            iterator = tqdm(pairs, desc="trie", unit=" pairs")
        for hid, head, rel in iterator:
            if (hid, rel) in seen:
                continue
            seen.add((hid, rel))
            batch.append((hid, head, rel))
            if len(batch) >= batch_size:
                flush()
        flush()
        seen.clear()
        order = np.asarray(sorted(range(len(keys)), key=keys.__getitem__), dtype=np.int64)
        itemsize = np.dtype(width).itemsize
        lengths = np.fromiter((len(keys[i]) // itemsize for i in order), dtype=np.int64, count=len(order))
        offsets = np.zeros(len(order) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        flat = np.frombuffer(b"".join(keys[i] for i in order), dtype=width).astype(width[1:])
        del keys
        with atomic_directory(out) as tmp:  # an interrupted build leaves the previous trie
            np.save(tmp / "tokens.npy", flat)
            np.save(tmp / "offsets.npy", offsets)
            np.save(tmp / "head_ids.npy", np.asarray(head_ids, dtype=np.int64)[order])
            np.save(tmp / "relation_ids.npy", np.asarray(rel_ids, dtype=np.int32)[order])
            relations = sorted(relation_index, key=relation_index.get)
            (tmp / "relations.json").write_text(json.dumps(relations, ensure_ascii=False), encoding="utf-8")
            summary = {
                "format": FORMAT,
                "layout": layout,
                "num_sequences": int(len(order)),
                "num_tokens": int(len(flat)),
                "skipped_too_long": skipped_long,
                "sep_id": int(tokenizer.sep_token_id),
                "tokenizer": tokenizer_fingerprint(tokenizer),
                "bytes": 0,
            }
            summary["bytes"] = int(sum(f.stat().st_size for f in tmp.iterdir()))
            (tmp / "meta.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
        return summary

    @classmethod
    def build_from_store(cls, store, tokenizer, out, progress: bool = False, layout: str = "head-relation") -> dict:
        def pairs():
            for t in store.iter_triples():
                yield t.head_id, t.head, t.relation

        return cls.build(pairs(), tokenizer, out, progress=progress, layout=layout)

    # -- lookup -----------------------------------------------------------------------------
    def _tok(self, row: int, pos: int) -> int:
        start = int(self.offsets[row]) + pos
        return int(self.tokens[start]) if start < int(self.offsets[row + 1]) else -1

    def _bound(self, lo: int, hi: int, pos: int, token: int, upper: bool) -> int:
        # Rows in [lo, hi) share their first `pos` tokens, so their tokens at `pos` are sorted
        # (a row that has ended reads -1, before every token).
        while lo < hi:
            mid = (lo + hi) // 2
            t = self._tok(mid, pos)
            if t < token or (upper and t == token):
                lo = mid + 1
            else:
                hi = mid
        return lo

    def _column(self, lo: int, hi: int, pos: int) -> np.ndarray:
        """Tokens at `pos` of rows [lo, hi) (-1 where a row has ended), read at once."""
        starts = np.asarray(self.offsets[lo:hi]) + pos
        valid = starts < np.asarray(self.offsets[lo + 1 : hi + 1])
        col = np.full(hi - lo, -1, dtype=np.int64)
        col[valid] = self.tokens[starts[valid]]
        return col

    def _narrow(self, lo: int, hi: int, pos: int, token: int) -> tuple[int, int]:
        """The rows of [lo, hi) (which share their first `pos` tokens) with `token` at `pos`."""
        if hi - lo > SCAN_ROWS:  # binary search: a few reads
            return self._bound(lo, hi, pos, token, False), self._bound(lo, hi, pos, token, True)
        col = self._column(lo, hi, pos)  # a few hundred rows at most: one vectorised read
        return lo + int(np.searchsorted(col, token, "left")), lo + int(np.searchsorted(col, token, "right"))

    def _range_uncached(self, prefix: tuple[int, ...]) -> tuple[int, int]:
        if not prefix:
            return 0, self.n
        lo, hi = self._range(prefix[:-1])  # decoding extends a prefix one token at a time: cached
        if lo >= hi:
            return lo, lo
        return self._narrow(lo, hi, len(prefix) - 1, prefix[-1])

    def prefix_range(self, prefix: Sequence[int]) -> tuple[int, int]:
        """Rows [lo, hi) whose sequence starts with `prefix` (empty range if none)."""
        return self._range(tuple(int(t) for t in prefix))

    def _children_uncached(self, prefix: tuple[int, ...]) -> tuple[int, ...]:
        lo, hi = self._range(prefix)
        pos = len(prefix)
        if hi - lo <= SCAN_ROWS:
            col = self._column(lo, hi, pos)
            return tuple(int(t) for t in np.unique(col[col >= 0]))
        out = []
        i = lo
        while i < hi:  # one binary search per distinct child
            t = self._tok(i, pos)
            j = self._bound(i, hi, pos, t, True)
            if t >= 0:
                out.append(t)
            i = j
        return tuple(out)

    def allowed_next(self, prefix: Sequence[int]) -> list[int]:
        """Token ids that extend `prefix` towards a stored sequence; [] once it is complete."""
        return list(self._children(tuple(int(t) for t in prefix)))

    def lookup(self, sequence: Sequence[int]) -> list[TrieHit]:
        """The (head_id, relation) pairs stored under exactly this token sequence."""
        lo, hi = self.prefix_range(sequence)
        hits = []
        for row in range(lo, hi):
            if int(self.offsets[row + 1]) - int(self.offsets[row]) == len(sequence):
                hits.append(TrieHit(int(self.head_ids[row]), self.relations[int(self.relation_ids[row])]))
        return hits

    def sequence(self, row: int) -> list[int]:
        return [int(t) for t in self.tokens[int(self.offsets[row]) : int(self.offsets[row + 1])]]

    def __len__(self) -> int:
        return self.n


def gen_layout(gen) -> str:
    """The target layout a GEN head was trained on (heads from before layouts: head-relation)."""
    return getattr(gen.config, "target_layout", "head-relation")


def ensure_trie(gen_dir: Path, store, tokenizer, layout: str = "head-relation"):
    """The KB trie for this store in `layout`, built beside the GEN head on first use (keyed by the
    store's fingerprint and the layout)."""
    path = Path(gen_dir) / f"trie-{store.fingerprint[:16]}-{layout}"
    meta = path / "meta.json"
    if not meta.exists() or json.loads(meta.read_text()).get("format") != FORMAT:
        log.info("building the KB trie at %s", path)
        KBTrie.build_from_store(store, tokenizer, path, progress=True, layout=layout)
    return KBTrie(path, tokenizer)


class TrieWithDistractors:
    """A KB trie in which every head also offers `relations` (with unknown tails): the trie that
    `wenzhi evaluate --distractor-relations K` decodes through, as the official 20.5M-triple KB would
    offer many relations per head. Nothing is stored: after a name's `[unused1]` the allowed tokens
    are the KB's continuations plus those of the distractor relations (a small dict trie, K names);
    after a distractor relation come the ends of the heads sharing that name (`[SEP]`, or in the
    relation-first layout `[unused2]` and a homonym's disambiguation), read off the KB trie's rows."""

    def __init__(self, trie: KBTrie, tokenizer, relations: Sequence[str]):
        self.trie, self.sep_id, self.n, self.layout = trie, trie.sep_id, trie.n, trie.layout
        self.mid, self.dsep = field_separator(tokenizer), disambiguation_separator(tokenizer)
        self.relation_of: dict[tuple[int, ...], str] = {}
        self.children: dict[tuple[int, ...], set[int]] = {}
        for rel, ids in zip(relations, encode_targets(tokenizer, [("x", r) for r in relations])):
            seq = tuple(ids[ids.index(self.mid) + 1 : -1])  # the relation's tokens
            self.relation_of[seq] = rel
            for i in range(len(seq)):
                self.children.setdefault(seq[:i], set()).add(seq[i])
        self._ends = lru_cache(maxsize=65536)(self._ends_uncached)

    def _ends_uncached(self, name: tuple[int, ...]) -> dict[tuple[int, ...], int]:
        """What may follow `name [unused1] relation` for heads of this name -> their head id: `[SEP]`
        for the head without a disambiguation, `[unused2] disambiguation [SEP]` for the others."""
        lo, hi = self.trie.prefix_range([*name, self.mid])
        ends: dict[tuple[int, ...], int] = {}
        for row in range(lo, hi):
            seq = self.trie.sequence(row)[len(name) + 1 :]
            end = tuple(seq[seq.index(self.dsep) :]) if self.dsep in seq else (self.sep_id,)
            ends.setdefault(end, int(self.trie.head_ids[row]))
        return ends

    def _parts(self, prefix: Sequence[int]):
        """(name, relation tokens so far, head end so far or None) of a prefix past `[unused1]`."""
        prefix = [int(t) for t in prefix]
        if self.mid not in prefix:
            return None
        at = prefix.index(self.mid)
        rest = prefix[at + 1 :]
        for i, t in enumerate(rest):
            if t in (self.dsep, self.sep_id):
                return tuple(prefix[:at]), tuple(rest[:i]), tuple(rest[i:])
        return tuple(prefix[:at]), tuple(rest), None

    def allowed_next(self, prefix: Sequence[int]) -> list[int]:
        allowed = set(self.trie.allowed_next(prefix))
        parts = self._parts(prefix)
        if parts is not None:
            name, rel, end = parts
            if end is None:
                allowed |= self.children.get(rel, set())
                if rel in self.relation_of:
                    allowed |= {e[0] for e in self._ends(name)}
            elif rel in self.relation_of:
                allowed |= {e[len(end)] for e in self._ends(name) if len(e) > len(end) and e[: len(end)] == end}
        return sorted(allowed)

    def lookup(self, sequence: Sequence[int]) -> list[TrieHit]:
        hits = self.trie.lookup(sequence)
        parts = self._parts(sequence)
        if parts is not None and parts[2] and parts[1] in self.relation_of:
            name, rel, end = parts
            head_id = self._ends(name).get(end)
            relation = self.relation_of[rel]
            if head_id is not None and all((h.head_id, h.relation) != (head_id, relation) for h in hits):
                hits.append(TrieHit(head_id, relation))
        return hits

    def __len__(self) -> int:
        return self.n
