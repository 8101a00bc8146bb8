"""The SIM head's relation prior: how often people ask for a relation when it is on offer, counted on
the training questions.

    log_prior(r) = log((asked(r) + alpha·p0) / (offered(r) + alpha))       p0 = 1 / mean candidates

`offered(r)` counts the training questions whose candidate set holds `r`, with candidate sets built as
the system builds them when it answers (the gold head's relations, its homonyms', and the KB's most
frequent relations, which `wenzhi evaluate`'s relation selection and `--distractor-relations` offer
every entity); `asked(r)` counts those where `r` is the gold relation. A relation never seen in
training gets log p0, the rate of a candidate drawn blindly. The head's logit is the relation-matching
score plus `weight · log_prior` (qa_service/relation_states.py's table adds it to each relation's row).

Why it is legitimate: it is learned from the training questions only (which relations people ask
about, relative to how often the candidate generator offers them); it reads nothing of the question
being answered nor of its head's triples (not whether a relation has a tail for that head), and the
KB's relation counts enter only as the candidate generator uses them (the frequent relations it offers). `性别`, `中文名` or `地址` are
offered for nearly every question and asked for in a few; a relation-matching head that sees their
characters in a question (`他是做什么的` → 性别?) needs that base rate, which a softmax over names
learns only slowly. On the train hold-outs (bench/RESULTS.md, issue 12, h12c) it takes the head's
relation selection from 0.978 to 0.996 (KgCLUE) and 0.958 to 0.992 (NLPCC).
Hand-written: a smoothed ratio of two counters, saved as JSON beside the head (nothing that runs code
when loaded).
"""
from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

FILE = "relation_prior.json"


@dataclass
class RelationPrior:
    asked: dict[str, int] = field(default_factory=dict)
    offered: dict[str, int] = field(default_factory=dict)
    questions: int = 0
    mean_candidates: float = 1.0
    alpha: float = 10.0  # pseudo-offers at the blind rate p0: a relation offered rarely stays near it
    weight: float = 1.0  # of log_prior in the SIM logit (chosen on the train hold-outs: 0.25-2 all help)

    @classmethod
    def fit(cls, examples: Iterable, store, frequent: int = 30, **kwargs) -> "RelationPrior":
        """Counts over training `examples` (QAExample: head, relation) against `store`'s candidates."""
        from wenzhi.qa_service.data import frequent_relations, selection_candidates

        top = frequent_relations(store, frequent)
        asked, offered = Counter(), Counter()
        n = total = 0
        for ex in examples:
            candidates, _ = selection_candidates(store, ex, top)
            offered.update(candidates)
            asked[ex.relation] += 1
            n += 1
            total += len(candidates)
        return cls(dict(asked), dict(offered), n, total / max(n, 1), **kwargs)

    def log_prior(self, relations: Sequence[str]) -> list[float]:
        p0 = 1.0 / max(self.mean_candidates, 1.0)
        return [math.log((self.asked.get(r, 0) + self.alpha * p0) / (self.offered.get(r, 0) + self.alpha))
                for r in relations]

    def bias(self, relations: Sequence[str]) -> list[float]:
        """What the prior adds to each relation's SIM logit."""
        return [self.weight * x for x in self.log_prior(relations)]

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / FILE
        path.write_text(json.dumps({"questions": self.questions, "mean_candidates": self.mean_candidates,
                                    "alpha": self.alpha, "weight": self.weight, "asked": self.asked,
                                    "offered": self.offered}, ensure_ascii=False), encoding="utf-8")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> "RelationPrior | None":
        """The prior saved beside a SIM head, or None (heads fine-tuned before it existed)."""
        path = Path(directory) / FILE
        if not path.exists():
            return None
        raw = json.loads(path.read_text(encoding="utf-8"))
        try:
            prior = cls(asked={str(k): int(v) for k, v in raw["asked"].items()},
                        offered={str(k): int(v) for k, v in raw["offered"].items()},
                        questions=int(raw["questions"]), mean_candidates=float(raw["mean_candidates"]),
                        alpha=float(raw["alpha"]), weight=float(raw["weight"]))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"{path}: not a relation prior ({e})") from e
        bad = [r for r, n in prior.asked.items() if n < 0 or n > prior.offered.get(r, 0)]
        if bad or any(n < 0 for n in prior.offered.values()) or not (prior.alpha > 0 and prior.mean_candidates >= 1):
            raise ValueError(f"{path}: not a relation prior (counts must satisfy 0 <= asked <= offered, "
                             f"alpha > 0, mean_candidates >= 1; {len(bad)} relations do not)")
        return prior


def main(argv: list[str] | None = None) -> int:
    """Fit the prior of an already fine-tuned SIM head (`wenzhi finetune sim` fits it itself)."""
    import argparse

    from wenzhi.kg import TripleStore

    from wenzhi.qa_service.data import read_qa

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--sim", required=True, type=Path, help="the SIM head's folder (the prior is written there)")
    p.add_argument("--kb", required=True, type=Path)
    p.add_argument("--questions", required=True, nargs="+", type=Path, help="the head's TRAINING questions")
    p.add_argument("--weight", type=float, default=RelationPrior.weight)
    args = p.parse_args(argv)
    store = TripleStore(args.kb)
    examples = [ex for path in args.questions for ex in read_qa(path)]
    prior = RelationPrior.fit(examples, store, weight=args.weight)
    store.close()
    print(json.dumps({"prior": str(prior.save(args.sim)), "questions": prior.questions,
                      "relations_asked": len(prior.asked), "mean_candidates": round(prior.mean_candidates, 1)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
