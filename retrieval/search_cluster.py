"""BM25 on an Elasticsearch or OpenSearch cluster, through either client.

One code path builds the mapping and the query DSL for both; only the few calls whose keyword
arguments differ between `opensearch-py` and the 8.x/9.x `elasticsearch` client go through
`_Calls`. The mapping analyses Chinese the way `analysis.py` does for the embedded backend
(standard tokenizer, cjk_width, lowercase, cjk_bigram), with per-character sub-fields for
one-character queries and keyword sub-fields for exact names and aliases.
"""
from __future__ import annotations

import importlib
import logging
from contextlib import contextmanager
from typing import Any, Iterable, Iterator, Mapping

from tqdm import tqdm

from . import analysis
from .documents import Document
from .protocol import Hit, filter_kinds
from .bm25 import DEFAULT_INDEX, ENV_API_KEY, ENV_PASSWORD, ENV_USER, FLAVORS
from .tantivy_backend import EXACT_NAME_BOOST, FIELD_BOOSTS

log = logging.getLogger(__name__)


class BulkIndexError(RuntimeError):
    """Some documents were refused by the cluster (after retries); `failures` says which and why."""

    def __init__(self, failures: list[dict], indexed: int):
        self.failures, self.indexed = failures, indexed
        first = "; ".join(f"{f.get('_id')}: {f.get('error')}" for f in failures[:3])
        super().__init__(f"{len(failures)} documents not indexed ({indexed} were), first: {first}")


class SearchClusterError(RuntimeError):
    """The cluster could not be reached, or refused a call (after the transport's retries)."""


#: What a refused login means to the user: the credentials come from these (bm25.py).
CREDENTIALS_HINT = f"check {ENV_API_KEY}, or {ENV_USER} and {ENV_PASSWORD}"


def index_body(shards: int | None = None, replicas: int | None = None) -> dict:
    """Settings and mappings of a retrieval index (valid on OpenSearch 2/3 and Elasticsearch 8/9)."""
    index_settings: dict[str, Any] = {}
    if shards is not None:
        index_settings["number_of_shards"] = shards
    if replicas is not None:
        index_settings["number_of_replicas"] = replicas
    analysis_settings = {
        "analyzer": {
            "zh_bigrams": {"type": "custom", "tokenizer": "standard", "filter": ["cjk_width", "lowercase", "cjk_bigram"]},
            "zh_chars": {"type": "custom", "tokenizer": "standard", "filter": ["cjk_width", "lowercase"]},
        }
    }

    def text_field(keyword: bool) -> dict:
        sub: dict[str, Any] = {"chars": {"type": "text", "analyzer": "zh_chars"}}
        if keyword:
            sub["keyword"] = {"type": "keyword", "ignore_above": 256}
        return {"type": "text", "analyzer": "zh_bigrams", "fields": sub}

    return {
        "settings": {"index": index_settings, "analysis": analysis_settings},
        "mappings": {
            "dynamic": "strict",
            "properties": {
                "doc_id": {"type": "keyword"},
                "kind": {"type": "keyword"},
                "title": text_field(keyword=True),
                "aliases": text_field(keyword=True),
                "text": text_field(keyword=False),
                "fields": {"type": "object", "enabled": False},
            },
        },
    }


def search_body(query: str, k: int, kinds: list[str] | None = None) -> dict:
    """The query DSL: an OR of the query's bigrams over title/aliases/text (scores summed, as
    the embedded backend does), lone characters against the per-character fields, and a
    constant bonus when the query is exactly a title or alias."""
    should: list[dict] = [
        {"multi_match": {"query": query, "type": "most_fields", "operator": "or",
                         "fields": [f"{f}^{b}" for f, b in FIELD_BOOSTS.items()]}},
        {"constant_score": {"boost": EXACT_NAME_BOOST, "filter": {"bool": {"should": [
            {"term": {"title.keyword": query}}, {"term": {"aliases.keyword": query}}]}}}},
    ]
    lone = analysis.lone_chars(query)
    if lone:
        should.append({"multi_match": {"query": " ".join(lone), "type": "most_fields", "operator": "or",
                                       "fields": [f"{f}.chars^{b}" for f, b in FIELD_BOOSTS.items()]}})
    # With a filter clause present, should-clauses become optional unless told otherwise.
    boolean: dict[str, Any] = {"should": should, "minimum_should_match": 1}
    if kinds:
        boolean["filter"] = [{"terms": {"kind": kinds}}]
    return {"size": k, "query": {"bool": boolean}}


