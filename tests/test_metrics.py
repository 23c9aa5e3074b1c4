import pytest

from captioning.evaluation.metrics import corpus_bleu_scores, reference_agreement, sentence_bleu_scores, word_usage


def test_perfect_hypotheses_score_one():
    refs = [[["a", "dog", "runs", "on", "the", "grass"]], [["two", "men", "play", "a", "game", "outside"]]]
    hyps = [r[0] for r in refs]
    scores = corpus_bleu_scores(refs, hyps)
    assert all(v == pytest.approx(1.0) for v in scores.values())


def test_bleu_uses_all_references_and_ranks_sensibly():
    refs = [[["a", "dog", "runs", "on", "grass"], ["a", "brown", "dog", "is", "running"]]]
    good = sentence_bleu_scores(refs[0], ["a", "brown", "dog", "is", "running"])
    bad = sentence_bleu_scores(refs[0], ["people", "sit", "at", "a", "table"])
    assert good["bleu_4"] == pytest.approx(1.0) and bad["bleu_4"] < 0.1
    assert 0 < bad["bleu_1"] < good["bleu_1"]


def test_corpus_bleu_checks_lengths():
    with pytest.raises(ValueError):
        corpus_bleu_scores([[["a"]]], [])


def test_reference_agreement_and_word_usage():
    same = [["a", "dog", "runs"]] * 5
    mixed = [["a", "dog", "runs"], ["people", "eat"], ["sky", "blue"], ["a", "cat"], ["red", "car"]]
    assert reference_agreement(same) > reference_agreement(mixed)
    rows = {r["word"]: r for r in word_usage([same], [["dog", "dog", "dog"]])}
    assert rows["dog"]["ratio"] > 1 and rows["runs"]["ratio"] < 1


def test_coco_metrics_rank_good_above_bad_and_report_per_image():
    from captioning.evaluation.metrics import coco_scores

    refs = [[["a", "dog", "runs", "on", "the", "grass"], ["a", "brown", "dog", "running", "outside"]],
            [["two", "men", "play", "chess"], ["men", "playing", "a", "board", "game"]],
            [["a", "girl", "on", "a", "swing"], ["a", "child", "swinging", "in", "a", "park"]]]
    good = [["a", "dog", "runs", "on", "the", "grass"], ["two", "men", "play", "chess"], ["a", "girl", "on", "a",
                                                                                          "swing"]]
    bad = [["a", "girl", "on", "a", "swing"], ["a", "dog", "runs", "on", "the", "grass"], ["two", "men", "play",
                                                                                           "chess"]]
    g, g_each, _ = coco_scores(refs, good, meteor=False)
    b, b_each, note = coco_scores(refs, bad, meteor=False)
    assert g["cider"] > b["cider"] and g["coco_bleu_4"] > b["coco_bleu_4"] and g["rouge_l"] > b["rouge_l"]
    assert len(g_each["cider"]) == 3 and all(x > y for x, y in zip(g_each["cider"], b_each["cider"]))
    assert "meteor" not in g and "METEOR" in note


def test_kendall_tau():
    from captioning.evaluation.metrics import kendall_tau

    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)


def test_metric_human_agreement_on_a_small_judged_set(tmp_path):
    from captioning.data.flickr8k import Flickr8k
    from captioning.evaluation.human import metric_human_agreement

    caps = {"a.jpg": ["a dog runs on grass"] * 5, "b.jpg": ["two men play chess"] * 5,
            "c.jpg": ["a girl on a swing"] * 5}
    ds = Flickr8k(tmp_path, tmp_path, caps, {"train": [], "dev": [], "test": list(caps)})
    lines = ["a.jpg\tb.jpg#0\t1\t1\t1", "a.jpg\tc.jpg#1\t1\t2\t1", "a.jpg\ta.jpg#2\t4\t4\t4",
             "b.jpg\tb.jpg#3\t4\t3\t4", "b.jpg\ta.jpg#0\t1\t1\t2", "c.jpg\tc.jpg#0\t4\t4\t3", "c.jpg\tb.jpg#1\t2\t1\t1"]
    (tmp_path / "ExpertAnnotations.txt").write_text("\n".join(lines) + "\n")
    out = metric_human_agreement(ds, meteor=False)
    assert out["pairs"] == 7
    taus = {m["metric"]: m["kendall_tau"] for m in out["metrics"]}
    assert {"bleu_4", "coco_bleu_4", "cider", "rouge_l"} <= set(taus)
    assert all(t > 0.5 for t in taus.values())           # matching captions are the ones experts rated high


