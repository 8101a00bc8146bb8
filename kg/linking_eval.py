"""Entity-linking accuracy on KBQA questions: does the linker find each question's subject?

Questions are KgCLUE/NLPCC JSON lines (kg/questions.py); the gold entity is the head of the
answer triple `head ||| relation ||| tail`. The prediction is `EntityLinker.rank(question)`.
"""
from __future__ import annotations

import time

from wenzhi.kg.linker import EntityLinker
from wenzhi.kg.questions import QAExample


def resolve_gold(store, q: QAExample):
    """The KB entity a question is about: its answer's head, or (NLPCC, whose answers drop the
    KB's disambiguation) the homonym of that head holding the answer's relation and tail."""
    exact = store.entity_by_name(q.head)
    if exact is not None:
        return exact
    _, relation, tail = q.triple
    for e in store.entities_by_base(q.head):
        if any(t.tail == tail for t in store.triples(e.id, relation)):
            return e
    return None


def evaluate_linking(linker: EntityLinker, questions: list[QAExample], k: int = 5,
                     progress: bool = False, errors: int = 0) -> dict:
    """accuracy@1 and recall@k of the topic entity; `errors` > 0 keeps that many misses."""
    from tqdm import tqdm

    n = hit1 = hitk = found = in_kb = resolved = 0
    misses = []
    start = time.perf_counter()
    for q in tqdm(questions, desc="eval-linking", disable=not progress):
        n += 1
        gold_entity = resolve_gold(linker.store, q)
        in_kb += gold_entity is not None
        resolved += gold_entity is not None and gold_entity.name != q.head
        gold = gold_entity.name if gold_entity else q.head
        ranked = linker.rank(q.question, k=k)
        names = [e.name for e, _, _ in ranked]
        if gold_entity is not None and gold_entity.id in linker.candidate_ids(q.question):
            found += 1
        if names and names[0] == gold:
            hit1 += 1
        elif len(misses) < errors:
            misses.append({"question": q.question, "gold": gold, "predicted": names[:3]})
        hitk += gold in names
    seconds = time.perf_counter() - start
    out = {
        "n": n,
        "accuracy_at_1": round(hit1 / n, 4) if n else 0.0,
        f"recall_at_{k}": round(hitk / n, 4) if n else 0.0,
        "gold_in_kb": round(in_kb / n, 4) if n else 0.0,
        "gold_resolved_by_triple": resolved,  # answer head lacked the KB's disambiguation
        "accuracy_at_1_gold_in_kb": round(hit1 / in_kb, 4) if in_kb else 0.0,
        # the gold entity is among the candidates of some alias occurrence in the question
        "mention_found": round(found / n, 4) if n else 0.0,
        "seconds": round(seconds, 2),
        "questions_per_s": round(n / seconds, 1) if seconds else None,
        "context": linker.config.context,
    }
    if errors:
        out["misses"] = misses
    return out
