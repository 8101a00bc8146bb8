"""Reciprocal-rank fusion, alone and over a real BM25 index and a real dense index."""
from __future__ import annotations

import pytest

from wenzhi.retrieval.hybrid import HybridRetriever, reciprocal_rank_fusion
from wenzhi.retrieval.protocol import Hit


def _hits(*ids):
    return [Hit(i, 100.0 - n, "passage", {"title": i}) for n, i in enumerate(ids)]


def test_retrieval_rrf_orders_by_summed_reciprocal_ranks():
    fused = reciprocal_rank_fusion([_hits("a", "b", "c"), _hits("c", "a", "d")], k=60)
    assert [h.id for h in fused] == ["a", "c", "b", "d"]
    assert fused[0].score == pytest.approx(1 / 61 + 1 / 62)
    assert fused[1].score == pytest.approx(1 / 63 + 1 / 61)
    # weights shift the balance; limit cuts; an empty ranking changes nothing
    weighted = reciprocal_rank_fusion([_hits("a", "b"), _hits("b", "a")], weights=[1.0, 3.0], limit=1)
    assert [h.id for h in weighted] == ["b"]
    assert [h.id for h in reciprocal_rank_fusion([_hits("x", "y"), []])] == ["x", "y"]
    # equal scores break ties by id, so fusion is deterministic
    assert [h.id for h in reciprocal_rank_fusion([_hits("q"), _hits("p")])] == ["p", "q"]
    with pytest.raises(ValueError):
        reciprocal_rank_fusion([_hits("a")], weights=[1.0, 2.0])


def test_retrieval_hybrid_fuses_bm25_and_dense(cmrc_passages, tiny_encoder_dirs, tmp_path):
    from wenzhi.retrieval.encoder import TransformersEncoder
    from wenzhi.retrieval.faiss_index import DenseRetriever
    from wenzhi.retrieval.tantivy_backend import TantivyRetriever

    docs, questions = cmrc_passages
    docs = docs[:80]
    sparse = TantivyRetriever(tmp_path / "bm25")
    dense = DenseRetriever(tmp_path / "dense", TransformersEncoder(tiny_encoder_dirs[0], max_length=64), "Flat")
    hybrid = HybridRetriever([sparse, dense], depth=20)
    assert hybrid.index(docs) == 80
    doc = docs[7]
    # the document's own text: top of both rankings, so top of the fusion
    top = hybrid.search(doc.embedding_text(), 5)
    assert top[0].id == doc.id and len(top) == 5
    # a question: the fused list holds hits from both retrievers
    q = next(q for q, pid in questions if pid == doc.id)
    ids = {h.id for h in hybrid.search(q, 40)}
    assert ids & {h.id for h in sparse.search(q, 20)} and ids & {h.id for h in dense.search(q, 20)}