def _source(doc: Document) -> dict:
    return {"doc_id": doc.id, "kind": doc.kind, "title": doc.title, "aliases": doc.aliases, "text": doc.text, "fields": doc.fields}


class _Calls:
    """The calls whose keyword arguments differ between the two clients."""

    def __init__(self, client, redact: Iterable[str] = (), where: str = "the cluster"):
        package = type(client).__module__.split(".")[0]
        if package == "opensearchpy":
            self.flavor = "opensearch"
        elif package == "elasticsearch":
            self.flavor = "elasticsearch"
        else:
            raise TypeError(f"unsupported client {type(client).__name__}: use opensearchpy.OpenSearch or elasticsearch.Elasticsearch")
        self.client = client
        self.redact = tuple(r for r in redact if r)
        self.where = where
        self.helpers = importlib.import_module(f"{package}.helpers")
        if self.flavor == "opensearch":
            self.errors: tuple = (importlib.import_module("opensearchpy.exceptions").OpenSearchException,)
        else:
            self.errors = (importlib.import_module("elasticsearch").ApiError,
                           importlib.import_module("elastic_transport").TransportError)

    @contextmanager
    def reported(self, doing: str):
        """The client's errors (a refused connection, an HTTP error status) as one SearchClusterError,
        with any credential this client was given blanked out of the message."""
        try:
            yield
        except self.errors as exc:
            message = f"{doing} at {self.where} failed: {self._explain(exc)}"
            for secret in self.redact:
                message = message.replace(secret, "***")
            raise SearchClusterError(message) from None  # the client's chain holds no more than this

    def _explain(self, exc) -> str:
        status = getattr(exc, "status_code", None)
        if not isinstance(status, int):
            status = getattr(getattr(exc, "meta", None), "status", None)
        if status in (401, 403):
            return f"the cluster refused the credentials (HTTP {status}): {CREDENTIALS_HINT}"
        if isinstance(status, int):
            return f"HTTP {status}: {str(exc)[:300]}"
        # no HTTP status: the connection itself failed (refused, TLS, name lookup, timeout);
        # opensearch-py's errors are (status, message, cause), elasticsearch's just the message
        text = exc.args[1] if self.flavor == "opensearch" and len(exc.args) > 1 else exc
        return f"cannot connect: {str(text)[:300]}"

    def create_index(self, name: str, body: dict) -> None:
        if self.flavor == "opensearch":
            self.client.indices.create(index=name, body=body)
        else:
            self.client.indices.create(index=name, settings=body["settings"], mappings=body["mappings"])

    def search(self, name: str, body: dict) -> Mapping:
        if self.flavor == "opensearch":
            return self.client.search(index=name, body=body)
        return self.client.search(index=name, **body)


def connect(url: str, flavor: str = "opensearch", timeout: float = 30.0, *, api_key: str | None = None,
            basic_auth: tuple[str, str] | None = None, ca_certs: str | None = None, verify_certs: bool = True,
            **kwargs):
    """A client for `url` (no credentials in it) that retries timeouts and overload statuses at
    the transport level. `api_key` is the encoded key the cluster handed out (sent as
    `Authorization: ApiKey KEY`); `ca_certs` a CA bundle for https; `verify_certs=False` accepts
    any certificate (a test cluster's self-signed one)."""
    retry = dict(retry_on_timeout=True, max_retries=3, retry_on_status=(429, 502, 503, 504))
    tls = dict(verify_certs=verify_certs, ssl_show_warn=verify_certs, **({"ca_certs": ca_certs} if ca_certs else {}))
    if flavor == "opensearch":
        from opensearchpy import OpenSearch

        if api_key:  # opensearch-py has no api_key argument; the header is what the cluster reads
            kwargs["headers"] = {**kwargs.get("headers", {}), "Authorization": f"ApiKey {api_key}"}
        if basic_auth:
            kwargs["http_auth"] = basic_auth
        return OpenSearch(hosts=[url], timeout=timeout, **tls, **retry, **kwargs)
    if flavor == "elasticsearch":
        from elasticsearch import Elasticsearch

        if api_key:
            kwargs["api_key"] = api_key
        if basic_auth:
            kwargs["basic_auth"] = basic_auth
        return Elasticsearch(url, request_timeout=timeout, **tls, **retry, **kwargs)
    raise ValueError(f"flavor {flavor!r}: choose one of {FLAVORS}")


