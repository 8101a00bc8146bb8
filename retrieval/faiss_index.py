"""Dense retrieval on faiss: the index builder, the searcher and its manifest (refresh.py rebuilds it).

A built index is a directory:
    index.faiss     the faiss index (inner product over L2-normalised vectors = cosine)
    docs.jsonl      one Document per line, line i = vector i
    offsets.npy     int64 byte offset of each line, so a hit's document is one seek away
    manifest.json   encoder fingerprint, dimension, metric, count, index string, search params
It is written into a temporary directory and renamed into place at the end (atomic.py).
"""
from __future__ import annotations

import json
import logging
import math
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
from tqdm import tqdm

from .atomic import atomic_directory
from .documents import Document
from .encoder import Encoder
from .protocol import Hit, filter_kinds

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT = 1


class StaleIndexError(RuntimeError):
    """The index was built with another encoder than the one given to search it."""


@dataclass
class Manifest:
    encoder_fingerprint: str
    encoder_path: str
    dim: int
    metric: str
    count: int
    index_string: str
    kind: str | None
    search_params: str = ""  # faiss ParameterSpace string, e.g. "nprobe=32" or "efSearch=128"
    build_seconds: float = 0.0
    built_at: str = ""
    format: int = FORMAT
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def read(cls, index_dir: str | Path) -> "Manifest":
        path = Path(index_dir) / MANIFEST
        if not path.exists():
            raise FileNotFoundError(f"no dense index at {index_dir}: {MANIFEST} is missing (build one with `wenzhi index build`)")
        return cls(**json.loads(path.read_text()))


def default_index_string(n: int, dim: int) -> str:
    """Exact search while it is cheap; HNSW (no training, high recall, ~(4d+8M) bytes/vector)
    up to a few million; IVF-PQ (compressed, trained) beyond, where HNSW memory is too much."""
    if n <= 100_000:
        return "Flat"
    if n <= 3_000_000:
        return "HNSW32"
    nlist = 2 ** round(math.log2(4 * math.sqrt(n)))
    m = max(x for x in range(1, 65) if dim % x == 0 and x <= dim // 2)
    return f"IVF{nlist},PQ{m}"


def default_search_params(index_string: str) -> str:
    s = index_string.upper()
    if "HNSW" in s:
        return "efSearch=128"
    if s.startswith("IVF") or ",IVF" in s:
        return "nprobe=32"
    return ""


def _check_index_string(index_string: str, dim: int) -> None:
    import faiss

    try:
        faiss.index_factory(dim, index_string, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else "invalid"
        raise ValueError(f"faiss cannot make index {index_string!r} for dimension {dim}: {reason}") from None


def _batched(items: Iterable[Document], size: int) -> Iterator[list[Document]]:
    batch: list[Document] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _to_gpu(index):
    import faiss

    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() == 0:
        log.warning("--gpu given but this faiss has no GPU support or sees no GPU: building on CPU")
        return index, None
    res = faiss.StandardGpuResources()
    try:
        return faiss.index_cpu_to_gpu(res, 0, index), res
    except RuntimeError as exc:  # e.g. HNSW has no GPU implementation
        log.warning("index type not supported on GPU (%s): building on CPU", exc)
        return index, None


def build_faiss_index(
    docs: Iterable[Document],
    encoder: Encoder,
    out: str | Path,
    index_string: str | None = None,
    kind: str | None = None,
    batch_size: int = 64,
    add_chunk: int = 65_536,
    train_size: int | None = None,
    gpu: bool = False,
    encoder_path: str | Path | None = None,
    progress: bool = True,
    seed: int = 0,
) -> Manifest:
    """Encode `docs` in batches, train on a sample, add in chunks, write atomically into `out`."""
    import faiss

    started = time.perf_counter()
    if index_string:
        _check_index_string(index_string, encoder.dim)  # before hours of encoding, not after
    with atomic_directory(out) as tmp:
        # 1. encode, streaming vectors to disk and documents to docs.jsonl (memory stays bounded)
        vec_path = tmp / "vectors.f32"
        offsets: list[int] = []
        n = 0
        with open(tmp / "docs.jsonl", "wb") as docs_fh, open(vec_path, "wb") as vec_fh:
            for batch in tqdm(_batched(docs, batch_size), desc="encode", unit="batch", disable=not progress):
                vectors = np.ascontiguousarray(encoder.encode([d.embedding_text() for d in batch]), dtype=np.float32)
                if vectors.shape != (len(batch), encoder.dim):
                    raise ValueError(f"encoder returned shape {vectors.shape}, expected ({len(batch)}, {encoder.dim})")
                vec_fh.write(vectors.tobytes())
                for d in batch:
                    offsets.append(docs_fh.tell())
                    docs_fh.write(d.to_json().encode() + b"\n")
                n += len(batch)
        if n == 0:
            raise ValueError("no documents to index")
        np.save(tmp / "offsets.npy", np.asarray(offsets, dtype=np.int64))
        vectors = np.memmap(vec_path, dtype=np.float32, mode="r", shape=(n, encoder.dim))

        # 2. train on a sample, 3. add in chunks
        index_string = index_string or default_index_string(n, encoder.dim)
        index = faiss.index_factory(encoder.dim, index_string, faiss.METRIC_INNER_PRODUCT)
        try:
            nlist = faiss.extract_index_ivf(index).nlist
        except RuntimeError:  # not an IVF index (e.g. plain PQ): no coarse centroids
            nlist = 0
        gpu_res = None
        if gpu:
            index, gpu_res = _to_gpu(index)
        if not index.is_trained:
            # k-means wants some tens of points per centroid; PQ codebooks want ~10k+ points.
            size = min(n, train_size or max(100_000, 64 * nlist))
            rows = np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))
            log.info("training %s on %d of %d vectors", index_string, size, n)
            index.train(np.ascontiguousarray(vectors[rows]))
        for start in tqdm(range(0, n, add_chunk), desc="add", unit="chunk", disable=not progress):
            index.add(np.ascontiguousarray(vectors[start : start + add_chunk]))
        if gpu_res is not None:
            index = faiss.index_gpu_to_cpu(index)
        del vectors
        vec_path.unlink()
        faiss.write_index(index, str(tmp / "index.faiss"))

        manifest = Manifest(
            encoder_fingerprint=encoder.fingerprint,
            encoder_path=str(Path(encoder_path).resolve()) if encoder_path else str(getattr(encoder, "model_dir", "")),
            dim=encoder.dim, metric="inner_product", count=n, index_string=index_string, kind=kind,
            search_params=default_search_params(index_string),
            build_seconds=round(time.perf_counter() - started, 3),
            built_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        )
        # Written last: a directory with a manifest is a complete index.
        (tmp / MANIFEST).write_text(json.dumps(asdict(manifest), ensure_ascii=False, indent=2))
    log.info("dense index of %d %s documents (%s) built in %.1f s at %s", n, kind or "", index_string, manifest.build_seconds, out)
    return manifest


