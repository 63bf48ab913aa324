#!/usr/bin/env bash
# Issue-20 GPU check: warm-up (compile cache), the default path's ms/step at 1.7B and 8B (batch 1/8/64),
# a fresh process's first call with a warm cache, the fp32 control's logit shift in bf16 and fp16, the
# grammar-masked step at batch 8/32, and engine-level serving throughput at 16/64 clients, on random-weight
# Llama shapes with the default tokenizer; stages that would not fit in --budget-s (default 520 s) are
# skipped and reported as such (--issue11: the earlier static-vs-eager-vs-generate plan). Needs torch and
# transformers only. See docs/benchmarks.md ("issue 20") for how a session with a lent GPU runs it.
#
#   OUT=results/ scripts/gpu_check.sh [--tokenizer DIR] [--budget-s 520] [--only default:1.7B]
#   OUT=/tmp/dry scripts/gpu_check.sh --dry-run     # tiny model, tiny budgets, no compile (CPU is fine)
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
