"""Does the code a run was made with matter? Re-make one finished ablation run's first steps and
evaluations with the code checked out now, and compare them with what that run recorded.

    WENZHI_DATA=../shared/data nice -n 19 .venv/bin/python bench/knowledge_ablation_codecheck.py \
        --pretrained runs/knowledge-ablation-cpu/pretrain/A-ddf5e0f205/seed-1 --steps 100 \
        --result runs/knowledge-ablation-cpu/runs/A-12f52f33a4/seed-1/result.json

Pretraining: the run's own logged config (its shards, seed, schedule over all its steps) is trained
again into a scratch folder until the first checkpoint at or after `--steps` is written, then
stopped; the logged losses up to there and that checkpoint's weights are compared with the run's
(the trainer's data position and every random draw are determined by the step, so the same code
gives the same numbers). Evaluations: the probe and the two downstream fine-tunes are re-run on the
run's final model with the settings its result records and compared with its recorded scores.
Issue 15's R-E runs were made at 2eccc59, its F runs after main was merged: this says whether
that difference could have moved anything. Prints one JSON object last.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def retrain_until(pretrained: Path, steps: int, scratch: Path) -> dict:
    """Train the run's config at this code until its first checkpoint >= `steps`; compare."""
    import torch
    from safetensors.torch import load_file

    from wenzhi.model.checkpoint import complete_checkpoints

    lines = [json.loads(x) for x in (pretrained / "train_log.jsonl").read_text().splitlines()]
    config = dict(lines[0]["config"])
    config["output_dir"] = str(scratch)
    config["report_to"] = "none"
    renamed = {}
    if "init_from_bert" in config:  # the trainer's name for init_from until the import landed (same meaning)
        config["init_from"] = config.pop("init_from_bert")
        renamed["init_from_bert"] = "init_from"
    every = config["checkpoint_every"]
    stop = -(-steps // every) * every  # the first checkpoint at or after `steps`
    config_file = scratch.with_suffix(".json")
    config_file.write_text(json.dumps(config))
    # a child process (the CLI): stopped once the checkpoint is complete, as a user's Ctrl-C would
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    log = open(scratch.with_suffix(".log"), "w")
    proc = subprocess.Popen([sys.executable, "-m", "wenzhi", "pretrain", "run", "--config", str(config_file),
                             "--no-progress"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        while proc.poll() is None:
            if any(c.name == f"step-{stop:08d}" for c in complete_checkpoints(scratch / "checkpoints")):
                break
            time.sleep(2)
    finally:
        proc.terminate()
        proc.wait()
        log.close()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if not (scratch / "checkpoints" / f"step-{stop:08d}").exists():
        raise SystemExit(f"error: the retraining stopped before step {stop}:\n" + scratch.with_suffix(".log").read_text()[-2000:])
    ours = load_file(str(scratch / "checkpoints" / f"step-{stop:08d}" / "model.safetensors"))
    theirs = load_file(str(pretrained / "checkpoints" / f"step-{stop:08d}" / "model.safetensors"))
    diff = max(float((ours[k] - theirs[k]).abs().max()) for k in theirs)
    def logged(path: Path) -> dict:
        return {x["step"]: x["loss"] for x in map(json.loads, path.read_text().splitlines())
                if "loss" in x and "event" not in x and x["step"] <= stop}

    old, new = logged(pretrained / "train_log.jsonl"), logged(scratch / "train_log.jsonl")
    return {"steps": stop, "config_keys_renamed": renamed, "same_keys": sorted(ours) == sorted(theirs), "max_abs_weight_diff": diff,
            "weights_identical": diff == 0.0 and sorted(ours) == sorted(theirs),
            "losses_recorded": {s: old[s] for s in sorted(old)}, "losses_now": {s: new.get(s) for s in sorted(old)},
            "cpu_seconds": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 1),
            "torch": torch.__version__}


def reevaluate(result_file: Path, pretrained: Path, stages: list[str]) -> dict:
    """The run's final model's evaluations named in `stages` (probe, cluener, thucnews, sim) at this code."""
    sys.path.insert(0, str(ROOT / "bench"))
    from knowledge_ablation import relation_selection
    from knowledge_ablation_plan import Plan, Size

    from wenzhi.model import downstream, probe
    from wenzhi.model.tokenizer import load_tokenizer

    result = json.loads(result_file.read_text())
    work = result_file.parents[3]
    records = [json.loads(p.read_text()) for p in sorted((work / "plans").glob("*.json"))]
    plan_record = next(r for r in records  # the command that made this result
                       if Plan(Size(**r["size"]), work, r["kb"]).run_dir(result["variant"], result["seed"]) == result_file.parent)
    size, seed, model_dir = Size(**plan_record["size"]), result["seed"], pretrained / "model"
    items = probe.select(probe.add_candidates(probe.load_items(["agrikg", "kdconv"], 0.1, size.probe_items),
                                              size.probe_candidates, seed=0), "heldout", size.probe_items, seed=0)
    now, recorded = {}, {}
    if "probe" in stages:
        now["probe_acc_at_1"] = probe.evaluate(probe.load_model(str(model_dir)), load_tokenizer(model_dir), items)["heldout"]["acc@1"]
        recorded["probe_acc_at_1"] = result["probe"]["acc@1"]
    if "sim" in stages:
        with tempfile.TemporaryDirectory(prefix="ablation-codecheck-sim-") as qa:
            now["relation_selection_accuracy_at_1"] = relation_selection(
                size, model_dir, Path(qa), Path(plan_record["kb"]), seed)["accuracy_at_1"]
        recorded["relation_selection_accuracy_at_1"] = result["relation_selection"]["accuracy_at_1"]
    for task, metric in (("cluener", "entity_f1"), ("thucnews", "accuracy")):
        if task not in stages:
            continue
        cfg = downstream.DownstreamConfig(task=task, init=str(model_dir), max_steps=size.downstream_steps, seed=seed,
                                          learning_rate=size.finetune_lr, freeze_universal=size.freeze_universal,
                                          train_limit=size.downstream_train, eval_limit=size.downstream_eval, threads=1)
        now[f"{task}_{metric}"] = downstream.run(cfg)[metric]
        recorded[f"{task}_{metric}"] = result[task][metric]
    return {"recorded": recorded, "now": now, "identical": recorded == now}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pretrained", required=True, help="a finished run's pretraining folder (train_log.jsonl, checkpoints/)")
    parser.add_argument("--steps", type=int, default=100,
                        help="retrain up to the first checkpoint at or after this step (0: do not retrain)")
    parser.add_argument("--result", help="that run's result.json: also re-run its evaluations (--evaluations)")
    parser.add_argument("--evaluations", default="probe,cluener,thucnews", help="which: probe, cluener, thucnews, sim")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    pretrained = Path(args.pretrained).resolve()
    out = {"commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                    text=True).stdout.strip()}
    if args.steps > 0:  # --steps 0: the evaluations alone
        with tempfile.TemporaryDirectory(prefix="ablation-codecheck-") as tmp:
            out["pretraining"] = retrain_until(pretrained, args.steps, Path(tmp) / "run")
    if args.result:
        cpu = time.process_time()
        out["evaluations"] = reevaluate(Path(args.result).resolve(), pretrained, args.evaluations.split(","))
        out["evaluations"]["cpu_seconds"] = round(time.process_time() - cpu, 1)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
