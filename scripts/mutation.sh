#!/usr/bin/env bash
# Mutation testing of the core modules with mutmut 3 (config: setup.cfg [mutmut]; docs/mutation.md).
# One module at a time (the machine is shared), then the score per module. Usage:
#   scripts/mutation.sh                      # every core module
#   scripts/mutation.sh decoding metrics     # some of them
# Results persist in mutants/ (git-ignored): a rerun only tests mutants of changed code.
set -euo pipefail
cd "$(dirname "$0")/.."
modules=("$@")
[ ${#modules[@]} -gt 0 ] || modules=(text metrics images bundle manifest models decoding stepper)
for m in "${modules[@]}"; do
  echo "mutation: captioning/$m.py"
  mkdir -p mutants
  nice -n 10 .venv/bin/mutmut run "captioning.$m.*" > "mutants/run-$m.log" 2>&1 || { tail -c 3000 "mutants/run-$m.log"; exit 1; }
done
.venv/bin/python scripts/mutation_score.py
