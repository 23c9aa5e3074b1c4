#!/usr/bin/env bash
# Every benchmark in one go, one after another (so none competes with another for the 2 cores):
#   bash bench/all.sh [--quick] [OUT_DIR]      -> prints each table, writes OUT_DIR/<bench>.json (default bench-output/)
# Without --quick the Xception features must be cached: python train.py features --encoder xception --spatial
set -euo pipefail
cd "$(dirname "$0")/.."
quick=""
if [ "${1:-}" = "--quick" ]; then quick="--quick"; shift; fi
out="${1:-bench-output}"
mkdir -p "$out"
py="${PYTHON:-.venv/bin/python}"
for bench in features decoding app_latency memory training; do
  echo "=== bench/$bench.py $quick"
  flag="$quick"; [ "$bench" = app_latency ] && flag=""          # app latency is always the real default bundle
  start=$(date +%s)
  "$py" "bench/$bench.py" $flag --json "$out/$bench.json"
  echo "=== bench/$bench.py took $(( $(date +%s) - start ))s"
done
