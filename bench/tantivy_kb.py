"""BM25 over the whole KB: tantivy build time and query latency, and entity retrieval recall of
the gold head for KgCLUE dev questions (the fuzzy fallback for entity linking), with the
OpenSearch path (osmem-server) side by side on the same entity documents.

    .venv/bin/python bench/tantivy_kb.py                       # imports the KB to /tmp if needed
    .venv/bin/python bench/tantivy_kb.py --kb /tmp/kb.sqlite --backends tantivy

Entities: one document per KB head (name, aliases, disambiguation, description); triples: one
per KB triple (`head relation tail`). Latency: every KgCLUE dev question searched once (k=20),
one at a time. The last line is JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

KS = (1, 5, 10, 20)


def dir_mb(path: Path) -> float:
    return round(sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20, 1)


def latency(retriever, questions, filters=None) -> tuple[dict, list[list[str]]]:
    times, titles = [], []
    for q in questions:
        start = time.perf_counter()
        hits = retriever.search(q, max(KS), filters)
        times.append(time.perf_counter() - start)
        titles.append([h.fields["title"] for h in hits])
    ms = np.array(times) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "qps": round(len(ms) / (ms.sum() / 1000), 1)}, titles


def recall(titles: list[list[str]], gold: list[str]) -> dict:
    n = len(gold)
    out = {f"recall_at_{k}": round(sum(g in t[:k] for t, g in zip(titles, gold)) / n, 4) for k in KS}
    out["mrr"] = round(sum(1 / (t.index(g) + 1) for t, g in zip(titles, gold) if g in t) / n, 4)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kb", default="/tmp/wenzhi_bench/kb.sqlite", help="KB store (imported here if missing)")
    p.add_argument("--backends", default="tantivy,opensearch")
    p.add_argument("--questions", type=int, help="only the first N KgCLUE dev questions")
    args = p.parse_args(argv)

    from wenzhi.kg import TripleStore
    from wenzhi.kg.datadir import data_path
    from wenzhi.retrieval.documents import entity_documents, triple_documents
    from wenzhi.retrieval.tantivy_backend import TantivyRetriever

    db = Path(args.kb)
    if not db.exists():
        db.parent.mkdir(parents=True, exist_ok=True)
        print(f"importing the KB into {db}", file=sys.stderr)
        TripleStore.import_files([data_path("kb/knowledge.txt")], db)
    store = TripleStore(db)
    with open(data_path("kgclue/dev.json"), encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    rows = rows[: args.questions] if args.questions else rows
    questions = [r["question"] for r in rows]
    gold = [r["answer"].split("|||")[0].strip() for r in rows]
    in_kb = sum(store.entity_by_name(g) is not None for g in gold) / len(gold)
    entities = list(entity_documents(store))
    print(f"{len(entities)} entities, {len(questions)} questions, gold head in KB: {in_kb:.4f}", file=sys.stderr)

    results: dict = {"entities": {}, "triples": {}, "n_entities": len(entities), "n_questions": len(questions),
                     "gold_head_in_kb": round(in_kb, 4)}
    with tempfile.TemporaryDirectory(prefix="wenzhi-kb-") as tmp:
        for backend in args.backends.split(","):
            server = None
            start = time.perf_counter()
            if backend == "tantivy":
                retriever = TantivyRetriever.build(Path(tmp) / "entities", entities, progress=False)
            elif backend == "opensearch":
                from osmem_server import OsmemServer

                from wenzhi.retrieval.search_cluster import SearchClusterRetriever, connect

                server = OsmemServer.start(japanese=False, addr="127.0.0.1:0")
                retriever = SearchClusterRetriever(connect(server.url, timeout=120), "entities")
                retriever.create_index(recreate=True)
                retriever.index(entities)
            else:
                raise SystemExit(f"unknown backend {backend!r}")
            build_s = time.perf_counter() - start
            try:
                lat, titles = latency(retriever, questions, {"kind": "entity"})
            finally:
                if server is not None:
                    server.close()
            row = {"build_s": round(build_s, 1), **lat, **recall(titles, gold)}
            if backend == "tantivy":
                row["index_mb"] = dir_mb(Path(tmp) / "entities")
            results["entities"][backend] = row
            print("entities", backend, json.dumps(row), file=sys.stderr)

        start = time.perf_counter()
        n_triples = 0

        def counted():
            nonlocal n_triples
            for d in triple_documents(store):
                n_triples += 1
                yield d

        triples = TantivyRetriever.build(Path(tmp) / "triples", counted(), progress=False)
        build_s = time.perf_counter() - start
        lat, _ = latency(triples, questions)
        results["triples"]["tantivy"] = {"build_s": round(build_s, 1), "n": n_triples, "index_mb": dir_mb(Path(tmp) / "triples"), **lat}
        print("triples tantivy", json.dumps(results["triples"]["tantivy"]), file=sys.stderr)
    store.close()
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
