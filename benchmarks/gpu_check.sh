#!/usr/bin/env bash
# The GPU run, ready to go on a fresh CUDA machine that reaches only the package registries:
#   bash benchmarks/gpu_check.sh [--reference DIR] [gpu_check.py options]
# Installs what it needs into .venv-gpu (a CUDA torch from PyPI unless the machine's python already
# has one), then prints parity of every model on CUDA fp32 against shared/reference, fp16/bf16
# agreement, images/s at 1024² (PDFNet + depth prior, BiRefNet; batch 1 and 8) and peak VRAM.
# Meant to finish within 8 minutes on an H100/H200-class machine; the table also goes to gpu_check.json.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
VENV=.venv-gpu
start=$(date +%s)
if [ ! -x "$VENV/bin/python" ]; then
  # system site packages: a preinstalled CUDA torch is reused instead of downloading 3 GB again
  "$PY" -m venv --system-site-packages "$VENV"
fi
VPY="$VENV/bin/python"
PIP=("$VPY" -m pip install -q --disable-pip-version-check)
if ! "$VPY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1; then
  # together, so that pip picks a torchvision built for that torch (BiRefNet's deformable conv kernel)
  "${PIP[@]}" torch torchvision
fi
"${PIP[@]}" -r requirements.txt
echo "# set-up: $(( $(date +%s) - start )) s"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
"$VPY" benchmarks/gpu_check.py --device cuda --json gpu_check.json "$@"
echo "# total: $(( $(date +%s) - start )) s"