# --- diversity ---------------------------------------------------------------------------------------------
from captioning.evaluation.metrics import (  # noqa: E402
    coco_scores,
    distinct_captions,
    distinct_n,
    diversity_scores,
    mean_length,
    novel_fraction,
    oracle_cider,
    self_bleu_4,
    vocab_used,
)

DOG, CAT, RUN = (["a", "dog", "runs"], ["a", "cat", "sleeps", "on", "a", "bed"], ["a", "dog", "runs", "fast"])


def test_split_level_diversity_counts_what_it_says():
    hyps = [DOG, DOG, CAT, RUN]
    assert distinct_captions(hyps) == 0.5                      # two photos share "a dog runs"
    assert distinct_captions([DOG, CAT]) == 1.0
    assert vocab_used(hyps) == 8                               # a dog runs cat sleeps on bed fast
    assert novel_fraction(hyps, training_captions=[DOG, ["x"]]) == 0.5
    assert distinct_n([DOG, DOG], 1) == 3 / 6 and distinct_n([DOG, CAT], 2) == 7 / 7
    assert distinct_n([["a"]], 2) == 0.0
    assert mean_length([DOG, RUN]) == 3.5


def test_self_bleu_is_one_for_identical_captions_and_low_for_different_ones():
    assert self_bleu_4([[RUN, RUN, RUN]]) == pytest.approx(1.0)
    assert self_bleu_4([[RUN, CAT, ["two", "men", "play", "chess", "outside"]]]) < 0.1
    with pytest.raises(ValueError, match="at least 2 captions"):
        self_bleu_4([[RUN]])


def test_oracle_cider_scores_the_best_caption_of_each_image_as_the_toolkit_would():
    refs = [[["a", "dog", "runs", "on", "the", "grass"], ["a", "brown", "dog", "runs"]],
            [["a", "cat", "sleeps", "on", "a", "bed"], ["a", "cat", "lies", "on", "a", "bed"]],
            [["two", "men", "play", "chess"], ["men", "playing", "chess", "outside"]]]
    sets = [[CAT, ["a", "brown", "dog", "runs"]], [CAT, DOG], [DOG, ["two", "men", "play", "chess"]]]
    best = [s[1] for s in sets[:1]] + [sets[1][0], sets[2][1]]
    # the toolkit's CIDEr-D of the best captions alone (document frequencies from the same three images)
    assert oracle_cider(refs, sets) == pytest.approx(coco_scores(refs, best, meteor=False)[0]["cider"])
    assert oracle_cider(refs, sets) > coco_scores(refs, [s[0] for s in sets], meteor=False)[0]["cider"]


def test_diversity_scores_adds_multi_caption_metrics_only_for_several_captions():
    refs = [[DOG], [CAT]]
    one = diversity_scores([[DOG], [CAT]], training_captions=[DOG], references=refs)
    assert one["novel_fraction"] == 0.5 and "self_bleu_4" not in one and "oracle_cider" not in one
    many = diversity_scores([[DOG, RUN], [CAT, DOG]], training_captions=[DOG], references=refs)
    assert {"self_bleu_4", "oracle_cider", "distinct_2_all"} <= set(many) and many["captions_per_image"] == 2
    assert many["distinct_captions"] == one["distinct_captions"]          # split metrics use the first captions
