"""Exact metric values on imperfect captions: nltk and the coco-caption toolkit called directly, the BLEU weights
written out, so a wrong weight, smoothing or per-image order is seen (perfect captions score 1 whatever the weights)."""
import math

import pytest
from nltk.translate.bleu_score import SmoothingFunction, corpus_bleu, sentence_bleu

from captioning.evaluation.metrics import (
    BLEU_WEIGHTS,
    coco_scores,
    corpus_bleu_scores,
    kendall_tau,
    reference_agreement,
    sentence_bleu_scores,
    word_usage,
)

REFS = [
    ["a dog runs across the green grass".split(), "a brown dog is running on grass".split(),
     "the dog runs in a field".split()],
    ["two children play in the water".split(), "kids splash in a pool".split(),
     "two young children are playing in the water".split()],
    ["a man rides a bike down the street".split(), "a cyclist on a city street".split()],
]
HYPS = ["a dog is running on the grass".split(), "two kids play in a pool of water".split(),
        "a man rides down a road".split()]
WEIGHTS = {1: (1.0, 0.0, 0.0, 0.0), 2: (0.5, 0.5, 0.0, 0.0), 3: (1 / 3, 1 / 3, 1 / 3, 0.0),
           4: (0.25, 0.25, 0.25, 0.25)}


def test_bleu_weights_are_the_standard_cumulative_ones():
    assert list(BLEU_WEIGHTS) == ["bleu_1", "bleu_2", "bleu_3", "bleu_4"]
    for n, w in WEIGHTS.items():
        assert BLEU_WEIGHTS[f"bleu_{n}"] == pytest.approx(w, abs=1e-15)


def test_corpus_bleu_1_to_4_equal_nltk_on_imperfect_captions():
    got = corpus_bleu_scores(REFS, HYPS)
    want = {f"bleu_{n}": corpus_bleu(REFS, HYPS, weights=w) for n, w in WEIGHTS.items()}
    assert got == pytest.approx(want, abs=1e-12)
    values = [got[f"bleu_{n}"] for n in range(1, 5)]
    assert values == sorted(values, reverse=True) and len(set(values)) == 4 and 0 < values[-1] < values[0] < 1


def test_corpus_bleu_has_a_brevity_penalty():
    short = [h[:3] for h in HYPS]
    got = corpus_bleu_scores(REFS, short)["bleu_1"]
    c = sum(len(h) for h in short)
    r = sum(min((len(x) for x in refs), key=lambda n: (abs(n - len(h)), n)) for refs, h in zip(REFS, short))
    precision = sum(min(h.count(w), max(x.count(w) for x in refs)) for refs, h in zip(REFS, short)
                    for w in set(h)) / c
    assert got == pytest.approx(math.exp(1 - r / c) * precision, abs=1e-12)


def test_sentence_bleu_is_smoothed_with_method1_per_order():
    smooth = SmoothingFunction().method1
    for refs, hyp in zip(REFS, HYPS):
        got = sentence_bleu_scores(refs, hyp)
        for n, w in WEIGHTS.items():
            assert got[f"bleu_{n}"] == pytest.approx(sentence_bleu(refs, hyp, weights=w, smoothing_function=smooth),
                                                     abs=1e-12)
    # no 4-gram in common: unsmoothed BLEU-4 would be 0; method1's epsilon keeps it positive
    with pytest.warns(UserWarning):
        assert sentence_bleu(REFS[2], HYPS[2], weights=WEIGHTS[4]) < 1e-50
    assert sentence_bleu_scores(REFS[2], HYPS[2])["bleu_4"] > 0.1


def test_reference_agreement_is_the_mean_leave_one_out_bleu_2():
    smooth = SmoothingFunction().method1
    refs = REFS[0]
    want = sum(sentence_bleu([r for j, r in enumerate(refs) if j != i], refs[i], weights=(0.5, 0.5),
                             smoothing_function=smooth) for i in range(len(refs))) / len(refs)
    assert reference_agreement(refs) == pytest.approx(want, abs=1e-12)
    assert reference_agreement([refs[0]]) == 0.0 and reference_agreement([]) == 0.0
    assert reference_agreement([refs[0], []]) == pytest.approx(
        sentence_bleu([[]], refs[0], weights=(0.5, 0.5), smoothing_function=smooth))


