"""CMRC 2018 passage retrieval (question -> its paragraph) by BM25, backends side by side.

    .venv/bin/python bench/retrieval_cmrc.py
    .venv/bin/python bench/retrieval_cmrc.py --backends tantivy,opensearch,tantivy_jieba

All 1,104 paragraphs (dev + trial files) are indexed; every question (4,221) is searched.
Reported per backend: recall@1/5/20, MRR (reciprocal rank of the gold paragraph within the top
20, 0 beyond), build time and query latency. `opensearch` is the OpenSearch path (opensearch-py,
the cluster mapping and query DSL) on an osmem-server started for the run on 127.0.0.1. The last
line is JSON keyed by backend, each with recall_at_5 and mrr.
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

DEPTH = 20


def load(files):
    from wenzhi.retrieval.documents import passages_from_squad

    docs = list(passages_from_squad(files))
    questions = []
    for path in files:
        with open(path, encoding="utf-8") as fh:
            for article in json.load(fh)["data"]:
                for para in article["paragraphs"]:
                    questions += [(qa["question"], f"passage:{para['id']}") for qa in para["qas"]]
    return docs, questions


def evaluate(retriever, questions):
    ranks, latencies, tops = [], [], []
    for q, gold in questions:
        start = time.perf_counter()
        hits = retriever.search(q, DEPTH)
        latencies.append(time.perf_counter() - start)
        ids = [h.id for h in hits]
        ranks.append(ids.index(gold) + 1 if gold in ids else None)
        tops.append(ids[:5])
    n = len(questions)
    lat = np.array(latencies) * 1000
    metrics = {f"recall_at_{k}": round(sum(r is not None and r <= k for r in ranks) / n, 4) for k in (1, 5, 20)}
    metrics["mrr"] = round(sum(1 / r for r in ranks if r is not None) / n, 4)
    metrics.update(p50_ms=round(float(np.percentile(lat, 50)), 2), p99_ms=round(float(np.percentile(lat, 99)), 2))
    return metrics, tops


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backends", default="tantivy,opensearch", help="tantivy, opensearch, tantivy_jieba")
    p.add_argument("--limit", type=int, help="only the first N questions")
    args = p.parse_args(argv)

    from wenzhi.kg.datadir import data_path
    from wenzhi.retrieval.tantivy_backend import TantivyRetriever

    files = sorted(data_path("cmrc2018").glob("*.json"))
    docs, questions = load(files)
    empty = sum(not q.strip() for q, _ in questions)  # the trial file has two empty questions
    questions = [(q, gold) for q, gold in questions if q.strip()]
    questions = questions[: args.limit] if args.limit else questions
    print(f"{len(docs)} paragraphs, {len(questions)} questions ({empty} empty ones skipped) from "
          f"{[f.name for f in files]}", file=sys.stderr)
    results, tops = {}, {}
    with tempfile.TemporaryDirectory(prefix="wenzhi-cmrc-") as tmp:
        for backend in args.backends.split(","):
            server = None
            start = time.perf_counter()
            if backend.startswith("tantivy"):
                analyzer = "jieba" if backend == "tantivy_jieba" else "bigrams"
                retriever = TantivyRetriever.build(Path(tmp) / backend, docs, analyzer=analyzer, progress=False)
            elif backend == "opensearch":
                from osmem_server import OsmemServer

                from wenzhi.retrieval.search_cluster import SearchClusterRetriever, connect

                server = OsmemServer.start(japanese=False, addr="127.0.0.1:0")
                retriever = SearchClusterRetriever(connect(server.url), "cmrc")
                retriever.create_index(recreate=True)
                retriever.index(docs)
            else:
                raise SystemExit(f"unknown backend {backend!r}")
            build_s = time.perf_counter() - start
            try:
                metrics, tops[backend] = evaluate(retriever, questions)
            finally:
                if server is not None:
                    server.close()
            results[backend] = {**metrics, "build_s": round(build_s, 2)}
            print(backend, json.dumps(results[backend]), file=sys.stderr)
    if "tantivy" in tops:
        for backend in tops:
            if backend != "tantivy":
                pairs = list(zip(tops["tantivy"], tops[backend]))
                results[backend]["top1_agreement_with_tantivy"] = round(sum(a[:1] == b[:1] for a, b in pairs) / len(pairs), 4)
                results[backend]["top5_overlap_with_tantivy"] = round(sum(len(set(a) & set(b)) / 5 for a, b in pairs) / len(pairs), 4)
    print("\n| backend | R@1 | R@5 | R@20 | MRR | build s | p50 ms | p99 ms |\n|---|---|---|---|---|---|---|---|", file=sys.stderr)
    for b, m in results.items():
        print(f"| {b} | {m['recall_at_1']} | {m['recall_at_5']} | {m['recall_at_20']} | {m['mrr']} | {m['build_s']} | {m['p50_ms']} | {m['p99_ms']} |", file=sys.stderr)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
