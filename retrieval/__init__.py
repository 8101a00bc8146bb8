"""Retrieval: BM25 (tantivy embedded, or an OpenSearch/Elasticsearch cluster), dense faiss
indexes, and their fusion. Every backend speaks `Retriever`: `index(docs)`, `search(query, k,
filters) -> list[Hit]`. `open_bm25(setting)` opens the BM25 index that a directory or a cluster
URL names (bm25.py), for every user of BM25.

Names are imported lazily so `wenzhi` starts without loading faiss, torch or tantivy.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "Document": "documents", "documents_for": "documents",
    "Hit": "protocol", "Retriever": "protocol",
    "QueryError": "analysis",
    "TantivyRetriever": "tantivy_backend",
    "SearchClusterRetriever": "search_cluster", "connect": "search_cluster", "SearchClusterError": "search_cluster",
    "open_bm25": "bm25", "search_setting": "bm25", "SearchSetting": "bm25",
    "reciprocal_rank_fusion": "hybrid", "HybridRetriever": "hybrid",
    "Encoder": "encoder", "TransformersEncoder": "encoder",
    "build_faiss_index": "faiss_index", "FaissIndex": "faiss_index", "DenseRetriever": "faiss_index",
    "IndexRefresher": "refresh",
    "StaleIndexError": "faiss_index",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'retrieval' has no attribute {name!r}")
