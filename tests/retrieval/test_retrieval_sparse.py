"""BM25 backends on real data: tantivy (embedded) and OpenSearch (osmem-server), same queries."""
from __future__ import annotations

import os

import pytest

from wenzhi.retrieval.analysis import MAX_QUERY_CHARS, QueryError
from wenzhi.retrieval.documents import entity_documents, passages_from_squad
from wenzhi.retrieval.tantivy_backend import TantivyRetriever

AWKWARD_QUERIES = ['title:(foo) AND "bar" *', "a OR b -c +d ~2 ^3 [x TO y] {z} \\ / !", "?", "（）《》"]


def _entity_docs(kb_store, kgclue_dev, n_gold=40, n_first=1500):
    """Entity documents of the KB slice: the first n_first entities plus the gold heads (and their
    homonyms) of the first n_gold KgCLUE dev questions."""
    gold = [q.head for q in kgclue_dev[:n_gold]]
    gold_bases = set()
    for name in gold:
        ent = kb_store.entity_by_name(name)
        if ent is not None:
            gold_bases.add(ent.base)
    docs = [d for i, d in enumerate(entity_documents(kb_store)) if i < n_first or d.fields["base"] in gold_bases]
    return docs, [(q.question, g) for q, g in zip(kgclue_dev[:n_gold], gold)]


@pytest.fixture(scope="module")
def entity_docs(kb_store, kgclue_dev):
    return _entity_docs(kb_store, kgclue_dev)


@pytest.fixture(scope="module")
def tantivy_passages(cmrc_passages, tmp_path_factory):
    docs, _ = cmrc_passages
    return TantivyRetriever.build(tmp_path_factory.mktemp("bm25") / "passages", docs, progress=False)


@pytest.fixture(scope="module")
def tantivy_entities(entity_docs, tmp_path_factory):
    return TantivyRetriever.build(tmp_path_factory.mktemp("bm25") / "entities", entity_docs[0], progress=False)


@pytest.fixture(scope="module")
def os_passages(opensearch_url, cmrc_passages):
    from wenzhi.retrieval.search_cluster import SearchClusterRetriever, connect

    r = SearchClusterRetriever(connect(opensearch_url), "passages", chunk_size=100)
    r.create_index(recreate=True)
    assert r.index(cmrc_passages[0]) == len(cmrc_passages[0])
    return r


@pytest.fixture(scope="module")
def os_entities(opensearch_url, entity_docs):
    from wenzhi.retrieval.search_cluster import SearchClusterRetriever, connect

    r = SearchClusterRetriever(connect(opensearch_url), "entities", chunk_size=500)
    r.create_index(recreate=True)
    r.index(entity_docs[0])
    return r


def _passage_recall_at_5(retriever, questions) -> float:
    found = sum(pid in [h.id for h in retriever.search(q, 5)] for q, pid in questions)
    return found / len(questions)


def _entity_recall_at_10(retriever, questions) -> float:
    found = sum(gold in [h.fields["title"] for h in retriever.search(q, 10, {"kind": "entity"})] for q, gold in questions)
    return found / len(questions)


@pytest.mark.parametrize("backend", ["tantivy", "opensearch"])
def test_retrieval_finds_cmrc_passages_and_kb_entities(backend, request, cmrc_passages, entity_docs):
    passages = request.getfixturevalue(f"{'tantivy' if backend == 'tantivy' else 'os'}_passages")
    entities = request.getfixturevalue(f"{'tantivy' if backend == 'tantivy' else 'os'}_entities")
    _, questions = cmrc_passages
    # BM25 over 150 paragraphs: most questions share rare bigrams with their paragraph.
    assert _passage_recall_at_5(passages, questions[:200]) >= 0.9
    # KgCLUE questions mention their subject almost verbatim.
    _, entity_questions = entity_docs
    assert _entity_recall_at_10(entities, entity_questions) >= 0.9
    # an exact KB name is the top hit, with its fields
    name = entity_questions[0][1]
    top = entities.search(name, 3)[0]
    assert top.fields["title"] == name and top.kind == "entity" and top.id.startswith("entity:")
    assert isinstance(top.fields["entity_id"], int)


def test_retrieval_tantivy_and_opensearch_agree(tantivy_passages, os_passages, tantivy_entities, os_entities,
                                                cmrc_passages, entity_docs):
    _, questions = cmrc_passages
    queries = [q for q, _ in questions[:100]]
    same_top1 = sum(tantivy_passages.search(q, 1)[0].id == os_passages.search(q, 1)[0].id for q in queries)
    overlap = [len({h.id for h in tantivy_passages.search(q, 5)} & {h.id for h in os_passages.search(q, 5)}) / 5 for q in queries]
    assert same_top1 / len(queries) >= 0.9, same_top1
    assert sum(overlap) / len(overlap) >= 0.7
    entity_queries = [q for q, _ in entity_docs[1]]
    same_entity = sum(tantivy_entities.search(q, 1)[0].id == os_entities.search(q, 1)[0].id for q in entity_queries)
    assert same_entity / len(entity_queries) >= 0.85, same_entity


