"""kg at KgCLUE scale: import, lookup, alias index and linking on a grown copy of the real KB.

The full KgCLUE KB (20.5M triples, 3.1M entities) is not available here, so this grows the real
merged KB (kb/knowledge.txt, 204k triples, 87k heads) to that size: the file is written R
times with every head renamed per replica (base name + "#" + replica number, disambiguation kept),
and, to reach KgCLUE's ~6.6 triples per entity, each triple is repeated with a numbered
relation name (作者 -> 作者2, 作者3 ...). Tails are kept as they are. Replicas are written one
after another, each sorted by head like the real file.

Run:   .venv/bin/python bench/kg_scale.py [--scale 1.0] [--workdir /tmp/kg_scale] [--keep]
       .venv/bin/python bench/kg_scale.py --store /tmp/kg_scale/kb.sqlite   (index, lookup, linking only)
The machine is shared: wall times include other users' load (loadavg is recorded); CPU
seconds of the measured process are reported beside them.
Prints progress to stderr and, as its last line, one JSON object with every figure.
Import and index build run in child processes so their peak RSS is their own.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wenzhi.kg.datadir import data_path  # noqa: E402
from wenzhi.kg.names import parse_name  # noqa: E402

KGCLUE_TRIPLES = 20_559_652
KGCLUE_ENTITIES = 3_121_457


def log(msg: str) -> None:
    print(f"[kg_scale {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def grow(source: Path, out: Path, scale: float) -> dict:
    """Write the grown KB; returns its counts."""
    with open(source, encoding="utf-8") as fh:
        rows = [line.rstrip("\n").split("\t") for line in fh if line.count("\t") == 2]
    heads = {h for h, _, _ in rows}
    target_entities = KGCLUE_ENTITIES * scale
    target_triples = KGCLUE_TRIPLES * scale
    replicas = max(1, round(target_entities / len(heads)))
    copies = target_triples / (replicas * len(rows))  # per triple, e.g. 2.79
    whole, frac = int(copies), copies - int(copies)
    renamed: dict[str, tuple[str, str]] = {}
    for h in heads:
        base, dis = parse_name(h)
        renamed[h] = (base, f"（{dis}）" if dis else "")
    rng = random.Random(0)
    extra = [rng.random() < frac for _ in rows]  # which triples get one more copy
    n = 0
    tmp = out.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for r in range(replicas):
            buf = []
            for (h, rel, t), more in zip(rows, extra):
                base, dis = renamed[h]
                head = f"{base}#{r}{dis}" if r else h
                for j in range(whole + more):
                    buf.append(f"{head}\t{rel}{j + 1 if j else ''}\t{t}\n")
            fh.writelines(buf)
            n += len(buf)
    os.replace(tmp, out)
    return {"replicas": replicas, "copies_per_triple": round(copies, 3), "lines": n,
            "entities": replicas * len(heads), "bytes": out.stat().st_size}


def child(code: str, *args: str) -> tuple[dict, float, int]:
    """Run `code` in a fresh interpreter; returns (its JSON result, wall seconds, peak RSS bytes)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    # ru_maxrss of children is the max over all waited-for children (KiB on Linux).
    peak = max(usage.ru_maxrss, before) * 1024
    return json.loads(proc.stdout.strip().splitlines()[-1]), wall, peak


IMPORT_CODE = """
import json, resource, sys, time
from wenzhi.kg.importer import import_files
t = time.process_time()
s = import_files([sys.argv[1]], sys.argv[2])
ru = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"summary": {k: v for k, v in s.to_dict().items() if k != "rejected_examples"},
                  "cpu_s": ru.ru_utime + ru.ru_stime, "maxrss": ru.ru_maxrss * 1024}))
"""

