"""Does `wenzhi fit-fusion`'s choice hold across samples of its fit questions? Re-chooses the weights on
windows of saved evidence and on each window's odd and even halves (no heads are run).

    wenzhi fit-fusion --kb runs/demo/kb.sqlite --model runs/demo/qa --skip 16000 --limit 2000 \\
        --distractor-relations 0,30 --save-evidence /tmp/ev.npz
    .venv/bin/python bench/fusion_stability.py /tmp/ev.npz --window 1000 --step 500

One line per sample: the weights chosen, GEN's gain over them (± its standard error, per half) and
whether GEN was taken. Last line: a JSON summary (how many samples, how many took GEN).
"""
from __future__ import annotations

import argparse
import json

import numpy as np


def main(argv: list[str] | None = None) -> int:
    from wenzhi.qa_service.fusion import Evidence, choose_weights

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("evidence", nargs="+", help="files from `wenzhi fit-fusion --save-evidence`")
    p.add_argument("--window", type=int, default=1000, help="fit questions per sample")
    p.add_argument("--step", type=int, default=500, help="questions between windows")
    args = p.parse_args(argv)
    samples = gen_on = 0
    for path in args.evidence:
        ev = Evidence.load(path)
        n = int(ev.question.max()) + 1
        pos = np.arange(n)
        windows = [(lo, min(n, lo + args.window)) for lo in range(0, max(1, n - args.window + 1), args.step)]
        for lo, hi in windows:
            window = (pos >= lo) & (pos < hi)
            for name, keep in (("all", window), ("even half", window & (pos % 2 == 0)),
                               ("odd half", window & (pos % 2 == 1))):
                choice = choose_weights(ev.subset(keep))
                w, r = choice["weights"], choice["report"]
                samples += 1
                gen_on += bool(r["gen_accepted"])
                print(f"{path} questions {lo}-{hi - 1} {name:9s} "
                      + " ".join(f"{k[2:]}={v:g}" for k, v in w.items())
                      + f" | GEN {r['gen_gain']:+d} ±{r['gen_gain_se']} halves {r['gen_half_gains']}"
                      f" of {int(keep.sum())} questions -> {'ON' if r['gen_accepted'] else 'off'}", flush=True)
    print(json.dumps({"samples": samples, "gen_on": gen_on}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
