"""Embedded BM25 on tantivy: an on-disk index, Chinese pre-tokenised in Python (analysis.py).

Queries are built as term queries (an OR of the query's terms per field, fields summed), never
through tantivy's query-string parser, so characters such as `:` `"` `(` `*` in a question
are just text.
"""
from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Mapping

from tqdm import tqdm

from . import analysis
from .atomic import atomic_directory
from .documents import Document
from .protocol import Hit, filter_kinds

log = logging.getLogger(__name__)

META_FILE = "wenzhi_bm25.json"
#: Per-field weights shared with the search-cluster backend, so both rank alike. Not tuned on any
#: benchmark: names and titles are strong evidence for entity and passage search alike.
FIELD_BOOSTS = {"title": 2.0, "aliases": 2.0, "text": 1.0}
#: Added when the whole query is exactly a document's title or one of its aliases.
EXACT_NAME_BOOST = 10.0
ANALYZERS = ("bigrams", "jieba")


def _schema():
    import tantivy

    sb = tantivy.SchemaBuilder()
    sb.add_text_field("doc_id", stored=True, tokenizer_name="raw")
    sb.add_text_field("kind", stored=True, tokenizer_name="raw")
    sb.add_text_field("name_exact", tokenizer_name="raw")
    for name in FIELD_BOOSTS:
        # Terms are whitespace-separated already; frequencies suffice (no phrase queries).
        sb.add_text_field(f"{name}_terms", tokenizer_name="whitespace", index_option="freq")
        sb.add_text_field(f"{name}_chars", tokenizer_name="whitespace", index_option="freq")
    sb.add_text_field("payload", stored=True, tokenizer_name="raw", index_option="basic")
    return sb.build()


class TantivyRetriever:
    """BM25 over an on-disk tantivy index at `path` (created if missing)."""

    def __init__(self, path: str | Path, analyzer: str = "bigrams", num_threads: int = 1):
        import tantivy

        self.path = Path(path)
        meta_path = self.path / META_FILE
        if meta_path.exists():
            meta = json.loads(meta_path.read_text())
            analyzer = meta["analyzer"]
        elif analyzer not in ANALYZERS:
            raise ValueError(f"analyzer {analyzer!r}: choose one of {ANALYZERS}")
        self.analyzer = analyzer
        self.num_threads = num_threads
        self.path.mkdir(parents=True, exist_ok=True)
        self.schema = _schema()
        self._index = tantivy.Index(self.schema, path=str(self.path), reuse=True)
        if not meta_path.exists():
            meta_path.write_text(json.dumps({"analyzer": analyzer, "format": 1}))

    # -- indexing ---------------------------------------------------------------------------
    def _terms(self, text: str) -> list[str]:
        return analysis.jieba_words(text) if self.analyzer == "jieba" else analysis.bigrams(text)

    def _tantivy_doc(self, doc: Document):
        import tantivy

        values: dict[str, Any] = {"doc_id": doc.id, "kind": doc.kind, "payload": doc.to_json()}
        texts = {"title": doc.title, "aliases": " ".join(doc.aliases), "text": doc.text}
        for name, text in texts.items():
            values[f"{name}_terms"] = " ".join(self._terms(text))
            values[f"{name}_chars"] = " ".join(analysis.chars(text))
        values["name_exact"] = [doc.title, *doc.aliases]
        return tantivy.Document(**values)

    def index(self, docs: Iterable[Document], progress: bool = False) -> int:
        """Add (or replace, by id) documents; committed when the stream ends."""
        replace = self.count() > 0
        writer = self._index.writer(heap_size=128_000_000, num_threads=self.num_threads)
        n = 0
        try:
            for doc in tqdm(docs, desc="bm25 index", unit="doc", disable=not progress):
                if replace:
                    writer.delete_documents_by_term("doc_id", doc.id)
                writer.add_document(self._tantivy_doc(doc))
                n += 1
            writer.commit()
        except BaseException:
            writer.rollback()
            raise
        finally:
            writer.wait_merging_threads()
        self._index.reload()
        return n

    @classmethod
    def build(cls, path: str | Path, docs: Iterable[Document], analyzer: str = "bigrams", progress: bool = True) -> "TantivyRetriever":
        """A fresh index at `path`, built aside and swapped in only when complete."""
        with atomic_directory(path) as tmp:
            n = cls(tmp, analyzer=analyzer).index(docs, progress=progress)
            log.info("bm25 index of %d documents built", n)
        return cls(path)

    def count(self) -> int:
        return self._index.searcher().num_docs

    # -- search -----------------------------------------------------------------------------
    def _query(self, query: str, kinds: list[str] | None):
        import tantivy

        q = tantivy.Query
        should = []

        def weighted_terms(field: str, terms: list[str], boost: float):
            for term, n in Counter(terms).items():
                should.append((tantivy.Occur.Should, q.boost_query(q.term_query(self.schema, field, term), boost * n)))

        terms = self._terms(query)
        lone = analysis.lone_chars(query)
        for name, boost in FIELD_BOOSTS.items():
            weighted_terms(f"{name}_terms", terms, boost)
            weighted_terms(f"{name}_chars", lone, boost)
        exact = q.term_query(self.schema, "name_exact", query)
        should.append((tantivy.Occur.Should, q.const_score_query(exact, EXACT_NAME_BOOST)))
        text_query = q.boolean_query(should)
        if not kinds:
            return text_query
        kind_filter = q.boolean_query([(tantivy.Occur.Should, q.term_query(self.schema, "kind", k)) for k in kinds])
        return q.boolean_query([(tantivy.Occur.Must, text_query), (tantivy.Occur.Must, q.const_score_query(kind_filter, 0.0))])

    def search(self, query: str, k: int = 10, filters: Mapping[str, Any] | None = None) -> list[Hit]:
        query = analysis.prepare_query(query)
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        searcher = self._index.searcher()
        result = searcher.search(self._query(query, filter_kinds(filters)), limit=k, count=False)
        hits = []
        for score, address in result.hits:
            doc = Document.from_json(searcher.doc(address)["payload"][0])
            hits.append(Hit(doc.id, float(score), doc.kind, {"title": doc.title, "text": doc.text, "aliases": doc.aliases, **doc.fields}))
        return hits
