"""Beam search against a plain reference that sorts every candidate, at the widths the app offers (16-40) on a
vocabulary of 50+ words; and properties every decoded caption must have, whatever the configuration."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_decoding import MarkovDecoder

from captioning.decoding import DecodeConfig, beam_search, decode, greedy_search
from captioning.text import Vocabulary


def reference_beam_search(model, feature, vocab, cfg):
    """Beam search written out the slow way, one image at a time, sorting all K*V candidates at every step.

    Hugging Face's rule: walk the candidates best first; an <end> candidate becomes a finished hypothesis when it
    ranks among the first K, else it is dropped; other candidates fill the K beams. The image stops once it holds
    K finished hypotheses (or no beam can continue); beams open at max_length are returned unfinished.
    Returns the n-best list as (words, score, finished), best first.
    """
    k = cfg.beam_width
    context, state = model.start(feature[None], repeat=k)
    beams = [([], [], 0.0)]                         # (tokens, per-token log-probs, total) - one live beam at first
    rows_state = state
    finished = []
    done = False
    for t in range(cfg.max_length):
        n = len(beams)
        prev = np.array([toks[-1] if toks else vocab.start_id for toks, _, _ in beams])
        logp, new_state, _ = model.step(context[:n], prev, [s[:n] for s in rows_state])
        logp = logp.copy()
        logp[:, [vocab.pad_id, vocab.start_id, vocab.unk_id]] = -np.inf
        if t < cfg.min_length:
            logp[:, vocab.end_id] = -np.inf
        candidates = [(total + logp[b, w], b, w) for b, (_, _, total) in enumerate(beams)
                      for w in range(logp.shape[1]) if logp[b, w] > -np.inf]
        candidates.sort(key=lambda c: -c[0])
        next_beams, parents = [], []
        for rank, (total, b, w) in enumerate(candidates):
            if len(next_beams) == k:
                break
            toks, lps, _ = beams[b]
            if w == vocab.end_id:
                if rank < k:
                    lps = lps + [logp[b, w]]
                    finished.append((vocab.decode(toks), total / len(lps) ** cfg.length_penalty, True))
                continue
            next_beams.append((toks + [w], lps + [logp[b, w]], total))
            parents.append(b)
        rows_state = [s[parents] for s in new_state]
        beams = next_beams
        if len(finished) >= k or not beams:
            done = True
            break
    hyps = list(finished)
    if len(hyps) < cfg.num_return_sequences or not done:
        hyps += [(vocab.decode(toks), total / len(lps) ** cfg.length_penalty, False) for toks, lps, total in beams]
    hyps.sort(key=lambda h: -h[1])
    return hyps[: cfg.num_return_sequences]


def big_vocab(n_words=50):
    return Vocabulary([f"w{i}" for i in range(n_words)])


@pytest.mark.parametrize("width, seed", [(16, 0), (16, 1), (20, 2), (24, 3), (32, 4), (40, 5), (40, 6)])
@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_wide_beams_equal_the_sort_everything_reference(width, seed, length_penalty):
    vocab = big_vocab(50)                                                    # 54 tokens with the specials
    model = MarkovDecoder(len(vocab), seed)
    model.table[:, :, vocab.end_id] += 2.5                                   # <end> competes from the start
    feats = np.random.default_rng(seed + 50).normal(size=(3, len(vocab)))
    cfg = DecodeConfig(beam_width=width, max_length=7, length_penalty=length_penalty,
                       num_return_sequences=width)
    got = beam_search(model, feats, vocab, cfg)
    for i, caps in enumerate(got):
        want = reference_beam_search(model, feats[i], vocab, cfg)
        assert [(c.words, c.finished) for c in caps] == [(w, f) for w, _, f in want]
        np.testing.assert_allclose([c.score for c in caps], [s for _, s, _ in want], rtol=1e-9)


def test_a_finished_hypothesis_ranked_exactly_kth_is_dropped():
    """K = 2. At the second step the candidates rank: "a c", "b <end>" (finished, rank 1), "a <end>" (rank 2 == K:
    dropped, as Hugging Face does), "a d". Kept by mistake, "a" would complete the n-best list and stop the search."""
    vocab = Vocabulary(["a", "b", "c", "d"])                  # ids 4..7
    k = 2

    class Fixed:
        def start(self, features, repeat=1):
            return np.zeros((len(features) * repeat, 1)), [np.zeros((len(features) * repeat, 1))]

        def step(self, context, tokens, state):
            t = int(state[0][0, 0])
            logits = np.full((len(tokens), len(vocab)), -30.0)
            if t == 0:
                logits[:, [4, 5]] = [0.0, -1.0]                      # beams "a" (-0.31) and "b" (-1.31)
            elif t == 1:
                a = tokens == 4
                logits[np.ix_(a, [6, vocab.end_id, 7])] = [0.0, -1.2, -1.5]   # a c -0.74, a <end> -1.94, a d -2.24
                logits[~a, vocab.end_id] = 0.0                                # b <end> -1.31
            else:
                logits[:, [vocab.end_id, 4]] = [0.0, -0.5]            # a c <end> -1.21
            logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
            return logp, [state[0] + 1], None

    cfg = DecodeConfig(beam_width=k, max_length=4, num_return_sequences=k, length_penalty=0.0)
    caps = beam_search(Fixed(), np.zeros((1, 1)), vocab, cfg)[0]
    assert [c.words for c in caps] == [["a", "c"], ["b"]]
    assert [c.score for c in caps] == pytest.approx([-1.209, -1.313], abs=1e-3)


def _ngrams(seq, n):
    return [tuple(seq[i:i + n]) for i in range(len(seq) - n + 1)]


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), beam_width=st.integers(1, 6), max_length=st.integers(2, 9),
       min_length=st.integers(0, 6), no_repeat=st.integers(0, 3), n_best=st.integers(1, 6),
       end_bias=st.floats(-20, 20, allow_nan=False))
def test_every_decoded_caption_respects_no_repeat_and_min_length(seed, beam_width, max_length, min_length,
                                                                 no_repeat, n_best, end_bias):
    """Property: on a vocabulary larger than any caption (so the constraints never leave a row stuck), every
    caption of every n-best list - greedy and beam - repeats no n-gram and has at least min_length words."""
    min_length = min(min_length, max_length - 1)
    vocab = big_vocab(12)
    model = MarkovDecoder(len(vocab), seed)
    model.table[:, :, vocab.end_id] += end_bias
    cfg = DecodeConfig(beam_width=beam_width, max_length=max_length, min_length=min_length,
                       no_repeat_ngram_size=no_repeat, num_return_sequences=min(n_best, beam_width))
    feats = np.random.default_rng(seed).normal(size=(2, len(vocab)))
    runs = decode(model, feats, vocab, cfg) + [[c] for c in greedy_search(model, feats, vocab, cfg)]
    for caps in runs:
        for c in caps:
            assert len(c.words) >= min_length
            assert c.finished == (len(c.words) < max_length)
            tokens = [vocab.stoi[w] for w in c.words] + ([vocab.end_id] if c.finished else [])
            assert len(tokens) == c.num_tokens <= max_length
            if no_repeat:
                grams = _ngrams(tokens, no_repeat)
                assert len(grams) == len(set(grams)), (c.words, no_repeat)
            assert c.log_prob == pytest.approx(sum(math.log(p) for p in c.token_probs))
