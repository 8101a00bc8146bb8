"""bench/gpu_pretrain.py's CPU dry run: the code path the GPU check takes, at tiny sizes."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_gpu_pretrain_bench_dry_run(tmp_path):
    out = tmp_path / "result.json"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_pretrain.py"), "--dry-run", "--peak-tflops", "1", "--profile",
                           "--json", str(out)], capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "WENZHI_DATA": str(ROOT / "../shared/data")})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "FLOPs: per layer forward" in done.stdout
    result = json.loads(out.read_text())
    assert json.loads(done.stdout.strip().splitlines()[-1]) == result
    runs = {(r["size"], r["seq_len"], r["system"], r["docs_per_row"]) for r in result["results"]}
    assert len(runs) == 2 * 2 * 3 and not result["skipped_over_budget"]
    for r in result["results"]:
        assert r["tokens_per_s"] > 0 and 0 < r["mfu"] < 1 and r["model_tflops_per_step"] > 0
        shares = r["profile"]["share_by_kind"]
        assert abs(sum(shares.values()) - 1) < 0.01 and shares["matmul"] > 0 and r["profile"]["top"]
    assert len(result["wenzhi_over_hf"]) == 8
    assert result["faiss"]["device"] == "cpu" and result["faiss"]["ivf_recall_at_10"] > 0.5


def test_gpu_pretrain_bench_measures_the_chosen_systems_under_the_chosen_attention_kernel(tmp_path):
    out = tmp_path / "result.json"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_pretrain.py"), "--dry-run", "--peak-tflops", "1",
                           "--skip-faiss", "--systems", "wenzhi-packed", "hf", "--attention-backend", "math",
                           "--json", str(out)], capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert {(r["system"], r["docs_per_row"]) for r in result["results"]} == {("wenzhi", 4), ("hf", 1)}
    assert result["attention_backend"] == "math" and result["faiss"] is None
    assert set(result["wenzhi_over_hf"]) == {f"{size}/{seq}/4docs" for size in ("tiny-a", "tiny-b") for seq in (32, 64)}


def test_gpu_trainer_bench_dry_run_trains_through_the_trainer(tmp_path):
    out = tmp_path / "trainer.json"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_trainer.py"), "--dry-run", "--steps", "4",
                           "--log-every", "2", "--json", str(out)], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path, env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["steps"] == 4 and [w["step"] for w in result["windows"]] == [2, 4]
    assert all(w["tokens_per_s"] > 0 and 0 < w["loss"] < 20 for w in result["windows"])
    assert result["last_window"] == result["windows"][-1] and result["rows_per_step"] * result["seq_len"] > 0
