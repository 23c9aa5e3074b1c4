"""Decoding is tested on a tiny hand-made step decoder (exact, fast) and on the real MergeDecoder."""
import itertools
import math
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from captioning.data.text import Vocabulary
from captioning.decoding.config import DecodeConfig
from captioning.decoding.search import beam_search, decode, greedy_search
from captioning.models.stepper import EnsembleStepDecoder


class MarkovDecoder:
    """Log-probabilities depend on the previous token, the step and the image: a search space we can enumerate."""

    def __init__(self, vocab_size, seed=0, attention=False):
        rng = np.random.default_rng(seed)
        self.table = rng.normal(0, 2.0, size=(vocab_size, 8, vocab_size))     # (prev, step, next)
        self.attention = attention

    def start(self, features, repeat=1):
        context = np.repeat(np.asarray(features, np.float64), repeat, axis=0)
        return context, [np.zeros((len(context), 1))]

    def step(self, context, tokens, state):
        t = state[0][:, 0].astype(int)
        logits = self.table[tokens, np.minimum(t, 7)] + context[:, : self.table.shape[2]]
        logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        extras = None
        if self.attention:
            raw = np.exp(context[:, :4] + t[:, None])
            extras = raw / raw.sum(axis=1, keepdims=True)
        return logp, [state[0] + 1], extras


def tiny_vocab(n_words=3):
    return Vocabulary([f"w{i}" for i in range(n_words)])


def brute_force_best(model, feature, vocab, cfg):
    """Enumerate every caption of at most max_length tokens; return the best (words, score)."""
    words = [i for i in range(len(vocab)) if i not in (vocab.pad_id, vocab.unk_id, vocab.start_id, vocab.end_id)]
    best = (None, -math.inf)
    for n in range(cfg.min_length, cfg.max_length + 1):
        for seq in itertools.product(words, repeat=n):
            # shorter captions must end with <end>; at max_length they are cut off unfinished
            for finish in ([vocab.end_id],) if n < cfg.max_length else ([],):
                tokens = list(seq) + finish
                ctx, state = model.start(feature[None])
                prev, total = vocab.start_id, 0.0
                for tok in tokens:
                    logp, state, _ = model.step(ctx, np.array([prev]), state)
                    total += logp[0, tok]
                    prev = tok
                score = total / len(tokens) ** cfg.length_penalty
                if score > best[1]:
                    best = ([vocab.itos[t] for t in seq], score)
    return best


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_exhaustive_beam_finds_brute_force_optimum(seed, length_penalty):
    vocab = tiny_vocab(3)
    model = MarkovDecoder(len(vocab), seed)
    feature = np.random.default_rng(seed + 100).normal(size=len(vocab))
    cfg = DecodeConfig(beam_width=100, max_length=4, length_penalty=length_penalty)   # 3^4 < 100 beams
    words, score = brute_force_best(model, feature, vocab, cfg)
    got = beam_search(model, feature[None], vocab, cfg)[0][0]
    assert got.words == words
    assert got.score == pytest.approx(score)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("no_repeat", [0, 2])
def test_beam_width_one_equals_greedy(seed, no_repeat):
    vocab = tiny_vocab(6)
    model = MarkovDecoder(len(vocab), seed, attention=True)
    feats = np.random.default_rng(seed).normal(size=(7, len(vocab)))
    cfg = DecodeConfig(beam_width=1, max_length=8, no_repeat_ngram_size=no_repeat)
    greedy = greedy_search(model, feats, vocab, cfg)
    beam = beam_search(model, feats, vocab, cfg)
    for g, (b,) in zip(greedy, beam):
        assert g.words == b.words and g.finished == b.finished
        assert g.log_prob == pytest.approx(b.log_prob)
        np.testing.assert_allclose(g.attention, b.attention)


def test_batched_decoding_equals_one_image_at_a_time():
    vocab = tiny_vocab(6)
    model = MarkovDecoder(len(vocab), 3)
    feats = np.random.default_rng(1).normal(size=(9, len(vocab)))
    cfg = DecodeConfig(beam_width=4, max_length=7, num_return_sequences=3)
    batched = decode(model, feats, vocab, cfg, batch_size=4)
    for i in range(len(feats)):
        single = decode(model, feats[i: i + 1], vocab, cfg)[0]
        assert [c.words for c in single] == [c.words for c in batched[i]]


@pytest.mark.parametrize("cfg", [DecodeConfig(max_length=8),
                                 DecodeConfig(beam_width=3, max_length=8, num_return_sequences=2)],
                         ids=["greedy", "beam3"])
