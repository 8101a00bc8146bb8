"""Where the garbage collector's time goes in a cold `link_many` pass (issue 14 item 1).

One fresh process per tree (this one, or the `kg/` of a commit as `wenzhi_ref.kg`): the linker is
made as bench/kg_scale.py makes it (alias index, feature table, compiled scorer loaded), then one
cold pass over the corpus in batches of 16, gc on, timed in CPU seconds. Printed: the pass's CPU,
the collections of each generation during it (count, CPU), the tracked objects before the pass
(and how many the numba import and the compiled scorer's load added), and the objects a pass
allocates that the collector counts (the gen-0 count over a second, untimed cold pass with gc
disabled: what drives how often collections run; that pass's CPU is the work without the
collector, with the store's pages already read). With --freeze the objects alive before the pass are frozen first
(gc.freeze(): a process-level choice for an application, not something the library does): what
the pre-pass heap costs the pass's full collections.

Run:   WENZHI_DATA=/work/shared/data .venv/bin/python bench/linker_gc.py --store kb.sqlite [--reference COMMIT] [--freeze]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

CODE = """
import gc, json, sys, time
sys.path.insert(0, sys.argv[1]); sys.path.insert(0, sys.argv[2])
from kg_scale import corpus_texts
pkg = "wenzhi_ref.kg" if sys.argv[3] == "reference" else "wenzhi.kg"
n_start = len(gc.get_objects())
AliasIndex = __import__(pkg + ".alias_index", fromlist=["x"]).AliasIndex
linker_mod = __import__(pkg + ".linker", fromlist=["x"])
TripleStore = __import__(pkg + ".store", fromlist=["x"]).TripleStore
EntityFeatureTable = __import__(pkg + ".feature_table", fromlist=["x"]).EntityFeatureTable
store = TripleStore(sys.argv[4])
index = AliasIndex.for_store(store)
texts = corpus_texts(int(sys.argv[5]))
table = EntityFeatureTable.for_store(store, 300)
n_before_numba = len(gc.get_objects())
import numba
n_numba_import = len(gc.get_objects()) - n_before_numba
n = len(gc.get_objects())
def make():
    return linker_mod.EntityLinker(store, index, linker_mod.LinkerConfig(), feature_table=table)
linker = make()
n_scorer_load = len(gc.get_objects()) - n
tracked_before = len(gc.get_objects())
if sys.argv[6] == "freeze":
    gc.freeze()
stats = {g: [0, 0.0] for g in range(3)}
start = [0.0]
def on_gc(phase, info):
    if phase == "start":
        start[0] = time.process_time()
    else:
        stats[info["generation"]][0] += 1
        stats[info["generation"]][1] += time.process_time() - start[0]
run = lambda l: [ms for i in range(0, len(texts), 16) for ms in l.link_many(texts[i : i + 16])]
gc.callbacks.append(on_gc)
c = time.process_time(); found = run(linker); cold = time.process_time() - c
gc.callbacks.remove(on_gc)
del found
gc.collect()
gc.disable()  # a second cold pass, untimed: the allocations the collector counts
other = make()
c0, c = gc.get_count()[0], time.process_time()
found = run(other)
no_gc = time.process_time() - c
counted = gc.get_count()[0] - c0
gc.enable()
print(json.dumps({"cold_cpu_s": round(cold, 3), "collections": {f"gen{g}": [k, round(t, 3)] for g, (k, t) in stats.items()},
                  "tracked_before_pass": tracked_before, "numba_import_objects": n_numba_import,
                  "scorer_load_objects": n_scorer_load, "counted_allocations": counted, "cold_cpu_s_gc_disabled": round(no_gc, 3),
                  "mentions": sum(map(len, found))}))
"""


def main() -> None:
    from kg_scale import reference_package

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", required=True)
    ap.add_argument("--reference", help="a commit: measure its kg/ instead of this tree's")
    ap.add_argument("--chars", type=int, default=1_000_000)
    ap.add_argument("--freeze", action="store_true")
    args = ap.parse_args()
    ref = reference_package(args.reference) if args.reference else ""
    # (a reference's kernel is compiled in its first process, a new package's numba cache being
    # empty: that process is run and not reported, as this tree's cache is already filled)
    for _ in range(2 if args.reference else 1):
        proc = subprocess.run([sys.executable, "-c", CODE, ref or ".", str(Path(__file__).resolve().parent),
                               "reference" if args.reference else "tree", args.store, str(args.chars),
                               "freeze" if args.freeze else "plain"],
                              capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
        if proc.returncode != 0:
            sys.exit(proc.stderr[-3000:])
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result.update(tree=args.reference or "this tree", freeze=args.freeze)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
