"""Preparation throughput: `wenzhi pretrain prepare` against the code of a reference commit (the
pipeline before issue 14), interleaved in one run and measured in CPU seconds; then this code at
1 and 2 workers.

    WENZHI_DATA=../shared/data python bench/prepare_throughput.py --kb /tmp/kb.sqlite \\
        [--config model/configs/prepare_full.yaml] [--fraction 0.15] [--rounds 2] \\
        [--reference-commit 3969159] [--workers 1 2] [--scaling-fraction 1.0]

Every run is a child process (`python -m wenzhi pretrain prepare ...`); its CPU time (user +
system, its worker processes included) comes from wait4, its characters from its summary line.
The reference runs from `git archive` of the reference commit, laid out as the `wenzhi` package
and put first on PYTHONPATH, on its own copy of the KB (the two versions keep different linker
caches beside it). `--fraction` takes that share of every corpus (the reference needs about 50
CPU-seconds per million characters). Each version runs once untimed first (caches, page cache).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # also when loaded from its path
from machine_facts import machine_facts  # noqa: E402  (bench/)

REPO = Path(__file__).resolve().parent.parent


def slice_config(config: Path, kb: Path, fraction: float, out: Path) -> Path:
    """The config with every corpus cut to `fraction` of its items (keys both versions know)."""
    import yaml

    from wenzhi.model.prepare_config import PrepareConfig
    from wenzhi.model.prepare_plan import index_corpus

    raw = yaml.safe_load(config.read_text(encoding="utf-8"))
    cfg = PrepareConfig.from_dict(raw, base_dir=config.parent)
    raw["kb"] = str(kb)
    raw["corpora"] = [dict(c) for c in raw["corpora"]]
    if fraction < 1:
        for corpus, spec in zip(raw["corpora"], cfg.corpora):
            total = index_corpus(spec, cfg.resolve(spec.path)).total
            corpus["limit"] = max(1, math.ceil(total * fraction))
    path = out / f"prepare-{fraction:g}.json"
    path.write_text(json.dumps(raw, ensure_ascii=False, indent=1), encoding="utf-8")
    return path


def reference_tree(commit: str, out: Path) -> Path:
    """`git archive` of the commit, arranged so that `import wenzhi.model` finds its model/."""
    src = out / "reference-src"
    src.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commit], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    pkg = out / "reference-pkg"
    shutil.copytree(src / "wenzhi", pkg / "wenzhi")
    for sub in ("kg", "retrieval", "model", "qa_service"):
        os.symlink(src / sub, pkg / "wenzhi" / sub)
    return pkg


def run(args: list[str], env: dict, log: Path) -> dict:
    """One prepare run: its summary line plus wall and CPU seconds (its workers included). It runs
    in the log's directory: from the repository root, `-m wenzhi` would import the repository's
    wenzhi/ ahead of PYTHONPATH."""
    started = time.perf_counter()
    with open(log, "w") as err, tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen([sys.executable, "-m", "wenzhi", "pretrain", "prepare", *args],
                                env=env, stdout=out, stderr=err, cwd=log.parent)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        lines = out.read().strip().splitlines()
    if proc.returncode != 0:
        raise SystemExit(f"prepare failed ({proc.returncode}), see {log}")
    summary = json.loads(lines[-1])
    summary["bench_wall_seconds"] = round(time.perf_counter() - started, 2)
    summary["bench_cpu_seconds"] = round(usage.ru_utime + usage.ru_stime, 2)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kb", required=True, type=Path, help="TripleStore of the whole KB (wenzhi kg import)")
    parser.add_argument("--config", type=Path, default=REPO / "model/configs/prepare_full.yaml")
    parser.add_argument("--fraction", type=float, default=0.15, help="share of each corpus for the comparison")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--reference-commit", default="3969159")
    parser.add_argument("--workers", type=int, nargs="*", default=[1, 2], help="worker counts for the scaling runs")
    parser.add_argument("--scaling-fraction", type=float, default=1.0)
    parser.add_argument("--keep", type=Path, help="keep the runs' files here instead of a temporary directory")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="wenzhi-prepare-bench-", dir=args.keep))
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env["WENZHI_DATA"] = str(Path(env.get("WENZHI_DATA", REPO.parent / "shared/data")).resolve())
    config = slice_config(args.config, args.kb.resolve(), args.fraction, work)
    tiny = slice_config(args.config, args.kb.resolve(), 0.005, work)
    ref_kb = work / "reference-kb" / args.kb.name
    ref_kb.parent.mkdir()
    shutil.copy(args.kb, ref_kb)
    ref_env = dict(env, PYTHONPATH=str(reference_tree(args.reference_commit, work)))
    imported = subprocess.run([sys.executable, "-c", "import wenzhi.model.prepare as p; print(p.__file__)"], env=ref_env,
                              cwd=work, capture_output=True, text=True, check=True).stdout.strip()
    if not imported.startswith(str(work)):
        raise SystemExit(f"the reference run would import {imported}, not the reference tree")
    ours = lambda cfg, name, *extra: run(["--config", str(cfg), "--output", str(work / name), "--no-progress",  # noqa: E731
                                          "--no-resume", *extra], env, work / f"{name}.log")
    reference = lambda cfg, name: run(["--config", str(cfg), "--kb", str(ref_kb), "--output", str(work / name),  # noqa: E731
                                       "--no-progress"], ref_env, work / f"{name}.log")
    reference(tiny, "warm-reference")
    ours(tiny, "warm-ours")
    rows = []
    for r in range(args.rounds):  # order flipped every round
        pair = [("reference", lambda: reference(config, f"reference-{r}")), ("ours", lambda: ours(config, f"ours-{r}"))]
        results = {}
        for name, fn in (pair if r % 2 == 0 else pair[::-1]):
            results[name] = fn()
            print(f"round {r} {name}: {results[name]['chars']:,} chars, {results[name]['bench_cpu_seconds']} CPU-s, "
                  f"{results[name]['bench_wall_seconds']} s", file=sys.stderr)
        rows.append(results)
    chars = rows[0]["ours"]["chars"]
    ref_rate = [r["reference"]["chars"] / r["reference"]["bench_cpu_seconds"] for r in rows]
    our_rate = [r["ours"]["chars"] / r["ours"]["bench_cpu_seconds"] for r in rows]
    ratios = [o / f for o, f in zip(our_rate, ref_rate)]
    print(f"\n## comparison: {chars:,} characters ({args.fraction:g} of each corpus), {args.rounds} rounds\n")
    print(f"host: {json.dumps(machine_facts())}\n")
    print("| version | chars per CPU-second (median) | per round |")
    print("|---|---|---|")
    print(f"| reference {args.reference_commit} | {statistics.median(ref_rate):,.0f} | {', '.join(f'{x:,.0f}' for x in ref_rate)} |")
    print(f"| this tree | {statistics.median(our_rate):,.0f} | {', '.join(f'{x:,.0f}' for x in our_rate)} |")
    print(f"\nratio (CPU time): median {statistics.median(ratios):.2f}, per round {', '.join(f'{x:.2f}' for x in ratios)}")
    print(f"stage CPU seconds (ours, last round): {json.dumps(rows[-1]['ours'].get('stage_cpu_seconds'))}")
    print(f"stage CPU seconds (reference, last round): {json.dumps(rows[-1]['reference'].get('stage_cpu_seconds'))}")
    same = rows[0]["ours"]["rows"], rows[0]["ours"]["examples"], rows[0]["reference"]["rows"], rows[0]["reference"]["examples"]
    print(f"rows / examples: ours {same[0]:,} / {same[1]:,}, reference {same[2]:,} / {same[3]:,}")
    # job.json is the resume record: it fingerprints the config, whose KB path differs per version
    identical = _digest(work / "ours-0", skip={"job.json"}) == _digest(work / "reference-0", skip={"job.json"})
    print(f"shards and meta.json byte-identical to the reference's (round 0): {identical}")

    if args.workers:
        scaled = slice_config(args.config, args.kb.resolve(), args.scaling_fraction, work)
        print(f"\n## workers ({args.scaling_fraction:g} of each corpus)\n")
        print("| workers | chars | wall s | chars/s (wall) | CPU s | chars per CPU-s | padding |")
        print("|---|---|---|---|---|---|---|")
        outputs = []
        for w in args.workers:
            s = ours(scaled, f"workers-{w}", "--workers", str(w))
            outputs.append(work / f"workers-{w}")
            print(f"| {w} | {s['chars']:,} | {s['bench_wall_seconds']} | {s['chars'] / s['bench_wall_seconds']:,.0f} | "
                  f"{s['bench_cpu_seconds']} | {s['chars'] / s['bench_cpu_seconds']:,.0f} | {s['padding_fraction']} |")
        identical = len({_digest(o) for o in outputs}) == 1
        print(f"\noutputs byte-identical across worker counts: {identical}")
    if args.keep is None:
        shutil.rmtree(work)


def _digest(root: Path, skip: frozenset | set = frozenset()) -> str:
    import hashlib

    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name not in skip:
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


if __name__ == "__main__":
    main()