def test_finished_images_leave_the_batch_and_nothing_else_changes(cfg):
    vocab = tiny_vocab(6)
    model = MarkovDecoder(len(vocab), 5, attention=True)
    rows_per_step = []
    step = model.step
    model.step = lambda context, tokens, state: (rows_per_step.append(len(tokens)), step(context, tokens, state))[1]
    feats = np.random.default_rng(2).normal(0, 3, size=(16, len(vocab)))
    batched = decode(model, feats, vocab, cfg, batch_size=16)
    assert rows_per_step[0] == len(feats)                             # beams start as one row per image
    assert rows_per_step[-1] < rows_per_step[1] <= len(feats) * cfg.beam_width   # the batch shrank as images finished
    for i in range(len(feats)):
        single = decode(model, feats[i: i + 1], vocab, cfg)[0]
        assert [c.words for c in single] == [c.words for c in batched[i]]
        for a, b in zip(single, batched[i]):
            assert a.log_prob == pytest.approx(b.log_prob) and a.token_probs == pytest.approx(b.token_probs)
            np.testing.assert_allclose(a.attention, b.attention)


def test_wide_beams_take_fewer_images_per_batch():
    vocab = tiny_vocab(6)
    model = MarkovDecoder(len(vocab), 3)
    rows_per_step = []
    step = model.step
    model.step = lambda context, tokens, state: (rows_per_step.append(len(tokens)), step(context, tokens, state))[1]
    feats = np.random.default_rng(4).normal(0, 3, size=(10, len(vocab)))
    cfg = DecodeConfig(beam_width=4, max_length=6, num_return_sequences=2)
    capped = decode(model, feats, vocab, cfg, max_rows=12)               # 3 images (12 rows) at a time
    assert max(rows_per_step) == 12
    rows_per_step.clear()
    whole = decode(model, feats, vocab, cfg)
    assert max(rows_per_step) == 40
    assert [[c.words for c in n] for n in capped] == [[c.words for c in n] for n in whole]


def test_results_carry_scores_probabilities_and_nbest_order():
    vocab = tiny_vocab(6)
    model = MarkovDecoder(len(vocab), 2, attention=True)
    feats = np.random.default_rng(2).normal(size=(3, len(vocab)))
    nbest = decode(model, feats, vocab, DecodeConfig(beam_width=5, max_length=6, num_return_sequences=5))
    for caps in nbest:
        assert len(caps) == 5
        assert [c.score for c in caps] == sorted((c.score for c in caps), reverse=True)
        for c in caps:
            assert c.text == " ".join(c.words)
            assert c.log_prob == pytest.approx(sum(math.log(p) for p in c.token_probs))
            assert c.normalized_log_prob == pytest.approx(c.log_prob / c.num_tokens)
            assert all(0 < p <= 1 for p in c.token_probs)
            assert c.attention.shape == (c.num_tokens, 4)
            np.testing.assert_allclose(c.attention.sum(axis=1), 1.0)


def test_no_repeat_ngram_is_respected_and_decoding_stops_at_max_length():
    vocab = tiny_vocab(6)          # 36 bigrams: enough that the ban never forces <end> within 12 tokens
    model = MarkovDecoder(len(vocab), 0)
    model.table[:, :, vocab.end_id] = -50          # never wants to stop
    feats = np.zeros((2, len(vocab)))
    for cfg in (DecodeConfig(max_length=12, no_repeat_ngram_size=2),
                DecodeConfig(beam_width=3, max_length=12, no_repeat_ngram_size=2)):
        for caps in decode(model, feats, vocab, cfg):
            words = caps[0].words
            assert len(caps[0].token_probs) <= 12 and not caps[0].finished
            bigrams = list(zip(words, words[1:]))
            assert len(bigrams) == len(set(bigrams))


def test_special_tokens_never_emitted_and_min_length():
    vocab = tiny_vocab(3)
    model = MarkovDecoder(len(vocab), 4)
    model.table[:, :, [vocab.unk_id, vocab.pad_id, vocab.start_id]] = 20   # the model loves specials
    model.table[:, :, vocab.end_id] = 10
    for beam in (1, 3):
        caps = decode(model, np.zeros((2, len(vocab))), vocab, DecodeConfig(beam_width=beam, max_length=5,
                                                                            min_length=2))
        for (c, *_) in caps:
            assert len(c.words) >= 2 and all(w.startswith("w") for w in c.words)


