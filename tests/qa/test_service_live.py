"""`wenzhi serve` as a process, under attack and faults (issue 13): bench/fuzz_service.py's
hostile requests (0 answers with a 5xx, the same worker alive and answering after), stalled and
dribbled clients cut off at their deadlines, a double worker kill recovered within 60 s, a
bounded SIGTERM with a half-sent body, and a pipeline that cannot be loaded ending the command
with a non-zero status."""
import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def fuzz_service():
    spec = importlib.util.spec_from_file_location("fuzz_service", ROOT / "bench" / "fuzz_service.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fuzz_and_faults_against_a_live_server(fuzz_service, model_dir, kb_db, tmp_path):
    report = fuzz_service.run(str(model_dir), str(kb_db), with_faults=True, log_path=tmp_path / "serve.log")
    fuzz = report["fuzz"]
    assert fuzz["requests"] >= 200 and fuzz["distinct"] == fuzz["requests"]
    assert fuzz["server_errors"] == [] and fuzz["unanswered"] == []
    assert not any(status.startswith("5") for status in fuzz["responses_by_status"])
    assert fuzz["server_alive"] and fuzz["same_worker"] and fuzz["still_answers"]
    faults = report["faults"]
    for name in ("idle connection", "stalled headers", "dribbled headers", "stalled body", "dribbled body"):
        assert faults[name]["ok"], (name, faults[name])
    assert faults["still_answers_after_stalls"]
    kill = faults["double_worker_kill"]
    assert kill["replacement_killed_while_loading"] and kill["ok"], kill
    assert kill["ready_again_s"] <= 60 and kill["healthz_statuses"] == ["200"] and kill["answers_after"]
    assert "loading" in kill["readyz_statuses_seen"] and kill["retry_after_seen"]
    assert faults["sigterm_with_half_body"]["ok"], faults["sigterm_with_half_body"]
    assert report["ok"]


def test_serve_exits_non_zero_when_the_pipeline_cannot_be_loaded(kb_db, tmp_path):
    not_a_model = tmp_path / "model"
    not_a_model.mkdir()
    (not_a_model / "sim").mkdir()  # there, but nothing in it loads
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "wenzhi", "serve", "--model", str(not_a_model), "--kb", str(kb_db),
                           "--port", "0", "--in-process", "--restart-attempts", "3", "--restart-backoff", "0.2"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "could not be loaded in 3 attempts" in proc.stderr
    assert "Traceback" not in proc.stderr.split("giving up")[-1]
    assert time.monotonic() - t0 < 60
