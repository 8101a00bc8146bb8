"""What every retriever (tantivy, a search cluster, faiss, hybrid) accepts and returns."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Protocol, runtime_checkable

from .documents import Document

#: filters: {"kind": "entity"} or {"kind": ["entity", "triple"]}; only these keys are understood.
FILTER_KEYS = ("kind",)


@dataclass
class Hit:
    id: str
    score: float
    kind: str
    fields: dict[str, Any] = field(default_factory=dict)  # title, text, aliases and the kind's own fields


@runtime_checkable
class Retriever(Protocol):
    def index(self, docs: Iterable[Document]) -> int:
        """Add documents (a stream; never held in memory all at once); returns how many."""

    def search(self, query: str, k: int = 10, filters: Mapping[str, Any] | None = None) -> list[Hit]:
        """The k best hits, best first. Raises analysis.QueryError for an empty query."""


def filter_kinds(filters: Mapping[str, Any] | None) -> list[str] | None:
    """The kinds a filter allows (None = all), rejecting keys no backend understands."""
    if not filters:
        return None
    unknown = set(filters) - set(FILTER_KEYS)
    if unknown:
        raise ValueError(f"unknown filter keys {sorted(unknown)}; supported: {list(FILTER_KEYS)}")
    kinds = filters.get("kind")
    if kinds is None:
        return None
    return [kinds] if isinstance(kinds, str) else list(kinds)