@pytest.mark.parametrize("kwargs, message", [
    ({"beam_width": 0}, "beam_width"),
    ({"beam_width": 2.5}, "beam_width"),
    ({"max_length": 0}, "max_length"),
    ({"num_return_sequences": 3, "beam_width": 2}, "num_return_sequences"),
    ({"length_penalty": float("nan")}, "length_penalty"),
    ({"no_repeat_ngram_size": -1}, "no_repeat_ngram_size"),
    ({"min_length": 5, "max_length": 5}, "min_length"),
])
def test_config_is_validated_up_front(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DecodeConfig(**kwargs)


def test_ensemble_averages_probabilities_and_searches_like_one_model():
    vocab = tiny_vocab(3)
    a, b = MarkovDecoder(len(vocab), 1, attention=True), MarkovDecoder(len(vocab), 2, attention=True)
    feats = np.random.default_rng(5).normal(size=(4, len(vocab)))
    ensemble = EnsembleStepDecoder([a, b])
    # one step: the log of the mean of the two softmaxes, attention averaged
    ctx, state = ensemble.start(feats, repeat=2)
    tokens = np.full(8, vocab.start_id)
    got, state, attn = ensemble.step(ctx, tokens, state)
    (la, _, aa), (lb, _, ab) = (m.step(m.start(feats, 2)[0], tokens, m.start(feats, 2)[1]) for m in (a, b))
    np.testing.assert_allclose(got, np.log((np.exp(la) + np.exp(lb)) / 2))
    np.testing.assert_allclose(np.exp(got).sum(axis=1), 1.0)
    np.testing.assert_allclose(attn, (aa + ab) / 2)
    assert len(state) == 2 and (state[0] == 1).all()
    # an ensemble of one model decodes exactly like the model
    cfg = DecodeConfig(beam_width=3, max_length=5, num_return_sequences=2)
    for single, alone in zip(decode(a, feats, vocab, cfg), decode(EnsembleStepDecoder([a]), feats, vocab, cfg)):
        assert [c.words for c in single] == [c.words for c in alone]
        assert [c.log_prob for c in single] == pytest.approx([c.log_prob for c in alone])
    # exhaustive beam over the ensemble finds the brute-force best caption of the averaged model
    cfg = DecodeConfig(beam_width=100, max_length=4)
    words, score = brute_force_best(ensemble, feats[0], vocab, cfg)
    best = beam_search(ensemble, feats[:1], vocab, cfg)[0][0]
    assert best.words == words and best.score == pytest.approx(score)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), n_words=st.integers(1, 5), images=st.integers(1, 3),
       beam_width=st.integers(1, 6), max_length=st.integers(2, 9), min_length=st.integers(0, 3),
       length_penalty=st.floats(-2, 3, allow_nan=False), no_repeat=st.integers(0, 3),
       end_bias=st.floats(-60, 60, allow_nan=False))
def test_any_valid_config_decodes_without_error_and_stops_within_max_length(
        seed, n_words, images, beam_width, max_length, min_length, length_penalty, no_repeat, end_bias):
    """Property: for any model and any valid config, decoding returns ranked captions of at most max_length tokens."""
    min_length = min(min_length, max_length - 1)
    vocab = tiny_vocab(n_words)
    model = MarkovDecoder(len(vocab), seed, attention=True)
    model.table[:, :, vocab.end_id] += end_bias              # from "never stops" to "always wants to stop"
    n_best = 1 + seed % beam_width
    cfg = DecodeConfig(beam_width=beam_width, max_length=max_length, min_length=min_length,
                       length_penalty=length_penalty, no_repeat_ngram_size=no_repeat, num_return_sequences=n_best)
    feats = np.random.default_rng(seed).normal(size=(images, len(vocab)))
    results = decode(model, feats, vocab, cfg)
    assert len(results) == images
    for caps in results:
        assert 1 <= len(caps) <= n_best
        assert [c.score for c in caps] == sorted((c.score for c in caps), reverse=True)
        for c in caps:
            assert c.num_tokens <= max_length and len(c.token_probs) == c.num_tokens
            assert all(w in vocab.itos[4:] for w in c.words)
            assert math.isfinite(c.log_prob) and c.attention.shape == (c.num_tokens, 4)


# --- the strategy menu: sampling, diverse beam search, constraints every strategy honours ---------------
from captioning.decoding.config import parse_spec  # noqa: E402
from captioning.decoding.constraints import sampling_distribution  # noqa: E402


def _rows_counter(model):
    rows = []
    step = model.step
    model.step = lambda context, tokens, state: (rows.append(len(tokens)), step(context, tokens, state))[1]
    return rows


@pytest.mark.parametrize("seed", range(4))
def test_sampling_with_top_k_1_is_greedy(seed):
    vocab = tiny_vocab(6)
    model = MarkovDecoder(len(vocab), seed, attention=True)
    feats = np.random.default_rng(seed).normal(size=(5, len(vocab)))
    greedy = greedy_search(model, feats, vocab, DecodeConfig(max_length=8, no_repeat_ngram_size=2))
    sampled = decode(model, feats, vocab, DecodeConfig(strategy="sample", top_k=1, temperature=1.7, seed=seed,
                                                       num_return_sequences=3, max_length=8, no_repeat_ngram_size=2))
    for g, samples in zip(greedy, sampled):
        assert len(samples) == 3
        for s in samples:
            assert s.words == g.words and s.finished == g.finished
            assert s.token_probs == pytest.approx(g.token_probs)
            np.testing.assert_allclose(s.attention, g.attention)


