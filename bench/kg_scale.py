"""kg at KgCLUE scale: import, lookup, alias index and linking on a grown copy of the real KB.

The full KgCLUE KB (20.5M triples, 3.1M entities) is not available here, so this grows the real
merged KB (kb/knowledge.txt, 204k triples, 87k heads) to that size: the file is written R
times with every head renamed per replica (base name + "#" + replica number, disambiguation kept),
and, to reach KgCLUE's ~6.6 triples per entity, each triple is repeated with a numbered
relation name (作者 -> 作者2, 作者3 ...). Tails are kept as they are. Replicas are written one
after another, each sorted by head like the real file.

Run:   .venv/bin/python bench/kg_scale.py [--scale 1.0] [--workdir /tmp/kg_scale] [--keep]
       .venv/bin/python bench/kg_scale.py --store /tmp/kg_scale/kb.sqlite   (index, lookup, linking only)
       .venv/bin/python bench/kg_scale.py --store kb.sqlite --reference 3969159 [--profile]
         (also the linker of that commit against this one, interleaved in one process, and a
          profile of this one's linking: where the time goes)
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
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/

from wenzhi.kg.datadir import data_path  # noqa: E402
from wenzhi.kg.names import parse_name  # noqa: E402
from machine_facts import machine_facts  # noqa: E402  (bench/)

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
t, c = time.perf_counter(), time.process_time()
index = AliasIndex.build(store)
build_s, build_cpu_s = time.perf_counter() - t, time.process_time() - c
after = rss()
path = AliasIndex.default_path(store)
index.save(path)
del index
t, c = time.perf_counter(), time.process_time()
index = AliasIndex.load(path)
load_s, load_cpu_s = time.perf_counter() - t, time.process_time() - c
index_maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
# the linker's feature table, built after the index (as `EntityLinker` does), its own figures
from wenzhi.kg.feature_table import EntityFeatureTable
from wenzhi.kg.linker import LinkerConfig
del index
before_table = rss()
t, c = time.perf_counter(), time.process_time()
table = EntityFeatureTable.build(store, LinkerConfig().max_triples)
table_build_s, table_build_cpu_s = time.perf_counter() - t, time.process_time() - c
table_rss = rss() - before_table
table_path = EntityFeatureTable.default_path(store)
table.save(table_path)
del table
c = time.process_time()
EntityFeatureTable.load(table_path)
table_load_cpu_s = time.process_time() - c
ru = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"aliases": len(AliasIndex.load(path)), "build_s": build_s, "load_s": load_s,
                  "build_cpu_s": build_cpu_s, "load_cpu_s": load_cpu_s,
                  "rss_before": base, "rss_after_build": after, "maxrss": index_maxrss,
                  "file_bytes": path.stat().st_size,
                  "table": {"build_s": table_build_s, "build_cpu_s": table_build_cpu_s, "load_cpu_s": table_load_cpu_s,
                            "rss_growth": table_rss, "maxrss_after": ru.ru_maxrss * 1024,
                            "file_bytes": table_path.stat().st_size}}))
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


def linking(db: Path, texts: list[str], batch: int) -> dict:
    """chars per CPU-second of `link` text by text and of `link_many` on batches of `batch`
    texts, with context features and prior only; cold (fresh linker and store) and warm."""
    from wenzhi.kg import EntityLinker, TripleStore
    from wenzhi.kg.linker import LinkerConfig

    out = {}
    chars = sum(len(t) for t in texts)
    for label, config in (("context", LinkerConfig()), ("prior_only", LinkerConfig(context=False))):
        for api in ("link", "link_many"):
            store = TripleStore(db)
            linker = EntityLinker(store, config=config)
            run = _runner(linker, api, batch)
            t0, c0 = time.perf_counter(), time.process_time()
            mentions = run(texts)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            # The first pass fetches every entity and its features from the store (cold caches);
            # a second pass over the same text is what a long-running job sees.
            c0 = time.process_time()
            run(texts)
            warm = time.process_time() - c0
            out[f"{label}_{api}"] = {"chars": chars, "texts": len(texts), "mentions": mentions,
                                     "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
                                     "chars_per_s_cpu": round(chars / cpu), "warm_chars_per_s_cpu": round(chars / warm)}
            store.close()
    return out


def _runner(linker, api: str, batch: int):
    """texts -> number of mentions, through `link` one text at a time or `link_many` in batches."""
    if api == "link":
        return lambda texts: sum(len(linker.link(t)) for t in texts)
    return lambda texts: sum(len(ms) for i in range(0, len(texts), batch) for ms in linker.link_many(texts[i : i + batch]))


def reference_package(commit: str) -> str:
    """The kg package of `commit`, importable as `wenzhi_ref.kg` (its `wenzhi.kg` imports
    rewritten), in a new temporary directory; returns the directory (for PYTHONPATH)."""
    import tempfile

    root = Path(__file__).resolve().parents[1]
    tmp = Path(tempfile.mkdtemp(prefix="kg_ref_"))
    pkg = tmp / "wenzhi_ref" / "kg"
    pkg.mkdir(parents=True)
    (tmp / "wenzhi_ref" / "__init__.py").write_text("")
    names = subprocess.run(["git", "ls-tree", "--name-only", commit, "kg/"], cwd=root, capture_output=True,
                           text=True, check=True).stdout.split()
    for name in names:
        if name.endswith(".py"):
            text = subprocess.run(["git", "show", f"{commit}:{name}"], cwd=root, capture_output=True,
                                  text=True, check=True).stdout
            (pkg / Path(name).name).write_text(text.replace("wenzhi.kg", "wenzhi_ref.kg"))
    return str(tmp)


# One contender's run, in a fresh process: its own heap (the garbage collector's work depends on
# everything alive in a process, so two linkers in one process slow each other unevenly).
CONTENDER_CODE = """
import hashlib, json, sys, time
sys.path.insert(0, sys.argv[6]); sys.path.insert(0, sys.argv[7])
from kg_scale import corpus_texts, _runner
which, db, context, batch, chars, ref_index = sys.argv[1], sys.argv[2], sys.argv[3] == "1", int(sys.argv[4]), int(sys.argv[5]), sys.argv[8]
if which.startswith("reference"):
    from wenzhi_ref.kg.alias_index import AliasIndex
    from wenzhi_ref.kg.linker import EntityLinker, LinkerConfig
    from wenzhi_ref.kg.names import normalize
    from wenzhi_ref.kg.store import TripleStore
    try:
        from wenzhi_ref.kg.feature_table import EntityFeatureTable
        has_table = True
    except ImportError:  # a reference from before the feature table
        has_table = False
    index = AliasIndex.load(ref_index) if ref_index else AliasIndex.build(TripleStore(db))
