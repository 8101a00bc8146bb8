"""The QA service's fuzzy entity fallback through the BM25 setting: an entity index built into the
emulated cluster (osmem-server behind TLS and a login, tests/search_gateway.py) answers for the
service's worker process, which reads the credentials from its environment, as the embedded
tantivy index answers for the pipeline; and an unreachable cluster stops `wenzhi serve` and
`wenzhi evaluate` with a message."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest
from fastapi.testclient import TestClient
from search_gateway import CLUSTER_API_KEY, CLUSTER_PASSWORD

N_QUESTIONS = 12


@pytest.fixture(scope="module")
def garbled_questions(kb_store, kgclue_dev):
    """Questions about KgCLUE dev heads with one character of the name dropped ("周恩来念馆是什么"):
    no KB name occurs in them, so the linker finds nothing and only BM25 can."""
    from wenzhi.kg import EntityLinker

    linker, out = EntityLinker(kb_store), []
    for name in dict.fromkeys(q.head for q in kgclue_dev[:300]):
        base = kb_store.entity_by_name(name).base if kb_store.entity_by_name(name) else name
        if len(base) < 4 or not all("\u4e00" <= c <= "\u9fff" for c in base):
            continue
        question = base[: len(base) // 2] + base[len(base) // 2 + 1:] + "是什么"
        if not linker.rank(question, k=3):
            out.append((question, name))
        if len(out) == N_QUESTIONS:
            return out
    pytest.fail(f"only {len(out)} questions without a KB name")


@pytest.fixture(scope="module")
def entity_indexes(kb_store, secured_cluster, tmp_path_factory):
    """Every entity of the KB slice in tantivy and in the secured cluster."""
    from wenzhi.retrieval.bm25 import open_bm25, search_setting
    from wenzhi.retrieval.documents import entity_documents
    from wenzhi.retrieval.tantivy_backend import TantivyRetriever

    gateway, ca = secured_cluster
    docs = list(entity_documents(kb_store))
    path = tmp_path_factory.mktemp("bm25") / "entities"
    TantivyRetriever.build(path, docs, progress=False)
    setting = search_setting(f"{gateway.url}/qa-entities", api_key=CLUSTER_API_KEY, ca_certs=str(ca))
    cluster = open_bm25(setting, must_exist=False)
    cluster.create_index(recreate=True)
    assert cluster.index(docs) == len(docs)
    return path, setting


def test_the_services_fallback_answers_through_the_cluster_as_the_pipeline_does(
        model_dir, kb_db, garbled_questions, entity_indexes, secured_cluster, monkeypatch, caplog):
    from wenzhi.qa_service.pipeline import PipelineConfig, QAPipeline
    from wenzhi.qa_service.service import ServiceSettings, create_app

    tantivy_path, setting = entity_indexes
    gateway, _ = secured_cluster
    questions = [q for q, _ in garbled_questions]
    # Each backend recovers the questions on its own. Their answers are not compared with each other:
    # the two BM25 implementations agree on the top hit but not always below it (hits 4-5 of one
    # question differ), and the fallback hands its top 8 to the relation scorer.
    by_backend = {}
    for name, index in (("tantivy", tantivy_path), ("cluster", setting)):
        pipeline = QAPipeline(model_dir, kb_db, PipelineConfig(use_gen=False, threads=1), index=index)
        try:
            by_backend[name] = answers = [pipeline.answer(q, top_k=3) for q in questions]
        finally:
            pipeline.close()
        assert all(a.entity is not None and a.mention is None for a in answers), name  # the fallback alone
        recovered = sum(a.entity == gold for a, (_, gold) in zip(answers, garbled_questions))
        assert recovered >= N_QUESTIONS // 2, (name, recovered)
    by_cluster = by_backend["cluster"]

    # the service as `wenzhi serve` runs it: the pipeline in a spawned worker, handed the public
    # form of the setting; the API key and CA bundle reach it through the environment only
    monkeypatch.setenv("WENZHI_SEARCH_API_KEY", CLUSTER_API_KEY)
    monkeypatch.setenv("WENZHI_SEARCH_CA_CERTS", setting.ca_certs)
    seen_before = len(gateway.seen)
    app = create_app(ServiceSettings(model=str(model_dir), kb=str(kb_db), index=setting.public, use_gen=False,
                                     threads=1, timeout_s=30, worker_process=True))
    with TestClient(app, base_url="http://localhost") as client:
        for _ in range(600):
            if client.get("/readyz").status_code == 200:
                break
            time.sleep(0.1)
        bodies = [client.post("/v1/qa", json={"question": q, "top_k": 3}).json() for q in questions]
    assert [b["answer"]["entity"]["name"] if b["answer"] else None for b in bodies] == [a.entity for a in by_cluster]
    assert [b["answer"]["triple"]["relation"] for b in bodies] == [a.triple[1] for a in by_cluster]
    assert gateway.seen[seen_before:].count(f"ApiKey {CLUSTER_API_KEY}") >= N_QUESTIONS
    assert CLUSTER_API_KEY not in caplog.text


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_and_evaluate_stop_with_a_message_when_the_cluster_is_unreachable(model_dir, kb_db, tmp_path):
    env = {**os.environ, "WENZHI_SEARCH_PASSWORD": CLUSTER_PASSWORD, "WENZHI_SEARCH_USER": "reader"}
    url = f"http://127.0.0.1:{_closed_port()}/entities"
    questions = tmp_path / "q.json"
    questions.write_text('{"id": 1, "question": "周恩来纪念馆在哪里", "answer": "a ||| b ||| c"}\n', encoding="utf-8")
    for argv in (["serve", "--model", str(model_dir), "--kb", str(kb_db), "--search", url, "--port", "0"],
                 ["evaluate", "--questions", str(questions), "--model", str(model_dir), "--kb", str(kb_db),
                  "--index", url]):
        proc = subprocess.run([sys.executable, "-m", "wenzhi", *argv], capture_output=True, text=True, env=env,
                              timeout=120)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert "Connection refused" in proc.stderr and "Traceback" not in proc.stderr
        assert CLUSTER_PASSWORD not in proc.stdout + proc.stderr
