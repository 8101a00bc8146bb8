"""`wenzhi index ...`: dense (faiss) and sparse (BM25) indexes: build and search."""
from __future__ import annotations

import argparse
import json
import sys

from wenzhi.cli_conventions import add_kb, add_output, warn_deprecated
from wenzhi.retrieval.bm25 import add_search_arguments


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

    p = idx_sub.add_parser("bm25", help="build a BM25 index: tantivy at --output DIR, or a cluster index "
                                        "(--search URL/INDEX)")
    add_source(p)
    add_output(p, "the tantivy index folder to write (built aside, swapped in at the end)", old=["--out"],
               required=False, metavar="DIR")
    p.add_argument("--analyzer", default="bigrams", choices=["bigrams", "jieba"],
                   help="tantivy only: how Chinese text is cut into terms (character bigrams or jieba words)")
    add_search_arguments(p, what="where to build (instead of --output)")
    _old_cluster_args(p)
    p.set_defaults(handler=_bm25)

    p = idx_sub.add_parser("bm25-search", help="search a BM25 index (tantivy or a cluster: --search)")
    p.add_argument("query", help="the query text")
    p.add_argument("-k", type=int, default=10, help="hits to show")
    p.add_argument("--filter-kind", choices=["entity", "triple", "passage"], help="only hits of this kind")
    add_search_arguments(p, "--index")
    _old_cluster_args(p)
    p.set_defaults(handler=_bm25_search)


def _old_cluster_args(p: argparse.ArgumentParser) -> None:
    """The spellings before --search, kept for one release."""
    p.add_argument("--url", help="old spelling: use --search URL/INDEX")
    p.add_argument("--index-name", help="old spelling: the last part of --search URL/INDEX")
    p.add_argument("--flavor", choices=["opensearch", "elasticsearch"], help="old spelling of --search-flavor")


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


def _setting(args, command: str, location: str | None = None):
    """The BM25 setting of a `wenzhi index bm25*` command; old spellings (--url, --index-name,
    --flavor) still work, with a warning."""
    from wenzhi.retrieval.bm25 import DEFAULT_INDEX, search_from_args

    if args.url or args.index_name or args.flavor:
        warn_deprecated("--url, --index-name and --flavor", "--search URL/INDEX and --search-flavor")
        if args.url and (location or args.search):
            raise ValueError("give --search (or --output) or the old --url, not both")
        if args.url:
            location = f"{args.url.rstrip('/')}/{args.index_name or DEFAULT_INDEX}"
        args.search_flavor = args.search_flavor or args.flavor
    elif location and args.search:
        raise ValueError("give one of --output DIR (tantivy) or --search DIR_OR_URL")
    return search_from_args(args, location)


def _bm25(args) -> int:
    import time

    from wenzhi.retrieval.search_cluster import SearchClusterError
    from wenzhi.retrieval.bm25 import ENV_LOCATION, open_bm25
    from wenzhi.retrieval.tantivy_backend import TantivyRetriever

    started = time.perf_counter()
    try:
        setting = _setting(args, "index bm25", args.output)
        if setting is None:
            raise ValueError(f"give --output DIR (tantivy) or --search DIR_OR_URL, or set {ENV_LOCATION}")
        if setting.is_cluster:
            retriever = open_bm25(setting, must_exist=False)
            retriever.create_index(recreate=True)
            n = retriever.index(_documents(args), progress=True)
        else:
            n = TantivyRetriever.build(setting.location, _documents(args), analyzer=args.analyzer).count()
    except (ValueError, FileNotFoundError, SearchClusterError) as exc:
        print(f"wenzhi index bm25: {exc}", file=sys.stderr)
        return 2
    print(f"indexed {n} {args.kind} in {time.perf_counter() - started:.1f} s -> {setting.public}")
    return 0


def _bm25_search(args) -> int:
    from wenzhi.retrieval.search_cluster import SearchClusterError
    from wenzhi.retrieval.bm25 import open_bm25

    try:
        retriever = open_bm25(_setting(args, "index bm25-search"))
        hits = retriever.search(args.query, args.k, {"kind": args.filter_kind} if args.filter_kind else None)
    except (ValueError, FileNotFoundError, SearchClusterError) as exc:  # QueryError is a ValueError
        print(f"wenzhi index bm25-search: {exc}", file=sys.stderr)
        return 2
    _print_hits(hits)
    return 0
