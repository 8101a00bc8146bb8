"""`wenzhi evaluate`: the KgCLUE metric over a question file, with the pipeline's breakdowns.

`mode` scores one answering path (fused, pipeline = linker + NER + SIM, gen = GEN alone) and
`distractor_relations` K lets every entity also offer the KB's K most frequent relations with unknown
tails (see qa_service/pipeline.py), so that the relation, not the entity, decides.

Breakdowns: mention found (the gold head's surface form overlaps the answer's mention span),
entity right (S exact), relation right (P exact); and relation selection on its own, given the gold
head: the gold relation ranked among the KB's 30 most frequent relations plus every relation of
the head's homonyms (accuracy@1) by the SIM head and, in the same run, by two rules without
learning: `lexical` (qa_service/lexical.py) and `rarest` (the candidate with the fewest KB triples;
on KgCLUE the gold relation is never one of the 30 frequent ones, so this prior alone scores high
on that candidate set). `own` repeats the three on the questions whose head and homonyms hold two
or more relations, among those relations only: there only reading the question helps.
"""
from __future__ import annotations

import json
import time
from pathlib import Path


def evaluate(questions: str | Path, kb: str | Path, model: str | Path, limit: int | None = None,
             errors: str | Path | None = None, index: str | Path | None = None, use_gen: bool = True,
             batch_size: int = 16, threads: int | None = None, nlpcc_holdout: float | None = None,
             progress: bool = True, mode: str = "fused", distractor_relations: int = 0) -> dict:
    """The figures of one answering mode and distractor setting (see `evaluate_runs`)."""
    return evaluate_runs(questions, kb, model, limit, errors, index, use_gen, batch_size, threads,
                         nlpcc_holdout, progress, [(mode, distractor_relations)])[0]


def evaluate_runs(questions: str | Path, kb: str | Path, model: str | Path, limit: int | None = None,
                  errors: str | Path | None = None, index: str | Path | None = None, use_gen: bool = True,
                  batch_size: int = 16, threads: int | None = None, nlpcc_holdout: float | None = None,
                  progress: bool = True, runs: list[tuple[str, int]] = (("fused", 0),)) -> list[dict]:
    """One result per (mode, distractor relations) in `runs`, all from one loaded pipeline; relation
    selection (which does not depend on either) is measured once, in the first. `errors` is written
    for the first run (other runs: `<errors>.<mode>-<K>`)."""
    from wenzhi.qa_service.data import holdout_split, read_qa
    from wenzhi.qa_service.pipeline import PipelineConfig, QAPipeline

    examples = read_qa(questions)
    if nlpcc_holdout:
        _, examples = holdout_split(examples, nlpcc_holdout, seed=0)
    if limit:
        examples = examples[:limit]
    needs_gen = use_gen and any(m != "pipeline" for m, _ in runs)
    config = PipelineConfig.load(Path(model), use_gen=needs_gen, threads=threads, mode=runs[0][0],
                                 distractor_relations=runs[0][1])
    started = time.time()
    pipe = QAPipeline(model, kb, config, index=index)
    load_s = time.time() - started
    results = []
    try:
        for i, (mode, k) in enumerate(runs):
            pipe.reconfigure(mode=mode, distractor_relations=k)
            err_file = errors if i == 0 or errors is None else f"{errors}.{mode}-{k}"
            result = _score_run(pipe, examples, batch_size, progress, err_file)
            if i == 0:
                result["relation_selection"] = relation_selection(pipe, examples, batch_size)
            result["seconds"]["load"] = round(load_s, 1)
            result["config"] = {"model": str(model), "kb": str(kb), "questions": str(questions), "mode": mode,
                                "distractor_relations": k, "use_gen": pipe.gen is not None and mode != "pipeline",
                                "shared_universal": pipe.shared_universal}
            results.append(result)
    finally:
        pipe.close()
    return results


