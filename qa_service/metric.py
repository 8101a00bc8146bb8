"""KgCLUE's answer metric, exactly as its baselines/evaluate_f1_em.py computes it.

Per field S, P, O and for All (S+P+O concatenated): EM after normalisation (lowercase, runs of
whitespace collapsed to one space, ends stripped), and "F1" = 2·LCS(pred, gold) / (len(pred) +
len(gold)) with LCS the longest common *subsequence*; two empty strings score 0, as there.
Score = 0.5·EM_O + 0.5·F1_O, all figures in percent. A missing prediction counts as three empty
fields (the reference script would crash on it; an unanswered question must still cost points).
"""
from __future__ import annotations

from collections.abc import Sequence

FIELDS = ("s", "p", "o", "all")


def normalize(text: str) -> str:
    return " ".join(text.lower().split())


def lcs_length(a: str, b: str) -> int:
    # Hand-written: the reference uses the C extension pylcs for this one DP; the strings here
    # are answer fields (tens of characters), so an O(len(a)·len(b)) row DP is cheap enough
    # and spares a compiled dependency.
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for ca in a:
        cur = [0]
        for j, cb in enumerate(b):
            cur.append(prev[j] + 1 if ca == cb else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def f1_sim(a: str, b: str) -> float:
    if not a and not b:
        return 0.0
    return 2.0 * lcs_length(a, b) / (len(a) + len(b))


def split_answer(answer: str | None) -> tuple[str, str, str]:
    """`head ||| relation ||| tail` -> normalised (S, P, O); anything missing is ''."""
    parts = (answer or "").split(" ||| ")
    if len(parts) > 3:  # a tail that itself contains the separator stays whole
        parts = [parts[0], parts[1], " ||| ".join(parts[2:])]
    parts += [""] * (3 - len(parts))
    return tuple(normalize(p) for p in parts)  # type: ignore[return-value]


def score_one(pred: str | None, gold: str) -> dict[str, float]:
    """EM and F1 (0..1) of one prediction on each field."""
    ps, pp, po = split_answer(pred)
    gs, gp, go = split_answer(gold)
    return {
        "em_s": float(ps == gs),
        "em_p": float(pp == gp),
        "em_o": float(po == go),
        "em_all": float((ps, pp, po) == (gs, gp, go)),
        "f1_s": f1_sim(ps, gs),
        "f1_p": f1_sim(pp, gp),
        "f1_o": f1_sim(po, go),
        "f1_all": f1_sim(ps + pp + po, gs + gp + go),
    }


def kgclue_scores(preds: Sequence[str | None], golds: Sequence[str]) -> dict[str, float]:
    """Corpus figures in percent (rounded to 3 places like the reference), with `score`."""
    if len(preds) != len(golds):
        raise ValueError(f"{len(preds)} predictions for {len(golds)} gold answers")
    if not golds:
        raise ValueError("no gold answers to score")
    totals: dict[str, float] = {}
    for pred, gold in zip(preds, golds):
        for key, value in score_one(pred, gold).items():
            totals[key] = totals.get(key, 0.0) + value
    out = {key: 100.0 * value / len(golds) for key, value in totals.items()}
    out["score"] = 0.5 * out["em_o"] + 0.5 * out["f1_o"]
    return {key: round(value, 3) for key, value in out.items()}
