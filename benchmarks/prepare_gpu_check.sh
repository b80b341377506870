#!/usr/bin/env bash
# Prepares benchmarks/gpu_check.sh for a lent GPU machine, on the development machine.
#
#   bash benchmarks/prepare_gpu_check.sh [REFERENCE_DIR]     (default: $PDFNET_REFERENCE, else ../shared/reference)
#
# A lent machine gets the working tree and the ignored paths a run names in `carry`, nothing beside
# the checkout.  This copies the fixtures the check reads (benchmarks/gpu_check_fixtures.py lists them)
# into .gpu_reference/ (ignored by git) with a manifest of their hashes, checks that the tree plus that
# folder stays well under the 64 MiB a run may carry, and prints the run call to make.
set -euo pipefail
cd "$(dirname "$0")/.."
SRC="${1:-${PDFNET_REFERENCE:-../shared/reference}}"
DEST=.gpu_reference
PY="${PYTHON:-python3}"   # the standard library is enough here

"$PY" benchmarks/gpu_check_fixtures.py --src "$SRC" --dest "$DEST"
if ! git check-ignore -q "$DEST"; then
  echo "prepare_gpu_check.sh: $DEST is not ignored by git (add /$DEST/ to .gitignore): it must travel only by carry" >&2
  exit 1
fi
fixtures=$(du -sb "$DEST" | cut -f1)
tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 -r du -cb 2>/dev/null | tail -1 | cut -f1)
total=$(( fixtures + tree ))
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
echo "fixtures $(mib "$fixtures") + working tree $(mib "$tree") = $(mib "$total") of the 64 MiB a run may carry"
if [ "$total" -gt $(( 48 * 1048576 )) ]; then
  echo "prepare_gpu_check.sh: over 48 MiB, too close to the 64 MiB limit" >&2
  exit 1
fi
cat <<'CALL'

Run it on the lent machine with the device tool's `run` (about 8 minutes; results come back from $OUT):
  command:   bash benchmarks/gpu_check.sh
  carry:     [".gpu_reference"]
  timeout_s: 600
It writes $OUT/gpu_check.txt (the table, also printed last), $OUT/gpu_check.json and $OUT/gpu_check.log.
Check it here first (a CPU dry run with small sizes; CUDA-only sections are skipped):
  OUT=/tmp/gpu_out PYTHON=.venv/bin/python bash benchmarks/gpu_check.sh --device cpu --quick
CALL