INDEX_CODE = """
import json, resource, sys, time, os
from wenzhi.kg import TripleStore, AliasIndex
def rss():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
store = TripleStore(sys.argv[1])
base = rss()
t = time.perf_counter()
index = AliasIndex.build(store)
build_s = time.perf_counter() - t
after = rss()
path = AliasIndex.default_path(store)
index.save(path)
del index
t = time.perf_counter()
index = AliasIndex.load(path)
load_s = time.perf_counter() - t
ru = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"aliases": len(index), "build_s": build_s, "load_s": load_s,
                  "rss_before": base, "rss_after_build": after, "maxrss": ru.ru_maxrss * 1024,
                  "file_bytes": path.stat().st_size}))
"""


def lookups(db: Path, names: list[str]) -> dict:
    from wenzhi.kg import TripleStore

    store = TripleStore(db)
    out = {}
    for label, fn in (("entity_by_name", store.entity_by_name),
                      ("triples_by_head", lambda n: store.triples(store.entity_by_name(n).id))):
        for n in names[:200]:  # warm the page cache the way a running service would be
            fn(n)
        times = []
        for n in names:
            t = time.perf_counter_ns()
            fn(n)
            times.append(time.perf_counter_ns() - t)
        times.sort()
        out[label] = {"n": len(times), "p50_ms": times[len(times) // 2] / 1e6,
                      "p99_ms": times[int(len(times) * 0.99)] / 1e6, "max_ms": times[-1] / 1e6}
    store.close()
    return out


def corpus_texts(limit_chars: int) -> list[str]:
    """Raw text of the shared corpus: People's Daily (POS tags and spaces removed), reviews,
    AgriKG sentences; one string per paragraph/line, as a service would receive them."""
    texts, total = [], 0
    tag = re.compile(r"/[a-zA-Z]+\s*")
    sources = [("corpus/people_daily_1998_pos.txt", lambda l: tag.sub("", l).replace(" ", "")),
               ("corpus/reviews_pos.txt", str.strip), ("corpus/reviews_neg.txt", str.strip),
               ("corpus/agrikg_distant_supervision.tsv",
                lambda l: l.split("\t")[4].strip('"') if l.count("\t") >= 5 else "")]
    for rel, clean in sources:
        with open(data_path(rel), encoding="utf-8") as fh:
            for line in fh:
                text = clean(line.rstrip("\n"))
                if text:
                    texts.append(text)
                    total += len(text)
                    if total >= limit_chars:
                        return texts
    return texts


def linking(db: Path, texts: list[str]) -> dict:
    from wenzhi.kg import EntityLinker, TripleStore
    from wenzhi.kg.linker import LinkerConfig

    store = TripleStore(db)
    out = {}
    for label, config in (("context", LinkerConfig()), ("prior_only", LinkerConfig(context=False))):
        linker = EntityLinker(store, config=config)
        linker.link(texts[0])
        chars = sum(len(t) for t in texts)
        t0, c0 = time.perf_counter(), time.process_time()
        mentions = sum(len(linker.link(t)) for t in texts)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        out[label] = {"chars": chars, "texts": len(texts), "mentions": mentions, "wall_s": round(wall, 2),
                      "cpu_s": round(cpu, 2), "chars_per_s_wall": round(chars / wall),
                      "chars_per_s_cpu": round(chars / cpu)}
        # The first pass fetches every entity and its features from the store (cold caches);
        # a second pass over the same text is what a long-running service sees.
        c0 = time.process_time()
        for t in texts:
            linker.link(t)
        out[label]["warm_chars_per_s_cpu"] = round(chars / (time.process_time() - c0))
    store.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of KgCLUE size (1.0 = 20.5M triples)")
    ap.add_argument("--workdir", default="/tmp/kg_scale")
    ap.add_argument("--lookups", type=int, default=20_000)
    ap.add_argument("--link-chars", type=int, default=3_000_000, help="corpus characters to link")
    ap.add_argument("--keep", action="store_true", help="keep the grown KB and store")
    ap.add_argument("--store", help="skip growing and importing: measure this existing store")
    args = ap.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    result: dict = {"scale": None if args.store else args.scale, "measured_store": args.store, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                    "cpus": os.cpu_count(), "loadavg_start": os.getloadavg()}
    try:
        result["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                              text=True, cwd=Path(__file__).resolve().parents[1]).stdout.strip()
    except OSError:
        pass

    if args.store:  # measure an existing store (e.g. one kept from an earlier full-scale import)
        db = Path(args.store)
        grown = None
        result["import"] = "skipped: --store given"
    else:
        grown = work / f"knowledge_x{args.scale:g}.txt"
        log(f"growing the KB to scale {args.scale} -> {grown}")
        t = time.perf_counter()
        result["grown_kb"] = grow(data_path("kb/knowledge.txt"), grown, args.scale)
        result["grown_kb"]["write_s"] = round(time.perf_counter() - t, 1)
        log(f"grown: {result['grown_kb']}")

        db = work / "kb.sqlite"
        log("importing (child process)")
        imp, wall, _ = child(IMPORT_CODE, str(grown), str(db))
        s = imp["summary"]
        result["import"] = {"lines": s["lines_read"], "triples": s["triples_stored"], "entities": s["entities"],
                            "duplicates": s["duplicates"], "rejected": s["rejected"],
                            "reconciles": s["reconciles"], "wall_s": round(wall, 1), "cpu_s": round(imp["cpu_s"], 1),
                            "triples_per_s_wall": round(s["lines_read"] / wall),
                            "triples_per_s_cpu": round(s["lines_read"] / imp["cpu_s"]),
                            "peak_rss_mb": round(imp["maxrss"] / 2**20),
                            "store_mb": round(db.stat().st_size / 2**20),
                            "input_mb": round(grown.stat().st_size / 2**20)}
        log(f"import: {result['import']}")

    log("alias index build (child process)")
    idx, wall, _ = child(INDEX_CODE, str(db))
    result["alias_index"] = {"aliases": idx["aliases"], "build_s": round(idx["build_s"], 1),
                             "load_s": round(idx["load_s"], 1), "process_wall_s": round(wall, 1),
                             "rss_growth_mb": round((idx["rss_after_build"] - idx["rss_before"]) / 2**20),
                             "peak_rss_mb": round(idx["maxrss"] / 2**20), "file_mb": round(idx["file_bytes"] / 2**20)}
    log(f"alias index: {result['alias_index']}")

    log("entity lookups")
    from wenzhi.kg import TripleStore

    rng = random.Random(1)
    with TripleStore(db) as store:
        n_entities = store.n_entities()
        result["store"] = {"entities": n_entities, "bytes": db.stat().st_size}
        names = [store.entity(rng.randint(1, n_entities)).name for _ in range(args.lookups)]
    result["lookup"] = lookups(db, names)
    log(f"lookup: {result['lookup']}")

    log("linking the corpus on one core")
    result["linking"] = linking(db, corpus_texts(args.link_chars))
    log(f"linking: {result['linking']}")
    result["loadavg_end"] = os.getloadavg()
    imported = isinstance(result["import"], dict)
    result["targets"] = {
        "import_under_4_min": result["import"]["wall_s"] < 240 if imported else None,
        "peak_rss_under_3_gb": max(result["import"]["peak_rss_mb"] if imported else 0,
                                   result["alias_index"]["peak_rss_mb"]) < 3072,
        "lookup_p99_under_1_ms": result["lookup"]["entity_by_name"]["p99_ms"] < 1.0,
        "linking_1m_chars_per_s": result["linking"]["context"]["chars_per_s_cpu"] >= 1_000_000,
    }
    if not args.keep and not args.store:
        for p in (grown, db, db.with_name(db.name + ".aliases")):
            p.unlink(missing_ok=True)
    print(json.dumps(result, ensure_ascii=False))


if __name__ == "__main__":
    main()