@pytest.mark.parametrize("seed", range(4))
def test_diverse_beam_search_with_one_group_is_beam_search(seed):
    vocab = tiny_vocab(6)
    model = MarkovDecoder(len(vocab), seed, attention=True)
    feats = np.random.default_rng(seed).normal(size=(4, len(vocab)))
    beam = decode(model, feats, vocab, DecodeConfig(beam_width=4, max_length=7, num_return_sequences=3))
    diverse = decode(model, feats, vocab, DecodeConfig(strategy="diverse", beam_width=4, num_groups=1,
                                                       diversity_penalty=5.0, max_length=7, num_return_sequences=3))
    for b, d in zip(beam, diverse):
        assert [c.words for c in b] == [c.words for c in d]
        assert [c.score for c in b] == pytest.approx([c.score for c in d])


def test_a_seed_reproduces_samples_and_another_seed_changes_them():
    vocab = tiny_vocab(8)
    model = MarkovDecoder(len(vocab), 1)
    feats = np.random.default_rng(0).normal(size=(6, len(vocab)))

    def draw(seed, batch_size=256):
        cfg = DecodeConfig(strategy="sample", num_return_sequences=5, seed=seed, max_length=8)
        return [[c.words for c in caps] for caps in decode(model, feats, vocab, cfg, batch_size=batch_size)]

    assert draw(0) == draw(0)
    assert draw(0) == draw(0, batch_size=2)          # an image's samples do not depend on the batching
    assert draw(0) != draw(1)
    assert len({tuple(w) for caps in draw(0) for w in caps}) > 6    # sampling, not argmax


def _reference_distribution(log_probs, temperature, top_k, top_p):
    """The textbook definition, word by word: softmax(log p / T), keep the k likeliest and renormalise, then
    keep the likeliest words until their mass reaches p and renormalise (Hugging Face's warper order)."""
    probs = np.exp(log_probs / temperature)
    order = sorted(range(len(probs)), key=lambda w: -probs[w])
    kept = order[:top_k] if top_k else order
    probs = np.where(np.isin(np.arange(len(probs)), kept), probs, 0.0)
    probs /= probs.sum()
    mass, nucleus = 0.0, []
    for w in kept:
        if probs[w] == 0 or (nucleus and mass >= top_p):
            break
        nucleus.append(w)
        mass += probs[w]
    out = np.zeros_like(probs)
    out[nucleus] = probs[nucleus]
    return out / out.sum()


@pytest.mark.parametrize("temperature, top_k, top_p", [(1.0, 0, 1.0), (0.6, 0, 1.0), (1.5, 4, 1.0),
                                                       (1.0, 0, 0.8), (0.8, 5, 0.9)])
def test_first_word_frequencies_match_the_truncated_distribution(temperature, top_k, top_p):
    """6,000 samples' first words against the known next-word distribution of a tiny model.

    Bound: Pearson's chi-square over the words the distribution keeps, p-value > 0.001 (a fixed seed, so
    the test is deterministic; a wrong temperature, truncation or renormalisation fails it by far), and
    no word outside the truncated support is ever drawn.
    """
    from scipy.stats import chisquare

    vocab = tiny_vocab(8)
    model = MarkovDecoder(len(vocab), 7)
    model.table[vocab.start_id, 0, 4:] = np.log([0.3, 0.2, 0.15, 0.12, 0.1, 0.07, 0.04, 0.02])
    model.table[vocab.start_id, 0, :4] = -np.inf                  # only words at the first step
    feats = np.zeros((60, len(vocab)))
    cfg = DecodeConfig(strategy="sample", temperature=temperature, top_k=top_k, top_p=top_p,
                       num_return_sequences=100, max_length=2, seed=3)
    first = np.array([vocab.stoi[c.words[0]] for caps in decode(model, feats, vocab, cfg) for c in caps])
    context, state = model.start(feats[:1])
    log_probs, _, _ = model.step(context, np.array([vocab.start_id]), state)
    expected = _reference_distribution(log_probs[0, 4:], temperature, top_k, top_p)          # over w0..w7
    counts = np.bincount(first - 4, minlength=8)
    assert counts[expected == 0].sum() == 0                       # never outside top-k / the nucleus
    support = expected > 0
    assert chisquare(counts[support], expected[support] * len(first)).pvalue > 0.001
    np.testing.assert_allclose(sampling_distribution(log_probs, temperature, top_k, top_p)[0, 4:], expected)


@pytest.mark.parametrize("cfg", [
    DecodeConfig(max_length=8, banned_words=("w0", "w2")),
    DecodeConfig(beam_width=4, num_return_sequences=4, max_length=8, banned_words=("w0", "w2")),
    DecodeConfig(strategy="sample", num_return_sequences=8, temperature=2.0, max_length=8, banned_words=("w0", "w2")),
    DecodeConfig(strategy="diverse", beam_width=4, num_groups=2, diversity_penalty=2.0, num_return_sequences=4,
                 max_length=8, banned_words=("w0", "w2")),
], ids=["greedy", "beam", "sample", "diverse"])
def test_banned_words_are_never_emitted_and_no_word_comes_twice_in_a_row(cfg):

    vocab = tiny_vocab(5)
    model = MarkovDecoder(len(vocab), 2)
    model.table[:, :, vocab.stoi["w0"]] = 15          # the model loves w0 and w2 ...
    model.table[:, :, vocab.stoi["w2"]] = 14
    model.table[:, :, vocab.end_id] = -30
    feats = np.random.default_rng(1).normal(size=(6, len(vocab)))
    words = [w for caps in decode(model, feats, vocab, cfg) for c in caps for w in c.words]
    assert words and not {"w0", "w2"} & set(words)
    for caps in decode(model, feats, vocab, replace(cfg, no_repeat_word=True)):
        for c in caps:
            assert all(a != b for a, b in zip(c.words, c.words[1:]))
    loops = [c.words for caps in decode(model, feats, vocab, replace(cfg, banned_words=())) for c in caps]
    assert any("w0" in w for w in loops)              # ... and says them when they are not banned


