"""What the KBQA service's KB side keeps in memory: RSS growth of the linker's and store's caches.

    WENZHI_DATA=/work/shared/data .venv/bin/python bench/linker_memory.py --kb runs/demo/kb.sqlite [--trace] [--python-scoring]

Per question, the calls the QA pipeline makes (`linker.rank(question, k=8)`, `store.triples` of
each ranked entity, `linker.link(question, spans=[top mention])`), over the KgCLUE dev questions
once after a 50-question warm-up; prints RSS growth and CPU per question (scores from the compiled
scorer over the feature table, loaded before the warm-up; `--python-scoring`: the Python definition,
which builds and caches feature sets per entity),
and with --trace the lines that allocated what is kept (tracemalloc, slower).
The service's own allocations (models, batching) are bench/qa_load.py's to measure.
"""
from __future__ import annotations

import argparse
import gc
import json
import time
import tracemalloc


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        return int(next(line.split()[1] for line in fh if line.startswith("VmRSS"))) / 1024


def main() -> None:
    from wenzhi.kg import EntityLinker, TripleStore
    from wenzhi.kg.datadir import data_path

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kb", required=True)
    ap.add_argument("--questions", type=int, default=2000)
    ap.add_argument("--trace", action="store_true", help="tracemalloc: the top allocating lines of what is kept")
    ap.add_argument("--python-scoring", action="store_true", help="EntityLinker(compiled=False)")
    args = ap.parse_args()
    store = TripleStore(args.kb)
    linker = EntityLinker(store, compiled=not args.python_scoring).warm()
    with open(data_path("kgclue/dev.json"), encoding="utf-8") as fh:
        questions = [json.loads(line)["question"] for line, _ in zip(fh, range(args.questions))]

    def serve(question: str) -> None:
        top = linker.rank(question, k=8)
        for entity, _, _ in top:
            store.triples(entity.id)
        if top:
            mention = top[0][2]
            linker.link(question, spans=[(mention.start, mention.end)])

    for q in questions[:50]:
        serve(q)
    gc.collect()
    before = rss_mb()
    if args.trace:
        tracemalloc.start(1)
        snapshot = tracemalloc.take_snapshot()
    cpu = time.process_time()
    for q in questions:
        serve(q)
    cpu = time.process_time() - cpu
    gc.collect()
    result = {"scoring": "python" if args.python_scoring else "compiled", "questions": len(questions), "rss_growth_mb": round(rss_mb() - before, 1),
              "cpu_ms_per_question": round(1000 * cpu / len(questions), 3)}
    if args.trace:
        stats = tracemalloc.take_snapshot().compare_to(snapshot, "lineno")
        result["traced_growth_mb"] = round(sum(s.size_diff for s in stats) / 2**20, 2)
        result["top"] = [[str(s.traceback[0]), round(s.size_diff / 2**20, 2), s.count_diff] for s in stats[:15]]
    print(json.dumps(result, ensure_ascii=False))


if __name__ == "__main__":
    main()
