"""`wenzhi evaluate`: the KgCLUE metric over a question file, with the pipeline's breakdowns.

Breakdowns: mention found (the gold head's surface form overlaps the answer's mention span),
entity right (S exact), relation right (P exact); and relation selection on its own: the gold
relation ranked by the SIM head among the KB's 30 most frequent relations plus every relation of
the head's homonyms (accuracy@1), where most heads' single triple would otherwise decide for it.
"""
from __future__ import annotations

import json
import time
from pathlib import Path


def evaluate(questions: str | Path, kb: str | Path, model: str | Path, limit: int | None = None,
             errors: str | Path | None = None, index: str | Path | None = None, use_gen: bool = True,
             batch_size: int = 16, threads: int | None = None, nlpcc_holdout: float | None = None,
             progress: bool = True) -> dict:
    from tqdm import tqdm

    from wenzhi.qa_service.data import find_mention, holdout_split, homonym_relations, mention_names, read_qa
    from wenzhi.qa_service.metric import kgclue_scores, score_one
    from wenzhi.qa_service.pipeline import PipelineConfig, QAPipeline

    examples = read_qa(questions)
    if nlpcc_holdout:
        _, examples = holdout_split(examples, nlpcc_holdout, seed=0)
    if limit:
        examples = examples[:limit]
    config = PipelineConfig.load(Path(model), use_gen=use_gen, threads=threads)
    started = time.time()
    pipe = QAPipeline(model, kb, config, index=index)
    load_s = time.time() - started
    preds, answers = [], []
    t0 = time.time()
    bar = tqdm(range(0, len(examples), batch_size), desc="evaluate", unit="batch", disable=not progress)
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

    # relation selection on its own
    frequent = [r for r, _ in pipe.store.relation_counts()[:30]]
    sel_q, sel_rels, gold_rel = [], [], []
    for ex in examples:
        own, homonyms = homonym_relations(pipe.store, ex.head)
        rels = list(dict.fromkeys([*frequent, *own, *homonyms, ex.relation]))
        sel_q.append(ex.question)
        sel_rels.append(rels)
        gold_rel.append(ex.relation)
    right = 0
    n_cands = 0
    for i in range(0, len(sel_q), batch_size):
        scores = pipe.relation_scores(sel_q[i : i + batch_size], sel_rels[i : i + batch_size])
        for rels, sc, gold in zip(sel_rels[i : i + batch_size], scores, gold_rel[i : i + batch_size]):
            right += rels[max(range(len(sc)), key=sc.__getitem__)] == gold
            n_cands += len(rels)
    result["relation_selection"] = {"accuracy_at_1": round(right / n, 4),
                                     "mean_candidates": round(n_cands / n, 1)}
    result["seconds"] = {"load": round(load_s, 1), "answer": round(answer_s, 1),
                         "per_question_ms": round(1e3 * answer_s / n, 1)}
    result["config"] = {"model": str(model), "kb": str(kb), "questions": str(questions),
                        "use_gen": pipe.gen is not None, "shared_universal": pipe.shared_universal}
    if errors:
        Path(errors).parent.mkdir(parents=True, exist_ok=True)
        with open(errors, "w", encoding="utf-8") as fh:
            for row in err_rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        result["errors_file"] = str(errors)
    pipe.close()
    return result