def test_repetition_penalty_discourages_words_already_said():
    vocab = tiny_vocab(6)
    model = MarkovDecoder(len(vocab), 0)
    model.table[:, :, vocab.stoi["w1"]] = 3.0          # w1 is always the favourite ...
    model.table[:, :, vocab.end_id] = -50
    feats = np.zeros((1, len(vocab)))
    plain = greedy_search(model, feats, vocab, DecodeConfig(max_length=6))[0].words
    penalised = greedy_search(model, feats, vocab, DecodeConfig(max_length=6, repetition_penalty=50.0))[0].words
    assert plain.count("w1") >= 4
    assert len(set(penalised)) == len(penalised)         # ... until it has been said once


def test_a_large_diversity_penalty_makes_the_groups_first_words_differ():
    vocab = tiny_vocab(8)
    model = MarkovDecoder(len(vocab), 4)
    model.table[vocab.start_id, 0, vocab.stoi["w3"]] = 12      # every beam wants to start with w3
    feats = np.random.default_rng(3).normal(size=(5, len(vocab)))
    beam = decode(model, feats, vocab, DecodeConfig(beam_width=6, num_return_sequences=3, max_length=6))
    assert all({c.words[0] for c in caps} == {"w3"} for caps in beam)
    diverse = decode(model, feats, vocab, DecodeConfig(strategy="diverse", beam_width=6, num_groups=3,
                                                       diversity_penalty=100.0, num_return_sequences=3, max_length=6))
    for caps in diverse:
        assert len(caps) == 3 and len({c.words[0] for c in caps}) == 3
        for c in caps:                                     # scores are the model's, without the penalty
            assert c.log_prob == pytest.approx(sum(math.log(p) for p in c.token_probs))


def test_sampling_n_captions_costs_n_times_the_greedy_rows():
    vocab = tiny_vocab(6)
    model = MarkovDecoder(len(vocab), 5)
    model.table[:, :, vocab.end_id] = -40                  # every caption runs to max_length: rows comparable
    feats = np.random.default_rng(0).normal(size=(10, len(vocab)))
    rows = _rows_counter(model)
    decode(model, feats, vocab, DecodeConfig(max_length=6))
    greedy_rows = sum(rows)
    rows.clear()
    decode(model, feats, vocab, DecodeConfig(strategy="sample", num_return_sequences=5, max_length=6))
    assert rows[0] == 10 and sum(rows) == 10 + 5 * (greedy_rows - 10)   # first step shared, then n rows per image


