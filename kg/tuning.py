"""Fit the linker's feature weights on KBQA questions (`wenzhi kg fit-linker`).

Each question is one softmax over all its candidates (every candidate of every alias
occurrence, as `EntityLinker.rank` sees them); the gold head is the target. Questions whose
gold entity is not among the candidates teach nothing and are skipped.
"""
from __future__ import annotations

from wenzhi.kg.linker import FEATURES, EntityLinker
from wenzhi.kg.questions import QAExample

# Not fitted (held at 0): in the merged KB here, KgCLUE/NLPCC subjects were added from the
# questions' own gold triples, so "few triples" would predict "is the gold subject" -- an
# artefact of how the KB was built, which would hurt on the full KgCLUE KB.
FROZEN = ("log_triples",)


def fit_weights(linker: EntityLinker, questions: list[QAExample], epochs: int = 300, l2: float = 1e-3,
                progress: bool = False) -> tuple[tuple[float, ...], dict]:
    import torch
    from tqdm import tqdm

    groups = []
    for q in tqdm(questions, desc="features", disable=not progress):
        gold = linker.store.entity_by_name(q.head)
        if gold is None:
            continue
        rows = linker.feature_rows(q.question)
        labels = [i for i, (eid, _) in enumerate(rows) if eid == gold.id]
        if labels:
            groups.append((torch.tensor([f for _, f in rows], dtype=torch.float32), labels[0]))
    # One padded batch: questions x candidates x features, padding masked out of the softmax.
    width = max(x.shape[0] for x, _ in groups)
    feats = torch.zeros(len(groups), width, len(FEATURES))
    mask = torch.full((len(groups), width), float("-inf"))
    target = torch.tensor([y for _, y in groups])
    for i, (x, _) in enumerate(groups):
        feats[i, : x.shape[0]] = x
        mask[i, : x.shape[0]] = 0.0
    weights = torch.zeros(len(FEATURES), requires_grad=True)  # independent of the current weights
    opt = torch.optim.LBFGS([weights], max_iter=epochs, line_search_fn="strong_wolfe")

    keep = torch.tensor([0.0 if f in FROZEN else 1.0 for f in FEATURES])

    def closure():
        opt.zero_grad()
        logits = feats @ (weights * keep) + mask
        loss = torch.nn.functional.cross_entropy(logits, target) + l2 * (weights**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        weights = weights * keep
        loss = torch.nn.functional.cross_entropy(feats @ weights + mask, target)
        acc = ((feats @ weights + mask).argmax(1) == target).float().mean().item()
    fitted = tuple(round(w, 3) for w in weights.tolist())
    return fitted, {"questions_used": len(groups), "train_cross_entropy": round(float(loss), 4),
                    "train_accuracy_at_1": round(acc, 4), "weights": dict(zip(FEATURES, fitted))}
