"""Decoding is tested on a tiny hand-made step decoder (exact, fast) and on the real MergeDecoder."""
import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from captioning.decoding import DecodeConfig, EnsembleStepDecoder, beam_search, decode, greedy_search
from captioning.text import Vocabulary


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
        caps = decode(model, np.zeros((2, len(vocab))), vocab, DecodeConfig(beam_width=beam, max_length=5, min_length=2))
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