@pytest.mark.parametrize("kwargs, message", [
    ({"strategy": "nucleus"}, "strategy must be one of greedy, beam, sample, diverse"),
    ({"strategy": "sample", "temperature": 0}, "temperature must be > 0"),
    ({"strategy": "sample", "top_p": 0.0}, "top_p"),
    ({"strategy": "sample", "top_p": 1.5}, "top_p"),
    ({"strategy": "sample", "top_k": -1}, "top_k"),
    ({"strategy": "sample", "seed": -3}, "seed"),
    ({"strategy": "diverse", "beam_width": 6, "num_groups": 4}, "must divide beam_width"),
    ({"strategy": "diverse", "beam_width": 6, "num_groups": 3, "diversity_penalty": -1}, "diversity_penalty"),
    ({"strategy": "greedy", "beam_width": 3}, "use strategy 'beam'"),
    ({"beam_width": 6, "num_groups": 3}, "use strategy 'diverse'"),
    ({"repetition_penalty": 0}, "repetition_penalty"),
    ({"banned_words": "dog"}, "banned_words must be a tuple"),
])
def test_new_options_are_validated_with_what_to_change(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DecodeConfig(**kwargs)


def test_specs_parse_into_configs():
    assert parse_spec("greedy", max_length=20) == DecodeConfig(strategy="greedy", max_length=20)
    assert parse_spec("beam:5").beam_width == 5 and parse_spec("beam:5").kind == "beam"
    s = parse_spec("sample:temperature=0.7,top_p=0.9,n=5,seed=0")
    assert (s.kind, s.temperature, s.top_p, s.num_return_sequences, s.seed) == ("sample", 0.7, 0.9, 5, 0)
    d = parse_spec("diverse:beams=6,groups=3,penalty=0.5,n=3,ban=man+woman,no_repeat_word=1")
    assert (d.beam_width, d.num_groups, d.diversity_penalty, d.num_return_sequences) == (6, 3, 0.5, 3)
    assert d.banned_words == ("man", "woman") and d.no_repeat_word
    assert d.describe().startswith("diverse 6 beams / 3 groups")
    for bad, message in (("topk", "strategy must be one of"), ("sample:temp=2", "unknown option 'temp'"),
                         ("sample:top_p=high", "should be a number"), ("beam", "give the beam width"),
                         ("diverse:beams=5,groups=2", "must divide")):
        with pytest.raises(ValueError, match=message):
            parse_spec(bad)


def test_consensus_reranking_is_labelled_and_recorded_for_beam_and_diverse_runs_only():
    """DecodeConfig.describe / options with consensus reranking: a beam or diverse run names it and records its
    neighbours and weight; greedy and sampling never rerank (decoding.config)."""
    diverse = DecodeConfig(strategy="diverse", beam_width=6, num_groups=3, consensus=10, consensus_weight=1.5)
    assert diverse.describe() == "diverse 6 beams / 3 groups, penalty 0 (consensus 10, w 1.5)"
    assert diverse.options() == {"max_length": diverse.max_length, "beam_width": 6, "length_penalty": 1.0,
                                 "num_groups": 3, "diversity_penalty": 0.0, "consensus": 10,
                                 "consensus_weight": 1.5, "num_return_sequences": 1}
    beam = DecodeConfig(beam_width=5, consensus=10, consensus_weight=2)
    assert beam.describe() == "beam 5 (consensus 10, w 2)"
    assert beam.options()["consensus_weight"] == 2 and beam.options()["consensus"] == 10
    assert "consensus" not in DecodeConfig(beam_width=5).options()
    for plain in (DecodeConfig(), DecodeConfig(strategy="sample", num_return_sequences=2, consensus=10)):
        assert "consensus" not in plain.options() and "consensus" not in plain.describe()


def test_multi_features_slice_together_convert_and_name_what_is_missing():
    """models.stepper.MultiFeatures / as_float32: a cross-encoder ensemble's features, with exact messages."""
    from captioning.models.stepper import MultiFeatures, as_float32

    with pytest.raises(ValueError) as err:
        MultiFeatures({})
    assert str(err.value) == "MultiFeatures needs the features of at least one encoder"
    with pytest.raises(ValueError) as err:
        MultiFeatures({"a": np.zeros((2, 3)), "b": np.zeros((3, 3))})
    assert str(err.value) == "every encoder needs features for the same images; rows per encoder: {'a': 2, 'b': 3}"
    both = MultiFeatures({"a": np.arange(6).reshape(2, 3), "b": np.ones((2, 4))})
    with pytest.raises(KeyError) as err:
        both.of("c")
    assert err.value.args[0] == "no features from encoder 'c'; there are: a, b"
    part = both[1:]
    assert len(part) == 1 and part.keys == ["a", "b"] and part.of("a").tolist() == [[3, 4, 5]]
    assert part.of("b").shape == (1, 4)
    converted = as_float32(both)
    assert isinstance(converted, MultiFeatures) and converted.keys == ["a", "b"]
    assert [v.dtype for v in converted.groups.values()] == [np.float32, np.float32]
    assert converted.of("a").tolist() == [[0, 1, 2], [3, 4, 5]] and converted.of("b").shape == (2, 4)
    plain = as_float32([[1, 2]])
    assert isinstance(plain, np.ndarray) and plain.dtype == np.float32 and plain.tolist() == [[1.0, 2.0]]


def test_an_ensembles_memory_members_read_their_own_encoders_rows_and_must_share_one_memory():
    """EnsembleStepDecoder.prepare: each member with a memory gets its own encoder's rows; two memories that
    extend the vocabulary differently are refused, exactly."""
    from captioning.models.stepper import MultiFeatures

    class Reader:                                  # a retrieval member's prepare: reads rows, extends the words
        def __init__(self, extended):
            self.extended, self.seen = extended, None

        def prepare(self, features, vocab):
            self.seen = features
            return self.extended

    vocab = Vocabulary(["a", "dog"])
    wider = Vocabulary(["a", "dog", "zeppelin"])
    features = MultiFeatures({"x": np.zeros((2, 3)), "y": np.ones((2, 5))})
    reader, plain = Reader(wider), object()
    ensemble = EnsembleStepDecoder([plain, reader], ["x", "y"])
    assert ensemble.prepare(features, vocab) is wider
    assert reader.seen.shape == (2, 5) and reader.seen.sum() == 10                       # encoder y's rows
    clash = EnsembleStepDecoder([Reader(wider), Reader(Vocabulary(["a", "dog", "boat"]))], ["x", "y"])
    with pytest.raises(ValueError) as err:
        clash.prepare(features, vocab)
    assert str(err.value) == "an ensemble's retrieval decoders read different memories; keep one of them"
    same = EnsembleStepDecoder([Reader(wider), Reader(Vocabulary(["a", "dog", "zeppelin"]))], ["x", "y"])
    assert same.prepare(features, vocab).itos == wider.itos


def test_a_caption_found_twice_keeps_its_better_score_and_on_a_tie_the_first_one_found():
    from captioning.decoding.captions import Caption, distinct_captions

    first = Caption(["a", "dog"], -1.0, -0.5, [0.5, 0.5], finished=False)
    tie = Caption(["a", "dog"], -1.0, -0.5, [0.5, 0.5], finished=True)
    better = Caption(["a", "dog"], -0.8, -0.4, [0.6, 0.7])
    other = Caption(["a", "cat"], -2.0, -1.0, [0.3, 0.4])
    kept = distinct_captions([first, other, tie])
    assert kept[0] is first and kept[1] is other and len(kept) == 2
    assert distinct_captions([first, other, tie, better]) == [better, other]


@pytest.mark.parametrize("g, grid", [(10, 7), (7, 10), (9, 10), (2, 3), (3, 2)])
def test_resampled_attention_is_tensorflows_half_pixel_bilinear_resize_renormalised(g, grid):
    """models.stepper.resample_attention (a cross-encoder ensemble's maps on one grid) against an independent
    implementation: tf.image.resize, bilinear with half-pixel centres, each row then renormalised; an all-zero row
    becomes uniform, the dtype is kept and a map already on the grid is returned as it is."""
    import tensorflow as tf

    from captioning.models.stepper import resample_attention

    rng = np.random.default_rng(g * 10 + grid)
    maps = rng.random((3, g * g)).astype(np.float32)
    maps[1] = 0.0
    maps[2] = 0.0
    maps[2, g + 1] = 1.0                                                   # a peak away from the edges
    maps[0] /= maps[0].sum()
    got = resample_attention(maps, grid)
    want = tf.image.resize(maps.reshape(3, g, g, 1).astype(np.float64), (grid, grid), method="bilinear",
                           antialias=False).numpy().reshape(3, grid * grid)
    want[0] /= want[0].sum()
    want[2] /= want[2].sum()
    assert got.dtype == np.float32 and got.shape == (3, grid * grid)
    np.testing.assert_allclose(got[[0, 2]], want[[0, 2]], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got[1], np.full(grid * grid, 1.0 / (grid * grid)), rtol=1e-6)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-5)
    assert resample_attention(maps, g) is maps


