#!/usr/bin/env bash
# GPU check of the performance benchmarks (not part of the test suite).
#
#     bash benchmarks/gpu_check.sh            # from the repository root, on a machine with a CUDA GPU
#
# Runs the matching-pass, training-step and memory benchmarks with --device cuda, in fp32 (32-true) and
# bf16-mixed, writing JSON to benchmarks/results/gpu/ (and the printed tables to benchmarks/results/gpu/log.txt).
# Sized to finish within about 8 minutes on one H100-class GPU (batch 64 at 224 px).
# Refuses to run (exit 2) when no CUDA GPU is visible. PYTHON overrides the interpreter (default .venv/bin/python).
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
OUT=benchmarks/results/gpu

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu_check.sh: no NVIDIA GPU found (nvidia-smi missing or failing); this script needs a CUDA GPU. Nothing run." >&2
    exit 2
fi
if ! "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check.sh: torch.cuda.is_available() is False for $PYTHON; this script needs a CUDA build of torch. Nothing run." >&2
    exit 2
fi

mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
echo "GPU: $(nvidia-smi --query-gpu=name --format=csv,noheader)"
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
start=$SECONDS

for precision in 32-true bf16-mixed; do
    tag="${precision%%-*}"  # 32 / bf16
    echo "=== precision $precision ==="
    # matching pass: 640 images (10 batches of 64) per pair, 3 repeats
    timeout 150 "$PYTHON" benchmarks/matching_pass.py --device cuda --precision "$precision" \
        --num-images 640 --batch-size 64 --repeats 3 --json "$OUT/matching_pass_$tag.json"
    # training step: ResNet-50 -> MobileNet-V2 at 224 px batch 64, demo pair at 28 px batch 128
    timeout 120 "$PYTHON" benchmarks/train_step.py --device cuda --precision "$precision" --warmup 3 \
        --configs resnet50-mobilenet_v2:64:10 cifar_resnet14x2-cifar_resnet8x1:128:20 \
        --json "$OUT/train_step_$tag.json"
    # peak memory of one step, fresh process per method
    timeout 90 "$PYTHON" benchmarks/memory.py --device cuda --precision "$precision" --batch-size 64 \
        --methods mgd_amp kd student --json "$OUT/memory_$tag.json"
done
echo "gpu_check.sh: done in $((SECONDS - start)) s; JSON in $OUT/"
