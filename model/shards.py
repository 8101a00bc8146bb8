"""Packed pretraining shards: fixed-length rows holding several documents each, on disk as .npy.

Layout (the contract other modules code against):
    DIR/meta.json        {"seq_len", "num_sequences", "vocab_size", "tokenizer", "stats", "shards": [...]}
    DIR/shard-00000/     input_ids int32 [N, L], labels int32 [N, L] (-100 = not predicted),
                         token_type_ids int8 [N, L], document_ids int32 [N, L] (-1 = padding),
                         kind int8 [N]
Rows only mix documents of the same kind, so the per-row `kind` is exact. Packing is best-fit over a
window of open rows (model/packing.py; deterministic for a given input order): padding stays a few
percent, where padding each document to the longest in its batch wastes a third or more of the
compute. A shard name may be a path below DIR (`part-00003/shard-00000`: prepared partitions).

The writer builds everything in a temporary directory beside `DIR` and swaps it in on close
(retrieval/atomic.py), so an interrupted prepare never leaves a directory that looks complete.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wenzhi.model.conventions import IGNORE_INDEX
from wenzhi.model.packing import Packer, rows_to_arrays
from wenzhi.retrieval.atomic import AtomicDirectory

ARRAYS = {"input_ids": np.int32, "labels": np.int32, "token_type_ids": np.int8, "document_ids": np.int32}


@dataclass
class PackedExample:
    """One document: token ids after masking, labels (-100 where nothing is predicted), segments."""

    input_ids: list[int] | np.ndarray
    labels: list[int] | np.ndarray
    token_type_ids: list[int] | np.ndarray | None = None
    kind: int = 0  # 0 plain MLM, 1 knowledge-masked, 2 UKTP triple-text, 3 retrieval-augmented


class ShardWriter:
    """Packs documents into rows of `seq_len` tokens and writes shards of `rows_per_shard` rows.

    Documents longer than `seq_len` are split into `seq_len`-token documents (`overflow="split"`),
    cut (`"truncate"`) or refused (`"error"`); producers that need one piece (a triple with its
    sentence) should keep their examples within `seq_len`.
    """

    def __init__(
        self,
        out_dir: str | Path,
        seq_len: int,
        vocab_size: int,
        tokenizer: str | None = None,
        rows_per_shard: int = 65536,
        open_rows: int = 64,
        pad_id: int = 0,
        overflow: str = "split",
        overwrite: bool = False,
    ):
        if overflow not in ("split", "truncate", "error"):
            raise ValueError(f"overflow must be split, truncate or error, not {overflow!r}")
        self.out_dir = Path(out_dir)
        if self.out_dir.exists() and not overwrite:
            raise FileExistsError(f"{self.out_dir} exists; pass overwrite=True to replace it")
        self._staging = AtomicDirectory(self.out_dir)
        self.partial = self._staging.path
        self.seq_len, self.vocab_size, self.tokenizer = seq_len, vocab_size, tokenizer
        self.rows_per_shard, self.max_open, self.pad_id, self.overflow = rows_per_shard, open_rows, pad_id, overflow
        self.overwrite = overwrite
        self._packer = Packer(seq_len, open_rows)
        self._shards: list[str] = []
        self.num_sequences = 0
        self.stats = {"documents": 0, "tokens": 0, "masked_tokens": 0, "split_documents": 0,
                      "truncated_tokens": 0, "documents_per_kind": {}, "masked_tokens_per_kind": {}}
        self._closed = False

    # -- adding documents ------------------------------------------------------------------
    def add(self, example: PackedExample) -> None:
        ids = np.asarray(example.input_ids, dtype=np.int32)
        labels = np.asarray(example.labels, dtype=np.int32)
        types = (np.zeros_like(ids, dtype=np.int8) if example.token_type_ids is None
                 else np.asarray(example.token_type_ids, dtype=np.int8))
        if not (ids.shape == labels.shape == types.shape) or ids.ndim != 1:
            raise ValueError(f"input_ids {ids.shape}, labels {labels.shape}, token_type_ids {types.shape} differ")
        if len(ids) == 0:
            return
        if ids.min() < 0 or ids.max() >= self.vocab_size:
            raise ValueError(f"token id out of range [0, {self.vocab_size}): {ids.min()}..{ids.max()}")
        kind = int(example.kind)
        if len(ids) > self.seq_len:
            if self.overflow == "error":
                raise ValueError(f"document of {len(ids)} tokens exceeds seq_len {self.seq_len}")
            if self.overflow == "truncate":
                self.stats["truncated_tokens"] += len(ids) - self.seq_len
                ids, labels, types = ids[: self.seq_len], labels[: self.seq_len], types[: self.seq_len]
            else:
                self.stats["split_documents"] += 1
                for start in range(0, len(ids), self.seq_len):
                    end = start + self.seq_len
                    self._place(kind, ids[start:end], labels[start:end], types[start:end])
                return
        self._place(kind, ids, labels, types)

    def _place(self, kind, ids, labels, types) -> None:
        self.stats["documents"] += 1
        self.stats["tokens"] += len(ids)
        masked = int(np.count_nonzero(labels != IGNORE_INDEX))
        self.stats["masked_tokens"] += masked
        key = str(kind)
        self.stats["documents_per_kind"][key] = self.stats["documents_per_kind"].get(key, 0) + 1
        self.stats["masked_tokens_per_kind"][key] = self.stats["masked_tokens_per_kind"].get(key, 0) + masked
        self._packer.add(kind, ids, labels, types)
        while len(self._packer.closed) >= self.rows_per_shard:
            self._write_shard(self._packer.take(self.rows_per_shard))

    def _write_shard(self, rows) -> None:
        if not rows:
            return
        arrays = rows_to_arrays(rows, self.seq_len, self.pad_id)
        name = f"shard-{len(self._shards):05d}"
        shard_dir = self.partial / name
        shard_dir.mkdir()
        for key, array in arrays.items():
            np.save(shard_dir / f"{key}.npy", array)
        self._shards.append(name)
        self.num_sequences += len(rows)

    # -- finishing ---------------------------------------------------------------------------
    def close(self, extra_stats: dict | None = None, extra_meta: dict | None = None) -> dict:
        """Flush open rows, write meta.json and move the directory into place; returns the meta."""
        if self._closed:
            raise RuntimeError("ShardWriter already closed")
        self._packer.finish()
        while self._packer.closed:
            self._write_shard(self._packer.take(self.rows_per_shard))
        slots = self.num_sequences * self.seq_len
        stats = dict(self.stats)
        stats["rows"] = self.num_sequences
        stats["padding_fraction"] = round(1 - stats["tokens"] / slots, 6) if slots else 0.0
        stats.update(extra_stats or {})
        meta = {"format": "wenzhi-packed-v1", "seq_len": self.seq_len, "num_sequences": self.num_sequences,
                "vocab_size": self.vocab_size, "tokenizer": self.tokenizer, "stats": stats,
                "shards": self._shards, **(extra_meta or {})}
        tmp = self.partial / "meta.json.tmp"
        tmp.write_text(json.dumps(meta, ensure_ascii=False, indent=2))
        os.replace(tmp, self.partial / "meta.json")
        self._staging.commit()  # overwrite=True: the old directory goes once the new one is in place
        self._closed = True
        return meta

    def abort(self) -> None:
        self._staging.abort()
        self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.abort()
        elif not self._closed:
            self.close()


class ShardReader:
    """Random access to the rows of a shard directory (memory-mapped)."""

    def __init__(self, shard_dir: str | Path):
        self.dir = Path(shard_dir)
        meta_path = self.dir / "meta.json"
        if not meta_path.exists():
            raise FileNotFoundError(f"{meta_path} not found: is {self.dir} a `wenzhi pretrain prepare` output?")
        self.meta = json.loads(meta_path.read_text())
        self.seq_len = int(self.meta["seq_len"])
        self.shards = []
        offsets = [0]
        for name in self.meta["shards"]:
            arrays = {k: np.load(self.dir / name / f"{k}.npy", mmap_mode="r") for k in (*ARRAYS, "kind")}
            n = arrays["kind"].shape[0]
            for k in ARRAYS:
                if arrays[k].shape != (n, self.seq_len):
                    raise ValueError(f"{self.dir / name / k}.npy has shape {arrays[k].shape}, expected {(n, self.seq_len)}")
            self.shards.append(arrays)
            offsets.append(offsets[-1] + n)
        self.offsets = np.asarray(offsets)
        if offsets[-1] != self.meta["num_sequences"]:
            raise ValueError(f"{self.dir}: meta says {self.meta['num_sequences']} rows, shards hold {offsets[-1]}")

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def batch(self, indices) -> dict[str, np.ndarray]:
        """Rows `indices` (any order) as numpy arrays with a leading batch dimension."""
        indices = np.asarray(indices, dtype=np.int64)
        shard_of = np.searchsorted(self.offsets, indices, side="right") - 1
        out = {k: np.empty((len(indices), self.seq_len), dtype) for k, dtype in ARRAYS.items()}
        out["kind"] = np.empty(len(indices), np.int8)
        for s in np.unique(shard_of):
            where = np.nonzero(shard_of == s)[0]
            local = indices[where] - self.offsets[s]
            order = np.argsort(local)  # sorted reads from the memory map
            for k in out:
                out[k][where[order]] = self.shards[s][k][local[order]]
        return out

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return {k: v[0] for k, v in self.batch([index]).items()}


class PackedDataset:
    """torch Dataset over a shard directory: item i -> dict of tensors (long ids, kind scalar)."""

    def __init__(self, shard_dir: str | Path):
        self.reader = ShardReader(shard_dir)

    def __len__(self):
        return len(self.reader)

    def __getitem__(self, index):
        return batch_to_tensors(self.reader.batch([index]), squeeze=True)


def batch_to_tensors(batch: dict[str, np.ndarray], squeeze: bool = False) -> dict:
    import torch

    out = {k: torch.from_numpy(np.ascontiguousarray(v).astype(np.int64)) for k, v in batch.items()}
    return {k: v[0] for k, v in out.items()} if squeeze else out
