"""`wenzhi index ...`: dense (faiss) and sparse (BM25) indexes: build and search."""
from __future__ import annotations

import argparse
import json
import sys

from wenzhi.cli_conventions import add_kb, add_output


def register(sub: "argparse._SubParsersAction") -> None:
    """Add this package's sub-commands to the `wenzhi` parser."""
    idx = sub.add_parser("index", help="retrieval indexes: dense faiss and BM25 (tantivy, OpenSearch/Elasticsearch)")
    idx_sub = idx.add_subparsers(dest="index_command", required=True, metavar="INDEX_COMMAND")

    def add_source(p: argparse.ArgumentParser) -> None:
        p.add_argument("--kind", required=True, choices=["entities", "triples", "passages"],
                       help="what one document is: an entity (name, aliases, description), a triple, or a passage")
        add_kb(p, required=False, help="the KB store (from `wenzhi kg import`) for entities and triples",
               old=["--db"])
        p.add_argument("--source", action="append", metavar="JSON",
                       help="SQuAD-format file(s) for passages (default: the data directory's cmrc2018/*.json)")
        p.add_argument("--limit", type=int, help="index only the first N documents (default: all)")

    p = idx_sub.add_parser("build", help="encode documents and build a faiss index (atomically)")
    add_source(p)
    p.add_argument("--encoder", required=True, metavar="DIR", help="a transformers model directory")
    p.add_argument("--index-type", metavar="STRING", help="faiss factory string, e.g. Flat, HNSW32, IVF4096,PQ64 "
                   "(default: by corpus size: Flat up to 100k, HNSW32 up to 3M, IVF-PQ beyond)")
    add_output(p, "the index folder to write (built aside, swapped in at the end)", old=["--out"], metavar="DIR")
    p.add_argument("--gpu", action="store_true", help="encode and build on the GPU when there is one")
    p.add_argument("--batch-size", type=int, default=64, help="documents encoded per batch")
    p.add_argument("--max-length", type=int, default=128, help="encoder tokens per document")
    p.set_defaults(handler=_build)

    p = idx_sub.add_parser("search", help="search a faiss index")
    p.add_argument("query", help="the query text")
    p.add_argument("--index", required=True, metavar="DIR", help="a faiss index folder (from `wenzhi index build`)")
    p.add_argument("--encoder", metavar="DIR", help="default: the encoder the index was built with")
    p.add_argument("-k", type=int, default=10, help="hits to show")
    p.set_defaults(handler=_search)

    p = idx_sub.add_parser("bm25", help="build a BM25 index: tantivy at --output, or a cluster index with --url")
    add_source(p)
    add_output(p, "the tantivy index folder to write (built aside, swapped in at the end); or give --url",
               old=["--out"], required=False, metavar="DIR")
    p.add_argument("--analyzer", default="bigrams", choices=["bigrams", "jieba"],
                   help="tantivy only: how Chinese text is cut into terms (character bigrams or jieba words)")
    _cluster_args(p)
    p.set_defaults(handler=_bm25)

    p = idx_sub.add_parser("bm25-search", help="search a BM25 index (tantivy --index DIR, or --url)")
    p.add_argument("query", help="the query text")
    p.add_argument("--index", metavar="DIR", help="a tantivy index folder (from `wenzhi index bm25`); or give --url")
    p.add_argument("-k", type=int, default=10, help="hits to show")
    p.add_argument("--filter-kind", choices=["entity", "triple", "passage"], help="only hits of this kind")
    _cluster_args(p)
    p.set_defaults(handler=_bm25_search)


def _cluster_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", help="Elasticsearch/OpenSearch URL instead of tantivy")
    p.add_argument("--flavor", default="opensearch", choices=["opensearch", "elasticsearch"],
                   help="--url only: which client speaks to the cluster")
    p.add_argument("--index-name", default="wenzhi-retrieval", help="--url only: the cluster's index")


def _documents(args):
    from itertools import islice

    from wenzhi.retrieval.documents import documents_for

    docs = documents_for(args.kind, db=args.kb, sources=args.source)
    return islice(docs, args.limit) if args.limit else docs


def _print_hits(hits) -> None:
    for rank, h in enumerate(hits, 1):
        row = {"rank": rank, "id": h.id, "score": round(h.score, 4), "kind": h.kind, "title": h.fields.get("title"),
               "text": (h.fields.get("text") or "")[:120]}
        print(json.dumps(row, ensure_ascii=False))


