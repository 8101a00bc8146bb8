"""Fixtures of the kg tests."""
from __future__ import annotations

import pytest


@pytest.fixture
def store_of(tmp_path):
    """store_of(lines): a TripleStore imported from these head<TAB>relation<TAB>tail lines."""
    from wenzhi.kg import TripleStore

    def make(lines: list[str], name: str = "kb") -> TripleStore:
        src = tmp_path / f"{name}.txt"
        src.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
        db = tmp_path / f"{name}.sqlite"
        TripleStore.import_files([src], db)
        return TripleStore(db)

    return make
