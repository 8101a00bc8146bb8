"""The lexical relation rule: the no-learning baseline that the SIM head must beat.

A relation's score is the longest common substring between the question (with the entity's
mention removed, so the name cannot match the relation) and the relation name, relative to the
relation's length; ties go to the longer absolute match, then to the earlier candidate. On KgCLUE
dev with `wenzhi evaluate`'s relation-selection candidates it picks the gold relation 0.82 of the
time (issue 12), so a learned head scoring less has learned nothing a string match does not know.
`difflib.SequenceMatcher.find_longest_match` does the matching.
"""
from __future__ import annotations

from collections.abc import Sequence
from difflib import SequenceMatcher


def strip_mention(question: str, mention: str | tuple[int, int] | None) -> str:
    """The question without its entity mention: a span (start, end), or the first occurrence of a
    name (the gold head's base name in evaluation); unchanged when the name does not occur."""
    if mention is None:
        return question
    if isinstance(mention, tuple):
        s, e = mention
        return question[:s] + " " + question[e:]
    i = question.find(mention) if mention else -1
    return question if i < 0 else question[:i] + " " + question[i + len(mention):]


def longest_common_substring(a: str, b: str) -> int:
    if not a or not b:
        return 0
    return SequenceMatcher(None, a, b, autojunk=False).find_longest_match(0, len(a), 0, len(b)).size


def lexical_score(text: str, relation: str) -> float:
    """Share of the relation name covered by its longest run in `text` (0..1), plus a tie-breaker
    of 1e-3 per matched character."""
    rel = relation.strip().lower()
    if not rel:
        return 0.0
    n = longest_common_substring(text.lower(), rel)
    return n / len(rel) + 1e-3 * n


def lexical_scores(question: str, relations: Sequence[str], mention=None) -> list[float]:
    text = strip_mention(question, mention)
    return [lexical_score(text, r) for r in relations]
