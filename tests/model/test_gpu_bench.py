"""bench/gpu_pretrain.py's CPU dry run: the code path the GPU check takes, at tiny sizes."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

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
        families = r["profile"]["other_ms_by_family"]
        assert families["gelu"] > 0 and families["layernorm/dropout/residual"] > 0
        assert r["blocks"] == ("post-LN absolute" if r["system"] == "hf" else "pre-LN rotary")
    assert len(result["wenzhi_over_hf"]) == 8
    assert result["faiss"]["device"] == "cpu" and result["faiss"]["ivf_recall_at_10"] > 0.5


def test_device_kernels_of_the_h200_profiles_fall_into_their_kinds_and_families():
    """Kernel names the seventh session's H200 profiles recorded (bench/gpu_results/)."""
    sys.path.insert(0, str(ROOT / "bench"))
    from gpu_pretrain import kernel_kind, other_family

    kinds = {"cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16_knob_26_64x64x64_1x4x1_cga1x1x": "attention",
             "nvjet_sm90_tst_192x192_64x4_2x1_v_bz_coopB_bias_TNN": "matmul", "multi_tensor_apply_kernel": "optimizer"}
    assert {name: kernel_kind(name) for name in kinds} == kinds
    families = {
        "triton_per_fused__to_copy_add_native_dropout_backward_native_layer_norm_backward_view_14": "layernorm/dropout/residual",
        "triton_poi_fused__to_copy_add_addcmul_arange_cat_clone_cos_div_mul_permute_pow_reciprocal_": "rotary",
        "triton_poi_fused__to_copy_add_arange_cat_clone_div_mul_neg_permute_pow_reciprocal_select_b": "rotary",
        "triton_poi_fused_gelu_gelu_backward_view_15": "gelu", "triton_red_fused_sum_view_2": "reduction (bias grads)"}
    assert {name: other_family(name) for name in families} == families


def test_gpu_pretrain_bench_measures_the_chosen_systems_under_the_chosen_attention_kernel(tmp_path):
    out = tmp_path / "result.json"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_pretrain.py"), "--dry-run", "--peak-tflops", "1",
                           "--skip-faiss", "--systems", "wenzhi-packed", "hf", "--attention-backend", "math",
                           "--architecture", "bert", "--json", str(out)], capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert {(r["system"], r["docs_per_row"]) for r in result["results"]} == {("wenzhi", 4), ("hf", 1)}
    assert result["attention_backend"] == "math" and result["faiss"] is None
    assert {r["blocks"] for r in result["results"]} == {"post-LN absolute"}  # wenzhi as BERT's math, beside HF
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


@pytest.mark.slow
def test_the_prepared_gpu_check_runs_every_variant_in_its_dry_run(tmp_path):
    """bench/gpu_mfu_check.sh with DRY_RUN=1: each variant's arguments reach a script that accepts
    them, and everything lands in the two files the device tool returns."""
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "DRY_RUN": "1", "OUT": str(tmp_path),
           "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(ROOT / "bench" / "gpu_mfu_check.sh")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["check.json", "check.log"]
    merged, log = json.loads((tmp_path / "check.json").read_text()), (tmp_path / "check.log").read_text()
    # all but FlashAttention, which CPUs lack with dropout: its failure says the flag reached SDPA
    assert set(merged) == {"compiled", "compiled-bf16-residual", "compiled-hf", "compiled-bert",
                           "compiled-bert-bf16-residual-no-attention-dropout", "trainer",
                           "compiled-no-attention-dropout", "compiled-bert-no-attention-dropout",
                           "compiled-no-dropout", "eager-hf"}, log[-3000:]
    # the two device calls (PART=1, PART=2) run every variant once between them
    script = (ROOT / "bench" / "gpu_mfu_check.sh").read_text()
    parts = [re.search(rf"^ +{n}\) ONLY=\"([^\"]+)\"", script, re.M).group(1).split() for n in (1, 2)]
    variants = re.findall(r"^run ([\w-]+) ", script, re.M) + ["trainer"]
    assert sorted(parts[0] + parts[1]) == sorted(variants) and "compiled" in parts[0]
    assert "No available kernel" in log.split("== compiled-flash:")[1] and "== compiled-flash: exit 1" in log
    assert {r["blocks"] for r in merged["compiled-bert"]["results"]} == {"post-LN absolute"}
    both = merged["compiled-bert-no-attention-dropout"]
    assert {r["blocks"] for r in both["results"]} == {"post-LN absolute"}
    assert (both["dropout"], both["attention_dropout"]) == (0.1, 0)
    assert {r["residual"] for r in merged["compiled-bf16-residual"]["results"]} == {"bf16"}
    assert {r["residual"] for r in merged["compiled"]["results"]} == {"fp32"}
    every = merged["compiled-bert-bf16-residual-no-attention-dropout"]
    assert every["attention_dropout"] == 0 and every["bf16_residual"] and every["architecture"] == "bert"
    assert (merged["compiled-no-dropout"]["dropout"], merged["compiled-no-dropout"]["attention_dropout"]) == (0, 0)
    no_attention = merged["compiled-no-attention-dropout"]
    assert (no_attention["dropout"], no_attention["attention_dropout"]) == (0.1, 0)
    assert merged["compiled"]["results"][0]["profile"]["other_ms_by_family"]
    assert merged["trainer"]["windows"]