else:
    from wenzhi.kg import AliasIndex, EntityLinker, TripleStore
    from wenzhi.kg.linker import LinkerConfig
    from wenzhi.kg.names import normalize
    from wenzhi.kg.feature_table import EntityFeatureTable
    has_table = True
    index = AliasIndex.for_store(TripleStore(db))
texts = corpus_texts(chars)
normalize("预热" * 40)  # one-time tables (folding), not linking
# Setup, timed apart from linking: the linker made with everything it loads up front (this tree:
# the feature table read, numba imported and the compiled scorer loaded from numba's cache).
c = time.process_time()
store = TripleStore(db)
config = LinkerConfig(context=context)
if which.startswith("reference") and not has_table:
    linker = EntityLinker(store, index, config)
else:  # (a reference with a feature table gets the same setup as this tree: its loading is not linking)
    table = EntityFeatureTable.for_store(store, config.max_triples) if context else None
    linker = EntityLinker(store, index, config, feature_table=table)
setup = time.process_time() - c
if which.endswith("_frozen"):  # as a `pretrain prepare` worker runs: its setup moved out of the collector's sight
    import gc
    linker.warm()
    gc.collect()
    gc.freeze()
api = "link" if which.endswith("link") else "link_many"
if api == "link":
    run = lambda: [linker.link(t) for t in texts]
