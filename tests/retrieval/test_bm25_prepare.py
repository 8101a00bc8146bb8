"""`pretrain prepare`'s retrieval-augmented masking through the BM25 setting: passages in the
emulated cluster (osmem-server behind TLS and a login) read by 2 local worker processes (the
credentials given as flags) and by a 2-worker local Dask cluster (credentials from the
environment only), against the same passages in tantivy."""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from search_gateway import CLUSTER_API_KEY, CLUSTER_PASSWORD, CLUSTER_USER

from wenzhi.model.prepare import PrepareConfig, prepare
from wenzhi.retrieval.bm25 import open_bm25, search_setting
from wenzhi.retrieval.documents import passages_from_squad
from wenzhi.retrieval.tantivy_backend import TantivyRetriever

SECRETS = (CLUSTER_API_KEY, CLUSTER_PASSWORD)
CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith("WENZHI_SEARCH")}


@pytest.fixture(scope="module")
def passage_indexes(data_dir, secured_cluster, tmp_path_factory):
    """CMRC 2018 paragraphs in tantivy and in the secured cluster; (tantivy dir, cluster URL, CA)."""
    gateway, ca = secured_cluster
    docs = list(passages_from_squad(sorted((data_dir / "cmrc2018").glob("*.json"))))
    path = tmp_path_factory.mktemp("bm25") / "passages"
    TantivyRetriever.build(path, docs, progress=False)
    url = f"{gateway.url}/prepare-passages"
    cluster = open_bm25(search_setting(url, user=CLUSTER_USER, password=CLUSTER_PASSWORD, ca_certs=str(ca)),
                        must_exist=False)
    cluster.create_index(recreate=True)
    assert cluster.index(docs) == len(docs)
    return path, url, ca


def _config(tmp_path: Path, kb_db, name: str, retrieval_index: str) -> dict:
    return {"output": str(tmp_path / name), "seq_len": 128, "seed": 3, "kb": str(kb_db), "partition_items": 40,
            "corpora": [{"path": "corpus/people_daily_1998_pos.txt", "format": "people_daily", "limit": 120}],
            "strategies": {"retrieval": 1},  # entity masks, then a knowledge segment for each
            "augment": {"max_tokens": 48, "min_tokens": 4, "sources": ["retrieval", "description", "triples"]},
            "retrieval_index": retrieval_index}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _rows(root: Path) -> np.ndarray:
    return np.concatenate([np.load(p) for p in sorted(root.rglob("input_ids.npy"))])


def test_prepare_augments_through_the_cluster_from_any_worker(passage_indexes, kb_db, tmp_path, monkeypatch):
    tantivy_path, url, ca = passage_indexes
    by_tantivy = prepare(PrepareConfig.from_dict(_config(tmp_path, kb_db, "tantivy", str(tantivy_path))),
                         show_progress=False)

    # 2 worker processes; the API key as a flag, the CA bundle as a variable
    config = tmp_path / "prepare.json"
    config.write_text(json.dumps(_config(tmp_path, kb_db, "local", "unused")), encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "wenzhi", "pretrain", "prepare", "--config", str(config),
                           "--search", url, "--search-api-key", CLUSTER_API_KEY, "--workers", "2"],
                          capture_output=True, text=True, timeout=300,
                          env={**CLEAN_ENV, "WENZHI_SEARCH_CA_CERTS": str(ca)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.splitlines()[-1])
    assert summary["workers"] == 2 and summary["augmentation_hit_rate"] > 0.9

    # a local Dask cluster: its workers see the basic-auth login through their environment only
    pytest.importorskip("dask.distributed", reason="Dask not installed: pip install 'wenzhi[distributed]'")
    for name in ("WENZHI_SEARCH_API_KEY", "WENZHI_SEARCH"):
        monkeypatch.delenv(name, raising=False)
    for name, value in (("WENZHI_SEARCH_USER", CLUSTER_USER), ("WENZHI_SEARCH_PASSWORD", CLUSTER_PASSWORD),
                        ("WENZHI_SEARCH_CA_CERTS", str(ca))):
        monkeypatch.setenv(name, value)
    public = search_setting(url).public
    cfg = PrepareConfig.from_dict(_config(tmp_path, kb_db, "dask", public))
    assert not any(s.encode() in pickle.dumps(cfg) for s in SECRETS)  # what the task graph carries
    by_dask = prepare(cfg, show_progress=False, workers=2, engine="dask")

    # the same bytes however the cluster was read, and no credential in them
    local, dask = _files(tmp_path / "local"), _files(tmp_path / "dask")
    assert local == dask
    for files in (local, dask):
        assert not any(s.encode() in data for data in files.values() for s in SECRETS)
    assert not any(s in proc.stdout + proc.stderr for s in SECRETS)

    # against tantivy: the same entities get a passage, so the same number of examples and
    # knowledge segments; the passage itself differs where osmem-server's BM25 ranks another
    # first (its term scores are not Lucene's, bench/RESULTS.md)
    augmentation = by_dask["stats"]["prepare"]["augmentation"]
    assert augmentation == by_tantivy["stats"]["prepare"]["augmentation"]
    assert augmentation["sources"]["retrieval"] >= 30
    rows_cluster, rows_tantivy = _rows(tmp_path / "dask"), _rows(tmp_path / "tantivy")
    assert rows_cluster.shape == rows_tantivy.shape
    same = (rows_cluster == rows_tantivy).all(axis=1).mean()
    assert same >= 0.85, f"{same:.3f} of the rows equal tantivy's"  # 0.952 when written


def test_prepare_refuses_an_unreachable_cluster_and_credentials_in_the_config(kb_db, tmp_path):
    config = tmp_path / "prepare.json"
    config.write_text(json.dumps(_config(tmp_path, kb_db, "out", "unused")), encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "wenzhi", "pretrain", "prepare", "--config", str(config),
                           "--search", "http://127.0.0.1:9/passages", "--no-progress"],
                          capture_output=True, text=True, timeout=120, env=CLEAN_ENV)
    assert proc.returncode == 2 and "Connection refused" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="credentials") as info:
        prepare(PrepareConfig.from_dict(_config(tmp_path, kb_db, "out", f"https://u:{CLUSTER_PASSWORD}@h:9200/p")),
                show_progress=False)
    assert CLUSTER_PASSWORD not in str(info.value)
