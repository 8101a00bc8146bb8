"""`wenzhi finetune fusion`: fit the fusion weights of the pipeline on training questions.

The heads are fixed; each question's candidate triples and their evidence (link, NER, SIM, GEN,
mention length) are computed once, then a coarse grid search picks the weights that put the gold
answer first most often. Training questions only (the tail of KgCLUE train by default), never dev.
Written by hand: five weights and a few thousand candidates do not need an optimiser library.
"""
from __future__ import annotations

import itertools
import json
from dataclasses import asdict, replace
from pathlib import Path


def fit_fusion(model_dir: str | Path, kb: str | Path, questions: str | Path, limit: int = 500,
               skip: int = 0, use_gen: bool = True, threads: int | None = None) -> dict:
    from tqdm import tqdm

    from wenzhi.qa_service.data import read_qa
    from wenzhi.qa_service.pipeline import PipelineConfig, QAPipeline, fused_score

    examples = read_qa(questions, limit=limit, skip=skip)
    base = PipelineConfig.load(Path(model_dir), use_gen=use_gen, threads=threads)
    pipe = QAPipeline(model_dir, kb, base)
    per_q = []
    for i in tqdm(range(0, len(examples), 16), desc="fusion features", unit="batch"):
        batch = examples[i : i + 16]
        for ex, ans in zip(batch, pipe.answer_batch([e.question for e in batch], top_k=10_000)):
            per_q.append((ex, ans.candidates))
    pipe.close()

    def accuracy(cfg) -> float:
        right = 0
        for ex, cands in per_q:
            if cands:
                best = max(cands, key=lambda c: fused_score(c, cfg))
                right += (best.head, best.relation, best.tail) == (ex.head, ex.relation, ex.tail)
        return right / max(1, len(per_q))

    grid = {"w_link": [0.5, 1.0, 2.0], "w_ner": [0.0, 1.0, 2.0], "w_sim": [0.5, 1.0, 2.0],
            "w_len": [0.0, 0.25, 0.5, 1.0], "w_gen": [0.0, 1.0, 2.0, 4.0] if pipe.gen is not None else [base.w_gen]}
    before = accuracy(base)
    best_cfg, best_acc = base, before
    for values in itertools.product(*grid.values()):
        cfg = replace(base, **dict(zip(grid, values)))
        acc = accuracy(cfg)
        if acc > best_acc + 1e-9:
            best_cfg, best_acc = cfg, acc
    weights = {k: getattr(best_cfg, k) for k in grid}
    saved = {k: v for k, v in asdict(best_cfg).items() if k not in ("threads", "use_gen")}
    path = Path(model_dir) / "pipeline.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(saved, indent=1), encoding="utf-8")
    tmp.replace(path)
    return {"questions": len(per_q), "accuracy_before": round(before, 4), "accuracy_after": round(best_acc, 4),
            "weights": weights, "saved": str(path)}
