"""`wenzhi fit-fusion`: fit the fusion weights of the pipeline on training questions.

The heads are fixed; each question's candidate triples and their evidence (link, NER, SIM, GEN,
GEN's head alone, lexical rule, mention length) are computed once, then a coarse grid search picks the weights that
put the gold answer first most often. Training questions only (the tail of KgCLUE train by default), never dev.
Written by hand: seven weights and a few thousand candidates do not need an optimiser library.
"""
from __future__ import annotations

import itertools
import json
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np


def fit_fusion(model_dir: str | Path, kb: str | Path, questions: str | Path, limit: int = 500,
               skip: int = 0, use_gen: bool = True, threads: int | None = None,
               distractor_relations: tuple[int, ...] = (0,)) -> dict:
    """Weights that answer the most questions right, over every setting in `distractor_relations`
    (each question counted once per setting): with (0, 30) the same weights must hold when only
    the KB's relations compete and when every entity also offers the 30 most frequent ones."""
    from tqdm import tqdm

    from wenzhi.qa_service.data import read_qa
    from wenzhi.qa_service.pipeline import PipelineConfig, QAPipeline

    examples = read_qa(questions, limit=limit, skip=skip)
    # all_evidence: the candidates carry GEN's and the lexical rule's evidence even where the
    # current weights give them 0 (the pipeline skips both there)
    base = PipelineConfig.load(Path(model_dir), use_gen=use_gen, threads=threads, mode="fused", all_evidence=True)
    pipe = QAPipeline(model_dir, kb, base)
    per_q = []
    for k in distractor_relations:
        pipe.reconfigure(distractor_relations=k)
        for i in tqdm(range(0, len(examples), 16), desc=f"fusion features ({k} distractors)", unit="batch"):
            batch = examples[i : i + 16]
            for ex, ans in zip(batch, pipe.answer_batch([e.question for e in batch], top_k=10_000)):
                per_q.append((ex, ans.candidates))
    pipe.close()

    # every candidate's evidence as one row, so a weight setting is a matrix product (fused_score's terms)
    names = ("w_link", "w_ner", "w_sim", "w_gen", "w_gen_head", "w_len", "w_lex")
    rows, gold, starts = [], [], []
    for ex, cands in per_q:
        if not cands:
            continue
        starts.append(len(rows))
        for c in cands:
            mention_chars = (c.mention[1] - c.mention[0]) if c.mention else 0
            rows.append([c.link, c.ner, c.sim if c.sim is not None else 0.0, c.gen, c.gen_head, mention_chars,
                         c.lex, -10.0 if c.sim is None else 0.0])
            gold.append((c.head, c.relation, c.tail) == (ex.head, ex.relation, ex.tail))
    features, gold = np.asarray(rows, dtype=np.float64).reshape(-1, 8), np.asarray(gold, dtype=bool)
    group = np.repeat(np.arange(len(starts)), np.diff([*starts, len(rows)]))

    def accuracy(cfg) -> float:
        if not len(starts):
            return 0.0
        scores = features @ np.asarray([*(getattr(cfg, k) for k in names), 1.0])
        best = np.maximum.reduceat(scores, starts)
        first_best = np.full(len(starts), len(rows))  # the first candidate reaching its group's best
        at_best = np.flatnonzero(scores == best[group])
        np.minimum.at(first_best, group[at_best], at_best)
        return float(gold[first_best].sum()) / max(1, len(per_q))

    grid = {"w_link": [0.5, 1.0, 2.0], "w_ner": [0.0, 1.0, 2.0], "w_sim": [0.5, 1.0, 2.0],
            "w_len": [0.0, 0.25, 0.5, 1.0], "w_lex": [0.0, 1.0, 2.0],
            "w_gen": [0.0, 1.0, 2.0, 4.0, 8.0] if pipe.gen is not None else [0.0],
            "w_gen_head": [0.0, 1.0, 2.0, 4.0, 8.0] if pipe.gen is not None else [0.0]}
    before = accuracy(base)
    best_cfg, best_acc = base, before
    for values in itertools.product(*grid.values()):
        cfg = replace(base, **dict(zip(grid, values)))
        acc = accuracy(cfg)
        if acc > best_acc + 1e-9:
            best_cfg, best_acc = cfg, acc
    weights = {k: getattr(best_cfg, k) for k in grid}
    # the answering weights only: mode, distractors, threads are choices of whoever runs it
    saved = {k: v for k, v in asdict(best_cfg).items()
             if k not in ("threads", "use_gen", "mode", "distractor_relations", "gen_memo", "all_evidence")}
    path = Path(model_dir) / "pipeline.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(saved, indent=1), encoding="utf-8")
    tmp.replace(path)
    return {"questions": len(examples), "distractor_relations": list(distractor_relations),
            "accuracy_before": round(before, 4), "accuracy_after": round(best_acc, 4),
            "weights": weights, "saved": str(path)}
