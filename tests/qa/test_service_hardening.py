"""The service under hostile input and faults (issue 13), in-process (FastAPI's TestClient): bad
JSON values and encodings are 4xx with a reason and never echo the input, bodies over the limit
are 413, foreign Host headers are refused, request paths cannot forge log lines, and a worker
that dies (even twice, even while loading) is replaced with back-off while /readyz says so."""
import json
import logging
import threading
import time

import pytest
from fastapi.testclient import TestClient

from wenzhi.qa_service.service import ServiceSettings, create_app


@pytest.fixture(scope="module")
def loading_client(tmp_path_factory):
    """A service whose pipeline never finishes loading: validation, limits and the Host check come
    before readiness, so they are tested without a model."""
    release = threading.Event()

    def never_loads():
        release.wait(120)
        raise RuntimeError("test over")

    app = create_app(ServiceSettings(model="unused", kb="unused"), loader=never_loads)
    with TestClient(app, base_url="http://localhost", raise_server_exceptions=False) as client:
        yield client
        release.set()


HOSTILE = [
    ("/v1/qa", b'{"question": "\xe9\xbe\x99\xe7\xbc\x96\xe7\xab\x99", "top_k": NaN}', "top_k"),
    ("/v1/qa", b'{"question": "abc", "top_k": Infinity}', "top_k"),
    ("/v1/qa", b'{"question": "abc", "top_k": -Infinity}', "top_k"),
    ("/v1/qa", b'{"question": "abc", "top_k": 1e400}', "top_k"),
    ("/v1/qa", b'{"question": "\\ud800"}', "question: input should be a valid string, unable to parse"),
    ("/v1/qa", b'{"question": "abc\\udfff"}', "question: input should be a valid string"),
    ("/v1/link", b'{"text": "\\ud800"}', "text: input should be a valid string"),
    ("/v1/link", b'{"text": "x\\udfffy"}', "text: input should be a valid string"),
    ("/v1/qa", b'{"question": "\xed\xa0\x80"}', "question: input"),  # a surrogate as raw (invalid) UTF-8
    ("/v1/qa", b'{"question": "abc", "\\ud800": 1}', "unicode"),  # in a key
    ("/v1/qa", b'{"question": "abc", "top_k": 1' + b"0" * 5000 + b"}", ""),  # beyond int parsing
]


