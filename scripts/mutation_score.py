"""Mutation score per core module from mutmut 3's results (mutants/captioning/**/*.py.meta): killed / (tested).

Prints one row per module and, with --survivors, the names of the mutants that survived (inspect one with
``.venv/bin/mutmut show NAME``). ``--rejudge MODULE...`` forgets the verdicts of those modules' survivors and
untested mutants, so the next ``make mutation`` runs them again against the tests as they are now (after adding
tests; cheaper than deleting ``mutants/``).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

KILLED = {1, 3, 36, 24, -24, 152,
          255}      # a failing test, pytest's internal error, or a timeout (mutmut counts these)
SURVIVED = {0}
NO_TESTS = {5, 33}
# The core modules by the short names docs/mutation.md uses -> their paths under captioning/ (a module split by
# job is scored file by file).
MODULES = {"text": ["data/text"], "images": ["vision/images"], "metrics": ["evaluation/metrics"],
           "bundle": ["artifacts/bundle", "artifacts/float16", "training/picks"],
           "manifest": ["artifacts/manifest", "artifacts/report", "artifacts/schema"],
           "models": ["models/decoders"], "stepper": ["models/stepper"],
           "decoding": ["decoding/search", "decoding/config", "decoding/constraints", "decoding/captions"],
           "rerank": ["evaluation/rerank"], "copy_targets": ["training/copy_targets"],
           "numpy_steps": ["models/numpy_steps"]}


def module_paths(name: str) -> list[str]:
    """A short name (``text``) or a path under captioning/ (``data/text``, ``data.text``) -> ``["data/text"]``."""
    name = name.removesuffix(".py")
    return MODULES.get(name, [name.replace(".", "/")])


def main(argv: list[str]) -> int:
    root = Path(__file__).resolve().parents[1] / "mutants" / "captioning"
    if argv[:1] == ["--path"]:                  # for scripts/mutation.sh: one path per line
        print("\n".join(module_paths(argv[1])))
        return 0
    if argv[:1] == ["--rejudge"]:
        for module in [path for name in argv[1:] for path in module_paths(name)]:
            meta = root / f"{module}.py.meta"
            if not meta.is_file():
                print(f"error: no mutmut results for captioning/{module}.py; run `make mutation MODULES={module}`",
                      file=sys.stderr)
                return 2
            data = json.loads(meta.read_text())
            codes = data["exit_code_by_key"]
            again = [k for k, c in codes.items() if c in SURVIVED or c in NO_TESTS]
            codes.update(dict.fromkeys(again, None))
            meta.write_text(json.dumps(data, indent=4))
            print(f"{module}: {len(again)} mutants to judge again")
        return 0
    metas = sorted(root.rglob("*.py.meta"))
    if not metas:
        print("error: no mutmut results under mutants/; run `make mutation` first", file=sys.stderr)
        return 2
    print(f"{'module':<22}{'mutants':>8}{'killed':>8}{'survived':>9}{'no tests':>9}{'not run':>8}{'score':>8}")
    for meta in metas:
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        done = [c for c in codes.values() if c is not None]
        killed = sum(c in KILLED for c in done)
        survived = sum(c in SURVIVED for c in done)
        no_tests = sum(c in NO_TESTS for c in done)
        judged = killed + survived + no_tests
        score = f"{killed / judged:.1%}" if judged else "-"
        name = meta.relative_to(root).as_posix()[:-len(".py.meta")]
        print(f"{name:<22}{len(codes):>8}{killed:>8}{survived:>9}{no_tests:>9}{len(codes) - len(done):>8}"
              f"{score:>8}")
        if "--survivors" in argv:
            for name, c in sorted(codes.items()):
                if c in SURVIVED or c in NO_TESTS:
                    print(f"    {'survived' if c in SURVIVED else 'no tests'}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
