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


# --- the coco-caption toolkit (pycocoevalcap): the field's standard implementations ---------------
COCO_METRICS = ("coco_bleu_1", "coco_bleu_2", "coco_bleu_3", "coco_bleu_4", "cider", "rouge_l", "meteor")
IMPLEMENTATION = {
    **{f"bleu_{n}": "nltk corpus_bleu" for n in range(1, 5)},
    **{f"coco_bleu_{n}": "pycocoevalcap Bleu" for n in range(1, 5)},
    "cider": "pycocoevalcap Cider (CIDEr-D)", "rouge_l": "pycocoevalcap Rouge (ROUGE-L)",
    "meteor": "pycocoevalcap Meteor 1.5 (Java)",
}


def coco_scores(references: Sequence[Sequence[Tokens]], hypotheses: Sequence[Tokens],
                meteor: bool = True) -> tuple[dict[str, float], dict[str, list[float]], str | None]:
    """Corpus and per-image coco-caption metrics on pre-tokenised text.

    Returns ``(corpus, per_image, note)``: corpus scores (BLEU-1..4, CIDEr-D, ROUGE-L and METEOR when
    Java runs), per-image lists of the same, and a note when METEOR was skipped.
    """
    import io
    from contextlib import redirect_stdout

    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    if len(references) != len(hypotheses) or not hypotheses:
        raise ValueError(f"{len(references)} reference sets for {len(hypotheses)} hypotheses")
    gts = {i: [" ".join(r) for r in refs] for i, refs in enumerate(references)}
    res = {i: [" ".join(h) if h else "<empty>"] for i, h in enumerate(hypotheses)}
    corpus: dict[str, float] = {}
    per_image: dict[str, list[float]] = {}
    with redirect_stdout(io.StringIO()):          # the toolkit prints its own progress lines
        bleu, bleu_each = Bleu(4).compute_score(gts, res)
    for n in range(4):
        corpus[f"coco_bleu_{n + 1}"], per_image[f"coco_bleu_{n + 1}"] = float(bleu[n]), list(map(float, bleu_each[n]))
    for name, scorer in (("cider", Cider()), ("rouge_l", Rouge())):
        score, each = scorer.compute_score(gts, res)
        corpus[name], per_image[name] = float(score), [float(x) for x in each]
    note = None
    if meteor:
        try:
            score, each = _meteor(gts, res)
            corpus["meteor"], per_image["meteor"] = score, each
        except (OSError, ValueError, RuntimeError) as exc:
            note = f"METEOR skipped: it needs Java 8+ on PATH ({type(exc).__name__}: {exc})"
    else:
        note = "METEOR not computed (disabled)"
    return corpus, per_image, note


def _meteor(gts, res) -> tuple[float, list[float]]:
    import shutil

    from pycocoevalcap.meteor.meteor import Meteor

    if not shutil.which("java"):
        raise OSError("java not found")
    scorer = Meteor()
    try:
        score, each = scorer.compute_score(gts, res)
    finally:
        scorer.meteor_p.kill()
    return float(score), [float(x) for x in each]


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b (ties handled), as used to compare metrics with human judgments."""
    from scipy.stats import kendalltau

    return float(kendalltau(x, y).statistic)
