"""`wenzhi kg ...`: import, stats, entity, link, eval-linking."""
from __future__ import annotations

import argparse
import json
import sys

from wenzhi.cli_conventions import add_kb

DEFAULT_MAX_REJECTED_SHARE = 0.1  # kg.importer's (not imported here: `wenzhi kg` starts fast)


def register(sub: "argparse._SubParsersAction") -> None:
    """Add this package's sub-commands to the `wenzhi` parser."""
    kg = sub.add_parser("kg", help="knowledge graph: import triples, look up and link entities")
    kg_sub = kg.add_subparsers(dest="kg_command", required=True, metavar="KG_COMMAND")

    p = kg_sub.add_parser("import", help="import triple files into a store (atomically)")
    p.add_argument("files", nargs="+", metavar="FILE", help="KgCLUE TSV, NLPCC ' ||| ' or CSV triple files")
    add_kb(p, help="the KB store to create or replace", old=["--db"])
    p.add_argument("--format", default="auto", choices=["auto", "kgclue", "nlpcc", "csv"],
                   help="input format (auto: from the extension and the first line)")
    p.add_argument("--alias-relations",
                   help="comma-separated relations whose tails are aliases (default: 别名, 简称, 外文名 ... "
                        "see kg/importer.py)")
    p.add_argument("--description-relations",
                   help="comma-separated long-text relations (default: 描述, 简介, ... see kg/importer.py)")
    p.add_argument("--max-rejected-share", type=float, default=DEFAULT_MAX_REJECTED_SHARE, metavar="FRACTION",
                   help="an import rejecting more of its lines than this (or storing no triple) fails and "
                        "leaves the existing store as it was")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(handler=_import)

    p = kg_sub.add_parser("stats", help="counts and the last import's summary")
    add_kb(p, old=["--db"])
    p.set_defaults(handler=_stats)

    p = kg_sub.add_parser("entity", help="an entity by full name, or all homonyms of a base name")
    p.add_argument("name", help="a full name (名称（消歧）) for that entity, or a base name for all its homonyms")
    add_kb(p, old=["--db"])
    p.add_argument("--limit", type=int, default=50, help="triples shown per entity")
    p.set_defaults(handler=_entity)

    p = kg_sub.add_parser("link", help="link entity mentions in TEXT (one JSON object per mention)")
    p.add_argument("text", help="the text to link")
    add_kb(p, old=["--db"])
    p.add_argument("--no-context", action="store_true", help="prior only, no context evidence")
    p.set_defaults(handler=_link, weights=None)

    p = kg_sub.add_parser("eval-linking", help="topic-entity accuracy on KBQA questions")
    add_kb(p, old=["--db"])
    p.add_argument("--questions", required=True, help="KgCLUE/NLPCC JSON lines")
    p.add_argument("--limit", type=int, help="the first N questions (default: all)")
    p.add_argument("--no-context", action="store_true",
                   help="only the baseline: longest match + most frequent homonym")
    p.add_argument("--baseline", action="store_true",
                   help="also report the baseline (no context) in the same run")
    p.add_argument("--errors", type=int, default=0, help="show this many misses")
    p.add_argument("--weights", help="comma-separated feature weights (default: the fitted ones)")
    p.set_defaults(handler=_eval_linking)

    p = kg_sub.add_parser("fit-linker", help="fit the linker's feature weights on KBQA questions")
    add_kb(p, old=["--db"])
    p.add_argument("--questions", required=True, help="KgCLUE/NLPCC JSON lines (use a train split)")
    p.add_argument("--limit", type=int, help="the first N questions (default: all)")
    p.set_defaults(handler=_fit_linker, no_context=False, weights=None)


def _split(value: str | None):
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]


def _import(args) -> int:
    import sqlite3

    from wenzhi.kg.importer import (DEFAULT_ALIAS_RELATIONS, DEFAULT_DESCRIPTION_RELATIONS,
                                    ImportRefused, import_files)

    try:
        summary = import_files(
            args.files, args.kb, fmt=args.format,
            alias_relations=_split(args.alias_relations) or DEFAULT_ALIAS_RELATIONS,
            description_relations=_split(args.description_relations) or DEFAULT_DESCRIPTION_RELATIONS,
            progress=not args.no_progress, max_rejected_share=args.max_rejected_share,
        )
    except ImportRefused as exc:
        print(exc.summary.describe())
        print(f"wenzhi kg import: {exc}", file=sys.stderr)
        return 1
    except (ValueError, OSError, sqlite3.Error) as exc:  # bad paths, formats, a full disk
        print(f"wenzhi kg import: {exc}", file=sys.stderr)
        return 2
    print(summary.describe())
    return 0 if summary.reconciles else 1


def _open(db: str):
    from wenzhi.kg.store import TripleStore

    try:
        return TripleStore(db)
    except FileNotFoundError as exc:
        print(f"wenzhi: {exc}", file=sys.stderr)
        return None


def _dump(obj) -> None:
    print(json.dumps(obj, ensure_ascii=False))


def _stats(args) -> int:
    store = _open(args.kb)
    if store is None:
        return 2
    stats = store.stats()
    stats["top_relations"] = store.relation_counts()[:20]
    print(json.dumps(stats, ensure_ascii=False, indent=2))
    return 0


def _entity(args) -> int:
    from dataclasses import asdict

    store = _open(args.kb)
    if store is None:
        return 2
    # A full name with a disambiguation means that entity; a bare name means all homonyms.
    exact = store.entity_by_name(args.name)
    entities = [exact] if exact and exact.disambiguation else store.entities_by_base(args.name)
    if not entities:
        print(f"wenzhi: no entity named {args.name!r} in {args.kb}", file=sys.stderr)
        return 1
    out = []
    for e in entities:
        row = asdict(e)
        row["aliases"] = store.aliases(e.id)
        row["triples"] = [[t.relation, t.tail] for t in store.triples(e.id)[: args.limit]]
        out.append(row)
    _dump({"query": args.name, "entities": out})
    return 0


def _linker(args):
    from wenzhi.kg.linker import EntityLinker, LinkerConfig

    store = _open(args.kb)
    if store is None:
        return None
    config = LinkerConfig(context=not args.no_context)
    if getattr(args, "weights", None):
        config.weights = tuple(float(w) for w in args.weights.split(","))
    return EntityLinker(store, config=config, progress=True)


def _link(args) -> int:
    linker = _linker(args)
    if linker is None:
        return 2
    for m in linker.link(args.text):
        _dump(m.to_dict())
    return 0


def _eval_linking(args) -> int:
    from wenzhi.kg.linker import EntityLinker, LinkerConfig
    from wenzhi.kg.linking_eval import evaluate_linking
    from wenzhi.kg.questions import read_questions

    linker = _linker(args)
    if linker is None:
        return 2
    questions = read_questions(args.questions, args.limit)
    result = evaluate_linking(linker, questions, progress=True, errors=args.errors)
    result["questions"] = args.questions
    if args.baseline and not args.no_context:
        baseline = EntityLinker(linker.store, linker.index, LinkerConfig(context=False))
        result["baseline"] = evaluate_linking(baseline, questions, progress=True)
    _dump(result)
    return 0


def _fit_linker(args) -> int:
    from wenzhi.kg.questions import read_questions
    from wenzhi.kg.tuning import fit_weights

    linker = _linker(args)
    if linker is None:
        return 2
    weights, report = fit_weights(linker, read_questions(args.questions, args.limit), progress=True)
    report["weights_csv"] = ",".join(str(w) for w in weights)
    _dump(report)
    return 0
