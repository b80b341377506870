#!/usr/bin/env bash
# The GPU check, as it runs on a lent CUDA machine: no network, nothing installed, nothing downloaded.
#
#   bash benchmarks/gpu_check.sh [--device cuda|cpu] [--quick] [--reference DIR] [--budget SECONDS]
#                                [--sections "env parity ..."] [--dtypes "bf16 fp32"]
#
# Uses the machine's own python3 (or $PYTHON) and its torch.  The fixtures come from .gpu_reference/
# in the checkout (ignored by git; benchmarks/prepare_gpu_check.sh fills it and prints the run command
# with its carry list).  Each section of benchmarks/gpu_check.py runs as its own process under its own
# time limit, so a slow or hung part cannot eat the rest; the whole run stays within --budget
# (default 480 s = 8 minutes).  Everything is written under $OUT (default gpu_out/ in the checkout):
#   gpu_check.txt   the table (also printed at the end)
#   gpu_check.json  every row with its numbers, per-section status, time and peak VRAM, the goals
#   gpu_check.log   everything printed, the sections' own output included
# Both gpu_check.* files are rewritten after every section, so a run cut short still leaves them.
# Dry run on a CPU (small sizes, CUDA-only sections skipped):
#   bash benchmarks/gpu_check.sh --device cpu --quick
set -uo pipefail
HERE="$(pwd)"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"

PY="${PYTHON:-python3}"
DEVICE=cuda
QUICK=()
REFERENCE=.gpu_reference
BUDGET=
SECTIONS="env parity agreement throughput node matting syncs compile"
DTYPES="bf16"
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --quick) QUICK=(--quick); shift ;;
    --reference) REFERENCE="$2"; shift 2 ;;
    --budget) BUDGET="$2"; shift 2 ;;
    --sections) SECTIONS="$2"; shift 2 ;;
    --dtypes) DTYPES="$2"; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

# A CPU dry run is slow and shares its machine: there the limits only stop a hang (3x, 20 minutes).
SCALE=1
[ ${#QUICK[@]} -gt 0 ] && [ "$DEVICE" = cpu ] && SCALE=3
BUDGET="${BUDGET:-$(( 480 * SCALE ))}"
# --reference and $OUT are taken from where the script was started; the defaults lie in the checkout
cd "$HERE"
OUT="${OUT:-$ROOT/gpu_out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
[ "$REFERENCE" = .gpu_reference ] && REFERENCE="$ROOT/.gpu_reference"
[ -d "$REFERENCE" ] && REFERENCE="$(cd "$REFERENCE" && pwd)"
cd "$ROOT"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")"
# the synthetic weights, built once and shared by the section processes (never under $OUT: too big)
CACHE="${GPU_CHECK_CACHE:-${TMPDIR:-/tmp}/pdfnet_gpu_check_cache}"
LOG="$OUT/gpu_check.log"
: > "$LOG"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONDONTWRITEBYTECODE=1

# Per-section caps in seconds.  Each section also leaves RESERVE seconds for every section after it,
# and the last report gets REPORT_S; compile, last, takes what remains up to its cap.
declare -A CAP=([env]=30 [parity]=120 [agreement]=60 [throughput]=100 [node]=60 [matting]=60 [syncs]=40 [compile]=150)
RESERVE=20
REPORT_S=5

now_ms() { date +%s%3N; }

run_all() {
  local start deadline names i name later now limit t0 ms rc
  start=$(now_ms)
  deadline=$(( start + (BUDGET - REPORT_S) * 1000 ))
  read -r -a names <<< "$SECTIONS"
  local quick_json=false cuda_json=false
  [ ${#QUICK[@]} -gt 0 ] && quick_json=true
  [[ "$DEVICE" == cuda* ]] && cuda_json=true
  printf '{"device": "%s", "quick": %s, "cuda": %s, "budget_s": %s, "sections": [%s]}\n' \
    "$DEVICE" "$quick_json" "$cuda_json" "$BUDGET" "$(printf '"%s",' "${names[@]}" | sed 's/,$//')" > "$WORK/meta.json"
  echo "# gpu_check: python $("$PY" -c 'import sys; print(sys.executable)' 2>&1), device $DEVICE${QUICK:+ (quick)}," \
       "fixtures $REFERENCE, budget ${BUDGET} s, out $OUT"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  for i in "${!names[@]}"; do
    name="${names[$i]}"
    later=$(( ${#names[@]} - i - 1 ))
    now=$(now_ms)
    limit=$(( (deadline - now) / 1000 - RESERVE * later ))
    [ "$limit" -gt $(( ${CAP[$name]:-60} * SCALE )) ] && limit=$(( ${CAP[$name]:-60} * SCALE ))
    if [ "$limit" -lt 10 ]; then
      echo "# $name: skipped, no time left in the ${BUDGET} s budget"
      printf '%s\t%s\t%s\t%s\n' "$name" 0 0 -1 >> "$WORK/shell.tsv"
      continue
    fi
    echo "## $name (limit ${limit} s)"
    t0=$(now_ms)
    timeout -k 5 "$limit" "$PY" benchmarks/gpu_check.py run "$name" --device "$DEVICE" ${QUICK[@]+"${QUICK[@]}"} \
      --reference "$REFERENCE" --work "$WORK" --cache "$CACHE" --limit "$limit" --dtypes $DTYPES
    rc=$?
    ms=$(( $(now_ms) - t0 ))
    printf '%s\t%s\t%s.%03d\t%s\n' "$name" "$limit" $(( ms / 1000 )) $(( ms % 1000 )) "$rc" >> "$WORK/shell.tsv"
    echo "# $name: took $(( ms / 1000 )).$(( ms % 1000 / 100 )) s of its ${limit} s (exit $rc)"
    "$PY" benchmarks/gpu_check.py report --work "$WORK" --out "$OUT" --quiet || true
    if [ "$name" = env ] && [ "$rc" -ne 0 ]; then
      echo "# env failed: the other sections would fail the same way; stopping"
      break
    fi
  done
  echo
  "$PY" benchmarks/gpu_check.py report --work "$WORK" --out "$OUT"
  rc=$?
  echo "# total: $(( ($(now_ms) - start) / 1000 )) s; written: $OUT/gpu_check.txt, $OUT/gpu_check.json, $LOG"
  return $rc
}

run_all 2>&1 | tee -a "$LOG"
status=${PIPESTATUS[0]}
rm -rf "$WORK"
exit "$status"
