"""Grow a trained decoder's vocabulary for a fine-tune: new words appended, old words keep their ids, embeddings and
output rows exactly; new rows start from GloVe through a ridge-regression map fitted on the old words (or the
old rows' mean plus noise), a new word's output bias from its log frequency on the base model's bias scale.
"""
from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np

from captioning.data.text import Vocabulary
from captioning.training.settings import PROJECT_ROOT

DEFAULT_GLOVE = PROJECT_ROOT / ".cache" / "glove.6B.50d.txt"


NOISE = 0.1                 # new rows without a vector: mean of the old rows + this x their spread, as noise


RIDGE = 1.0                 # regularisation of the GloVe -> decoder-row map


# --- vocabulary and decoder growth ---------------------------------------------------------------------------
def grow_vocabulary(vocab: Vocabulary, captions: list[list[str]], min_count: int) -> tuple[Vocabulary, list[str]]:
    """The base vocabulary with the new words of ``captions`` (count >= ``min_count``) appended, most frequent
    first; old words keep their ids. Returns it and the added words."""
    counts = Counter(w for words in captions for w in words)
    added = sorted((w for w, c in counts.items() if c >= min_count and w not in vocab.stoi),
                   key=lambda w: (-counts[w], w))
    merged = {**vocab.counts, **{w: counts[w] for w in added}}
    return Vocabulary(vocab.itos[4:] + added, merged, vocab.min_count), added


def read_glove(path: Path | None, words: set[str]) -> dict[str, np.ndarray]:
    """The vectors of ``words`` in a GloVe text file ({} without a file)."""
    if path is None or not Path(path).is_file():
        return {}
    found = {}
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            word, _, rest = line.partition(" ")
            if word in words and word not in found:
                try:
                    found[word] = np.asarray(rest.split(), np.float32)
                except ValueError:
                    continue
    dims = Counter(len(v) for v in found.values())
    dim = dims.most_common(1)[0][0] if dims else 0
    return {w: v for w, v in found.items() if len(v) == dim}


def _new_rows(old: np.ndarray, old_words: list[str], new_words: list[str], glove: dict[str, np.ndarray],
              rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Rows (len(new_words), D) for the new words from the old rows ``old`` (len(old_words), D): GloVe mapped
    into the row space where the word has a vector, else mean + noise. Returns them and how many used GloVe."""
    mean, spread = old.mean(axis=0), old.std(axis=0)
    rows = mean + NOISE * spread * rng.standard_normal((len(new_words), old.shape[1])).astype(np.float32)
    pairs = [i for i, w in enumerate(old_words) if w in glove]
    mapped = [j for j, w in enumerate(new_words) if w in glove]
    if len(pairs) >= 20 and mapped:
        x = np.stack([glove[old_words[i]] for i in pairs])                         # (n, G)
        y = old[pairs]                                                              # (n, D)
        xm, ym = x.mean(axis=0), y.mean(axis=0)
        xc = x - xm
        w = np.linalg.solve(xc.T @ xc + RIDGE * np.eye(x.shape[1]), xc.T @ (y - ym))  # (G, D)
        new = np.stack([glove[new_words[j]] for j in mapped])
        rows[mapped] = (new - xm) @ w + ym
        return rows.astype(np.float32), len(mapped)
    return rows.astype(np.float32), 0


def grow_decoder(decoder, old_vocab: Vocabulary, new_vocab: Vocabulary, glove: dict[str, np.ndarray],
                 user_counts: Counter, seed: int = 0):
    """A copy of ``decoder`` predicting ``new_vocab`` (``old_vocab`` + appended words): every weight copied, the
    embedding and output layer extended by rows for the new words (see the module docstring). Returns the
    decoder and a record of how the new rows started."""
    old_n, new_n = len(old_vocab), len(new_vocab)
    grown = type(decoder).from_config({**decoder.get_config(), "vocab_size": new_n})
    grown.build()
    old_words, new_words = old_vocab.itos[4:], new_vocab.itos[old_n:]
    rng = np.random.default_rng(seed)
    emb = decoder.embedding.embeddings.numpy()                                     # (V, E)
    kernel, bias = decoder.classifier.kernel.numpy(), decoder.classifier.bias.numpy()   # (U, V), (V,)
    new_emb, emb_glove = _new_rows(emb[4:], old_words, new_words, glove, rng)
    new_cols, _ = _new_rows(kernel[:, 4:].T, old_words, new_words, glove, rng)
    total = sum(user_counts.values()) or 1
    shared = [bias[old_vocab.stoi[w]] - math.log(c / total) for w, c in user_counts.items() if w in old_vocab.stoi
              and old_vocab.stoi[w] >= 4]
    offset = float(np.median(shared)) if shared else 0.0
    new_bias = np.array([math.log(max(user_counts.get(w, 1), 1) / total) + offset for w in new_words], np.float32)
    replaced = {id(decoder.embedding.embeddings): np.concatenate([emb, new_emb]),
                id(decoder.classifier.kernel): np.concatenate([kernel, new_cols.T], axis=1),
                id(decoder.classifier.bias): np.concatenate([bias, new_bias])}
    for old_w, new_w in zip(decoder.weights, grown.weights):
        value = replaced.get(id(old_w), None)
        value = old_w.numpy() if value is None else value
        if tuple(value.shape) != tuple(new_w.shape):
            raise ValueError(f"cannot grow {old_w.path}: {value.shape} into {tuple(new_w.shape)}")
        new_w.assign(value)
    return grown, {"new_words": len(new_words), "glove": emb_glove, "mean_plus_noise": len(new_words) - emb_glove,
                   "bias_offset": round(offset, 4)}
