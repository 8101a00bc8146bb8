"""`wenzhi serve --workers N`: N worker processes answer batches side by side. Each worker
answers as the pipeline does; concurrent questions reach every worker, in batches of at most
max_batch / N; a killed worker is a 503 for the batch it held (never another 5xx) and is replaced
while the others answer; a pool with no worker left says it is not ready until new ones answer."""
import json
import threading
import time

import pytest
from fastapi.testclient import TestClient

from wenzhi.qa_service.schemas import qa_body_without_latency, with_latency
from wenzhi.qa_service.service import ServiceSettings, create_app


def _wait(predicate, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


@pytest.fixture(scope="module")
def pool_client(model_dir, kb_db):
    app = create_app(ServiceSettings(model=str(model_dir), kb=str(kb_db), use_gen=False, threads=1, timeout_s=60,
                                     worker_process=True, workers=2, max_batch=8))
    with TestClient(app, base_url="http://localhost") as c:
        assert _wait(lambda: c.get("/readyz").status_code == 200, 120)
        yield c


def _answers(client, questions: list[str]) -> tuple[list[int], list[dict]]:
    statuses, bodies = [None] * len(questions), [None] * len(questions)

    def ask(i, q):
        r = client.post("/v1/qa", json={"question": q})
        statuses[i], bodies[i] = r.status_code, r.json()

    threads = [threading.Thread(target=ask, args=(i, q)) for i, q in enumerate(questions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return statuses, bodies


def _triple(body: dict):
    answer = body["answer"]
    return None if answer is None else (answer["triple"], answer["entity"], body["ner_spans"])


def test_every_worker_answers_and_answers_as_the_pipeline_does(pool_client, model_dir, kb_db, kgclue_dev):
    from wenzhi.qa_service.pipeline import PipelineConfig, QAPipeline

    pool = pool_client.app.state.qa.backend
    assert pool.size == 2 and len({w.process.pid for w in pool.workers}) == 2
    questions = [ex.question for ex in kgclue_dev[:48]]
    pids = [w.process.pid for w in pool.workers]
    before = {pid: pool.calls.get(pid, 0) for pid in pids}

    def both_answered() -> bool:
        return all(pool.calls.get(pid, 0) > before[pid] for pid in pids)

    statuses, bodies = _answers(pool_client, questions)
    assert statuses == [200] * len(questions)
    for _ in range(5):  # concurrent questions reach both workers (a round where one was enough: again)
        if both_answered():
            break
        assert _answers(pool_client, questions)[0] == [200] * len(questions)
    assert both_answered(), (before, pool.calls)
    batcher = pool_client.app.state.qa.batcher
    assert 1 < batcher.largest <= 4  # max_batch 8 over two workers: batches of 4 at most
    pipe = QAPipeline(model_dir, kb_db, PipelineConfig(use_gen=False, threads=1))  # in this process
    try:
        expected = [json.loads(with_latency(qa_body_without_latency(q, 3, a), 0.0))
                    for q, a in zip(questions, pipe.answer_batch(questions, 3))]
    finally:
        pipe.close()
    assert [_triple(b) for b in bodies] == [_triple(b) for b in expected]
    assert sum(_triple(b) is not None for b in bodies) >= len(questions) // 2  # answers, not only "none"
    assert pool_client.get("/v1/entities/龙编站").status_code == 200
    assert pool_client.post("/v1/link", json={"text": "龙编站的坐标是什么"}).status_code == 200


def test_a_killed_worker_is_replaced_while_the_others_answer(pool_client, kgclue_dev):
    state = pool_client.app.state.qa
    pool = state.backend
    victim, survivor = pool.workers[0].process, pool.workers[1].process
    victim.kill()
    victim.join(10)
    questions = [ex.question for ex in kgclue_dev[:8]]
    statuses, bodies = _answers(pool_client, questions)
    assert set(statuses) <= {200, 503}, statuses  # the batch the dead worker held is a 503; never a 500
    assert all("exited" in b["detail"] for s, b in zip(statuses, bodies) if s == 503), bodies
    readiness = set()

    def replaced():
        readiness.add(pool_client.get("/readyz").status_code)
        return len(pool.workers) == 2 and all(w.process.is_alive() for w in pool.workers) and \
            victim.pid not in {w.process.pid for w in pool.workers}

    assert _wait(replaced, 120)
    assert readiness == {200}  # ready throughout: the survivor answered while the replacement loaded
    assert state.backend is pool and survivor.pid in {w.process.pid for w in pool.workers}
    statuses, _ = _answers(pool_client, questions * 2)
    assert statuses == [200] * 16
    replacement = next(w for w in pool.workers if w.process.pid != survivor.pid)
    assert pool.calls.get(replacement.process.pid, 0) > 0 or _answers(pool_client, questions * 4)[0] == [200] * 32
    assert pool.calls.get(replacement.process.pid, 0) > 0  # the replacement answers too


def test_a_pool_with_no_worker_left_is_not_ready_until_workers_answer_again(pool_client, kgclue_dev):
    state = pool_client.app.state.qa
    old = {w.process.pid for w in state.backend.workers}
    for worker in list(state.backend.workers):
        worker.process.kill()
    for worker in list(state.backend.workers):
        worker.process.join(10)
    # no live worker (a replacement takes seconds to load): not ready, and a 503 with Retry-After
    r = pool_client.get("/readyz")
    assert r.status_code == 503 and r.json()["status"] == "loading" and int(r.headers["retry-after"]) >= 1
    r = pool_client.post("/v1/qa", json={"question": kgclue_dev[0].question})
    assert r.status_code == 503 and "exited" in r.json()["detail"]

    def back():  # replaced one by one, or as a new pool: either way two new workers
        pool = state.backend
        pids = {w.process.pid for w in pool.workers}
        return pool.alive() == 2 and not pids & old and pool_client.get("/readyz").status_code == 200

    assert _wait(back, 120)
    statuses, _ = _answers(pool_client, [ex.question for ex in kgclue_dev[:8]])
    assert statuses == [200] * 8


def test_serve_refuses_several_workers_in_process(kb_db, model_dir):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "wenzhi", "serve", "--model", str(model_dir), "--kb", str(kb_db),
                           "--in-process", "--workers", "2"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--workers 2" in proc.stderr


def test_a_replacement_that_cannot_load_is_retried_then_given_up(model_dir, kb_db, tmp_path, kgclue_dev):
    import shutil

    model = tmp_path / "qa"
    shutil.copytree(model_dir, model)
    gave_up = threading.Event()
    app = create_app(ServiceSettings(model=str(model), kb=str(kb_db), use_gen=False, threads=1, worker_process=True,
                                     workers=2, restart_attempts=2, restart_backoff_s=0.1),
                     on_gave_up=gave_up.set)
    with TestClient(app, base_url="http://localhost") as c:
        assert _wait(lambda: c.get("/readyz").status_code == 200, 120)
        shutil.rmtree(model / "sim")  # from now on no worker can load
        (model / "sim").mkdir()
        c.app.state.qa.backend.workers[0].process.kill()
        assert gave_up.wait(120)
        r = c.get("/healthz")
        assert r.status_code == 503 and "could not be loaded in 2 attempts" in r.json()["detail"]
        assert c.get("/readyz").json()["status"] == "failed"
