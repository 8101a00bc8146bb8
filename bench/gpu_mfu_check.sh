#!/usr/bin/env bash
# The prepared GPU check for issue 14's MFU goal: BERT-large at sequence 512, bf16, one H100/H200.
# Each variant runs in its own process with its own time limit, so a failure or a timeout costs only
# that one; its JSON goes into ${OUT:-bench/gpu_out}/check.json under its name as soon as it ends
# (two files in all, beside check.log: the device tool returns only a few).
# Two device calls, about 7 and 5 minutes (each compile warms up 35-60 s; give each call timeout_s 600):
#     OUT=$OUT PART=1 bash bench/gpu_mfu_check.sh      then      OUT=$OUT PART=2 bash bench/gpu_mfu_check.sh
# (no PART: everything in order, about 12 minutes; ONLY="name ..." runs just those variants).
# PART=1, in order of priority:
#   compiled        the compiled step as the trainer runs it: the goal's reading (profile: "other" by family)
#   compiled-bf16-residual   the same with the residual stream in bf16 (config residual_in_fp32=False,
#                   Megatron-LM's default; weights, gradients and AdamW stay fp32): the memory-bound
#                   kernels between matmuls (LayerNorm, dropout, residual adds) were 28% of the step
#   compiled-hf     compiled Hugging Face BertForMaskedLM: the ratio in the same call
#   compiled-bert   wenzhi's `bert` block family (post-LN, absolute positions: HF's own math and what an
#                   imported BERT/ERNIE continues pretraining with; no rotary kernels)
#   compiled-bert-bf16-residual-no-attention-dropout   every lever at once: the step's best case
#                   (attention dropout 0 is a model owner's setting, as in MosaicBERT and ModernBERT)
#   trainer         bench/gpu_trainer.py: what `wenzhi pretrain run` logs, data reader and all
# PART=2: compiled-no-attention-dropout and compiled-bert-no-attention-dropout (hidden dropout kept),
#   compiled-flash (PyTorch's FlashAttention-2 in place of cuDNN's, both with attention dropout),
#   compiled-no-dropout (what dropout costs in all), eager-hf (HF's best figure on the H200 was eager,
#   33.9% against 29.2% compiled; eager wenzhi, 28.4% against 42.2% compiled, is left out).
# With REF=<dir>, first a reference tree's compiled step for an A/B in the same call. Make REF inside
# the checkout (the device copies the working tree):
#     git archive <commit> model bench/gpu_pretrain.py | tar -x -C ref_tree   (ref_tree/ untracked)
#     OUT=/some/dir REF=ref_tree PART=1 bash bench/gpu_mfu_check.sh
# Not tried again: --compile-mode max-autotune-no-cudagraphs (over 200 s of warm-up; cuBLAS beat
# every Triton GEMM it tried at these shapes, bench/RESULTS.md).
# DRY_RUN=1: every variant on CPU with --dry-run and without compiling (tiny sizes, seconds each),
# to check the script's plumbing before device minutes are spent on it (a slow test runs it).
set -u
case "${PART:-}" in
    1) ONLY="compiled compiled-bf16-residual compiled-hf compiled-bert compiled-bert-bf16-residual-no-attention-dropout trainer" ;;
    2) ONLY="compiled-no-attention-dropout compiled-bert-no-attention-dropout compiled-flash compiled-no-dropout eager-hf" ;;
    "") ;;
    *) echo "PART must be 1 or 2" >&2; exit 2 ;;
esac
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
wanted() { [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" $1 "* ]]; }
run() {  # run NAME LIMIT_S SCRIPT ARGS...
    local name=$1 limit=$2 script=$3; shift 3
    wanted "$name" || return 0
    echo "== $name: $script $*" | tee -a "$OUT/check.log"
    # shellcheck disable=SC2086  # $DRY: several words or none
    timeout "$limit" "$PYTHON" "$script" --skip-faiss --sizes bert-large --seqs 512 --budget-s 1 \
        --json "$OUT/$name.json" $DRY "$@" 2>&1 | grep -v '^{' | grep -v '^[WE][0-9]\{4\}' | tee -a "$OUT/check.log"
    echo "== $name: exit ${PIPESTATUS[0]}" | tee -a "$OUT/check.log"
    keep "$name"
}
[ -n "${REF:-}" ] && ONLY="${ONLY:+$ONLY reference}" run reference 90 "$REF/bench/gpu_pretrain.py" $COMPILE
run compiled 90 bench/gpu_pretrain.py $COMPILE --systems wenzhi --profile
run compiled-bf16-residual 90 bench/gpu_pretrain.py $COMPILE --systems wenzhi --bf16-residual --profile
run compiled-hf 90 bench/gpu_pretrain.py $COMPILE --systems hf
run compiled-bert 90 bench/gpu_pretrain.py $COMPILE --systems wenzhi --architecture bert --profile
run compiled-bert-bf16-residual-no-attention-dropout 80 bench/gpu_pretrain.py $COMPILE --systems wenzhi \
    --architecture bert --bf16-residual --attention-dropout 0
if wanted trainer; then
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
fi
run compiled-no-attention-dropout 80 bench/gpu_pretrain.py $COMPILE --systems wenzhi --attention-dropout 0
run compiled-bert-no-attention-dropout 80 bench/gpu_pretrain.py $COMPILE --systems wenzhi --architecture bert \
    --attention-dropout 0
run compiled-flash 80 bench/gpu_pretrain.py $COMPILE --systems wenzhi --attention-backend flash
run compiled-no-dropout 80 bench/gpu_pretrain.py $COMPILE --systems wenzhi --dropout 0
run eager-hf 50 bench/gpu_pretrain.py --systems hf
