import pytest

from captioning.metrics import corpus_bleu_scores, reference_agreement, sentence_bleu_scores, word_usage


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
    from captioning.metrics import coco_scores

    refs = [[["a", "dog", "runs", "on", "the", "grass"], ["a", "brown", "dog", "running", "outside"]],
            [["two", "men", "play", "chess"], ["men", "playing", "a", "board", "game"]],
            [["a", "girl", "on", "a", "swing"], ["a", "child", "swinging", "in", "a", "park"]]]
    good = [["a", "dog", "runs", "on", "the", "grass"], ["two", "men", "play", "chess"], ["a", "girl", "on", "a", "swing"]]
    bad = [["a", "girl", "on", "a", "swing"], ["a", "dog", "runs", "on", "the", "grass"], ["two", "men", "play", "chess"]]
    g, g_each, _ = coco_scores(refs, good, meteor=False)
    b, b_each, note = coco_scores(refs, bad, meteor=False)
    assert g["cider"] > b["cider"] and g["coco_bleu_4"] > b["coco_bleu_4"] and g["rouge_l"] > b["rouge_l"]
    assert len(g_each["cider"]) == 3 and all(x > y for x, y in zip(g_each["cider"], b_each["cider"]))
    assert "meteor" not in g and "METEOR" in note


def test_kendall_tau():
    from captioning.metrics import kendall_tau

    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)


def test_metric_human_agreement_on_a_small_judged_set(tmp_path):
    from captioning.data import Flickr8k
    from captioning.human import metric_human_agreement

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