def _build(args) -> int:
    from wenzhi.retrieval.documents import KIND_BY_PLURAL
    from wenzhi.retrieval.encoder import TransformersEncoder
    from wenzhi.retrieval.faiss_index import build_faiss_index

    device = None if args.gpu else "cpu"
    encoder = TransformersEncoder(args.encoder, max_length=args.max_length, batch_size=args.batch_size, device=device)
    try:
        m = build_faiss_index(_documents(args), encoder, args.output, args.index_type, kind=KIND_BY_PLURAL[args.kind],
                              batch_size=args.batch_size, gpu=args.gpu, encoder_path=args.encoder)
    except (ValueError, FileNotFoundError) as exc:
        print(f"wenzhi index build: {exc}", file=sys.stderr)
        return 2
    print(f"built {m.index_string} over {m.count} {args.kind} (dim {m.dim}, {m.metric}) in {m.build_seconds:.1f} s -> {args.output}")
    return 0


def _search(args) -> int:
    from wenzhi.retrieval.analysis import QueryError
    from wenzhi.retrieval.encoder import TransformersEncoder
    from wenzhi.retrieval.faiss_index import FaissIndex, StaleIndexError

    try:
        encoder = TransformersEncoder(args.encoder) if args.encoder else None
        index = FaissIndex(args.index, encoder)
        _print_hits(index.search(args.query, args.k))
    except (StaleIndexError, QueryError, FileNotFoundError) as exc:
        print(f"wenzhi index search: {exc}", file=sys.stderr)
        return 2
    return 0


def _cluster(args):
    import logging

    from wenzhi.retrieval.search_cluster import SearchClusterRetriever, connect

    if logging.getLogger().level > logging.DEBUG:  # the clients log each failed try with a traceback
        for name in ("opensearch", "elastic_transport"):
            logging.getLogger(name).setLevel(logging.ERROR)
    return SearchClusterRetriever(connect(args.url, args.flavor), args.index_name)


def _cluster_error():
    """The exception a cluster call raises for a refused connection or an error status."""
    from wenzhi.retrieval.search_cluster import SearchClusterError

    return SearchClusterError


def _bm25(args) -> int:
    import time

    from wenzhi.retrieval.tantivy_backend import TantivyRetriever

    if bool(args.output) == bool(args.url):
        print("wenzhi index bm25: give exactly one of --output DIR (tantivy) or --url URL (cluster)", file=sys.stderr)
        return 2
    started = time.perf_counter()
    try:
        if args.url:
            retriever = _cluster(args)
            retriever.create_index(recreate=True)
            n = retriever.index(_documents(args), progress=True)
        else:
            n = TantivyRetriever.build(args.output, _documents(args), analyzer=args.analyzer).count()
    except (ValueError, FileNotFoundError) as exc:
        print(f"wenzhi index bm25: {exc}", file=sys.stderr)
        return 2
    except _cluster_error() as exc:
        print(f"wenzhi index bm25: {args.url}: {exc}", file=sys.stderr)
        return 2
    print(f"indexed {n} {args.kind} in {time.perf_counter() - started:.1f} s -> {args.url or args.output}")
    return 0


def _bm25_search(args) -> int:
    from pathlib import Path

    from wenzhi.retrieval.analysis import QueryError
    from wenzhi.retrieval.tantivy_backend import META_FILE, TantivyRetriever

    if bool(args.index) == bool(args.url):
        print("wenzhi index bm25-search: give exactly one of --index DIR or --url URL", file=sys.stderr)
        return 2
    if args.index and not (Path(args.index) / META_FILE).exists():
        print(f"wenzhi index bm25-search: no BM25 index at {args.index} (build one with `wenzhi index bm25`)", file=sys.stderr)
        return 2
    retriever = _cluster(args) if args.url else TantivyRetriever(args.index)
    try:
        hits = retriever.search(args.query, args.k, {"kind": args.filter_kind} if args.filter_kind else None)
    except QueryError as exc:
        print(f"wenzhi index bm25-search: {exc}", file=sys.stderr)
        return 2
    except _cluster_error() as exc:
        print(f"wenzhi index bm25-search: {args.url}: {exc}", file=sys.stderr)
        return 2
    _print_hits(hits)
    return 0