else:
    run = lambda: [ms for i in range(0, len(texts), batch) for ms in linker.link_many(texts[i : i + batch])]
if sys.argv[9] == "profile":  # cProfile of each pass: the functions taking the most time of their own
    import cProfile, pstats
    from pathlib import Path
    out = {}
    for phase in ("cold", "warm"):
        prof = cProfile.Profile()
        prof.enable()
        run()
        prof.disable()
        stats = pstats.Stats(prof)
        rows = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:20]
        out[phase] = {"total_s": round(stats.total_tt, 2), "top": [
            {"function": f"{Path(f).name}:{line}({name})", "calls": nc, "own_s": round(tt, 3),
             "own_share": round(tt / stats.total_tt, 3), "cumulative_s": round(ct, 3)}
            for (f, line, name), (_, nc, tt, ct, _) in rows]}
    print(json.dumps(out))
    sys.exit()
# The garbage collector: its full collections walk the whole heap, and where one falls (in the
# cold pass or the warm one, or in neither) depends on every allocation before it, setup's
# included. Full collections during each pass are counted apart. With --gc-settled each pass
# starts from a settled heap (an untimed collection: what is left to collect of what came before
# is not this pass's) and its time includes a final collection (what it leaves to collect is its
# own): steadier, and stricter (one full collection more per pass).
import gc
settled = sys.argv[9] == "time-settled"
full = {"n": 0, "cpu": 0.0, "start": 0.0}
def on_gc(phase, info):
    if info["generation"] == 2:
        if phase == "start":
            full["start"] = time.process_time()
        else:
            full["n"] += 1
            full["cpu"] += time.process_time() - full["start"]
gc.callbacks.append(on_gc)
def timed(keep):
    if settled:
        gc.collect()
    full.update(n=0, cpu=0.0)
    c = time.process_time()
    found = run()
    if not keep:  # (freeing the Mentions is the pass's work, as it always was)
        found = None
    passed = time.process_time() - c
    collect = 0.0
    if settled:
        c = time.process_time(); gc.collect(); collect = time.process_time() - c
    return found, passed, collect, full["n"], full["cpu"]
found, cold_pass, cold_collect, cold_full, cold_full_cpu = timed(True)
_, warm_pass, warm_collect, warm_full, warm_full_cpu = timed(False)
cold, warm = cold_pass + cold_collect, warm_pass + warm_collect
gc.callbacks.remove(on_gc)
digest = [hashlib.md5(repr([(m.start, m.end, m.entity and m.entity.id, m.score) for m in ms]).encode()).hexdigest()
          for ms in found]
print(json.dumps({"setup_cpu_s": setup, "cold_cpu_s": cold, "warm_cpu_s": warm, "mentions": sum(map(len, found)),
                  "cold_pass_cpu_s": cold_pass, "warm_pass_cpu_s": warm_pass,
                  "full_collections": {"cold": [cold_full, cold_full_cpu], "warm": [warm_full, warm_full_cpu]},
                  "digest": digest}))