def test_attention_over_a_non_square_number_of_locations_is_refused():
    from captioning.models.stepper import resample_attention

    with pytest.raises(ValueError) as err:
        resample_attention(np.ones((1, 12)), 3)
    assert str(err.value) == "attention over 12 locations is not a square grid"


def test_the_ensembles_mean_keeps_tiny_and_impossible_words_exact_and_gives_copied_ids_only_to_memory_members():
    """EnsembleStepDecoder.step: the log of the members' mean probability, column by column (a word every member
    finds very unlikely keeps its finite log-probability; one no member can write stays exactly -inf, silently);
    a member with a memory reads the extended ids, the others read <unk> for them."""
    import warnings

    class Fixed:                                   # a member that always predicts the same distribution
        def __init__(self, log_probs, memory=False):
            self.log_probs, self.seen = np.asarray(log_probs, np.float32), []
            if memory:
                self.prepare = lambda features, vocab: vocab

        def start(self, features, repeat=1):
            return None, [np.zeros((len(features) * repeat, 1), np.float32)]

        def step(self, context, tokens, state):
            self.seen.append(np.asarray(tokens).tolist())
            return self.log_probs, state, None

    ninf = -np.inf
    plain = Fixed([[ninf, -1000.0, np.log(0.5), np.log(0.5)]])
    memory = Fixed([[ninf, -1000.0, np.log(0.25), np.log(0.25), np.log(0.5)]], memory=True)   # id 4: a copy
    ensemble = EnsembleStepDecoder([plain, memory])
    assert ensemble.prepare(np.zeros((1, 3)), Vocabulary([])) is not None
    ensemble._known = 4                        # as if prepare() saw a 4-word vocabulary: id 4 is a copied word
    context, state = ensemble.start(np.zeros((1, 3)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")                                    # -inf - -inf and log(0) stay silent
        mean, _, maps = ensemble.step(context, np.array([4]), state)
    assert mean.dtype == np.float32 and mean.shape == (1, 5) and maps is None
    assert mean[0, 0] == ninf
    np.testing.assert_allclose(mean[0, 1], -1000.0, rtol=1e-6)
    np.testing.assert_allclose(np.exp(mean[0, 2:]), [0.375, 0.375, 0.25], rtol=1e-6)
    assert plain.seen == [[1]] and memory.seen == [[4]]                   # <unk> for the plain member


class Consensus:
    """A stand-in for the bundle's consensus source (evaluation.rerank.ConsensusSource): records what decode hands
    it and returns each n-best list reversed, cut to the config's num_return_sequences."""

    def __init__(self):
        self.calls = []

    def rerank(self, features, nbest, config):
        self.calls.append((np.array(features), [[c.words for c in caps] for caps in nbest], config))
        return [caps[::-1][: config.num_return_sequences] for caps in nbest]


@pytest.mark.parametrize("cfg", [DecodeConfig(beam_width=4, max_length=6, consensus=1, consensus_weight=0.5),
                                 DecodeConfig(strategy="diverse", beam_width=4, num_groups=2, consensus=3,
                                              diversity_penalty=0.5, max_length=6, num_return_sequences=2)],
                         ids=["beam", "diverse"])
def test_consensus_reranks_the_whole_distinct_nbest_list_of_each_batch(cfg):
    """decode with consensus > 0: the source gets each batch's features, every beam's caption (the full-width,
    distinct n-best list) and the run's config, and its order is what decode returns."""
    vocab = tiny_vocab(6)
    model = MarkovDecoder(len(vocab), 7)
    model.consensus = Consensus()
    feats = np.random.default_rng(5).normal(0, 3, size=(5, len(vocab)))
    out = decode(model, feats, vocab, cfg, batch_size=3)
    full = replace(cfg, consensus=0, num_return_sequences=cfg.beam_width)
    nbest = [[c.words for c in caps] for caps in decode(MarkovDecoder(len(vocab), 7), feats, vocab, full)]
    assert [len(call[0]) for call in model.consensus.calls] == [3, 2]
    np.testing.assert_array_equal(np.concatenate([call[0] for call in model.consensus.calls]), feats)
    assert [words for call in model.consensus.calls for words in call[1]] == nbest
    assert all(len(set(map(tuple, caps))) == len(caps) > 1 for caps in nbest)
    assert all(call[2] is cfg for call in model.consensus.calls)
    assert [[c.words for c in caps] for caps in out] == [caps[::-1][: cfg.num_return_sequences] for caps in nbest]


def test_consensus_is_not_asked_for_greedy_or_sampling_and_is_required_for_a_beam_run():
    vocab = tiny_vocab(6)
    model = MarkovDecoder(len(vocab), 7)
    model.consensus = Consensus()
    feats = np.random.default_rng(6).normal(0, 3, size=(2, len(vocab)))
    plain = MarkovDecoder(len(vocab), 7)
    for cfg in (DecodeConfig(max_length=6, consensus=5),
                DecodeConfig(strategy="sample", num_return_sequences=2, max_length=6, seed=3, consensus=5)):
        assert ([[c.words for c in caps] for caps in decode(model, feats, vocab, cfg)]
                == [[c.words for c in caps] for caps in decode(plain, feats, vocab, cfg)])
    assert model.consensus.calls == []
    with pytest.raises(ValueError) as err:
        decode(plain, feats, vocab, DecodeConfig(beam_width=3, consensus=2))
    assert str(err.value) == ("consensus reranking needs the bundle's retrieval index (the nearest training photos); "
                              "add one with: python train.py index --out BUNDLE, or set consensus to 0")
    assert len(decode(plain, feats, vocab, DecodeConfig(beam_width=3, consensus=0))) == 2


def test_a_diverse_run_without_consensus_returns_each_caption_once():
    """Two groups without a penalty search alike: decode's n-best list still holds each caption once."""
    vocab = tiny_vocab(6)
    model = MarkovDecoder(len(vocab), 8)
    feats = np.random.default_rng(7).normal(0, 3, size=(3, len(vocab)))
    cfg = DecodeConfig(strategy="diverse", beam_width=4, num_groups=2, max_length=6, num_return_sequences=4)
    twice = beam_search(model, feats, vocab, cfg)                                  # without distinct
    assert any(len({tuple(c.words) for c in caps}) < len(caps) for caps in twice)
    for caps in decode(model, feats, vocab, cfg):
        assert len(caps) > 1 and len({tuple(c.words) for c in caps}) == len(caps)


@pytest.mark.parametrize("kwargs, batches", [({}, [256, 44]),
                                             ({"max_rows": 4, "batch_size": 9}, [1, 1, 1]),
                                             ({"batch_size": 1000}, [426, 4])],
                         ids=["default-batch", "wider-than-max-rows", "default-max-rows"])
def test_progress_reports_each_batch_of_the_default_or_given_size(kwargs, batches):
    vocab = tiny_vocab(4)
    model = MarkovDecoder(len(vocab), 9)
    n = sum(batches)
    feats = np.random.default_rng(8).normal(0, 3, size=(n, len(vocab)))
    cfg = DecodeConfig(max_length=2) if n == 300 else DecodeConfig(beam_width=5 if n == 3 else 3, max_length=2)
    seen = []
    decode(model, feats, vocab, cfg, progress=seen.append, **kwargs)
    assert seen == batches