class FaissIndex:
    """A built dense index, checked against the encoder that will embed the queries."""

    def __init__(self, path: str | Path, encoder: Encoder | None = None, search_params: str | None = None):
        import faiss

        self.path = Path(path)
        self.manifest = Manifest.read(self.path)
        if self.manifest.format != FORMAT:
            raise StaleIndexError(f"index at {self.path} has format {self.manifest.format}, this code reads {FORMAT}: rebuild it")
        if encoder is None:
            from .encoder import TransformersEncoder

            if not self.manifest.encoder_path or not Path(self.manifest.encoder_path).exists():
                raise StaleIndexError(f"index at {self.path} was built with the encoder at {self.manifest.encoder_path!r}, "
                                      "which is gone: pass --encoder DIR")
            encoder = TransformersEncoder(self.manifest.encoder_path)
        self.check(encoder)
        self.encoder = encoder
        self.index = faiss.read_index(str(self.path / "index.faiss"))
        params = self.manifest.search_params if search_params is None else search_params
        if params:
            faiss.ParameterSpace().set_index_parameters(self.index, params)
        self.offsets = np.load(self.path / "offsets.npy")
        self._docs = open(self.path / "docs.jsonl", "rb")
        self._lock = threading.Lock()

    def check(self, encoder: Encoder) -> None:
        m = self.manifest
        if encoder.fingerprint != m.encoder_fingerprint or encoder.dim != m.dim:
            raise StaleIndexError(
                f"stale dense index at {self.path}: built with encoder {m.encoder_fingerprint} (dim {m.dim}, "
                f"from {m.encoder_path or 'unknown'}) but the encoder given is {encoder.fingerprint} (dim {encoder.dim}). "
                f"Rebuild it: wenzhi index build --encoder DIR --kind {(m.kind or 'KIND') + 's'} --output {self.path}"
            )

    def __len__(self) -> int:
        return self.manifest.count

    def document(self, row: int) -> Document:
        with self._lock:  # one file handle shared by threads
            self._docs.seek(int(self.offsets[row]))
            return Document.from_json(self._docs.readline().decode())

    def search_vectors(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)

    def search(self, query: str, k: int = 10, filters: Mapping[str, Any] | None = None) -> list[Hit]:
        from .analysis import prepare_query

        return self.search_many([prepare_query(query)], k, filters)[0]

    def search_many(self, queries: Sequence[str], k: int = 10, filters: Mapping[str, Any] | None = None) -> list[list[Hit]]:
        kinds = filter_kinds(filters)
        if kinds and self.manifest.kind and self.manifest.kind not in kinds:
            return [[] for _ in queries]
        # A mixed-kind index is filtered after the search: fetch more to still return k.
        fetch = min(self.manifest.count, k if not kinds or self.manifest.kind else 4 * k)
        scores, rows = self.search_vectors(self.encoder.encode(list(queries)), fetch)
        results = []
        for score_row, id_row in zip(scores, rows):
            hits = []
            for score, row in zip(score_row, id_row):
                if row < 0:
                    continue
                doc = self.document(row)
                if kinds and doc.kind not in kinds:
                    continue
                hits.append(Hit(doc.id, float(score), doc.kind, {"title": doc.title, "text": doc.text, "aliases": doc.aliases, **doc.fields}))
                if len(hits) == k:
                    break
            results.append(hits)
        return results

    def close(self) -> None:
        self._docs.close()


class DenseRetriever:
    """The Retriever protocol over a dense index directory: `index(docs)` rebuilds it."""

    def __init__(self, path: str | Path, encoder: Encoder, index_string: str | None = None):
        self.path, self.encoder, self.index_string = Path(path), encoder, index_string
        self._index = FaissIndex(path, encoder) if (self.path / MANIFEST).exists() else None

    def index(self, docs: Iterable[Document]) -> int:
        manifest = build_faiss_index(docs, self.encoder, self.path, self.index_string, progress=False)
        if self._index is not None:
            self._index.close()
        self._index = FaissIndex(self.path, self.encoder)
        return manifest.count

    def search(self, query: str, k: int = 10, filters: Mapping[str, Any] | None = None) -> list[Hit]:
        if self._index is None:
            raise FileNotFoundError(f"no dense index at {self.path} yet: index documents first")
        return self._index.search(query, k, filters)
