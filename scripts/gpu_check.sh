#!/usr/bin/env bash
# Issue-11 GPU check: static vs eager decoding, generate (eager / static cache), the weights-only
# bandwidth limit, one AISP 8x4 answer end to end and Batched AISP vs BoN, on random-weight Llama
# shapes (135M, 1.7B, 8B) with the default tokenizer. Finishes in under 6 minutes on an H100/H200
# (stages that would not fit in --budget-s, default 330 s, are skipped and reported as such).
# Needs torch and transformers only.
#
#   OUT=results/ scripts/gpu_check.sh [--tokenizer DIR] [--budget-s 330] [--only throughput:1.7B]
#   OUT=/tmp/smoke scripts/gpu_check.sh --smoke      # tiny model, tiny budgets: checks the script (CPU is fine)
#
# Writes $OUT/report.json (every stage, as it completes), $OUT/report.md and $OUT/log.txt.
set -uo pipefail
OUT=${OUT:-gpu-check-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" "${PYTHON:-python3}" "$here/gpu_check.py" --out "$OUT" "$@" 2>&1 | tee "$OUT/log.txt"
exit "${PIPESTATUS[0]}"