def test_word_usage_counts_per_image_reference_rates():
    refs = [[["a", "dog"], ["a", "cat"]], [["a", "a"]], [["owl"], ["sky"], ["sky"]]]
    hyps = [["a", "dog", "dog", "bird"], ["cat"], []]
    rows = {r["word"]: r for r in word_usage(refs, hyps)}
    # references per image: a = (1 + 1) / 2 + 2 / 1 = 3; dog = cat = 1 / 2; owl = 1 / 3; sky = 2 / 3
    assert rows["a"] == {"word": "a", "predicted": 1, "references": 3.0, "ratio": 2 / 4, "difference": -2.0}
    assert rows["dog"] == {"word": "dog", "predicted": 2, "references": 0.5, "ratio": 3 / 1.5, "difference": 1.5}
    assert rows["cat"]["difference"] == 0.5 and rows["cat"]["ratio"] == pytest.approx(2 / 1.5)
    assert rows["bird"] == {"word": "bird", "predicted": 1, "references": 0.0, "ratio": 2.0, "difference": 1.0}
    assert rows["owl"]["references"] == 0.33 and rows["owl"]["predicted"] == 0
    assert rows["owl"]["difference"] == pytest.approx(-1 / 3) and rows["owl"]["ratio"] == pytest.approx(1 / (4 / 3))
    assert rows["sky"]["references"] == 0.67
    order = [r["word"] for r in word_usage(refs, hyps)]
    assert order[:2] == ["a", "dog"] and order[-1] == "owl"            # largest |difference| first


def test_coco_metrics_per_image_equal_pycocoevalcap_called_directly():
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    hyps = HYPS + [[]]
    refs = REFS + [REFS[0]]
    corpus, per_image, note = coco_scores(refs, hyps, meteor=False)
    gts = {i: [" ".join(r) for r in rs] for i, rs in enumerate(refs)}
    res = {i: [" ".join(h) if h else "<empty>"] for i, h in enumerate(hyps)}
    cider, cider_each = Cider().compute_score(gts, res)
    rouge, rouge_each = Rouge().compute_score(gts, res)
    bleu, bleu_each = Bleu(4).compute_score(gts, res)
    assert corpus["cider"] == pytest.approx(cider, abs=1e-12)
    assert per_image["cider"] == pytest.approx(list(cider_each), abs=1e-12)
    assert corpus["rouge_l"] == pytest.approx(rouge, abs=1e-12)
    assert per_image["rouge_l"] == pytest.approx(list(rouge_each), abs=1e-12)
    for n in range(4):
        assert corpus[f"coco_bleu_{n + 1}"] == pytest.approx(bleu[n], abs=1e-12)
        assert per_image[f"coco_bleu_{n + 1}"] == pytest.approx(bleu_each[n], abs=1e-12)
    assert len(set(per_image["cider"])) == 4 and per_image["cider"][3] == 0.0
    assert note == "METEOR not computed (disabled)" and "meteor" not in corpus
    with pytest.raises(ValueError):
        coco_scores(refs, hyps[:-1], meteor=False)
    with pytest.raises(ValueError):
        coco_scores([], [], meteor=False)


def test_kendall_tau_b_by_hand():
    # pairs of (3, 1, 2, 2) vs (1, 2, 3, 3): concordant 2, discordant 3, ties only in both (not counted)
    x, y = [3, 1, 2, 2], [1, 2, 3, 3]
    n0, n1, n2 = 6, 1, 1
    assert kendall_tau(x, y) == pytest.approx((2 - 3) / math.sqrt((n0 - n1) * (n0 - n2)))


def test_metric_errors_say_what_is_wrong():
    with pytest.raises(ValueError, match=r"^3 reference sets for 2 hypotheses$"):
        corpus_bleu_scores(REFS, HYPS[:2])
    with pytest.raises(ValueError, match=r"^no hypotheses to score$"):
        corpus_bleu_scores([], [])
    with pytest.raises(ValueError, match=r"^3 reference sets for 2 hypotheses$"):
        coco_scores(REFS, HYPS[:2], meteor=False)
    with pytest.raises(ValueError, match=r"^0 reference sets for 0 hypotheses$"):
        coco_scores([], [], meteor=False)


def test_coco_toolkit_progress_lines_do_not_reach_the_console(capsys):
    coco_scores(REFS, HYPS, meteor=False)
    assert capsys.readouterr().out == ""