def _score_run(pipe, examples, batch_size: int, progress: bool, errors) -> dict:
    """KgCLUE figures and the breakdowns of the pipeline as configured, over `examples`."""
    from tqdm import tqdm

    from wenzhi.qa_service.data import find_mention, mention_names
    from wenzhi.qa_service.metric import kgclue_scores, score_one

    preds, answers = [], []
    t0 = time.time()
    bar = tqdm(range(0, len(examples), batch_size), desc=f"evaluate {pipe.config.mode}", unit="batch",
               disable=not progress)
    for i in bar:
        batch = examples[i : i + batch_size]
        out = pipe.answer_batch([ex.question for ex in batch])
        answers.extend(out)
        preds.extend(a.answer for a in out)
    answer_s = time.time() - t0
    golds = [ex.answer for ex in examples]
    result = {"n": len(examples), **kgclue_scores(preds, golds)}

    mention_found = entity_right = relation_right = answered = 0
    err_rows = []
    for ex, a in zip(examples, answers):
        gold_span = find_mention(ex.question, mention_names(ex.head, pipe.store))
        spans = [(a.mention["start"], a.mention["end"])] if a.mention else []
        spans += list(a.ner_spans)
        found = gold_span is not None and any(s < gold_span[1] and e > gold_span[0] for s, e in spans)
        mention_found += found
        answered += a.triple is not None
        s_ok = a.triple is not None and a.triple[0] == ex.head
        p_ok = a.triple is not None and a.triple[1] == ex.relation
        entity_right += s_ok
        relation_right += p_ok
        one = score_one(a.answer, ex.answer)
        if one["em_o"] < 1.0:
            err_rows.append({"id": ex.id, "question": ex.question, "gold": ex.answer, "pred": a.answer,
                             "confidence": round(a.confidence, 4), "mention_found": found,
                             "entity_right": s_ok, "relation_right": p_ok, "ner_spans": a.ner_spans,
                             "candidates": [[c.head, c.relation, c.tail, round(c.score, 3)] for c in a.candidates[:3]]})
    n = max(len(examples), 1)
    result["breakdown"] = {"answered": round(answered / n, 4), "mention_found": round(mention_found / n, 4),
                           "entity_right": round(entity_right / n, 4), "relation_right": round(relation_right / n, 4)}

    result["seconds"] = {"answer": round(answer_s, 1), "per_question_ms": round(1e3 * answer_s / n, 1)}
    if errors:
        Path(errors).parent.mkdir(parents=True, exist_ok=True)
        with open(errors, "w", encoding="utf-8") as fh:
            for row in err_rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        result["errors_file"] = str(errors)
    return result


def relation_selection(pipe, examples, batch_size: int = 16, frequent: int = 30) -> dict:
    """Accuracy@1 of the gold relation, given the gold head, by SIM and by the no-learning rules."""
    from wenzhi.kg import parse_name

    from wenzhi.qa_service.data import find_mention, mention_names, selection_candidates
    from wenzhi.qa_service.lexical import lexical_scores

    counts = dict(pipe.store.relation_counts())
    top = [r for r, _ in pipe.store.relation_counts()[:frequent]]
    rows = []  # (example, all candidates, own candidates)
    for ex in examples:
        with_top, own = selection_candidates(pipe.store, ex, top)
        rows.append((ex, with_top, own, find_mention(ex.question, mention_names(ex.head, pipe.store))))
    out = {}
    for kind, col in (("all", 1), ("own", 2)):
        picked = [r for r in rows if kind == "all" or len(r[col]) > 1]
        right = {"sim": 0, "lexical": 0, "rarest": 0}
        n_cands = 0
        for i in range(0, len(picked), batch_size):
            chunk = picked[i : i + batch_size]
            # the gold head's mention is known here, as for the lexical rule (which strips its name)
            scores = pipe.relation_scores([r[0].question for r in chunk], [r[col] for r in chunk],
                                          [r[3] for r in chunk])
            for (ex, *cands, mention), sim in zip(chunk, scores):
                rels = cands[col - 1]
                lex = lexical_scores(ex.question, rels, mention or parse_name(ex.head)[0])
                right["sim"] += rels[max(range(len(rels)), key=sim.__getitem__)] == ex.relation
                right["lexical"] += rels[max(range(len(rels)), key=lex.__getitem__)] == ex.relation
                right["rarest"] += min(rels, key=lambda r: counts.get(r, 0)) == ex.relation
                n_cands += len(rels)
        n = max(len(picked), 1)
        out[kind] = {"n": len(picked), "mean_candidates": round(n_cands / n, 1),
                     **{f"accuracy_at_1_{k}": round(v / n, 4) for k, v in right.items()}}
    # the figure earlier reports quoted, and the headline comparison
    out["accuracy_at_1"] = out["all"]["accuracy_at_1_sim"]
    out["mean_candidates"] = out["all"]["mean_candidates"]
    out["sim_minus_lexical"] = round(out["all"]["accuracy_at_1_sim"] - out["all"]["accuracy_at_1_lexical"], 4)
    return out
