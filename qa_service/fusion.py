"""`wenzhi fit-fusion`: fit the fusion weights of the pipeline on training questions.

The heads are fixed; each question's candidate triples and their evidence (link, NER, SIM, GEN,
GEN's head alone, lexical rule, mention length) are computed once (`collect_evidence`), then a
coarse grid is searched (`choose_weights`). Training questions only (the tail of KgCLUE train by
default), never dev. Written by hand: seven weights and a few thousand candidates do not need an
optimiser library, and the choice rule below is this project's own.

How a weight setting is chosen, so that the choice does not flip between re-trainings of the same
heads (nondeterministic two-thread training moves the best grid point by a question or two):
1. pipeline weights (link, NER, SIM, mention length, lexical rule; GEN 0) — among the settings
   whose number of right answers is within one standard error of the best one's (a paired,
   McNemar-style error: sqrt of the questions the two settings answer differently), the simplest:
   fewest evidence terms, then the most right answers, then the smallest weights;
2. GEN on top of those weights (decoding it costs ~20 ms of CPU per question, 20x the rest of
   the pipeline): the best (w_gen, w_gen_head) is taken only if it answers more questions
   right than the pipeline weights alone by more than two standard errors, by at least one
   question in 200, AND on each half of the fit questions (odd and even positions); otherwise
   GEN's weights stay 0.
"pipeline" mode (`wenzhi evaluate --mode pipeline`) then answers with exactly step 1's weights,
and "fused" adds GEN to them only where it won: fused ≥ pipeline is what the fit itself tested.
"""
from __future__ import annotations

import itertools
import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

# the columns of `Evidence.features`, in fused_score's terms (the last column is the constant -10
# for a candidate without a SIM score, weighted 1)
WEIGHTS = ("w_link", "w_ner", "w_sim", "w_gen", "w_gen_head", "w_len", "w_lex")
PIPELINE_GRID = {"w_link": (0.5, 1.0, 2.0), "w_ner": (0.0, 1.0, 2.0), "w_sim": (0.5, 1.0, 2.0),
                 "w_len": (0.0, 0.25, 0.5, 1.0), "w_lex": (0.0, 1.0, 2.0)}
GEN_GRID = {"w_gen": (0.0, 1.0, 2.0, 4.0, 8.0), "w_gen_head": (0.0, 1.0, 2.0, 4.0, 8.0)}
OPTIONAL = ("w_ner", "w_len", "w_lex")  # terms a setting may leave out (0): fewer is simpler
# GEN must win by more than two standard errors (a one-sided test at about 2%) and by at least one
# question in 200: decoding it for every question multiplies the answering CPU by ~20, and by ~3-5
# even where the pipeline decodes it only for close questions (bench/RESULTS.md, issue 12 and h12d),
# so a gain that small is not worth serving. With one standard error and no floor the demo's heads
# (GEN +0.1-0.3% on most samples of train questions) had GEN on for some samples and off for others.
GEN_MARGIN_SE, GEN_MIN_GAIN = 2.0, 0.005


