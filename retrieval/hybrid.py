"""Hybrid search: reciprocal-rank fusion (RRF) of sparse and dense rankings.

RRF (Cormack et al., 2009) scores a document by sum_i w_i / (k + rank_i): it needs no score
calibration between BM25 and cosine similarity, which is why it is used here rather than a
weighted sum of raw scores."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from .protocol import Hit, Retriever


def reciprocal_rank_fusion(rankings: Sequence[Sequence[Hit]], k: int = 60, weights: Sequence[float] | None = None,
                           limit: int | None = None) -> list[Hit]:
    """Fuse ranked hit lists (best first) by id; a hit keeps the fields of its first appearance."""
    if weights is not None and len(weights) != len(rankings):
        raise ValueError(f"{len(weights)} weights for {len(rankings)} rankings")
    scores: dict[str, float] = {}
    first: dict[str, Hit] = {}
    for i, ranking in enumerate(rankings):
        w = 1.0 if weights is None else weights[i]
        for rank, hit in enumerate(ranking, start=1):
            scores[hit.id] = scores.get(hit.id, 0.0) + w / (k + rank)
            first.setdefault(hit.id, hit)
    order = sorted(scores, key=lambda doc_id: (-scores[doc_id], doc_id))
    fused = [Hit(doc_id, scores[doc_id], first[doc_id].kind, first[doc_id].fields) for doc_id in order]
    return fused[:limit] if limit is not None else fused


class HybridRetriever:
    """Searches several retrievers (e.g. tantivy and a dense index) and fuses them with RRF."""

    def __init__(self, retrievers: Sequence[Retriever], weights: Sequence[float] | None = None, rrf_k: int = 60, depth: int = 50):
        self.retrievers, self.weights, self.rrf_k, self.depth = list(retrievers), weights, rrf_k, depth

    def index(self, docs) -> int:
        docs = list(docs)  # every backend needs the same stream
        return min(r.index(docs) for r in self.retrievers)

    def search(self, query: str, k: int = 10, filters: Mapping[str, Any] | None = None) -> list[Hit]:
        depth = max(k, self.depth)
        rankings = [r.search(query, depth, filters) for r in self.retrievers]
        return reciprocal_rank_fusion(rankings, self.rrf_k, self.weights, limit=k)
