"""KBQA questions: the one reader of the KgCLUE / NLPCC JSON-lines format.

    {"id": ..., "question": "...", "answer": "head ||| relation ||| tail"}

Used by entity-linking evaluation and fitting here in kg, and by fine-tuning and evaluation in
qa_service. Bad lines are an error that names them (with their count): evaluation data must not
be silently shortened.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class QAExample:
    id: str
    question: str
    head: str
    relation: str
    tail: str

    @property
    def answer(self) -> str:
        return f"{self.head} ||| {self.relation} ||| {self.tail}"

    @property
    def triple(self) -> tuple[str, str, str]:
        return self.head, self.relation, self.tail


def read_questions(path: str | Path, limit: int | None = None, skip: int = 0) -> list[QAExample]:
    """The questions of a JSON-lines file, after skipping `skip` and up to `limit` of them."""
    out: list[QAExample] = []
    bad: list[tuple[int, str]] = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                head, relation, tail = (p.strip() for p in row["answer"].split("|||", 2))
                example = QAExample(str(row.get("id", lineno)), row["question"], head, relation, tail)
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                bad.append((lineno, f"{type(exc).__name__}: {exc}"))
                continue
            if skip > 0:
                skip -= 1
                continue
            if limit is None or len(out) < limit:
                out.append(example)
    if bad:
        lines = ", ".join(str(n) for n, _ in bad[:10]) + (" ..." if len(bad) > 10 else "")
        raise ValueError(f"{path}: {len(bad)} lines are not KBQA questions with a 'head ||| relation ||| tail' "
                         f"answer (lines {lines}); line {bad[0][0]}: {bad[0][1]}")
    return out
