"""Shared fixtures: real data slices, built once per test session.

Slow and GPU checks are skipped visibly (reason shown by `pytest -rs`) unless asked for:
`WENZHI_SLOW=1` runs slow ones; GPU ones run where CUDA is there.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from wenzhi.kg.datadir import data_dir as _configured_data_dir
from wenzhi.kg.questions import QAExample, read_questions


def pytest_collection_modifyitems(config, items):
    run_slow = os.environ.get("WENZHI_SLOW") == "1"
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:  # pragma: no cover - torch is a hard dependency
        has_gpu = False
    es_url = os.environ.get("WENZHI_ES_URL")
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(pytest.mark.skip(reason="slow: set WENZHI_SLOW=1 to run"))
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(pytest.mark.skip(reason="gpu: no CUDA device here"))
        if "cluster" in item.keywords and not es_url:
            item.add_marker(pytest.mark.skip(reason="cluster: set WENZHI_ES_URL to a cluster"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    root = _configured_data_dir()
    if not (root / "kb" / "knowledge.txt").exists():
        pytest.fail(f"shared data not found at {root}: set WENZHI_DATA (see README.md)")
    return root


@pytest.fixture(scope="session")
def kgclue_dev(data_dir) -> list[QAExample]:
    return read_questions(data_dir / "kgclue" / "dev.json")


@pytest.fixture(scope="session")
def kb_slice_path(data_dir, tmp_path_factory) -> Path:
    """A real slice of the merged KB: every triple of the gold heads of the first 300 KgCLUE dev,
    300 KgCLUE train and 200 NLPCC questions, every triple of their homonyms (same base name),
    and the KB's first 5,000 lines. Small enough to import in a second, real enough to
    hold homonyms, aliases, descriptions and many-relation entities."""
    from wenzhi.kg import parse_name

    heads: set[str] = set()
    for rel, n in (("kgclue/dev.json", 300), ("kgclue/train.json", 300), ("nlpcc2016/train.json", 200)):
        for q in read_questions(data_dir / rel, n):
            heads.add(q.head)
    bases = {parse_name(h)[0] for h in heads}
    out = tmp_path_factory.mktemp("kb") / "knowledge_slice.txt"
    with open(data_dir / "kb" / "knowledge.txt", encoding="utf-8") as src, open(out, "w", encoding="utf-8") as dst:
        for i, line in enumerate(src):
            head = line.split("\t", 1)[0]
            if i < 5000 or head in heads or parse_name(head)[0] in bases:
                dst.write(line)
    return out


@pytest.fixture(scope="session")
def kb_db(kb_slice_path, tmp_path_factory) -> Path:
    """The KB slice imported into a TripleStore file."""
    from wenzhi.kg import TripleStore

    db = tmp_path_factory.mktemp("store") / "kb.sqlite"
    TripleStore.import_files([kb_slice_path], db)
    return db


@pytest.fixture(scope="session")
def kb_store(kb_db):
    from wenzhi.kg import TripleStore

    store = TripleStore(kb_db)
    yield store
    store.close()


@pytest.fixture(scope="session")
def opensearch_url():
    """osmem-server (in-memory OpenSearch API) on 127.0.0.1, a free port, stopped at the end."""
    from opensearchpy import OpenSearch
    from osmem_server import OsmemServer

    server = OsmemServer.start(japanese=False, addr="127.0.0.1:0")
    try:
        client = OpenSearch(hosts=[server.url])
        deadline = time.monotonic() + 30
        while not client.ping():
            if time.monotonic() > deadline:
                pytest.fail(f"osmem-server at {server.url} did not answer within 30 s")
            time.sleep(0.1)
        yield server.url
    finally:
        server.close()


@pytest.fixture(scope="session")
def secured_cluster(opensearch_url, tmp_path_factory):
    """osmem-server behind TLS and a login (tests/search_gateway.py): (gateway, CA bundle)."""
    from search_gateway import CLUSTER_API_KEY, CLUSTER_PASSWORD, CLUSTER_USER, SearchGateway, self_signed_certificate

    try:
        cert, key = self_signed_certificate(tmp_path_factory.mktemp("tls"))
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    gateway = SearchGateway(opensearch_url, cert, key, CLUSTER_API_KEY, CLUSTER_USER, CLUSTER_PASSWORD)
    yield gateway, cert
    gateway.close()