@dataclass
class Evidence:
    """Every candidate triple of every fit question as one row, so a weight setting is a matrix product."""
    features: np.ndarray  # float64 [candidates, 8]: link, ner, sim, gen, gen_head, mention chars, lex, no-SIM
    gold: np.ndarray  # bool [candidates]: the question's gold triple
    starts: np.ndarray  # int [questions with candidates]: each one's first row
    question: np.ndarray  # int [questions with candidates]: its position among all fit questions (a setting
    # counts each question once per distractor setting)
    n_questions: int  # fit questions x distractor settings (one without candidates is wrong under any weights)

    def right(self, weights: dict) -> np.ndarray:
        """bool [questions with candidates]: the first best-scoring candidate is the gold one."""
        if not len(self.starts):
            return np.zeros(0, dtype=bool)
        scores = self.features @ np.asarray([*(float(weights.get(k, 0.0)) for k in WEIGHTS), 1.0])
        if getattr(self, "_group", None) is None or len(self._group) != len(scores):
            self._group = np.repeat(np.arange(len(self.starts)), np.diff(np.r_[self.starts, len(scores)]))
        at_best = np.flatnonzero(scores == np.maximum.reduceat(scores, self.starts)[self._group])
        # the first candidate reaching its question's best score (the pipeline's sort is stable)
        _, first = np.unique(self._group[at_best], return_index=True)
        return self.gold[at_best[first]]

    def subset(self, keep: np.ndarray) -> "Evidence":
        """The evidence of the fit questions whose position `keep` (bool, one per question) marks,
        renumbered in order (so its halves are again odd and even positions)."""
        keep = np.asarray(keep, dtype=bool)
        chosen = np.flatnonzero(keep[self.question])
        ends = np.r_[self.starts[1:], len(self.gold)]
        sizes = (ends - self.starts)[chosen]
        rows = np.concatenate([np.arange(self.starts[i], ends[i]) for i in chosen]) if len(chosen) else np.zeros(0, int)
        settings = self.n_questions // max(1, len(keep))
        return Evidence(self.features[rows], self.gold[rows], np.r_[0, np.cumsum(sizes)[:-1]].astype(np.int64),
                        (np.cumsum(keep) - 1)[self.question[chosen]], int(keep.sum()) * settings)

    def save(self, path: str | Path) -> None:
        np.savez(path, features=self.features, gold=self.gold, starts=self.starts, question=self.question,
                 n_questions=np.asarray(self.n_questions))

    @classmethod
    def load(cls, path: str | Path) -> "Evidence":
        with np.load(path, allow_pickle=False) as z:
            return cls(z["features"], z["gold"], z["starts"], z["question"], int(z["n_questions"]))


def paired_se(a: np.ndarray, b: np.ndarray) -> float:
    """Standard error of the difference in right answers between two settings on the same questions:
    sqrt of the questions exactly one of them gets right (McNemar); at least 1."""
    return max(1.0, math.sqrt(float(np.count_nonzero(a != b))))


def choose_weights(evidence: Evidence, use_gen: bool = True, margin_se: float = GEN_MARGIN_SE,
                   min_gain: float = GEN_MIN_GAIN) -> dict:
    """The weights by the rule in this module's docstring, with what decided them."""
    settings = [dict(zip(PIPELINE_GRID, v)) for v in itertools.product(*PIPELINE_GRID.values())]
    right = [evidence.right(s) for s in settings]
    counts = np.asarray([r.sum() for r in right])
    best = int(counts.argmax())
    within = [i for i in range(len(settings)) if counts[best] - counts[i] <= paired_se(right[i], right[best])]
    simplest = min(within, key=lambda i: (sum(settings[i][k] != 0 for k in OPTIONAL), -counts[i],
                                          tuple(settings[i].values())))
    chosen = {**settings[simplest], "w_gen": 0.0, "w_gen_head": 0.0}
    report = {"pipeline_best_right": int(counts[best]), "pipeline_chosen_right": int(counts[simplest]),
              "pipeline_within_one_se": len(within)}
    if use_gen:
        base = right[simplest]
        halves = [evidence.question % 2 == 0, evidence.question % 2 == 1]
        gen_settings = [dict(zip(GEN_GRID, v)) for v in itertools.product(*GEN_GRID.values()) if any(v)]
        gen_right = [evidence.right({**chosen, **g}) for g in gen_settings]
        # most right answers; ties to the smaller GEN weights (the settings are in increasing order)
        g = max(range(len(gen_settings)), key=lambda i: (gen_right[i].sum(), -i))
        gain = int(gen_right[g].sum()) - int(base.sum())
        se = paired_se(gen_right[g], base)
        half_gains = [int(gen_right[g][h].sum()) - int(base[h].sum()) for h in halves]
        accepted = (gain > margin_se * se and gain >= min_gain * evidence.n_questions
                    and all(x > 0 for x in half_gains))
        if accepted:
            chosen.update(gen_settings[g])
        report.update({"gen_candidate": gen_settings[g], "gen_gain": gain, "gen_gain_se": round(se, 2),
                       "gen_half_gains": half_gains, "gen_accepted": accepted})
    report["right"] = int(evidence.right(chosen).sum())
    return {"weights": chosen, "report": report}