def test_meteor_is_on_by_default_and_skipped_with_a_note_without_java(monkeypatch):
    import shutil

    assert shutil.which("java"), "Java is on PATH here (README: METEOR needs Java 8+)"
    corpus, per_image, note = coco_scores(REFS, HYPS)                   # meteor=True is the default
    assert note is None
    assert 0 < corpus["meteor"] < 1 and len(per_image["meteor"]) == 3
    assert all(0 < m < 1 for m in per_image["meteor"]) and len(set(per_image["meteor"])) == 3
    monkeypatch.setattr(shutil, "which", lambda name: None)
    corpus, per_image, note = coco_scores(REFS, HYPS)
    assert note == "METEOR skipped: it needs Java 8+ on PATH (OSError: java not found)"
    assert "meteor" not in corpus and "meteor" not in per_image and corpus["cider"] > 0


# --- CIDEr-D as the SCST reward computes it -------------------------------------------------------------------
from captioning.evaluation.metrics import CiderD  # noqa: E402

CIDER_REFS = [
    [["a", "dog", "runs", "on", "the", "grass"], ["a", "brown", "dog", "is", "running"],
     ["the", "dog", "plays", "in", "a", "field"]],
    [["two", "children", "play", "in", "the", "water"], ["kids", "splash", "in", "a", "pool"],
     ["two", "kids", "are", "swimming"]],
    [["a", "man", "rides", "a", "bike"], ["a", "cyclist", "on", "a", "road"], ["a", "man", "on", "a", "bicycle"]],
    [["a", "woman", "in", "a", "red", "coat"], ["a", "lady", "walks", "down", "the", "street"],
     ["a", "woman", "walking", "in", "the", "city"]],
]
CIDER_HYPS = [["a", "dog", "is", "running", "on", "the", "grass"], ["two", "kids", "play", "in", "the", "pool"],
        ["a", "man", "on", "a", "bike"], ["a", "dog", "in", "the", "street"]]


@pytest.mark.parametrize("n, sigma", [(4, 6.0), (4, 3.0), (4, 1.5)])   # the toolkit only works with n = 4
def test_cider_d_reproduces_the_coco_caption_toolkit(n, sigma):
    """With the evaluation's own references as the document-frequency corpus, the SCST reward is pycocoevalcap's
    CIDEr-D (n-gram orders and length-penalty width passed through), image by image."""
    from pycocoevalcap.cider.cider import Cider

    # unseen n-grams; one word (its length, in the toolkit's bigram count, is 0); one reference; an empty caption
    hyps = CIDER_HYPS + [["a", "zebra", "dances"], ["dog"], ["a", "man", "on", "a", "bike"], []]
    refs = CIDER_REFS + [CIDER_REFS[0], CIDER_REFS[0], [["a", "man", "rides", "a", "bike"]], CIDER_REFS[1]]
    gts = {i: [" ".join(r) for r in rs] for i, rs in enumerate(refs)}
    res = {i: [" ".join(h) if h else "<empty>"] for i, h in enumerate(hyps)}
    theirs, theirs_each = Cider(n=n, sigma=sigma).compute_score(gts, res)
    scorer = CiderD(refs, n=n, sigma=sigma)
    ours, ours_each = scorer.corpus_score(hyps[:-1] + [["<empty>"]], refs)
    assert ours == pytest.approx(theirs, rel=1e-9)
    assert ours_each == pytest.approx(list(theirs_each), rel=1e-9)
    assert max(ours_each) > 0.5 and min(ours_each) >= 0.0
    assert scorer.score(CIDER_HYPS[0], CIDER_REFS[0]) == ours_each[0]          # cached references score the same
    assert CiderD(refs).corpus_score([], []) == (0.0, [])
    assert ours_each[5] > 0 and ours_each[6] > 0                              # the one-word and one-reference cases
    if (n, sigma) == (4, 6.0):                                               # the defaults are the toolkit's
        assert CiderD(refs).corpus_score(hyps[:-1], refs[:-1])[1] == ours_each[:-1]


def test_cider_d_rewards_the_better_caption_and_penalises_length():
    scorer = CiderD(CIDER_REFS)
    good = scorer.score(["a", "man", "rides", "a", "bike"], CIDER_REFS[2])
    bad = scorer.score(["two", "kids"], CIDER_REFS[2])
    assert good > bad
    rambling = ["a", "man", "rides", "a", "bike"] * 4          # the Gaussian length penalty (sigma 6)
    assert scorer.score(rambling, CIDER_REFS[2]) < good / 2


