"""Which Aho-Corasick library the alias index uses: build time, memory and matching speed of
each candidate over the index's own keys, on the same corpus text.

Contenders: pyahocorasick (what kg/alias_index.py used before, with its two-letters-per-character
trick), ahocorasick-rs (Rust aho-corasick, contiguous NFA), daachorse's character-wise (the
choice) and byte-wise double arrays (ahocorasick-rs and pyahocorasick are not dependencies:
pip install them to run this). Each is built and run in a fresh process (its peak memory is its
own); matching is every overlapping occurrence, text by text, as the linker asks for them, the
fastest of three passes.

Run:   .venv/bin/python bench/alias_matchers.py --store kb.sqlite [--link-chars 1000000]
The store's alias index must exist (any linker run, or `wenzhi kg link`, builds it).
Prints one JSON object; progress on stderr.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

CONTENDER_CODE = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[4])
from kg_scale import corpus_texts
from safetensors import safe_open
from wenzhi.kg.names import normalize
name, index_path, chars = sys.argv[1], sys.argv[2], int(sys.argv[3])
with safe_open(index_path, framework="numpy") as fh:
    keys = fh.get_tensor("patterns").tobytes().decode("utf-8").split("\n")
texts = [normalize(t) for t in corpus_texts(chars)]
def rss():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096
before = rss()
c = time.process_time()
if name == "pyahocorasick":
    import ahocorasick
    auto = ahocorasick.Automaton(ahocorasick.STORE_INTS)
    for i, k in enumerate(keys):
        auto.add_word(k.encode("utf-16-be", "surrogatepass").decode("latin-1"), i)
    auto.make_automaton()
    find = lambda t: [(e, v) for e, v in auto.iter(t.encode("utf-16-be", "surrogatepass").decode("latin-1")) if e & 1]
elif name == "ahocorasick-rs":
    import ahocorasick_rs
    auto = ahocorasick_rs.AhoCorasick(keys, implementation=ahocorasick_rs.Implementation.ContiguousNFA)
    find = lambda t: auto.find_matches_as_indexes(t, overlapping=True)
elif name == "daachorse-charwise":
    import daachorse
    auto = daachorse.CharwiseDoubleArrayAhoCorasick(keys)
    find = auto.find_overlapping
else:
    import daachorse
    auto = daachorse.DoubleArrayAhoCorasick([k.encode("utf-16-be", "surrogatepass") for k in keys])
    find = lambda t: [m for m in auto.find_overlapping(t.encode("utf-16-be", "surrogatepass")) if not m[0] & 1]
build = time.process_time() - c
grown = rss() - before
total = sum(map(len, texts))
match = float("inf")
for _ in range(3):  # the fastest of three passes: the least disturbed by the machine's other work
    c = time.process_time()
    found = sum(len(find(t)) for t in texts)
    match = min(match, time.process_time() - c)
print(json.dumps({"keys": len(keys), "build_cpu_s": round(build, 2), "rss_mb": round(grown / 2**20),
                  "matches": found, "chars": total, "chars_per_s_cpu": round(total / match)}))
"""

CONTENDERS = ("pyahocorasick", "ahocorasick-rs", "daachorse-charwise", "daachorse-bytewise")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", required=True, help="a TripleStore whose alias index (STORE.aliases) exists")
    ap.add_argument("--link-chars", type=int, default=1_000_000, help="corpus characters to match")
    ap.add_argument("--only", nargs="*", choices=CONTENDERS, help="a subset of the contenders")
    args = ap.parse_args()
    index = Path(args.store + ".aliases")
    if not index.exists():
        raise SystemExit(f"no alias index at {index}: run `wenzhi kg link TEXT --kb {args.store}` first")
    out = {"store": args.store, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    for name in args.only or CONTENDERS:
        print(f"[alias_matchers] {name}", file=sys.stderr, flush=True)
        proc = subprocess.run([sys.executable, "-c", CONTENDER_CODE, name, str(index), str(args.link_chars),
                               str(Path(__file__).resolve().parent)], capture_output=True, text=True)
        if proc.returncode != 0:
            out[name] = {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
        else:
            out[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"[alias_matchers] {name}: {out[name]}", file=sys.stderr, flush=True)
    print(json.dumps(out, ensure_ascii=False))


if __name__ == "__main__":
    main()
