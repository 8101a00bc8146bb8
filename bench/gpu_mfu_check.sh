#!/usr/bin/env bash
# The prepared GPU check for issue 14's MFU goal: BERT-large at sequence 512, bf16, one H100/H200,
# in one device call. Each variant runs in its own process with its own time limit, so a failure or
# a timeout costs only that one; its JSON goes into ${OUT:-bench/gpu_out}/check.json under its name
# as soon as it ends (two files in all, beside check.log: the device tool returns only a few).
# Order = priority: the compiled step as the trainer runs it (with a profile, "other" by family), the
# same in the `bert` block family (post-LN, absolute positions: what an imported BERT/ERNIE continues
# pretraining with, and Hugging Face's own math), the trainer itself (bench/gpu_trainer.py: what
# `wenzhi pretrain run` logs, data reader and all), compiled Hugging Face (the ratio in the same call),
# the two levers the profile pointed at together (the `bert` family without attention dropout: the
# step's best case if each lever's saving adds up; a setting, not the goal's reading),
# PyTorch's FlashAttention-2 kernel in place of cuDNN's (both keep attention dropout), the compiled
# step without attention dropout (hidden dropout kept: a setting model owners may choose, as MosaicBERT
# and ModernBERT did), then without any (what dropout costs in all), and eager HF last (HF's best
# figure on the H200 was eager, 33.9% against 29.2% compiled; eager wenzhi, 28.4% against 42.2%
# compiled, is left out: bench/RESULTS.md); with REF=<dir>, first a reference tree's compiled step
# for an A/B in the same call. About 8-9 minutes (each compile warms up 35-60 s): give the device
# call timeout_s 600; the limits add up to more, so if everything runs long the last, least needed
# variants are the ones lost. Make REF inside the checkout (the device copies the working tree):
#     git archive <commit> model bench/gpu_pretrain.py | tar -x -C ref_tree   (ref_tree/ untracked)
#     OUT=/some/dir REF=ref_tree bash bench/gpu_mfu_check.sh
# Not tried again: --compile-mode max-autotune-no-cudagraphs (over 200 s of warm-up; cuBLAS beat
# every Triton GEMM it tried at these shapes, bench/RESULTS.md).
# DRY_RUN=1: every variant on CPU with --dry-run and without compiling (tiny sizes, seconds each),
# to check the script's plumbing before device minutes are spent on it (a slow test runs it).
set -u
OUT=${OUT:-bench/gpu_out}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [ "${DRY_RUN:-0}" = 1 ]; then
    COMPILE="" DRY="--dry-run --peak-tflops 1"
    TRAINER_DRY="--dry-run --steps 4 --log-every 2"
else
    COMPILE="--compile" DRY="" TRAINER_DRY=""
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$OUT/check.log"
fi
keep() {  # keep NAME: move $OUT/NAME.json into $OUT/check.json as {NAME: ...}
    "$PYTHON" - "$OUT" "$1" <<'PY'
import json, sys
from pathlib import Path
out, name = Path(sys.argv[1]), sys.argv[2]
part, merged = out / f"{name}.json", out / "check.json"
if part.exists():
    everything = json.loads(merged.read_text()) if merged.exists() else {}
    everything[name] = json.loads(part.read_text())
    merged.write_text(json.dumps(everything, indent=1))
    part.unlink()
PY
}
run() {  # run NAME LIMIT_S SCRIPT ARGS...
    local name=$1 limit=$2 script=$3; shift 3
    echo "== $name: $script $*" | tee -a "$OUT/check.log"
    # shellcheck disable=SC2086  # $DRY: several words or none
    timeout "$limit" "$PYTHON" "$script" --skip-faiss --sizes bert-large --seqs 512 --budget-s 1 \
        --json "$OUT/$name.json" $DRY "$@" 2>&1 | grep -v '^{' | grep -v '^[WE][0-9]\{4\}' | tee -a "$OUT/check.log"
    echo "== $name: exit ${PIPESTATUS[0]}" | tee -a "$OUT/check.log"
    keep "$name"
}
[ -n "${REF:-}" ] && run reference 90 "$REF/bench/gpu_pretrain.py" $COMPILE
run compiled 90 bench/gpu_pretrain.py $COMPILE --systems wenzhi --profile
run compiled-bert 90 bench/gpu_pretrain.py $COMPILE --systems wenzhi --architecture bert --profile
if "$PYTHON" -c "import accelerate" 2>/dev/null; then
    echo "== trainer: bench/gpu_trainer.py" | tee -a "$OUT/check.log"
    # shellcheck disable=SC2086
    timeout 130 "$PYTHON" bench/gpu_trainer.py --json "$OUT/trainer.json" $TRAINER_DRY 2>&1 | grep -v '^{' \
        | grep -v '^[WE][0-9]\{4\}' | tee -a "$OUT/check.log"
    echo "== trainer: exit ${PIPESTATUS[0]}" | tee -a "$OUT/check.log"
    keep trainer
else
    echo "== trainer: skipped, accelerate is not installed here" | tee -a "$OUT/check.log"
fi
run compiled-hf 90 bench/gpu_pretrain.py $COMPILE --systems hf
run compiled-bert-no-attention-dropout 80 bench/gpu_pretrain.py $COMPILE --systems wenzhi --architecture bert \
    --attention-dropout 0
run compiled-flash 80 bench/gpu_pretrain.py $COMPILE --systems wenzhi --attention-backend flash
run compiled-no-attention-dropout 80 bench/gpu_pretrain.py $COMPILE --systems wenzhi --attention-dropout 0
run compiled-no-dropout 80 bench/gpu_pretrain.py $COMPILE --systems wenzhi --dropout 0
run eager-hf 50 bench/gpu_pretrain.py --systems hf
