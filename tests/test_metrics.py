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