@pytest.mark.parametrize("path, body, reason", HOSTILE, ids=[f"{p}-{i}" for i, (p, _, _) in enumerate(HOSTILE)])
def test_hostile_values_are_4xx_with_a_reason(loading_client, path, body, reason):
    r = loading_client.post(path, content=body, headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    detail = r.json()["detail"]
    assert isinstance(detail, str) and detail
    assert reason.lower() in detail.lower()


def test_error_bodies_never_echo_the_input(loading_client):
    long_question = "问" * 5_000
    r = loading_client.post("/v1/qa", json={"question": long_question, "top_k": "x" * 10_000})
    assert r.status_code == 422 and "at most 256" in r.json()["detail"]
    assert len(r.content) < 2_000 and "问问问问" not in r.text and "xxxx" not in r.text
    many_keys = {"question": "abc", **{f"k{i}" + "y" * 200: i for i in range(200)}}
    r = loading_client.post("/v1/qa", json=many_keys)
    assert r.status_code == 422 and len(r.content) < 5_000
    assert "more" in r.json()["detail"]  # the first errors itemised, the rest counted


def test_bodies_over_the_limit_are_413(loading_client):
    big = json.dumps({"question": "问" * 200_000}).encode()
    r = loading_client.post("/v1/qa", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "content too large" in r.text.lower()  # before reading it

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(100):
            yield b" " * 10_000
    r = loading_client.post("/v1/link", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "65536 bytes" in r.json()["detail"]
    # the largest valid request, every character escaped, is well inside the limit
    largest = json.dumps({"text": "\u9f99" * 2000}, ensure_ascii=True).encode()
    assert len(largest) * 4 < ServiceSettings(model="", kb="").max_body_bytes
    r = loading_client.post("/v1/link", content=largest, headers={"content-type": "application/json"})
    assert r.status_code == 503  # accepted, then not ready


def test_foreign_host_headers_are_refused(loading_client):
    assert loading_client.get("/healthz").status_code == 200
    for host in ("evil.example", "evil.example:8000", "127.0.0.1.evil.example"):
        r = loading_client.get("/healthz", headers={"host": host})
        assert r.status_code == 400, host
        r = loading_client.get("/v1/qa/", headers={"host": host}, follow_redirects=False)
        assert r.status_code == 400 and "location" not in r.headers
    assert loading_client.get("/healthz", headers={"host": "127.0.0.1:8000"}).status_code == 200


def test_request_paths_cannot_forge_log_lines(loading_client, caplog):
    caplog.set_level(logging.INFO, logger="wenzhi.service")
    loading_client.get("/v1/entities/a%0d%0a2026-01-01 INFO wenzhi.service: GET /admin 200")
    loading_client.get("/v1/entities/a%00b%1b[31m")
    lines = [rec.getMessage() for rec in caplog.records if rec.name == "wenzhi.service"]
    access = [m for m in lines if m.startswith("GET /v1/entities/")]
    assert len(access) == 2
    for m in access:
        assert not any(c in m for c in "\r\n\x00\x1b"), repr(m)
    assert "\\n" in access[0] and "\\x00" in access[1]


# -- recovery ---------------------------------------------------------------------------------
def _wait(predicate, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_loading_is_retried_then_given_up_with_healthz_failing():
    calls = []

    def always_fails():
        calls.append(time.monotonic())
        raise OSError("model folder unreadable")

    app = create_app(ServiceSettings(model="m", kb="k", restart_attempts=3, restart_backoff_s=0.1),
                     loader=always_fails)
    with TestClient(app, base_url="http://localhost") as c:
        assert _wait(lambda: len(calls) >= 2, 10)
        r = c.get("/readyz")
        if r.json()["status"] == "loading":  # between attempts: says when to come back
            assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
            assert "model folder unreadable" in r.json()["detail"]
        assert _wait(lambda: c.get("/healthz").status_code == 503, 10)
        assert len(calls) == 3
        assert calls[2] - calls[1] >= calls[1] - calls[0] >= 0.1  # backing off
        health = c.get("/healthz").json()
        assert health["status"] == "failed" and "3 attempts" in health["detail"]
        assert c.get("/readyz").json()["status"] == "failed"
        assert c.post("/v1/qa", json={"question": "龙编站的坐标是什么"}).status_code == 503


def test_a_failed_load_is_retried_until_it_succeeds(model_dir, kb_db):
    from wenzhi.qa_service.pipeline import PipelineConfig, QAPipeline

    attempts = []

    def fails_once():
        attempts.append(1)
        if len(attempts) == 1:
            raise MemoryError("out of memory while loading")
        return QAPipeline(model_dir, kb_db, PipelineConfig(use_gen=False, threads=1))

    app = create_app(ServiceSettings(model=str(model_dir), kb=str(kb_db), restart_backoff_s=0.1), loader=fails_once)
    with TestClient(app, base_url="http://localhost") as c:
        assert _wait(lambda: c.get("/readyz").status_code == 200, 60)
        assert len(attempts) == 2
        assert c.post("/v1/qa", json={"question": "龙编站的坐标是什么"}).status_code == 200


def test_double_worker_kill_is_ready_again_within_60_s(model_dir, kb_db):
    """kill -9 the worker, then its replacement while it loads: the service comes back by itself."""
    app = create_app(ServiceSettings(model=str(model_dir), kb=str(kb_db), use_gen=False, threads=1,
                                     worker_process=True))
    state = app.state.qa
    question = {"question": "龙编站的坐标是什么"}
    with TestClient(app, base_url="http://localhost") as c:
        assert _wait(lambda: c.get("/readyz").status_code == 200, 120)
        assert c.post("/v1/qa", json=question).status_code == 200
        first = state.backend.process
        killed_at = time.monotonic()
        first.kill()
        first.join(10)
        assert c.post("/v1/qa", json=question).status_code == 503
        # the replacement, caught while it loads
        assert _wait(lambda: state.backend is not None and state.backend.process.pid != first.pid
                     and state.backend.process.is_alive(), 30)
        second = state.backend.process
        assert c.get("/readyz").status_code == 503
        second.kill()
        second.join(10)
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["status"] == "loading", r.json()
        assert int(r.headers["retry-after"]) >= 1
        r = c.post("/v1/qa", json=question)
        assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
        assert c.get("/healthz").status_code == 200  # alive, and trying
        assert _wait(lambda: c.get("/readyz").status_code == 200, 60 - (time.monotonic() - killed_at))
        assert state.backend.process.pid not in (first.pid, second.pid)
        assert c.post("/v1/qa", json=question).status_code == 200
        assert c.get("/v1/entities/龙编站").status_code == 200
