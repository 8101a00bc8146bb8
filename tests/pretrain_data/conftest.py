"""Fixtures for the pretraining-data tests: the real tokenizer, real text slices, a linker over the
KB slice of tests/conftest.py."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tokenizer():
    from wenzhi.model.tokenizer import load_tokenizer

    return load_tokenizer()


@pytest.fixture(scope="session")
def review_lines(data_dir) -> list[str]:
    lines = []
    with open(data_dir / "corpus" / "reviews_pos.txt", encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                lines.append(line.strip())
            if len(lines) >= 300:
                break
    return lines


@pytest.fixture(scope="session")
def people_daily_docs(data_dir):
    from itertools import islice

    from wenzhi.model.corpora import read_people_daily

    return list(islice(read_people_daily(data_dir / "corpus" / "people_daily_1998_pos.txt"), 300))


@pytest.fixture(scope="session")
def linker(kb_store):
    from wenzhi.kg import EntityLinker

    return EntityLinker(kb_store)