class SearchClusterRetriever:
    """BM25 over one index of an Elasticsearch/OpenSearch cluster."""

    def __init__(self, client, index_name: str = DEFAULT_INDEX, chunk_size: int = 500,
                 max_retries: int = 5, initial_backoff: float = 1.0, max_backoff: float = 60.0,
                 redact: Iterable[str] = (), where: str = "the cluster"):
        """`redact`: strings (the credentials the client was given) never to appear in an error;
        `where`: the cluster as errors name it (its URL without credentials)."""
        self.calls = _Calls(client, redact, where)
        self.client = client
        self.index_name = index_name
        self.chunk_size = chunk_size
        self.max_retries, self.initial_backoff, self.max_backoff = max_retries, initial_backoff, max_backoff

    @property
    def flavor(self) -> str:
        return self.calls.flavor

    def create_index(self, recreate: bool = False, shards: int | None = None, replicas: int | None = None) -> None:
        with self.calls.reported(f"creating index {self.index_name!r}"):
            if self.client.indices.exists(index=self.index_name):
                if not recreate:
                    return
                self.client.indices.delete(index=self.index_name)
            self.calls.create_index(self.index_name, index_body(shards, replicas))

    def _actions(self, docs: Iterable[Document]) -> Iterator[dict]:
        for doc in docs:
            yield {"_op_type": "index", "_index": self.index_name, "_id": doc.id, "_source": _source(doc)}

    def index(self, docs: Iterable[Document], progress: bool = False) -> int:
        """Bulk-index in chunks; chunks refused with 429 are retried with exponential back-off
        (the client library's streaming_bulk), connection failures by the transport."""
        self.create_index()
        indexed, failures = 0, []
        stream = self.calls.helpers.streaming_bulk(
            self.client, self._actions(docs), chunk_size=self.chunk_size, max_retries=self.max_retries,
            initial_backoff=self.initial_backoff, max_backoff=self.max_backoff, raise_on_error=False,
            raise_on_exception=True,
        )
        with self.calls.reported(f"indexing into {self.index_name!r}"):
            for ok, item in tqdm(stream, desc=f"bulk {self.index_name}", unit="doc", disable=not progress):
                if ok:
                    indexed += 1
                else:
                    failures.append(next(iter(item.values())))
            self.client.indices.refresh(index=self.index_name)
        if failures:
            raise BulkIndexError(failures, indexed)
        return indexed

    def count(self) -> int:
        with self.calls.reported(f"counting {self.index_name!r}"):
            return int(self.client.count(index=self.index_name)["count"])

    def require_index(self) -> None:
        """Reach the cluster now and check the index is there (a clear error at start-up, not
        at the first search)."""
        with self.calls.reported(f"looking up index {self.index_name!r}"):
            exists = self.client.indices.exists(index=self.index_name)
        if not exists:
            raise SearchClusterError(f"no index {self.index_name!r} at {self.calls.where} "
                                     "(build it with `wenzhi index bm25 --search URL/INDEX`)")

    def identity(self) -> dict:
        """What changes when the index is rebuilt or refilled: its cluster-assigned uuid and size."""
        with self.calls.reported(f"describing index {self.index_name!r}"):
            settings = self.client.indices.get(index=self.index_name)[self.index_name]["settings"]["index"]
        return {"index": self.index_name, "uuid": settings.get("uuid"), "documents": self.count()}

    def search(self, query: str, k: int = 10, filters: Mapping[str, Any] | None = None) -> list[Hit]:
        query = analysis.prepare_query(query)
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        with self.calls.reported(f"searching {self.index_name!r}"):
            response = self.calls.search(self.index_name, search_body(query, k, filter_kinds(filters)))
        hits = []
        for h in response["hits"]["hits"]:
            src = h["_source"]
            fields = {"title": src["title"], "text": src["text"], "aliases": src.get("aliases", []), **src.get("fields", {})}
            hits.append(Hit(h["_id"], float(h["_score"]), src["kind"], fields))
        return hits
