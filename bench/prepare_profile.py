"""Where `pretrain prepare`'s CPU time goes: one run in this process (one worker) under cProfile
with a CPU-time clock (the machine is shared: wall time would count other users' load).

    WENZHI_DATA=../shared/data .venv/bin/python bench/prepare_profile.py --config C --output DIR \
        [--profile prepare.prof] [--top 30]

C: a prepare config, e.g. the `prepare-0.15.json` that bench/prepare_throughput.py --keep leaves.
Prints the cumulative time of each stage's function and of this project's functions, then the
functions with the most time of their own, as shares of the profiled total. cProfile inflates
small Python functions: read it for where the time goes, not for speed.
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import time


def _name(path: str, line: int, name: str) -> str:
    for marker in ("site-packages/", "/wenzhi/", "/model/", "/kg/", "/retrieval/"):
        if marker in path:
            path = path.split(marker)[-1] if marker == "site-packages/" else marker.strip("/") + "/" + path.split(marker)[-1]
            break
    return f"{path}:{line}({name})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--profile", default="prepare.prof")
    ap.add_argument("--top", type=int, default=30)
    args = ap.parse_args()
    from wenzhi.cli import main as cli

    argv = ["pretrain", "prepare", "--config", args.config, "--output", args.output, "--no-progress",
            "--no-resume", "--workers", "1"]
    prof = cProfile.Profile(time.process_time)
    prof.runcall(cli, argv)
    prof.dump_stats(args.profile)
    stats = pstats.Stats(args.profile)
    total = stats.total_tt
    ours = [(ct, nc, _name(f, line, name)) for (f, line, name), (_, nc, _, ct, _) in stats.stats.items()
            if "site-packages" not in f and any(p in f for p in ("/model/", "/kg/", "/retrieval/"))]
    print(f"profiled total {total:.1f} CPU-s")
    print(f"-- cumulative, this project's functions (top {args.top})")
    for ct, nc, name in sorted(ours, reverse=True)[: args.top]:
        print(f"{ct:7.2f} s {100 * ct / total:5.1f}%  {nc:8d} calls  {name}")
    print(f"-- own time (top {args.top})")
    rows = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[: args.top]
    for (f, line, name), (_, nc, tt, _, _) in rows:
        print(f"{tt:7.2f} s {100 * tt / total:5.1f}%  {nc:8d} calls  {_name(f, line, name)}")


if __name__ == "__main__":
    main()