"""


def compare_reference(db: Path, link_chars: int, commit: str, batch: int, reference_index: str | None,
                      rounds: int = 3, context_batch_only: bool = False, gc_settled: bool = False,
                      frozen_contender: bool = False) -> dict:
    """This linker against the one at `commit`: each contender in a fresh process per round,
    contenders alternating within each round, cold (fresh linker and store) then warm (the same
    texts again); the median CPU time of the rounds. Outputs are compared text by text."""
    ref_path = reference_package(commit)
    bench_dir = str(Path(__file__).resolve().parent)
    out = {"commit": commit, "batch": batch, "rounds": rounds}
    chars = sum(map(len, corpus_texts(link_chars)))
    # a reference from before link_many (3969159) has `link` only
    has_many = "def link_many" in (Path(ref_path) / "wenzhi_ref" / "kg" / "linker.py").read_text(encoding="utf-8")
    names = ["reference_link"] + (["reference_link_many"] if has_many else []) + ["link", "link_many"]
    modes = (("context", "1"), ("prior_only", "0"))
    if context_batch_only:  # more rounds in the same time: the reference's link_many against ours, context on
        names, modes = ["reference_link_many", "link_many"], modes[:1]
    if frozen_contender:  # this tree once more, with gc.freeze() after setup (what prepare_job does)
        names.append("link_many_frozen")
    base = names[0]
    for label, context in modes:
        runs: dict[str, list[dict]] = {name: [] for name in names}
        for _ in range(rounds):
            for name in runs:
                result, _, _ = child(CONTENDER_CODE, name, str(db), context, str(batch), str(link_chars),
                                     ref_path, bench_dir, reference_index or "",
                                     "time-settled" if gc_settled else "time")
                runs[name].append(result)
        summary = {}
        for phase in ("cold", "warm"):
            median = {name: sorted(r[f"{phase}_cpu_s"] for r in rs)[rounds // 2] for name, rs in runs.items()}
            summary[phase] = {name: {"chars_per_s_cpu": round(chars / t), "speedup": round(median[base] / t, 2),
                                     "cpu_s_rounds": [round(r[f"{phase}_cpu_s"], 2) for r in runs[name]],
                                     # the pass alone (no final collection), and the full
                                     # collections during it: [count, CPU-s] per round
                                     "pass_cpu_s_rounds": [round(r[f"{phase}_pass_cpu_s"], 2) for r in runs[name]],
                                     "full_collections_rounds": [[r["full_collections"][phase][0],
                                                                  round(r["full_collections"][phase][1], 2)]
                                                                 for r in runs[name]]}
                              for name, t in median.items()}
        summary["setup_cpu_s_rounds"] = {name: [round(r["setup_cpu_s"], 3) for r in rs] for name, rs in runs.items()}
        ref_digest = runs[base][0]["digest"]
        summary["texts_linked_differently"] = {name: sum(a != b for a, b in zip(ref_digest, rs[0]["digest"]))
                                               for name, rs in runs.items()}
        summary["mentions"] = {name: rs[0]["mentions"] for name, rs in runs.items()}
        out[label] = summary
        log(f"{label}: {summary}")
    out["chars"], out["texts"] = chars, len(ref_digest)
    return out


def profile_linking(db: Path, link_chars: int, batch: int, commit: str | None, reference_index: str | None) -> dict:
    """cProfile of linking with context features, cold then warm, each in a fresh process: this
    linker's `link_many`, and the reference's `link` when a commit is given. The profiler inflates
    small Python functions: read it for where the time goes, not for speed."""
    ref_path = reference_package(commit) if commit else ""
    bench_dir = str(Path(__file__).resolve().parent)
    out = {}
    for name in (["reference_link"] if commit else []) + ["link_many"]:
        out[name], _, _ = child(CONTENDER_CODE, name, str(db), "1", str(batch), str(link_chars), ref_path,
                                bench_dir, reference_index or "", "profile")
    return out


def build_index(db: Path) -> dict:
    """The alias index and the linker's feature table built (and saved beside `db`) in a child
    process: build and load CPU seconds, memory, file sizes."""
    out: dict = {}
    log("alias index build (child process)")
    idx, wall, _ = child(INDEX_CODE, str(db))
    out["alias_index"] = {"aliases": idx["aliases"], "build_s": round(idx["build_s"], 1),
                          "load_s": round(idx["load_s"], 1), "build_cpu_s": round(idx["build_cpu_s"], 1),
                          "load_cpu_s": round(idx["load_cpu_s"], 1), "process_wall_s": round(wall, 1),
                          "rss_growth_mb": round((idx["rss_after_build"] - idx["rss_before"]) / 2**20),
                          "peak_rss_mb": round(idx["maxrss"] / 2**20), "file_mb": round(idx["file_bytes"] / 2**20)}
    t = idx["table"]
    out["feature_table"] = {"build_s": round(t["build_s"], 1), "build_cpu_s": round(t["build_cpu_s"], 1),
                            "load_cpu_s": round(t["load_cpu_s"], 3), "rss_growth_mb": round(t["rss_growth"] / 2**20),
                            "process_peak_rss_mb": round(t["maxrss_after"] / 2**20),
                            "file_mb": round(t["file_bytes"] / 2**20, 1)}
    log(f"alias index: {out['alias_index']}, feature table: {out['feature_table']}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of KgCLUE size (1.0 = 20.5M triples)")
    ap.add_argument("--workdir", default="/tmp/kg_scale")
    ap.add_argument("--lookups", type=int, default=20_000)
    ap.add_argument("--link-chars", type=int, default=3_000_000, help="corpus characters to link")
    ap.add_argument("--keep", action="store_true", help="keep the grown KB and store")
    ap.add_argument("--store", help="skip growing and importing: measure this existing store")
    ap.add_argument("--batch", type=int, default=16, help="texts per link_many call")
    ap.add_argument("--reference", metavar="COMMIT", help="also compare with the linker at this git commit")
    ap.add_argument("--reference-index", help="the reference's own alias index file (else built in memory)")
    ap.add_argument("--rounds", type=int, default=3, help="fresh processes per contender in --reference")
    ap.add_argument("--context-batch-only", action="store_true",
                    help="--reference compares link_many with context only (theirs and ours), no other contender")
    ap.add_argument("--compare-only", action="store_true",
                    help="with --store: skip the index build, lookups and single pass; only --reference / --profile")
    ap.add_argument("--index", action="store_true",
                    help="with --compare-only: do build the alias index and the feature table first (timed)")
    ap.add_argument("--gc-settled", action="store_true",
                    help="with --reference: each timed pass starts after a collection and ends with one (counted)")
    ap.add_argument("--frozen-contender", action="store_true",
                    help="with --reference: also this tree with gc.freeze() after setup, as `pretrain prepare` workers run")
    ap.add_argument("--profile", action="store_true",
                    help="add a cProfile of link_many (and of the reference's link), cold and warm")
    args = ap.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    result: dict = {"scale": None if args.store else args.scale, "measured_store": args.store, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                    "cpus": os.cpu_count(), "loadavg_start": os.getloadavg(), "host": machine_facts()}
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

    if args.compare_only and not args.store:
        ap.error("--compare-only needs --store")
    if not args.compare_only or args.index:
        result.update(build_index(db))

    if not args.compare_only:
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
        texts = corpus_texts(args.link_chars)
        result["linking"] = linking(db, texts, args.batch)
        log(f"linking: {result['linking']}")
    if args.reference:
        log(f"against the linker at {args.reference}, interleaved")
        result["reference"] = compare_reference(db, args.link_chars, args.reference, args.batch,
                                                args.reference_index, args.rounds, args.context_batch_only,
                                                args.gc_settled, args.frozen_contender)
    if args.profile:
        log("profiling link_many")
        result["profile"] = profile_linking(db, args.link_chars, args.batch, args.reference, args.reference_index)
    if args.compare_only:
        result["loadavg_end"] = os.getloadavg()
        print(json.dumps(result, ensure_ascii=False))
        return
    result["loadavg_end"] = os.getloadavg()
    imported = isinstance(result["import"], dict)
    result["targets"] = {
        "import_under_4_min": result["import"]["wall_s"] < 240 if imported else None,
        "peak_rss_under_3_gb": max(result["import"]["peak_rss_mb"] if imported else 0,
                                   result["alias_index"]["peak_rss_mb"]) < 3072,
        "lookup_p99_under_1_ms": result["lookup"]["entity_by_name"]["p99_ms"] < 1.0,
        "linking_1m_chars_per_s": result["linking"]["context_link_many"]["chars_per_s_cpu"] >= 1_000_000,
    }
    if not args.keep and not args.store:
        for p in (grown, db, db.with_name(db.name + ".aliases")):
            p.unlink(missing_ok=True)
    print(json.dumps(result, ensure_ascii=False))


if __name__ == "__main__":
    main()