# --- diversity metrics, exactly -------------------------------------------------------------------------------
from captioning.evaluation.metrics import (  # noqa: E402
    cider_each,
    distinct_captions,
    distinct_n,
    diversity_scores,
    mean_length,
    novel_fraction,
    oracle_cider,
    self_bleu_4,
)

SETS = [  # three images, two captions each (best first); the first two share their best caption
    ["a dog runs on grass".split(), "a dog runs on the grass".split()],
    ["a dog runs on grass".split(), "a man rides a bike".split()],
    ["two kids play in the blue water".split(), "two kids play in a pool".split()],
]
SET_REFS = [REFS[0], REFS[2], REFS[1]]
TRAINING = ["a dog runs on grass".split(), "a man rides a bike".split()]


def test_diversity_scores_are_exact():
    """Values chosen to need all six decimals, so a changed rounding, order or key shows."""
    everything = [c for s in SETS for c in s]
    grams2 = [tuple(c[i:i + 2]) for c in everything for i in range(len(c) - 1)]
    self_refs = [[list(c) for j, c in enumerate(s) if j != i] for s in SETS for i in range(2)]
    self_bleu = corpus_bleu(self_refs, everything, weights=WEIGHTS[4])
    gts = {k: [" ".join(r) for r in SET_REFS[k // 2]] for k in range(6)}
    res = {k: [" ".join(SETS[k // 2][k % 2])] for k in range(6)}
    from pycocoevalcap.cider.cider import Cider

    each = Cider().compute_score(gts, res)[1]
    oracle = sum(max(each[2 * i], each[2 * i + 1]) for i in range(3)) / 3
    assert 0.01 < self_bleu < 0.99 and oracle > 0
    got = diversity_scores(SETS, training_captions=TRAINING, references=SET_REFS)
    # first captions: 5 + 5 + 7 = 17 words, 12 distinct; bigrams 4 + 4 + 6 = 14, 10 distinct; trigrams 11, 8 distinct
    assert got == {
        "distinct_captions": round(1 / 3, 6), "vocab_used": 12, "distinct_1": round(12 / 17, 6),
        "distinct_2": round(10 / 14, 6), "mean_length": 17 / 3, "novel_fraction": round(1 / 3, 6),
        "captions_per_image": 2, "self_bleu_4": round(self_bleu, 6),
        "distinct_2_all": round(len(set(grams2)) / len(grams2), 6), "oracle_cider": round(oracle, 6)}
    assert list(got) == ["distinct_captions", "vocab_used", "distinct_1", "distinct_2", "mean_length",
                         "novel_fraction", "captions_per_image", "self_bleu_4", "distinct_2_all", "oracle_cider"]
    assert diversity_scores([s[:1] for s in SETS]) == {k: got[k] for k in ("distinct_captions", "vocab_used",
                                                                           "distinct_1", "distinct_2", "mean_length")}
    assert distinct_n([s[0] for s in SETS], 3) == 8 / 11
    assert distinct_n(everything, 2) == len(set(grams2)) / len(grams2) and distinct_n([["a"]], 2) == 0.0
    assert distinct_n([["a", "b", "a", "b"]], 2) == 2 / 3 and distinct_n([["a", "b", "c"]], 3) == 1.0
    assert distinct_captions(everything) == 4 / 6                         # "a dog runs on grass" twice
    assert novel_fraction(everything, TRAINING) == 3 / 6 and mean_length(everything) == 34 / 6
    assert self_bleu_4(SETS) == self_bleu and oracle_cider(SET_REFS, SETS) == pytest.approx(oracle, abs=1e-12)


def test_diversity_errors_are_exact():
    for fn in (distinct_captions, mean_length, lambda h: novel_fraction(h, TRAINING)):
        with pytest.raises(ValueError) as err:
            fn([])
        assert str(err.value) == "no captions to measure"
    with pytest.raises(ValueError) as err:
        self_bleu_4([SETS[0], SETS[1][:1]])
    assert str(err.value) == "self-BLEU needs at least 2 captions per image; decode with n > 1"
    for refs, sets in ((REFS, SETS[:2]), ([], [])):
        with pytest.raises(ValueError) as err:
            cider_each(refs, sets)
        assert str(err.value) == f"{len(refs)} reference sets for {len(sets)} caption sets"
