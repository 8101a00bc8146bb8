"""In-process answering cost of two model directories, interleaved in one run (a ratio that the
machine's noise affects equally): CPU milliseconds per question, per pipeline stage.

    .venv/bin/python bench/qa_pipeline_speed.py --kb runs/demo/kb.sqlite --model A --reference B

Typical use: A = a relation-matching or late-interaction SIM head, B = a full one
(`--interaction full`); without `--reference`, one model's cost alone. Questions: the first `--questions-limit` KgCLUE dev
questions, answered once to warm the caches, then `--rounds` times per model, alternating, in
batches of `--batch-size`. Last line: a JSON object.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_once(pipeline, questions, batch_size) -> dict:
    stages: dict[str, float] = {}
    cpu = time.process_time()
    for i in range(0, len(questions), batch_size):
        answers = pipeline.answer_batch(questions[i : i + batch_size], 3)
        for key, ms in answers[0].timings_ms.items():  # per batch, the same on every answer
            stages[key] = stages.get(key, 0.0) + ms
    n = len(questions)
    return {"cpu_ms_per_question": (time.process_time() - cpu) * 1e3 / n,
            **{f"{k}_wall_ms_per_question": v / n for k, v in stages.items()}}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kb", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--reference", help="a second model directory, interleaved with the first (a ratio)")
    p.add_argument("--mode", choices=["pipeline", "fused"], default="pipeline",
                   help="pipeline: linker + NER + SIM (no GEN); fused: with GEN decoding (its hits not memoised)")
    p.add_argument("--questions", help="KBQA JSON lines (default: kgclue/dev.json of the data dir)")
    p.add_argument("--questions-limit", type=int, default=640)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    sys.path.insert(0, str(ROOT))
    from wenzhi.kg.datadir import data_path
    from wenzhi.qa_service.data import read_qa
    from wenzhi.qa_service.pipeline import PipelineConfig, QAPipeline

    path = args.questions or str(data_path("kgclue/dev.json"))
    questions = [ex.question for ex in read_qa(path)][: args.questions_limit]
    dirs = [("model", args.model)] + ([("reference", args.reference)] if args.reference else [])
    fused = args.mode == "fused"
    pipes = {name: QAPipeline(d, args.kb, PipelineConfig.load(d, use_gen=fused, mode=args.mode, threads=1,
                                                              gen_memo=0))
             for name, d in dirs}
    for pipe in pipes.values():
        run_once(pipe, questions, args.batch_size)  # warm caches
    runs: dict[str, list[dict]] = {name: [] for name in pipes}
    for _ in range(args.rounds):
        for name, pipe in pipes.items():
            runs[name].append(run_once(pipe, questions, args.batch_size))
    best = {name: min(r, key=lambda x: x["cpu_ms_per_question"]) for name, r in runs.items()}
    result = {"batch_size": args.batch_size, "questions": len(questions), "rounds": args.rounds,
              "model": args.model, "reference": args.reference,
              "mode": args.mode, **{name: {k: round(v, 3) for k, v in b.items()} for name, b in best.items()}}
    if args.reference:
        result["speedup_cpu"] = round(best["reference"]["cpu_ms_per_question"] / best["model"]["cpu_ms_per_question"], 2)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
