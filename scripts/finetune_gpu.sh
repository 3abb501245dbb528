#!/usr/bin/env bash
# Issue 26, lever 3 on a GPU machine: the real-frames PEBAL fine-tuning recipe (the CPU recipe's data and
# losses) at full resolution (512 x 1024 crops) on CUDA, then its quality rows. Budget: <= 8 minutes on one
# H100-class GPU. Needs ../shared (assets + benchmarks) and a set-up .venv (bash scripts/setup.sh).
#   bash scripts/finetune_gpu.sh [OUTPUT_FOLDER]     (default: $OUT/real_frames_gpu, else runs/real_frames_gpu)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-runs}/real_frames_gpu}"
py=.venv/bin/python
$py -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'finetune_gpu: no CUDA device')"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
start=$(date +%s)
timeout 420 $py -m pebal_training.recipes.real_default --output "$out" --scenes all --min-confidence 0.5 \
    --all-coco --device cuda --crop 512 1024 --batch 8 --iters 3000 --threads 8 --workers 6 2>&1 | tee "$out.log"
echo "finetune_gpu: training and calibration took $(( $(date +%s) - start )) s"
OMP_NUM_THREADS=8 timeout 300 $py bench/bench_quality.py --model "gpu_real_frames=$out/real_default.pt:energy,road" \
    --sizes 1024 --output "$out/quality.json" --plots "$out" | tee "$out/quality.md"
echo "finetune_gpu: done in $(( $(date +%s) - start )) s; $out/real_default.pt, $out/quality.md"
