"""Caption metrics: corpus BLEU-1..4 and smoothed per-image BLEU (nltk), the coco-caption toolkit's metrics,
CIDEr-D with fixed document frequencies (:class:`CiderD`, the self-critical reward), diversity metrics, plus
breakdown helpers.

Hypotheses and references are token lists cleaned by :func:`captioning.data.text.tokenize`, without
``<start>``/``<end>``; every image is scored against all of its references.
"""
from __future__ import annotations

import collections
import math
import warnings
from collections import Counter
from collections.abc import Sequence

import numpy as np

BLEU_WEIGHTS = {
    "bleu_1": (1.0, 0, 0, 0),
    "bleu_2": (0.5, 0.5, 0, 0),
    "bleu_3": (1 / 3, 1 / 3, 1 / 3, 0),
    "bleu_4": (0.25, 0.25, 0.25, 0.25),
}


def _nltk():
    """nltk's BLEU, imported on first use: importing nltk takes ~2.5 s, and a consensus ranking (CIDEr-D only)
    loads this module on the app's first caption (issue 39)."""
    from nltk.translate import bleu_score

    return bleu_score


def _smooth(*args, **kwargs):
    """nltk's method1 smoothing: epsilon counts for empty n-gram matches (Chen & Cherry 2014)."""
    return _nltk().SmoothingFunction().method1(*args, **kwargs)

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
        return {name: float(_nltk().corpus_bleu(refs, hyps, weights=w)) for name, w in BLEU_WEIGHTS.items()}


def sentence_bleu_scores(references: Sequence[Tokens], hypothesis: Tokens) -> dict[str, float]:
    """Per-image smoothed BLEU-1..4 (method1 smoothing, so short captions do not score 0)."""
    refs = [list(r) for r in references]
    return {name: float(_nltk().sentence_bleu(refs, list(hypothesis), weights=w, smoothing_function=_smooth))
            for name, w in BLEU_WEIGHTS.items()}


def reference_agreement(references: Sequence[Tokens]) -> float:
    """How much an image's references agree: mean smoothed BLEU-2 of each against the other four."""
    scores = []
    for i, ref in enumerate(references):
        others = [list(r) for j, r in enumerate(references) if j != i]
        if others and ref:
            scores.append(_nltk().sentence_bleu(others, list(ref), weights=BLEU_WEIGHTS["bleu_2"],
                                               smoothing_function=_smooth))
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


# --- diversity: how varied the captions are, over a split and among an image's several captions -------------
# Quality metrics reward the safe, generic caption; these tell whether a decoder says different things about
# different photos (and several things about one photo). Definitions follow Shetty et al. 2017 ("Speaking the
# Same Language: Matching Machine to Human Captions by Adversarial Training": distinct captions, novel
# captions, vocabulary usage, mBLEU), Dai et al. 2017 ("Towards Diverse and Natural Image Descriptions via a
# Conditional GAN": unique and novel captions), Li et al. 2016 (distinct-n) and Wang & Chan 2019 ("Describing
# like Humans: on Diversity in Image Captioning": self-BLEU and oracle scores over several captions per image).

def distinct_captions(hypotheses: Sequence[Tokens]) -> float:
    """Fraction of images whose caption no other image got (Dai et al. 2017 "unique"; Shetty et al. 2017).

    1 means every photo gets its own caption; a decoder that writes the same "a dog runs through the grass"
    for many photos scores low.
    """
    if not hypotheses:
        raise ValueError("no captions to measure")
    counts = collections.Counter(tuple(h) for h in hypotheses)
    return sum(counts[tuple(h)] == 1 for h in hypotheses) / len(hypotheses)


def vocab_used(hypotheses: Sequence[Tokens]) -> int:
    """How many distinct words the captions use over the whole split (Shetty et al. 2017, vocabulary usage)."""
    return len({w for h in hypotheses for w in h})


