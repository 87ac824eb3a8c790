#!/usr/bin/env bash
# Every GPU measurement of the project in one command, for a lent GPU machine with a few minutes
# (the `device` tool's machine: PyTorch with CUDA, no package registry). Run from the repository
# root; results go to $OUT (default ./gpu_session_out), one file per part, so a part that runs out
# of time leaves the others' results.
#
#   bash benchmarks/gpu_session.sh
#
# Python packages the machine lacks travel as wheels in ./.whl (ignored by git):
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
#       -d .whl nibabel batchgenerators future segment-anything
#
# Parts, most valuable first, each under its own time limit (seconds; GPU_SESSION_LIMITS overrides
# the seven, in order; 0 skips a part):
#   1. gpu_checks.py: the planner's vit_b plans (8/24/80 GiB, with their selective checkpointing)
#      trained for real steps: memory against the memory model, seconds per step, TFLOP/s, SDPA kernel; one 512x512x300 CT predicted.
#   2. profile_step.py: where the 24 GiB vit_b plan's training step spends its time (torch.profiler,
#      time by part, data wait, model and hardware FLOPs).
#   3. step_variants.py: the 24 GiB plan's step eager (its global blocks keep their attention's
#      output: selective checkpointing), without the full-resolution norms, channels-last, compiled,
#      compiled without the norms, as CUDA graphs, every block checkpointed whole: each change
#      before/after.
#   3b. step_variants.py --budget-gb 32: the 32 GiB plan (11 of 12 blocks checkpointed, 10 keeping
#      their attention) against every block checkpointed whole: time and memory.
#   4. interactive_latency.py: vit_b seconds per click (goal: under 0.5 s after the first).
#   5. gpu_checks.py --backbone lite_medsam: the planner's LiteMedSAM plans (8/24 GiB) trained for
#      real steps: memory against the memory model, seconds per step, TFLOP/s (no prediction).
#   6. nnsam3d_demo with vit_b from a SAM-format checkpoint (segment-anything's builder, random
#      weights: no download here) on CUDA: the whole pipeline, trainer, predictor and evaluation.
#      Off by default (limit 0): it ran on 2026-11-30 (README), and one device call has 600 s.
set -uo pipefail
OUT="${OUT:-$PWD/gpu_session_out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:$PWD/benchmarks:${PYTHONPATH:-}"
LIMITS="${GPU_SESSION_LIMITS:-190 80 130 45 50 50 0}"
read -r checks_s profile_s variants_s partial_s latency_s lite_s demo_s <<<"$LIMITS"

run_part() {  # run_part LIMIT COMMAND...: skipped when LIMIT is 0 (GNU timeout reads 0 as no limit at all)
    local limit=$1
    shift
    if [ "$limit" -gt 0 ]; then timeout "$limit" "$@"; else echo "(skipped: limit 0)"; fi
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda)"

echo "=== 1. gpu_checks (limit ${checks_s} s)"
run_part "$checks_s" python3 benchmarks/gpu_checks.py --output "$OUT/gpu_checks.json" 2>&1 | tee "$OUT/gpu_checks.log"

echo "=== 2. profile of the 24 GiB plan's step (limit ${profile_s} s)"
run_part "$profile_s" python3 benchmarks/profile_step.py --output "$OUT/profile_step.json" 2>&1 | tail -60 | tee "$OUT/profile_step.log"

echo "=== 3. step variants of the 24 GiB plan (limit ${variants_s} s)"
run_part "$variants_s" python3 benchmarks/step_variants.py --output "$OUT/step_variants.json" 2>&1 | tail -40 | tee "$OUT/step_variants.log"

echo "=== 3b. selective checkpointing: the 32 GiB plan's step (limit ${partial_s} s)"
run_part "$partial_s" python3 benchmarks/step_variants.py --budget-gb 32 --variants eager "every encoder block checkpointed" \
    --output "$OUT/step_variants_32gb.json" 2>&1 | tail -30 | tee "$OUT/step_variants_32gb.log"

echo "=== 4. interactive latency (limit ${latency_s} s)"
run_part "$latency_s" python3 benchmarks/interactive_latency.py --skip-cpu 2>&1 | tee "$OUT/interactive_latency.log"
cp benchmarks/results/interactive_latency_cuda.json "$OUT/" 2>/dev/null

echo "=== 5. gpu_checks, lite_medsam plans (limit ${lite_s} s)"
run_part "$lite_s" python3 benchmarks/gpu_checks.py --backbone lite_medsam --no-prediction \
    --output "$OUT/gpu_checks_lite_medsam.json" 2>&1 | tee "$OUT/gpu_checks_lite_medsam.log"

if [ "$demo_s" -gt 0 ]; then
echo "=== 6. demo, vit_b on CUDA (limit ${demo_s} s)"
work=/tmp/nnsam3d_gpu_demo
mkdir -p "$work"
python3 - "$work/sam_vit_b_random.pth" <<'PYTHON'
import sys
import torch
from nnsam3d.model.backbones import get_backbone
from nnsam3d.model.sam_reference import build_reference_sam
torch.manual_seed(0)
torch.save(build_reference_sam(get_backbone("vit_b")).state_dict(), sys.argv[1])
PYTHON
timeout "$demo_s" python3 -m nnsam3d.commands.demo --workdir "$work/demo" --backbone vit_b \
    --sam-checkpoint "$work/sam_vit_b_random.pth" --device cuda --minutes "$(python3 -c "print(max(0.5, ($demo_s - 80) / 60))")" -np 8 \
    2>&1 | tr '\r' '\n' | grep -v '^\s*$' | tee "$OUT/demo_vit_b.log" | grep -v 'it/s\]\|s/it\]\|batch\]\|case\]' 
for file in training_log.txt progress.png; do cp "$work"/demo/results/*/*/fold_0/$file "$OUT/demo_$file" 2>/dev/null; done
cp "$work"/demo/preprocessed/*/nnsam3d_plans.json "$OUT/demo_plans.json" 2>/dev/null
fi
ls -la "$OUT"
