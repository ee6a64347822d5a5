#!/usr/bin/env bash
# Prepared GPU check: unified loss vs CLIP cross-entropy on a ViT-B/32-sized CLIP (random init).
#   benchmarks/gpu_check.sh                      # 300 steps at batch 256 (a few minutes on one GPU)
#   benchmarks/gpu_check.sh --steps 3 --batch 8 --warmup 1   # CPU smoke run
# Run from the repository root; needs the project venv (.venv) or PYTHON=... .
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"
exec "$PYTHON" benchmarks/gpu_check.py "$@"