def novel_fraction(hypotheses: Sequence[Tokens], training_captions: Sequence[Tokens]) -> float:
    """Fraction of captions not found verbatim among the training captions (Shetty et al. 2017; Dai et al.
    2017 "novel"): a low value means the decoder mostly recites captions it was trained on."""
    if not hypotheses:
        raise ValueError("no captions to measure")
    seen = {tuple(c) for c in training_captions}
    return sum(tuple(h) not in seen for h in hypotheses) / len(hypotheses)


def distinct_n(hypotheses: Sequence[Tokens], n: int) -> float:
    """Distinct-n (Li et al. 2016, used for captions by Wang & Chan 2019): unique n-grams / all n-grams over
    every caption (0 when no caption is n words long)."""
    grams = [tuple(h[i:i + n]) for h in hypotheses for i in range(len(h) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def mean_length(hypotheses: Sequence[Tokens]) -> float:
    """Mean caption length in words."""
    if not hypotheses:
        raise ValueError("no captions to measure")
    return sum(len(h) for h in hypotheses) / len(hypotheses)


def self_bleu_4(caption_sets: Sequence[Sequence[Tokens]]) -> float:
    """Self-BLEU-4 among each image's captions (Zhu et al. 2018 Texygen; Shetty et al. 2017 "mBLEU";
    Wang & Chan 2019): corpus BLEU-4 of every caption against the same image's other captions, over all
    images. Lower = an image's captions differ more from one another. Needs at least 2 captions per image.
    """
    refs, hyps = [], []
    for caps in caption_sets:
        if len(caps) < 2:
            raise ValueError("self-BLEU needs at least 2 captions per image; decode with n > 1")
        for i, cap in enumerate(caps):
            refs.append([list(c) for j, c in enumerate(caps) if j != i])
            hyps.append(list(cap))
    return corpus_bleu_scores(refs, hyps)["bleu_4"]


def cider_each(references: Sequence[Sequence[Tokens]], caption_sets: Sequence[Sequence[Tokens]]) -> list[list[float]]:
    """The coco-caption toolkit's CIDEr-D of every caption of every image (one list per image).

    Each image's references are repeated once per caption, which leaves CIDEr-D's document frequencies (a
    ratio of counts over images) unchanged: a run of one caption per image scores as ``coco_scores`` does.
    """
    if len(references) != len(caption_sets) or not caption_sets:
        raise ValueError(f"{len(references)} reference sets for {len(caption_sets)} caption sets")
    from pycocoevalcap.cider.cider import Cider

    gts, res, owner = {}, {}, []
    for i, (refs, caps) in enumerate(zip(references, caption_sets)):
        for cap in caps:
            key = len(owner)
            gts[key] = [" ".join(r) for r in refs]
            res[key] = [" ".join(cap) if cap else "<empty>"]
            owner.append(i)
    _, each = Cider().compute_score(gts, res)
    out: list[list[float]] = [[] for _ in caption_sets]
    for i, score in zip(owner, each):
        out[i].append(float(score))
    return out


def oracle_cider(references: Sequence[Sequence[Tokens]], caption_sets: Sequence[Sequence[Tokens]]) -> float:
    """CIDEr-D of the best of each image's captions (the oracle of Wang & Chan 2019; Vijayakumar et al. 2018):
    how good the n-best list or the samples can be if something picks the right one."""
    return sum(max(scores) for scores in cider_each(references, caption_sets)) / len(caption_sets)


def diversity_scores(caption_sets: Sequence[Sequence[Tokens]], training_captions: Sequence[Tokens] | None = None,
                     references: Sequence[Sequence[Tokens]] | None = None) -> dict[str, float]:
    """Every diversity metric of a decoding run, as stored in metrics.json.

    ``caption_sets`` holds each image's captions, best first; the split-level metrics (distinct captions,
    vocabulary, novel fraction, distinct-1/2, mean length) use each image's first caption, the way its quality
    is scored. Runs with several captions per image add ``self_bleu_4``, ``oracle_cider`` (when references are
    given) and ``distinct_2_all`` (distinct-2 over all the captions).
    """
    first = [caps[0] for caps in caption_sets]
    out = {"distinct_captions": round(distinct_captions(first), 6), "vocab_used": vocab_used(first),
           "distinct_1": round(distinct_n(first, 1), 6), "distinct_2": round(distinct_n(first, 2), 6),
           "mean_length": mean_length(first)}
    if training_captions is not None:
        out["novel_fraction"] = round(novel_fraction(first, training_captions), 6)
    if min(len(caps) for caps in caption_sets) > 1:
        out["captions_per_image"] = min(len(caps) for caps in caption_sets)
        out["self_bleu_4"] = round(self_bleu_4(caption_sets), 6)
        out["distinct_2_all"] = round(distinct_n([c for caps in caption_sets for c in caps], 2), 6)
        if references is not None:
            out["oracle_cider"] = round(oracle_cider(references, caption_sets), 6)
    return out


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b (ties handled), as used to compare metrics with human judgments."""
    from scipy.stats import kendalltau

    return float(kendalltau(x, y).statistic)


class CiderD:
    """CIDEr-D with document frequencies from ``corpus`` (one list of reference captions per image)."""

    def __init__(self, corpus: Sequence[Sequence[Tokens]], n: int = 4, sigma: float = 6.0):
        self.n, self.sigma = n, float(sigma)
        df: Counter = Counter()
        for refs in corpus:             # each n-gram once per image (zip: the fast way to a 30,000-caption index)
            grams = set()
            for ref in refs:
                words = list(ref)
                for k in range(1, n + 1):
                    grams.update(zip(*(words[i:] for i in range(k))))
            df.update(grams)
        self.ref_len = math.log(float(len(corpus)))
        self._idf = {g: self.ref_len - math.log(max(1.0, c)) for g, c in df.items()}
        self._ref_cache: dict[tuple, list] = {}

    def _counts(self, words: Tokens) -> Counter:
        words = list(words)
        return Counter(tuple(words[i:i + k]) for k in range(1, self.n + 1) for i in range(len(words) - k + 1))

    def _vector(self, words: Tokens):
        """tf-idf vectors per n-gram order, their norms, and the toolkit's length (its bigram count)."""
        vec = [dict() for _ in range(self.n)]
        norm = [0.0] * self.n
        length = 0
        for gram, tf in self._counts(words).items():
            k = len(gram) - 1
            value = float(tf) * self._idf.get(gram, self.ref_len)       # unseen n-grams: df 1 -> idf ref_len
            vec[k][gram] = value
            norm[k] += value * value
            if k == 1:
                length += tf
        return vec, [math.sqrt(x) for x in norm], length

    def _refs(self, references: Sequence[Tokens]) -> list:
        key = tuple(tuple(r) for r in references)
        cached = self._ref_cache.get(key)
        if cached is None:
            cached = self._ref_cache[key] = [self._vector(r) for r in references]
        return cached

    def score(self, hypothesis: Tokens, references: Sequence[Tokens]) -> float:
        """CIDEr-D of one caption against its references (same scale as the toolkit: 0..~10)."""
        vec, norm, length = self._vector(hypothesis)
        total = np.zeros(self.n)
        for rvec, rnorm, rlength in self._refs(references):
            penalty = math.exp(-((length - rlength) ** 2) / (2 * self.sigma ** 2))
            for k in range(self.n):
                ref_k = rvec[k]
                dot = sum(min(v, ref_k[g]) * ref_k[g] for g, v in vec[k].items() if g in ref_k)
                if norm[k] and rnorm[k]:
                    dot /= norm[k] * rnorm[k]
                total[k] += dot * penalty
        return float(total.mean() / max(len(references), 1) * 10.0)

    def corpus_score(self, hypotheses: Sequence[Tokens], references: Sequence[Sequence[Tokens]]) -> tuple[float,
                                                                                                          list[float]]:
        each = [self.score(h, r) for h, r in zip(hypotheses, references)]
        return float(np.mean(each)) if each else 0.0, each
