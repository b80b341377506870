#!/usr/bin/env bash
# One-step set-up on a fresh machine: a virtual environment in .venv with everything the pack needs.
#   bash scripts/setup.sh          runtime only (installs torch if the environment has none)
#   bash scripts/setup.sh --test   plus the pinned test toolchain (requirements-test.txt)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
"$VPY" -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null 2>&1 || true
if [ "${1:-}" = "--test" ]; then
  "$VPY" -m pip install -q --disable-pip-version-check -r requirements-test.txt -r requirements.txt
elif ! "$VPY" -c "import torch" >/dev/null 2>&1; then
  "$VPY" -m pip install -q --disable-pip-version-check torch torchvision
  "$VPY" -m pip install -q --disable-pip-version-check -r requirements.txt
else
  "$VPY" -m pip install -q --disable-pip-version-check -r requirements.txt
fi
"$VPY" -c "import torch, pdfnet_core; print('pdfnet_core', pdfnet_core.__version__, 'torch', torch.__version__)"
