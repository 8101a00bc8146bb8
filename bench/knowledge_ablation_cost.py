"""What the knowledge ablation costs in CPU seconds, summed from the pieces' own clocks: does the
whole CPU ablation fit the issue's 90 minutes on two cores, two runs at a time?

    WENZHI_DATA=../shared/data .venv/bin/python bench/knowledge_ablation_cost.py \
        --work runs/knowledge-ablation-cpu --variants R,A,B,C,D,E,F0,FA,FE --seeds 3

Pieces are looked up as bench/knowledge_ablation.py would make them with the size's settings
(`Plan`): each evaluation's CPU seconds from its own file under evaluations/ (what it cost when it
was made); each pretraining's from the result.json of the run that trained it (a run that found
its pretraining done records ~0 s; a pretraining no run's result timed takes its variant's mean,
and is counted as untimed). Preparing shards and F's BERT stand-in are paid once per masking; `--prepare-cpu`
gives their CPU seconds (the prepare's wait4 clock is printed by the command, not kept in a file).
Prints a table and, last, one JSON object.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from knowledge_ablation_plan import EVALUATIONS, SIZES, VARIANTS, Plan, Size, parse_variants  # noqa: E402
from knowledge_ablation_report import pretrained_here  # noqa: E402


def pretraining_cpu(work: Path) -> dict[Path, float]:
    """Pretraining folder -> CPU seconds, from every earlier command's runs that trained one
    (work/plans/ holds each command's size, which names its runs' and pretrainings' folders)."""
    out = {}
    for record in sorted((work / "plans").glob("*.json")):
        plan_record = json.loads(record.read_text())
        # names are hashed with the work folder the command ran in: this one, or (a copied folder)
        # the one holding its KB; a name made with the wrong one matches no folder
        for then in dict.fromkeys([work, Path(plan_record["kb"]).parent]):
            try:
                plan = Plan(Size(**plan_record["size"]), then, plan_record["kb"])
            except TypeError:  # a size from before a field was renamed: its runs are read by later records
                break
            for variant in (v for v in VARIANTS if VARIANTS[v].masking):
                for result_file in (work / plan.run_dir(variant, 0).parent.relative_to(then)).glob("seed-*/result.json"):
                    result = json.loads(result_file.read_text(encoding="utf-8"))
                    if pretrained_here(result):
                        pretrained = work / plan.pretrain_dir(variant, result["seed"]).relative_to(then)
                        out[pretrained] = result["cpu_seconds"]["pretrain"]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", required=True)
    parser.add_argument("--size", default="cpu", choices=sorted(SIZES))
    parser.add_argument("--kb", help="the ablation's --kb, if it was given one (default: the work folder's)")
    parser.add_argument("--variants", default="R,A,B,C,D,E,F0,FA,FE")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--prepare-cpu", default="", help="MASKING=CPU_S,... shards preparation and BERT=CPU_S")
    args = parser.parse_args()
    work = Path(args.work).resolve()
    plan = Plan(SIZES[args.size], work, str(Path(args.kb).resolve() if args.kb else work / "kb.sqlite"))
    variants = parse_variants(args.variants)
    trained = pretraining_cpu(work)
    rows, missing = [], []
    for v in variants:
        per_seed = []
        for seed in range(args.seeds):
            pretrained = plan.pretrain_dir(v, seed)
            stages = {}
            for stage in EVALUATIONS:
                path = plan.evaluation(v, seed, stage)
                if not path.exists():
                    missing.append(f"{v} seed {seed} {stage}")
                    continue
                stages[stage] = json.loads(path.read_text(encoding="utf-8"))["cpu_seconds"]
            stages["pretrain"] = trained.get(pretrained) if VARIANTS[v].masking else 0.0
            per_seed.append(stages)
        timed = [s["pretrain"] for s in per_seed if s["pretrain"] is not None]
        untimed = sum(s["pretrain"] is None for s in per_seed)
        for s in per_seed:  # a pretraining no run timed: its variant's mean (counted in `untimed`)
            if s["pretrain"] is None:
                s["pretrain"] = statistics.fmean(timed) if timed else 0.0
        rows.append({"variant": v, "pretrain_cpu": round(sum(s["pretrain"] for s in per_seed), 1),
                     "evaluations_cpu": round(sum(sum(x for k, x in s.items() if k != "pretrain") for s in per_seed), 1),
                     "pretrainings_untimed": untimed, "seeds": len(per_seed)})
    once = {k: float(x) for k, x in (item.split("=") for item in args.prepare_cpu.split(",") if item)}
    total = sum(r["pretrain_cpu"] + r["evaluations_cpu"] for r in rows) + sum(once.values())
    print("| variant | seeds | pretraining CPU s (all seeds) | evaluations CPU s (all seeds) | pretrainings untimed |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['seeds']} | {r['pretrain_cpu']:.0f} | {r['evaluations_cpu']:.0f} | {r['pretrainings_untimed']} |")
    print(f"once: {once or 'none given'}; total {total:.0f} CPU-s = {total / 60:.1f} CPU-min; two runs at a time on "
          f"two free cores: {total / 120:.1f} min wall" + (f"; MISSING {len(missing)}: {', '.join(missing)}" if missing else ""))
    print(json.dumps({"variants": rows, "once": once, "total_cpu_seconds": round(total, 1),
                      "two_cores_minutes": round(total / 120, 1), "missing": missing}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
