"""The two BM25 backends side by side in one run, as `pretrain prepare`'s retrieval augmentation
uses them: tantivy (embedded) against a search cluster (osmem-server, the OpenSearch API emulator
the tests use, started here; or a real cluster with --search URL/INDEX and WENZHI_SEARCH_*).

    WENZHI_DATA=../shared/data python bench/bm25_backends.py --kb /tmp/kb.sqlite \\
        [--docs 600] [--rounds 3] [--queries 2000] [--search https://HOST:9200/bench-passages]

1. The 1,104 CMRC 2018 paragraphs go into a tantivy index and into the cluster index.
2. `wenzhi pretrain prepare` (strategies {retrieval: 1}, augment sources retrieval first) over
   --docs People's Daily documents, one process, tantivy and the cluster alternately, --rounds
   times after one untimed run each. Each run is a child process whose summary gives the
   preparation's CPU seconds; the emulator's come from /proc (a remote cluster's are not ours).
3. Agreement: rows of the two routes' shards that are identical, and top-1 agreement of the
   backends on --queries KB entity names (what augmentation searches for), with their speed.
4. Why they differ: for 300 one-bigram queries, each backend's top-5 scores against Lucene's
   BM25 formula (k1 1.2, b 0.75, no (k1+1) factor) computed here from the same analysed terms.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path

import numpy as np


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a running process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_prepare(config: Path, search: str, env: dict) -> dict:
    """One `pretrain prepare` in a child process: its summary line, whose cpu_seconds and seconds
    cover the preparation itself (not the interpreter's start)."""
    proc = subprocess.run([sys.executable, "-m", "wenzhi", "pretrain", "prepare", "--config", str(config),
                           "--search", search, "--no-resume", "--no-progress"],
                          capture_output=True, text=True, env=env)
    if proc.returncode:
        sys.exit(f"prepare failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def textbook_scores(docs, queries: list[str]) -> dict[tuple[str, str], float]:
    """Lucene's BM25 (idf ln(1 + (N - n + 0.5)/(n + 0.5)), tf/(tf + k1(1 - b + b dl/avgdl))) of
    every (query, doc) pair, title weighted 2 and text 1 as both backends do (one-bigram queries:
    no per-character fields; a query equal to a title is left out by the caller)."""
    import math
    from collections import Counter

    from wenzhi.retrieval.analysis import bigrams
    from wenzhi.retrieval.tantivy_backend import FIELD_BOOSTS

    k1, b, out = 1.2, 0.75, {}
    for field in ("title", "text"):
        terms = {d.id: Counter(bigrams(getattr(d, field))) for d in docs}
        lengths = {i: sum(c.values()) for i, c in terms.items()}
        avgdl = sum(lengths.values()) / len(docs)
        for q in queries:
            holders = [i for i, c in terms.items() if c[q]]
            idf = math.log(1 + (len(docs) - len(holders) + 0.5) / (len(holders) + 0.5))
            for i in holders:
                tf = terms[i][q]
                score = FIELD_BOOSTS[field] * idf * tf / (tf + k1 * (1 - b + b * lengths[i] / avgdl))
                out[(q, i)] = out.get((q, i), 0.0) + score
    return out


def rows(path: Path) -> np.ndarray:
    return np.concatenate([np.load(p) for p in sorted(path.rglob("input_ids.npy"))])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kb", required=True, help="TripleStore of the real KB (`wenzhi kg import`)")
    ap.add_argument("--docs", type=int, default=600, help="People's Daily documents per prepare run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--queries", type=int, default=2000, help="KB entity names for the agreement check")
    ap.add_argument("--search", help="a real cluster's URL/INDEX instead of a local osmem-server")
    args = ap.parse_args()

    from wenzhi.kg import TripleStore
    from wenzhi.kg.datadir import data_dir
    from wenzhi.retrieval.bm25 import open_bm25, search_setting
    from wenzhi.retrieval.documents import passages_from_squad
    from wenzhi.retrieval.tantivy_backend import TantivyRetriever

    work = Path(tempfile.mkdtemp(prefix="bm25-bench-"))
    docs = list(passages_from_squad(sorted((data_dir() / "cmrc2018").glob("*.json"))))
    server = None
    if args.search:
        url = args.search
    else:
        from osmem_server import OsmemServer

        server = OsmemServer.start(japanese=False, addr="127.0.0.1:0")
        url = f"{server.url}/bench-passages"
    try:
        t0 = time.perf_counter()
        tantivy = TantivyRetriever.build(work / "tantivy", docs, progress=False)
        t1 = time.perf_counter()
        cluster = open_bm25(search_setting(url), must_exist=False)
        cluster.create_index(recreate=True)
        cluster.index(docs)
        t2 = time.perf_counter()
        print(f"indexed {len(docs)} paragraphs: tantivy {t1 - t0:.1f} s, cluster {t2 - t1:.1f} s (wall)")

        # -- prepare, interleaved ---------------------------------------------------------------
        config = work / "prepare.json"
        config.write_text(json.dumps({
            "output": str(work / "shards"), "seq_len": 128, "seed": 3, "kb": str(Path(args.kb).resolve()),
            "corpora": [{"path": "corpus/people_daily_1998_pos.txt", "format": "people_daily", "limit": args.docs}],
            "strategies": {"retrieval": 1},
            "augment": {"max_tokens": 64, "min_tokens": 8, "sources": ["retrieval", "description", "triples"]},
        }), encoding="utf-8")
        routes = {"tantivy": str(work / "tantivy"), "cluster": search_setting(url).public}
        env = dict(os.environ)
        results: dict[str, list[dict]] = {name: [] for name in routes}
        shard_rows = {}
        for round_ in range(args.rounds + 1):
            for name, search in routes.items():
                cpu_server = proc_cpu_seconds(server.pid) if server and name == "cluster" else 0.0
                r = run_prepare(config, search, env)
                r["server_cpu"] = proc_cpu_seconds(server.pid) - cpu_server if server and name == "cluster" else 0.0
                if round_ == 0:  # untimed: page cache, linker caches beside the KB
                    shard_rows[name] = rows(work / "shards")
                    continue
                results[name].append(r)
                print(f"round {round_} {name:8s} chars {r['chars']:,} process CPU {r['cpu_seconds']:.2f} s "
                      f"+ server CPU {r['server_cpu']:.2f} s, wall {r['seconds']:.2f} s, "
                      f"augmented {r['augmentation_hit_rate']}", flush=True)
        a, b = shard_rows["tantivy"], shard_rows["cluster"]
        same_rows = float((a == b).all(axis=1).mean()) if a.shape == b.shape else float("nan")

        # -- the backends on the names augmentation searches for -------------------------------
        store = TripleStore(args.kb)
        names = [e.base for e in islice(store.iter_entities(), 0, None, 17) if len(e.base) >= 2][: args.queries]
        store.close()
        timings, tops = {}, {}
        for name, retriever in (("tantivy", tantivy), ("cluster", cluster)):
            cpu_s = proc_cpu_seconds(server.pid) if server else 0.0
            c0, w0 = time.process_time(), time.perf_counter()
            found = []
            for q in names:
                try:
                    hits = retriever.search(q, 1)
                except ValueError:
                    hits = None
                found.append(hits[0].id if hits else None)
            timings[name] = (time.process_time() - c0, time.perf_counter() - w0,
                             (proc_cpu_seconds(server.pid) - cpu_s) if server and name == "cluster" else 0.0)
            tops[name] = found
        both = [(x, y) for x, y in zip(tops["tantivy"], tops["cluster"]) if x or y]
        agree = sum(x == y for x, y in both)

        # -- scores against the formula -------------------------------------------------------
        from wenzhi.retrieval.analysis import bigrams

        rng = np.random.default_rng(0)
        titles = {d.title for d in docs}
        pool = sorted({t for d in docs for t in bigrams(d.text) if len(t) == 2 and t not in titles
                       and all("\u4e00" <= c <= "\u9fff" for c in t)})
        probes = [pool[i] for i in rng.choice(len(pool), 300, replace=False)]
        formula = textbook_scores(docs, probes)
        deviation = {}
        for name, retriever, scale in (("tantivy", tantivy, 2.2), ("cluster", cluster, 1.0)):
            ratios = [h.score / scale / formula[(q, h.id)] - 1 for q in probes for h in retriever.search(q, 5)]
            deviation[name] = (len(ratios), float(np.median(np.abs(ratios))), float(np.percentile(np.abs(ratios), 90)))

        print("\n| route | chars/CPU-s (process) | chars/CPU-s (process + cluster) | wall s | augmented |")
        print("|---|---|---|---|---|")
        for name, runs in results.items():
            chars = runs[0]["chars"]
            cpu = statistics.median(r["cpu_seconds"] for r in runs)
            total = statistics.median(r["cpu_seconds"] + r["server_cpu"] for r in runs)
            wall = statistics.median(r["seconds"] for r in runs)
            print(f"| {name} | {chars / cpu:,.0f} | {chars / total:,.0f} | {wall:.2f} | {runs[0]['augmentation_hit_rate']} |")
        ratio = (statistics.median(r["cpu_seconds"] + r["server_cpu"] for r in results["cluster"])
                 / statistics.median(r["cpu_seconds"] for r in results["tantivy"]))
        print(f"\ncluster / tantivy CPU per run (process + cluster vs process): {ratio:.2f}x")
        print(f"shard rows identical: {same_rows:.3f} of {len(a)}")
        print(f"entity-name queries: {len(names)}, top-1 agreement {agree}/{len(both)} = {agree / max(1, len(both)):.3f} "
              f"(both empty: {len(names) - len(both)})")
        for name, (cpu, wall, server_cpu) in timings.items():
            print(f"  {name}: {len(names) / wall:,.0f} queries/s wall, client CPU {1e3 * cpu / len(names):.2f} ms/query"
                  + (f", server CPU {1e3 * server_cpu / len(names):.2f} ms/query" if server_cpu else ""))
        for name, (n, median, p90) in deviation.items():
            print(f"  {name} scores{' / (k1 + 1)' if name == 'tantivy' else ''} vs Lucene's BM25 on 300 one-bigram "
                  f"queries ({n} hits): median |deviation| {median:.1%}, 90th percentile {p90:.1%}")
    finally:
        if server is not None:
            server.close()


if __name__ == "__main__":
    main()