@pytest.mark.parametrize("backend", ["tantivy", "opensearch"])
def test_retrieval_edge_queries(backend, request, cmrc_passages):
    r = request.getfixturevalue(f"{'tantivy' if backend == 'tantivy' else 'os'}_passages")
    title = cmrc_passages[0][0].title  # a CJK title of at least two characters
    one, two = title[0], title[:2]
    for empty in ("", "   ", "\n\t"):
        with pytest.raises(QueryError, match="empty query"):
            r.search(empty)
    with pytest.raises(QueryError, match="no searchable"):
        r.search("？！。，")
    with pytest.raises(ValueError):
        r.search(two, k=0)
    # one character: found through the per-character fields, not only where it stands alone
    hits = r.search(one, 5)
    assert hits and all(one in h.fields["text"] + h.fields["title"] for h in hits)
    # two characters: a single bigram
    hits = r.search(two, 3)
    assert hits and all(two in h.fields["text"] + h.fields["title"] for h in hits)
    # a very long query (a whole paragraph, repeated) is cut, still finds its paragraph
    top = r.search(title, 1)[0]
    long_query = (top.fields["text"] + " ") * (MAX_QUERY_CHARS // max(1, len(top.fields["text"])) + 3)
    assert len(long_query) > MAX_QUERY_CHARS
    assert r.search(long_query, 1)[0].id == top.id
    # query-syntax characters are plain text, never a parse error
    for q in AWKWARD_QUERIES:
        try:
            r.search(q, 3)
        except QueryError:
            pass


@pytest.mark.parametrize("backend", ["tantivy", "opensearch"])
def test_retrieval_kind_filter(backend, request, tmp_path, cmrc_passages, entity_docs, opensearch_url):
    docs = cmrc_passages[0][:30] + entity_docs[0][:30]
    if backend == "tantivy":
        r = TantivyRetriever.build(tmp_path / "mixed", docs, progress=False)
    else:
        from wenzhi.retrieval.search_cluster import SearchClusterRetriever, connect

        r = SearchClusterRetriever(connect(opensearch_url), "mixed")
        r.create_index(recreate=True)
        r.index(docs)
    title = docs[0].title
    assert {h.kind for h in r.search(title, 20, {"kind": "entity"})} <= {"entity"}
    assert {h.kind for h in r.search(title, 20, {"kind": ["passage"]})} == {"passage"}
    with pytest.raises(ValueError, match="unknown filter"):
        r.search(title, 5, {"colour": "red"})


def test_retrieval_tantivy_reindex_replaces_by_id_and_build_is_atomic(tmp_path, cmrc_passages):
    docs = cmrc_passages[0][:20]
    path = tmp_path / "idx"
    r = TantivyRetriever.build(path, docs, progress=False)
    assert r.count() == 20
    r.index(docs[:5])  # same ids again: replaced, not duplicated
    assert r.count() == 20

    def failing():
        yield from docs[:10]
        raise RuntimeError("source broke")

    with pytest.raises(RuntimeError, match="source broke"):
        TantivyRetriever.build(path, failing(), progress=False)
    assert TantivyRetriever(path).count() == 20
    assert [p.name for p in tmp_path.iterdir()] == ["idx"]


def test_retrieval_passages_from_squad_reads_all_cmrc_paragraphs(data_dir):
    docs = list(passages_from_squad(sorted((data_dir / "cmrc2018").glob("*.json"))))
    assert len(docs) == 1104  # the data README's count
    assert len({d.id for d in docs}) == len(docs)


@pytest.mark.cluster
def test_retrieval_elasticsearch_client_path(cmrc_passages):
    """The `elasticsearch` client against a real cluster (WENZHI_ES_URL)."""
    from wenzhi.retrieval.search_cluster import SearchClusterRetriever, connect

    r = SearchClusterRetriever(connect(os.environ["WENZHI_ES_URL"], "elasticsearch"), "wenzhi-test-passages")
    r.create_index(recreate=True)
    docs, questions = cmrc_passages
    assert r.index(docs) == len(docs)
    assert _passage_recall_at_5(r, questions[:100]) >= 0.8
    r.client.indices.delete(index=r.index_name)