def collect_evidence(model_dir: str | Path, kb: str | Path, questions: str | Path, limit: int = 500,
                     skip: int = 0, use_gen: bool = True, threads: int | None = None,
                     distractor_relations: tuple[int, ...] = (0,)) -> Evidence:
    """Every candidate's evidence for the fit questions, once per setting in `distractor_relations`
    (with (0, 30) the same weights must hold when only the KB's relations compete and when every
    entity also offers the 30 most frequent ones)."""
    from tqdm import tqdm

    from wenzhi.qa_service.data import read_qa
    from wenzhi.qa_service.pipeline import PipelineConfig, QAPipeline

    examples = read_qa(questions, limit=limit, skip=skip)
    # all_evidence: the candidates carry GEN's and the lexical rule's evidence even where the
    # current weights give them 0 (the pipeline skips both there)
    config = PipelineConfig.load(Path(model_dir), use_gen=use_gen, threads=threads, mode="fused", all_evidence=True)
    pipe = QAPipeline(model_dir, kb, config)
    rows, gold, starts, position = [], [], [], []
    try:
        for k in distractor_relations:
            pipe.reconfigure(distractor_relations=k)
            for i in tqdm(range(0, len(examples), 16), desc=f"fusion features ({k} distractors)", unit="batch"):
                batch = examples[i : i + 16]
                for j, (ex, ans) in enumerate(zip(batch, pipe.answer_batch([e.question for e in batch],
                                                                            top_k=10_000))):
                    if not ans.candidates:
                        continue
                    starts.append(len(rows))
                    position.append(i + j)
                    for c in ans.candidates:
                        mention_chars = (c.mention[1] - c.mention[0]) if c.mention else 0
                        rows.append([c.link, c.ner, c.sim if c.sim is not None else 0.0, c.gen, c.gen_head,
                                     mention_chars, c.lex, -10.0 if c.sim is None else 0.0])
                        gold.append((c.head, c.relation, c.tail) == (ex.head, ex.relation, ex.tail))
    finally:
        pipe.close()
    return Evidence(np.asarray(rows, dtype=np.float64).reshape(-1, 8), np.asarray(gold, dtype=bool),
                    np.asarray(starts, dtype=np.int64), np.asarray(position, dtype=np.int64),
                    len(examples) * len(distractor_relations))


def fit_fusion(model_dir: str | Path, kb: str | Path, questions: str | Path, limit: int = 500,
               skip: int = 0, use_gen: bool = True, threads: int | None = None,
               distractor_relations: tuple[int, ...] = (0,), evidence_out: str | Path | None = None,
               evidence_in: str | Path | None = None) -> dict:
    """Collect the evidence (or read it from `evidence_in`), choose the weights, write them into the
    model folder's pipeline.json."""
    from wenzhi.qa_service.pipeline import PipelineConfig

    if evidence_in is not None:
        evidence = Evidence.load(evidence_in)
    else:
        evidence = collect_evidence(model_dir, kb, questions, limit, skip, use_gen, threads, distractor_relations)
    if evidence_out is not None:
        evidence.save(evidence_out)
    has_gen = bool(np.any(evidence.features[:, 3:5]))
    base = PipelineConfig.load(Path(model_dir))
    before = evidence.right({k: getattr(base, k) for k in WEIGHTS}).sum()
    choice = choose_weights(evidence, use_gen=use_gen and has_gen)
    best = replace(base, **choice["weights"])
    # the answering weights only: mode, distractors, threads are choices of whoever runs it
    saved = {k: v for k, v in asdict(best).items()
             if k not in ("threads", "use_gen", "mode", "distractor_relations", "gen_memo", "gen_cascade",
                          "all_evidence")}
    path = Path(model_dir) / "pipeline.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(saved, indent=1), encoding="utf-8")
    tmp.replace(path)
    n = max(1, evidence.n_questions)
    return {"questions_times_settings": evidence.n_questions,
            "accuracy_before": round(float(before) / n, 4), "accuracy_after": round(choice["report"]["right"] / n, 4),
            "weights": choice["weights"], "decision": choice["report"], "saved": str(path)}
