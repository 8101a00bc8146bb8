"""GEN's cascade against full fusion: the same answers, and how much GEN decoding it saves.

    .venv/bin/python bench/qa_gen_cascade.py --model runs/demo/qa --kb runs/demo/kb.sqlite

Answers questions (default: KgCLUE train's last 1,000, the fusion fit's) twice per distractor setting
with the model's fusion weights, GEN decoded for every question (`gen_cascade` off) and only where
it could change the answer (on), one thread, no GEN memo; prints per setting the answers that agree,
right answers of each, CPU ms per question of each and the share of questions GEN was decoded for.
Meaningful only for a model whose pipeline.json weighs GEN (w_gen or w_gen_head > 0).
"""
from __future__ import annotations

import argparse
import json
import time


def main(argv: list[str] | None = None) -> int:
    from wenzhi.kg.datadir import data_path
    from wenzhi.qa_service.data import read_qa
    from wenzhi.qa_service.pipeline import PipelineConfig, QAPipeline

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--kb", required=True)
    p.add_argument("--questions", help="KBQA JSON lines (default: kgclue/train.json of the data dir)")
    p.add_argument("--skip", type=int, default=17_000)
    p.add_argument("--limit", type=int, default=1_000)
    p.add_argument("--distractor-relations", default="0,30")
    args = p.parse_args(argv)
    examples = read_qa(args.questions or data_path("kgclue/train.json"), skip=args.skip, limit=args.limit)
    questions = [e.question for e in examples]
    pipe = QAPipeline(args.model, args.kb, PipelineConfig.load(args.model, threads=1, gen_memo=0))
    if pipe.gen is None or not (pipe.config.w_gen or pipe.config.w_gen_head):
        raise SystemExit(f"{args.model}: its pipeline.json does not weigh GEN; nothing to compare")

    def right(triples) -> int:
        return sum(t == (e.head, e.relation, e.tail) for t, e in zip(triples, examples))

    for k in (int(x) for x in args.distractor_relations.split(",")):
        runs = {}
        for cascade in (False, True):
            pipe.reconfigure(distractor_relations=k, gen_cascade=cascade)
            t0, triples, decoded = time.process_time(), [], 0.0
            for i in range(0, len(questions), 16):
                answers = pipe.answer_batch(questions[i : i + 16], top_k=3)
                triples += [a.triple for a in answers]
                decoded += answers[0].timings_ms.get("gen_decoded_share", 1.0) * len(answers)
            runs[cascade] = (triples, (time.process_time() - t0) * 1e3 / len(questions), decoded / len(questions))
        print(json.dumps({"distractor_relations": k, "questions": len(questions),
                          "same_answers": sum(a == b for a, b in zip(runs[False][0], runs[True][0])),
                          "right_full": right(runs[False][0]), "right_cascade": right(runs[True][0]),
                          "cpu_ms_per_question_full": round(runs[False][1], 2),
                          "cpu_ms_per_question_cascade": round(runs[True][1], 2),
                          "gen_decoded_share": round(runs[True][2], 3)}), flush=True)
    pipe.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
