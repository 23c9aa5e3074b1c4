#!/usr/bin/env bash
# Mutation testing of the core modules with mutmut 3 (config: setup.cfg [mutmut]; docs/mutation.md).
# One module at a time (the machine is shared), then the score per module. Usage:
#   scripts/mutation.sh                      # every core module
#   scripts/mutation.sh decoding metrics     # some of them
# Results persist in mutants/ (git-ignored): a rerun only tests mutants of changed code.
set -euo pipefail
cd "$(dirname "$0")/.."
modules=("$@")
[ ${#modules[@]} -gt 0 ] || modules=(text metrics images bundle manifest models decoding stepper rerank copy_targets numpy_steps)
paths=()
for m in "${modules[@]}"; do     # a short name (text, decoding: every file it was split into) or a path (data/text)
  while read -r p; do paths+=("$p"); done < <(.venv/bin/python scripts/mutation_score.py --path "$m")
done
for path in "${paths[@]}"; do
  [ -f "captioning/$path.py" ] || { echo "error: no module captioning/$path.py; give a short name (text, metrics, images, bundle, manifest, models, decoding, stepper, rerank, copy_targets, numpy_steps) or a path such as data/text" >&2; exit 2; }
  echo "mutation: captioning/$path.py"
  mkdir -p mutants
  log="mutants/run-${path//\//.}.log"
  nice -n 10 .venv/bin/mutmut run "captioning.${path//\//.}.*" > "$log" 2>&1 || { tail -c 3000 "$log"; exit 1; }
done
.venv/bin/python scripts/mutation_score.py
