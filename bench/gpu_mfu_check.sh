#!/usr/bin/env bash
# The prepared GPU check for issue 14's MFU goal: BERT-large at sequence 512, bf16, one H100/H200,
# in one device call of about 7 minutes (each compile warms up 35-60 s). Each variant runs in its
# own process with its own time limit and writes its own JSON under ${OUT:-bench/gpu_out} (few
# files: the device tool returns a limited number), so a failure or a timeout costs only that one.
# Order = priority: the compiled step as the trainer runs it (with a profile), the trainer itself
# (bench/gpu_trainer.py: what `wenzhi pretrain run` logs, data reader and all), compiled Hugging Face
# (the ratio in the same call), the compiled step without dropout (what dropout costs), eager both;
# with REF=<dir>, first a reference tree's compiled step for an A/B in the same call. Make REF inside the checkout (the device copies the working tree):
#     git archive <commit> model bench/gpu_pretrain.py | tar -x -C ref_tree   (ref_tree/ untracked)
#     OUT=/some/dir REF=ref_tree bash bench/gpu_mfu_check.sh
# Not tried again: --compile-mode max-autotune-no-cudagraphs (over 200 s of warm-up; cuBLAS beat
# every Triton GEMM it tried at these shapes, bench/RESULTS.md).
set -u
OUT=${OUT:-bench/gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$OUT/check.log"
run() {  # run NAME LIMIT_S SCRIPT ARGS...
    local name=$1 limit=$2 script=$3; shift 3
    echo "== $name: $script $*" | tee -a "$OUT/check.log"
    timeout "$limit" python3 "$script" --skip-faiss --sizes bert-large --seqs 512 --budget-s 1 \
        --json "$OUT/$name.json" "$@" 2>&1 | grep -v '^{' | grep -v '^[WE][0-9]\{4\}' | tee -a "$OUT/check.log"
    echo "== $name: exit ${PIPESTATUS[0]}" | tee -a "$OUT/check.log"
}
[ -n "${REF:-}" ] && run reference 100 "$REF/bench/gpu_pretrain.py" --compile
run compiled 100 bench/gpu_pretrain.py --compile --systems wenzhi --profile
if python3 -c "import accelerate" 2>/dev/null; then
    echo "== trainer: bench/gpu_trainer.py" | tee -a "$OUT/check.log"
    timeout 150 python3 bench/gpu_trainer.py --json "$OUT/trainer.json" 2>&1 | grep -v '^{' \
        | grep -v '^[WE][0-9]\{4\}' | tee -a "$OUT/check.log"
    echo "== trainer: exit ${PIPESTATUS[0]}" | tee -a "$OUT/check.log"
else
    echo "== trainer: skipped, accelerate is not installed here" | tee -a "$OUT/check.log"
fi
run compiled-hf 100 bench/gpu_pretrain.py --compile --systems hf
run compiled-no-dropout 100 bench/gpu_pretrain.py --compile --systems wenzhi --dropout 0
run eager 60 bench/gpu_pretrain.py --systems wenzhi hf --profile --budget-s 30
