"""Packing documents into fixed-length rows: best fit over a window of open rows, per kind.

Deterministic for a given input order (no hashing, no timing): the same documents in the same
order give the same rows, which is what makes shards byte-identical for any number of workers
(each partition is packed on its own, model/prepare_job.py). Rows are laid out into arrays in one
vectorised pass per shard rather than a copy per document.
"""
from __future__ import annotations

import numpy as np

from wenzhi.model.conventions import IGNORE_INDEX


class Row:
    __slots__ = ("kind", "docs", "used")

    def __init__(self, kind: int):
        self.kind = kind
        self.docs: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.used = 0


class Packer:
    """Places documents (ids, labels, types of at most `seq_len` tokens) into rows of one kind
    each. A document goes to the fullest open row of its kind that still has room; with none, a
    new row opens, and with `open_rows` already open the fullest one is closed first. Closed rows
    wait in `closed`, in the order they closed."""

    def __init__(self, seq_len: int, open_rows: int = 64):
        self.seq_len, self.max_open = seq_len, open_rows
        self.open: dict[int, list[Row]] = {}
        self.closed: list[Row] = []

    def add(self, kind: int, ids: np.ndarray, labels: np.ndarray, types: np.ndarray) -> None:
        n, limit = len(ids), self.seq_len
        rows = self.open.setdefault(kind, [])
        best, best_used = None, -1
        for row in rows:  # first of the fullest rows with room (a short list: at most open_rows)
            if row.used > best_used and row.used + n <= limit:
                best, best_used = row, row.used
        if best is None:
            if len(rows) >= self.max_open:
                fullest = max(rows, key=lambda r: r.used)
                rows.remove(fullest)
                self.closed.append(fullest)
            best = Row(kind)
            rows.append(best)
        best.docs.append((ids, labels, types))
        best.used += n
        if best.used == limit:
            rows.remove(best)
            self.closed.append(best)

    def finish(self) -> None:
        """Close every open row (kinds in order, rows in the order they opened)."""
        for kind in sorted(self.open):
            self.closed.extend(self.open[kind])
        self.open = {}

    def take(self, n: int | None = None) -> list[Row]:
        """The first `n` (all) closed rows, removed from `closed`."""
        n = len(self.closed) if n is None else n
        taken, self.closed = self.closed[:n], self.closed[n:]
        return taken


def rows_to_arrays(rows: list[Row], seq_len: int, pad_id: int = 0) -> dict[str, np.ndarray]:
    """input_ids, labels, token_type_ids, document_ids [N, seq_len] and kind [N] of the rows."""
    N, L = len(rows), seq_len
    arrays = {
        "input_ids": np.full(N * L, pad_id, np.int32),
        "labels": np.full(N * L, IGNORE_INDEX, np.int32),
        "token_type_ids": np.zeros(N * L, np.int8),
        "document_ids": np.full(N * L, -1, np.int32),
    }
    ids, labels, types, lengths, row_of, doc_in_row = [], [], [], [], [], []
    for r, row in enumerate(rows):
        for d, (i, lab, typ) in enumerate(row.docs):
            ids.append(i)
            labels.append(lab)
            types.append(typ)
            lengths.append(len(i))
            row_of.append(r)
            doc_in_row.append(d)
    if ids:
        lengths_a = np.asarray(lengths, np.int64)
        row_a = np.asarray(row_of, np.int64)
        # where each document starts: its row's start plus the documents before it in that row
        first_in_row = np.ones(len(lengths_a), dtype=bool)
        first_in_row[1:] = row_a[1:] != row_a[:-1]
        ends = np.cumsum(lengths_a)
        starts = ends - lengths_a
        row_start_flat = np.maximum.accumulate(np.where(first_in_row, starts, 0))
        dest = row_a * L + (starts - row_start_flat)
        total = int(ends[-1])
        flat = np.repeat(dest - starts, lengths_a) + np.arange(total)
        arrays["input_ids"][flat] = np.concatenate(ids)
        arrays["labels"][flat] = np.concatenate(labels)
        arrays["token_type_ids"][flat] = np.concatenate(types)
        arrays["document_ids"][flat] = np.repeat(np.asarray(doc_in_row, np.int32), lengths_a)
    out = {k: v.reshape(N, L) for k, v in arrays.items()}
    out["kind"] = np.array([row.kind for row in rows], dtype=np.int8)
    return out
