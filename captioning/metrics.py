"""Caption metrics: corpus BLEU-1..4 and smoothed per-image BLEU (nltk), plus breakdown helpers.

Hypotheses and references are token lists cleaned by :func:`captioning.text.tokenize`, without
``<start>``/``<end>``; every image is scored against all of its references.
"""
from __future__ import annotations

import collections
import warnings
from typing import Sequence

from nltk.translate.bleu_score import SmoothingFunction, corpus_bleu, sentence_bleu

BLEU_WEIGHTS = {
    "bleu_1": (1.0, 0, 0, 0),
    "bleu_2": (0.5, 0.5, 0, 0),
    "bleu_3": (1 / 3, 1 / 3, 1 / 3, 0),
    "bleu_4": (0.25, 0.25, 0.25, 0.25),
}
_SMOOTH = SmoothingFunction().method1   # epsilon counts for empty n-gram matches (Chen & Cherry 2014)

Tokens = Sequence[str]


def corpus_bleu_scores(references: Sequence[Sequence[Tokens]], hypotheses: Sequence[Tokens]) -> dict[str, float]:
    """Corpus BLEU-1..4 in 0..1 (nltk ``corpus_bleu``, with brevity penalty)."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} reference sets for {len(hypotheses)} hypotheses")
    if not hypotheses:
        raise ValueError("no hypotheses to score")
    refs = [[list(r) for r in rs] for rs in references]
    hyps = [list(h) for h in hypotheses]
    with warnings.catch_warnings():   # nltk warns when a corpus has no 4-gram match; 0 is the right score
        warnings.simplefilter("ignore", UserWarning)
        return {name: float(corpus_bleu(refs, hyps, weights=w)) for name, w in BLEU_WEIGHTS.items()}


def sentence_bleu_scores(references: Sequence[Tokens], hypothesis: Tokens) -> dict[str, float]:
    """Per-image smoothed BLEU-1..4 (method1 smoothing, so short captions do not score 0)."""
    refs = [list(r) for r in references]
    return {name: float(sentence_bleu(refs, list(hypothesis), weights=w, smoothing_function=_SMOOTH))
            for name, w in BLEU_WEIGHTS.items()}


def reference_agreement(references: Sequence[Tokens]) -> float:
    """How much an image's references agree: mean smoothed BLEU-2 of each against the other four."""
    scores = []
    for i, ref in enumerate(references):
        others = [list(r) for j, r in enumerate(references) if j != i]
        if others and ref:
            scores.append(sentence_bleu(others, list(ref), weights=BLEU_WEIGHTS["bleu_2"],
                                        smoothing_function=_SMOOTH))
    return float(sum(scores) / len(scores)) if scores else 0.0


def word_usage(references: Sequence[Sequence[Tokens]], hypotheses: Sequence[Tokens]) -> list[dict]:
    """Per word: how often the model says it vs how often an average reference does (per image).

    ``ratio`` > 1 means the model over-uses the word against the references.
    """
    predicted = collections.Counter(w for h in hypotheses for w in h)
    expected: collections.Counter = collections.Counter()
    for refs in references:
        for r in refs:
            for w in r:
                expected[w] += 1.0 / len(refs)
    rows = []
    for word in set(predicted) | set(expected):
        p, e = predicted.get(word, 0), expected.get(word, 0.0)
        rows.append({"word": word, "predicted": int(p), "references": round(e, 2),
                     "ratio": (p + 1) / (e + 1), "difference": p - e})
    return sorted(rows, key=lambda r: -abs(r["difference"]))
