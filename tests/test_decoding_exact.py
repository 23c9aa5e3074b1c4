"""Beam search against a plain reference that sorts every candidate, at the widths the app offers (16-40) on a
vocabulary of 50+ words; and properties every decoded caption must have, whatever the configuration."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_decoding import MarkovDecoder

from captioning.data.text import Vocabulary
from captioning.decoding.config import DecodeConfig
from captioning.decoding.search import beam_search, decode, greedy_search


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


# --- exact labels, option records, spec parsing and sampling distributions ---------------------------------
from captioning.decoding.config import parse_spec  # noqa: E402
from captioning.decoding.constraints import sampling_distribution  # noqa: E402
from captioning.decoding.search import Sampler, sample_search, with_beam  # noqa: E402


@pytest.mark.parametrize("config, options, label", [
    (DecodeConfig(), {"max_length": 30, "num_return_sequences": 1}, "greedy"),
    (DecodeConfig(beam_width=5, length_penalty=0.5, num_return_sequences=2),
     {"max_length": 30, "beam_width": 5, "length_penalty": 0.5, "num_return_sequences": 2}, "beam 5"),
    (DecodeConfig(strategy="sample", temperature=0.7, top_k=40, top_p=0.9, seed=3, num_return_sequences=5,
                  max_length=12),
     {"max_length": 12, "temperature": 0.7, "top_k": 40, "top_p": 0.9, "seed": 3, "num_return_sequences": 5},
     "sample T 0.7, top-k 40, top-p 0.9, n 5"),
    (DecodeConfig(strategy="sample"),
     {"max_length": 30, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "seed": 0, "num_return_sequences": 1},
     "sample T 1, n 1"),
    (DecodeConfig(strategy="diverse", beam_width=6, num_groups=3, diversity_penalty=0.5, num_return_sequences=3),
     {"max_length": 30, "beam_width": 6, "length_penalty": 1.0, "num_groups": 3, "diversity_penalty": 0.5,
      "num_return_sequences": 3}, "diverse 6 beams / 3 groups, penalty 0.5"),
    (DecodeConfig(beam_width=3, min_length=2, no_repeat_ngram_size=3, repetition_penalty=1.25, no_repeat_word=True,
                  banned_words=("man", "woman")),
     {"max_length": 30, "beam_width": 3, "length_penalty": 1.0, "num_return_sequences": 1, "min_length": 2,
      "no_repeat_ngram_size": 3, "repetition_penalty": 1.25, "no_repeat_word": True, "banned_words": ["man", "woman"]},
     "beam 3 (repetition 1.25; no repeated 3-grams; no word twice in a row; banned man woman)"),
    (DecodeConfig(min_length=0), {"max_length": 30, "num_return_sequences": 1, "min_length": 0}, "greedy"),
    (DecodeConfig(no_repeat_word=True), {"max_length": 30, "num_return_sequences": 1, "no_repeat_word": True},
     "greedy (no word twice in a row)"),
])
def test_options_and_labels_are_exact(config, options, label):
    assert config.options() == options
    assert list(config.options()) == list(options)              # metrics.json keeps this order
    assert config.describe() == label


def test_rows_per_image_and_kind():
    assert DecodeConfig().kind == "greedy" and DecodeConfig(beam_width=2).kind == "beam"
    assert DecodeConfig(strategy="sample", num_return_sequences=7, beam_width=3).rows_per_image == 7
    assert DecodeConfig(beam_width=4, num_return_sequences=2).rows_per_image == 4
    assert DecodeConfig(strategy="diverse", beam_width=4, num_groups=2).rows_per_image == 4


@pytest.mark.parametrize("spec, base, want", [
    ("greedy", {}, DecodeConfig(strategy="greedy")),
    ("  Beam : 5 ", {"max_length": 20}, DecodeConfig(strategy="beam", beam_width=5, max_length=20)),
    ("beam:width=4,lp=0.5,n=2,max_length=9", {"max_length": 20},
     DecodeConfig(strategy="beam", beam_width=4, length_penalty=0.5, num_return_sequences=2, max_length=9)),
    ("beam:beams=3,LP=0", {}, DecodeConfig(strategy="beam", beam_width=3, length_penalty=0.0)),
    ("beam:beam_width=3,length_penalty=2", {}, DecodeConfig(strategy="beam", beam_width=3, length_penalty=2.0)),
    ("sample:t=0.5,top_k=3,top_p=0.8,seed=9,n=4", {},
     DecodeConfig(strategy="sample", temperature=0.5, top_k=3, top_p=0.8, seed=9, num_return_sequences=4)),
    ("sample:temperature=2,n_best=2", {}, DecodeConfig(strategy="sample", temperature=2.0, num_return_sequences=2)),
    ("diverse", {}, DecodeConfig(strategy="diverse", beam_width=4, num_groups=2, diversity_penalty=0.5)),
    ("diverse:groups=3", {}, DecodeConfig(strategy="diverse", beam_width=6, num_groups=3, diversity_penalty=0.5)),
    ("diverse:6,groups=3,diversity_penalty=1", {},
     DecodeConfig(strategy="diverse", beam_width=6, num_groups=3, diversity_penalty=1.0)),
    ("diverse:beam_width=4,penalty=0", {}, DecodeConfig(strategy="diverse", beam_width=4, num_groups=2)),
    ("greedy:repetition_penalty=1.5,no_repeat_ngram=2,no_repeat_word=yes,ban= man+ woman dog,min_length=3", {},
     DecodeConfig(strategy="greedy", repetition_penalty=1.5, no_repeat_ngram_size=2, no_repeat_word=True,
                  banned_words=("man", "woman", "dog"), min_length=3)),
    ("greedy:no_repeat_ngram_size=3,no_repeat_word=False,banned_words=cat", {},
     DecodeConfig(strategy="greedy", no_repeat_ngram_size=3, banned_words=("cat",))),
    ("greedy:no_repeat_word=TRUE", {}, DecodeConfig(strategy="greedy", no_repeat_word=True)),
    ("greedy:no_repeat_word=no", {}, DecodeConfig(strategy="greedy")),
    ("greedy:no_repeat_word=0", {"no_repeat_word": True}, DecodeConfig(strategy="greedy")),
    ("greedy:,,", {}, DecodeConfig(strategy="greedy")),
])
def test_specs_parse_exactly(spec, base, want):
    got = parse_spec(spec, **base)
    assert got == want
    assert type(got.beam_width) is int and type(got.length_penalty) is float


@pytest.mark.parametrize("spec, message", [
    ("topk", "decoding spec 'topk': the strategy must be one of greedy, beam, sample, diverse "
             "(e.g. beam:5 or sample:temperature=0.7,n=5)"),
    ("sample:5", "decoding spec 'sample:5': '5' should be KEY=VALUE (keys: "),
    ("beam:5,6", "decoding spec 'beam:5,6': '6' should be KEY=VALUE"),
    ("beam:width=3,4", "decoding spec 'beam:width=3,4': '4' should be KEY=VALUE"),
    ("sample:temp=2", "decoding spec 'sample:temp=2': unknown option 'temp'; use one of ban, banned_words, "),
    ("sample:top_p=high", "decoding spec 'sample:top_p=high': top_p='high' should be a number"),
    ("sample:n=2.5", "decoding spec 'sample:n=2.5': n='2.5' should be a whole number"),
    ("greedy:no_repeat_word=maybe", "decoding spec 'greedy:no_repeat_word=maybe': no_repeat_word='maybe' should "
                                    "be a yes/no"),
    ("beam", "decoding spec 'beam': give the beam width, e.g. beam:5"),
    ("beam:lp=0.5", "decoding spec 'beam:lp=0.5': give the beam width, e.g. beam:5"),
])
def test_spec_errors_are_exact(spec, message):
    with pytest.raises(ValueError) as err:
        parse_spec(spec)
    assert str(err.value).startswith(message)


def test_spec_error_lists_every_key():
    with pytest.raises(ValueError) as err:
        parse_spec("sample:x=1")
    assert str(err.value) == ("decoding spec 'sample:x=1': unknown option 'x'; use one of ban, banned_words, "
                              "beam_width, beams, consensus, consensus_weight, cw, diversity_penalty, groups, "
                              "length_penalty, lp, max_length, "
                              "min_length, n, n_best, no_repeat_ngram, no_repeat_ngram_size, no_repeat_word, penalty, "
                              "repetition_penalty, seed, t, temperature, top_k, top_p, width")


@pytest.mark.parametrize("kwargs, message", [
    ({"beam_width": 0}, "beam_width must be a whole number between 1 and 100, got 0"),
    ({"beam_width": 101}, "beam_width must be a whole number between 1 and 100, got 101"),
    ({"beam_width": True}, "beam_width must be a whole number between 1 and 100, got True"),
    ({"beam_width": 2.0}, "beam_width must be a whole number between 1 and 100, got 2.0"),
    ({"max_length": 201}, "max_length must be a whole number between 1 and 200, got 201"),
    ({"top_k": -1}, "top_k must be a whole number >= 0, got -1"),
    ({"seed": -1}, "seed must be a whole number >= 0, got -1"),
    ({"num_return_sequences": 0}, "num_return_sequences must be a whole number >= 1, got 0"),
    ({"num_groups": 101, "strategy": "diverse", "beam_width": 100}, "num_groups must be a whole number between 1 and "
                                                                    "100, got 101"),
    ({"length_penalty": float("nan")}, "length_penalty must be a finite number, got nan"),
    ({"length_penalty": "1"}, "length_penalty must be a finite number, got '1'"),
    ({"temperature": False}, "temperature must be a finite number, got False"),
    ({"temperature": 0}, "temperature must be > 0 (1 = the model's own distribution), got 0"),
    ({"top_p": 0.0}, "top_p must be in (0, 1] (1 = off), got 0.0"),
    ({"top_p": 1.01}, "top_p must be in (0, 1] (1 = off), got 1.01"),
    ({"strategy": "diverse", "beam_width": 4, "num_groups": 2, "diversity_penalty": -0.1},
     "diversity_penalty must be >= 0 (0 = plain beam search per group), got -0.1"),
    ({"repetition_penalty": 0.0}, "repetition_penalty must be > 0 (1 = off, > 1 discourages repeats), got 0.0"),
    ({"banned_words": ("dog", "")}, "banned_words must be a tuple of words, e.g. ('man', 'woman'), got ('dog', '')"),
    ({"strategy": "top"}, "strategy must be one of greedy, beam, sample, diverse, got 'top'"),
    ({"strategy": "greedy", "beam_width": 3}, "greedy decoding keeps one beam; use strategy 'beam' for beam_width 3, "
                                              "or set beam_width=1"),
    ({"strategy": "sample", "num_groups": 2}, "num_groups only applies to diverse beam search; use strategy 'diverse'"),
    ({"strategy": "beam", "beam_width": 4, "num_groups": 2}, "num_groups > 1 is diverse beam search; use strategy "
                                                             "'diverse'"),
    ({"beam_width": 2, "num_return_sequences": 3}, "num_return_sequences (3) must be <= beam_width (2); raise "
                                                   "beam_width to get an n-best list"),
    ({"strategy": "sample", "num_return_sequences": 101}, "num_return_sequences (samples per image) must be <= 100, "
                                                          "got 101"),
    ({"strategy": "diverse", "beam_width": 7, "num_groups": 2}, "num_groups (2) must divide beam_width (7), "
                                                                "e.g. beam_width=8"),
    ({"strategy": "diverse", "beam_width": 5, "num_groups": 3}, "num_groups (3) must divide beam_width (5), "
                                                                "e.g. beam_width=6"),
    ({"min_length": 5, "max_length": 5}, "min_length (5) must be < max_length (5)"),
])
def test_config_errors_are_exact(kwargs, message):
    with pytest.raises(ValueError) as err:
        DecodeConfig(**kwargs)
    assert str(err.value) == message


@pytest.mark.parametrize("kwargs", [
    {"beam_width": 100, "max_length": 200, "num_return_sequences": 100, "min_length": 199},
    {"strategy": "sample", "num_return_sequences": 100, "top_p": 1, "top_k": 0, "seed": 0},
    {"strategy": "diverse", "beam_width": 100, "num_groups": 100, "diversity_penalty": 0},
    {"beam_width": np.int64(3), "temperature": np.float32(0.5), "repetition_penalty": 1e-3, "min_length": 0},
])
def test_configs_at_their_limits_are_accepted(kwargs):
    DecodeConfig(**kwargs)


def test_with_beam_clips_the_n_best_list():
    c = DecodeConfig(beam_width=8, num_return_sequences=6, length_penalty=0.3)
    assert with_beam(c, 4) == DecodeConfig(beam_width=4, num_return_sequences=4, length_penalty=0.3)
    assert with_beam(c, 10, length_penalty=0.0) == DecodeConfig(beam_width=10, num_return_sequences=6,
                                                               length_penalty=0.0)


def _reference_sampling(log_probs, temperature, top_k, top_p):
    """One row at a time, sorting everything: temperature, top-k, top-p, renormalise."""
    out = np.zeros_like(log_probs)
    for r, row in enumerate(log_probs):
        logits = row / temperature
        order = sorted(range(len(row)), key=lambda i: (-logits[i], i))
        keep = set(order[:top_k]) if top_k else set(order)
        keep = {i for i in keep if logits[i] >= min(logits[j] for j in keep)} | \
            {i for i in range(len(row)) if top_k and logits[i] == logits[order[top_k - 1]]}
        p = np.array([math.exp(logits[i]) if i in keep and logits[i] > -np.inf else 0.0 for i in range(len(row))])
        p /= p.sum()
        if top_p < 1:
            order = sorted(range(len(row)), key=lambda i: (-p[i], i))
            mass, kept = 0.0, []
            for i in order:
                if mass >= top_p:
                    break
                kept.append(i)
                mass += p[i]
            p = np.array([p[i] if i in kept else 0.0 for i in range(len(row))])
            p /= p.sum()
        out[r] = p
    return out


@pytest.mark.parametrize("temperature, top_k, top_p", [
    (1.0, 0, 1.0), (0.5, 0, 1.0), (2.0, 3, 1.0), (1.0, 1, 1.0), (1.0, 0, 0.5), (0.7, 4, 0.8), (1.3, 0, 0.999),
    (1.0, 9, 1.0), (1.0, 10, 1.0), (1.0, 0, 1e-9),
])
def test_sampling_distribution_equals_a_sort_everything_reference(temperature, top_k, top_p):
    rng = np.random.default_rng(top_k + int(top_p * 10))
    logits = rng.normal(0, 2, size=(5, 10))
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    log_probs[0, [2, 7]] = -np.inf                        # forbidden words keep probability 0
    got = sampling_distribution(log_probs.copy(), temperature, top_k, top_p)
    np.testing.assert_allclose(got, _reference_sampling(log_probs, temperature, top_k, top_p), rtol=1e-12, atol=0)
    assert got[0, 2] == got[0, 7] == 0.0


def test_sampling_draws_follow_the_distribution_and_the_seed():
    """One image, one step: the first word of 4,000 samples is drawn in proportion to the model's probability."""
    vocab = Vocabulary(["a", "b", "c"])                                  # ids 4, 5, 6; <end> 3

    class OneStep:
        def start(self, features, repeat=1):
            return np.zeros((len(features) * repeat, 1)), [np.zeros((len(features) * repeat, 1))]

        def step(self, context, tokens, state):
            p = np.full((len(tokens), len(vocab)), 1e-12)
            p[:, [4, 5, 6]] = [0.6, 0.3, 0.1]
            if state[0][0, 0] > 0:
                p[:] = 1e-12
                p[:, vocab.end_id] = 1.0
            return np.log(p / p.sum(axis=1, keepdims=True)), [state[0] + 1], None

    cfg = DecodeConfig(strategy="sample", num_return_sequences=100, max_length=3, seed=5)
    counts = {"a": 0, "b": 0, "c": 0}
    for first in range(0, 40):
        for c in sample_search(OneStep(), np.zeros((1, 1)), vocab, cfg, first_index=first)[0]:
            counts[c.words[0]] += 1
            assert c.finished and len(c.words) == 1
    assert counts["a"] / 4000 == pytest.approx(0.6, abs=0.03)
    assert counts["b"] / 4000 == pytest.approx(0.3, abs=0.03)
    assert counts["c"] / 4000 == pytest.approx(0.1, abs=0.02)
    # a zero-probability word is never drawn; top-p 0.5 keeps only "a"
    only_a = DecodeConfig(strategy="sample", num_return_sequences=50, max_length=3, top_p=0.5)
    assert {c.words[0] for c in sample_search(OneStep(), np.zeros((1, 1)), vocab, only_a)[0]} == {"a"}


def test_sampler_returns_padded_ids_and_fresh_draws_per_call():
    vocab = big_vocab(10)
    model = MarkovDecoder(len(vocab), 3)
    model.table[:, 3:, vocab.end_id] += 4.0                              # most samples end within a few words
    feats = np.random.default_rng(1).normal(size=(3, len(vocab)))
    sampler = Sampler.__new__(Sampler)                                   # the step-decoder wrapper needs Keras
    sampler.steps, sampler.vocab, sampler.seed, sampler.calls = model, vocab, 7, 0
    first = sampler.sample(feats, 4, 9)
    assert first.dtype == np.int32 and first.shape == (12, 9) and sampler.calls == 1
    cfg = DecodeConfig(strategy="sample", num_return_sequences=4, max_length=9, min_length=0)
    want = sample_search(model, feats.astype(np.float32), vocab, cfg, seed=(7, 0))
    for row, c in enumerate(x for caps in want for x in caps):
        ids = [vocab.stoi[w] for w in c.words] + ([vocab.end_id] if c.finished else [])
        assert first[row].tolist() == ids + [0] * (9 - len(ids))
    second = sampler.sample(feats, 4, 9)
    assert sampler.calls == 2 and not np.array_equal(first, second)
    again = Sampler.__new__(Sampler)
    again.steps, again.vocab, again.seed, again.calls = model, vocab, 7, 0
    assert np.array_equal(again.sample(feats, 4, 9), first)


def test_top_k_at_the_shipped_vocabulary_size_keeps_exactly_the_k_likeliest():
    """numpy's partition only guarantees the k-th element's place; at 2,500+ words a wrong kth index shows."""
    for seed in range(50):
        logits = np.random.default_rng(seed).normal(size=(4, 2532))
        log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        probs = sampling_distribution(log_probs, top_k=100)
        for row, p in zip(logits, probs):
            assert set(np.flatnonzero(p)) == set(np.argsort(-row)[:100].tolist())


def test_sampling_is_stable_for_rows_of_very_different_scale():
    """Each row is shifted by its own maximum: a row of very unlikely words at a low temperature still sums to 1."""
    log_probs = np.array([[-0.1, -2.5, -9.0], [-50.0, -52.0, -60.0]])
    got = sampling_distribution(log_probs, temperature=0.05)
    assert np.isfinite(got).all()
    want = np.exp([0.0, -40.0, -200.0]) / np.exp([0.0, -40.0, -200.0]).sum()    # (x - max) / T, then softmax
    np.testing.assert_allclose(got[1], want, rtol=1e-12, atol=0)
    np.testing.assert_allclose(got.sum(axis=1), 1.0)


def test_nucleus_ties_keep_the_lower_word_ids():
    """40 equally likely words, top-p 0.5: the first 20 by id (a stable sort), not whichever a quicksort puts first."""
    log_probs = np.full((3, 40), np.log(1 / 40))
    got = sampling_distribution(log_probs, top_p=0.5)
    assert (np.flatnonzero(got[0]) == np.arange(20)).all() and (got == got[0]).all()


def _ban_reference(log_probs, history, t, cfg, vocab):
    out = log_probs.copy()
    end = out[:, vocab.end_id].copy()
    banned = {vocab.pad_id, vocab.start_id} | ({vocab.unk_id} if cfg.suppress_unk else set())
    banned |= {vocab.stoi[w] for w in cfg.banned_words if w in vocab.stoi and vocab.stoi[w] >= 4}
    for r in range(len(out)):
        seq = list(history[r])
        for w in range(out.shape[1]):
            if w in banned or (w == vocab.end_id and t < cfg.min_length):
                out[r, w] = -np.inf
                continue
            if w != vocab.end_id and w in seq and cfg.repetition_penalty != 1:
                out[r, w] *= cfg.repetition_penalty
            if cfg.no_repeat_word and seq and seq[-1] == w and w >= 4:
                out[r, w] = -np.inf
            n = cfg.no_repeat_ngram_size
            if n and len(seq) >= n - 1:
                gram = tuple(seq[len(seq) - n + 1:]) + (w,)
                if any(tuple(seq[i:i + n]) == gram for i in range(len(seq) - n + 1)):
                    out[r, w] = -np.inf
        if np.isneginf(out[r]).all():
            out[r, vocab.end_id] = end[r]
    return out


@pytest.mark.parametrize("seed", range(12))
def test_constraints_on_one_step_equal_a_word_by_word_reference(seed):
    from captioning.decoding.constraints import constraints_for

    rng = np.random.default_rng(seed)
    vocab = big_vocab(6)                                                  # ids 4..9 are words
    t = int(rng.integers(0, 6))
    history = rng.integers(3, 10, size=(8, t))                            # words and <end> (a finished row)
    history[0, -1:] = 4                                                   # the first word id, just emitted
    cfg = DecodeConfig(min_length=int(rng.integers(0, 4)), no_repeat_ngram_size=int(rng.integers(0, 4)),
                       repetition_penalty=float(rng.choice([1.0, 2.0, 0.5, 1.3])), no_repeat_word=bool(seed % 2),
                       suppress_unk=seed % 3 != 0, banned_words=(("w2", "zebra", "<end>") if seed % 4 == 0 else ()))
    logits = rng.normal(size=(8, len(vocab)))
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    got = log_probs.copy()
    constraints_for(cfg, vocab)(got, history, t)
    np.testing.assert_array_equal(got, _ban_reference(log_probs, history, t, cfg, vocab))


def test_a_repetition_penalty_of_exactly_two_applies_and_end_is_never_penalised():
    from captioning.decoding.constraints import constraints_for

    vocab = big_vocab(3)
    log_probs = np.log(np.full((1, len(vocab)), 1 / len(vocab)))
    history = np.array([[4, 3]])                                           # "w0 <end>"
    constraints_for(DecodeConfig(repetition_penalty=2.0), vocab)(log_probs, history, 2)
    assert log_probs[0, 4] == pytest.approx(2 * np.log(1 / 7)) and log_probs[0, 5] == pytest.approx(np.log(1 / 7))
    assert log_probs[0, vocab.end_id] == pytest.approx(np.log(1 / 7))


def test_unk_is_emitted_when_not_suppressed_and_banning_unknown_words_is_harmless():
    vocab = big_vocab(3)
    model = MarkovDecoder(len(vocab), 0)
    model.table[:, :, vocab.unk_id] += 30                                  # <unk> is by far the likeliest word
    feats = np.zeros((1, len(vocab)))
    free = greedy_search(model, feats, vocab, DecodeConfig(max_length=3, suppress_unk=False,
                                                           banned_words=("zebra",)))[0]
    assert free.words[0] == "<unk>"
    assert "<unk>" not in greedy_search(model, feats, vocab, DecodeConfig(max_length=3))[0].words


def test_a_caption_of_only_end_scores_its_log_probability():
    vocab = big_vocab(3)
    model = MarkovDecoder(len(vocab), 0)
    model.table[:, :, vocab.end_id] += 9                                   # likeliest, yet clearly below 1
    for cfg in (DecodeConfig(min_length=0, max_length=4, length_penalty=1.0),
                DecodeConfig(min_length=0, max_length=4, beam_width=2, length_penalty=1.0)):
        cap = decode(model, np.zeros((1, len(vocab))), vocab, cfg)[0][0]
        assert cap.words == [] and cap.num_tokens == 1 and cap.score == cap.log_prob < -1e-6


@pytest.mark.parametrize("config", [DecodeConfig(max_length=6), DecodeConfig(beam_width=3, max_length=6),
                                    DecodeConfig(strategy="sample", num_return_sequences=2, max_length=6)])
def test_attention_is_none_without_attention_and_keeps_the_decoders_dtype_with_it(config):
    vocab = big_vocab(5)
    feats = np.random.default_rng(0).normal(size=(3, len(vocab)))
    for caps in decode(MarkovDecoder(len(vocab), 1), feats, vocab, config):
        assert all(c.attention is None for c in caps)

    class Float32Attention(MarkovDecoder):
        def step(self, context, tokens, state):
            logp, state, extras = super().step(context, tokens, state)
            return logp, state, extras.astype(np.float32)

    for caps in decode(Float32Attention(len(vocab), 1, attention=True), feats, vocab, config):
        assert all(c.attention.dtype == np.float32 and c.attention.shape == (c.num_tokens, 4) for c in caps)


def test_samples_come_best_first_and_two_samples_per_image_work_for_a_batch():
    vocab = big_vocab(6)
    model = MarkovDecoder(len(vocab), 2)
    feats = np.random.default_rng(2).normal(size=(4, len(vocab)))
    for n in (2, 6):
        cfg = DecodeConfig(strategy="sample", num_return_sequences=n, max_length=7, seed=1)
        batched = decode(model, feats, vocab, cfg)
        for i, caps in enumerate(batched):
            assert len(caps) == n
            assert [c.score for c in caps] == sorted((c.score for c in caps), reverse=True)
            alone = sample_search(model, feats[i:i + 1], vocab, cfg, first_index=i)[0]
            assert [c.words for c in caps] == [c.words for c in alone]
        # the default first index is 0, as decode's first batch
        assert [c.words for c in sample_search(model, feats, vocab, cfg)[0]] == [c.words for c in batched[0]]


@pytest.mark.parametrize("config", [
    DecodeConfig(max_length=9), DecodeConfig(beam_width=3, max_length=9, num_return_sequences=3),
    DecodeConfig(strategy="sample", num_return_sequences=3, max_length=9, seed=4),
    DecodeConfig(strategy="diverse", beam_width=4, num_groups=2, diversity_penalty=0.7, max_length=9,
                 num_return_sequences=4),
])
def test_an_ensemble_of_one_decodes_like_its_member_while_images_finish_at_different_steps(config):
    """Images finish at different steps, so the search drops their rows (compaction) through the ensemble's
    own select/repeat, which keeps a list of contexts."""
    from captioning.models.stepper import EnsembleStepDecoder

    vocab = big_vocab(8)
    model = MarkovDecoder(len(vocab), 5, attention=True)
    model.table[:, :, vocab.end_id] += np.linspace(-3, 3, 8)[None, :]     # later steps want to stop more
    feats = np.random.default_rng(5).normal(0, 3, size=(9, len(vocab)))
    feats[:4, vocab.end_id] += 6                                          # some images end at once
    alone = decode(model, feats, vocab, config)
    ensemble = decode(EnsembleStepDecoder([model]), feats, vocab, config)
    assert len({len(caps[0].words) for caps in alone}) > 2                 # lengths really differ
    for a, e in zip(alone, ensemble):
        assert [c.words for c in a] == [c.words for c in e]
        np.testing.assert_allclose([c.score for c in a], [c.score for c in e])


def test_diverse_groups_pay_for_each_earlier_group_that_chose_the_word():
    """Three groups of one beam, one image. Step 0: a -0.1, b -1.0, c -2.0 (log-probabilities before the penalty).
    Penalty 0.6: group 0 takes a; group 1 sees a -0.7 and takes a; group 2 sees a -1.3 (two groups chose it) and
    takes b. Every caption then ends. The n-best list is each group's best, by score."""
    vocab = Vocabulary(["a", "b", "c"])

    class Fixed:
        def start(self, features, repeat=1):
            return np.zeros((len(features) * repeat, 1)), [np.zeros((len(features) * repeat, 1))]

        def step(self, context, tokens, state):
            t = state[0][:, 0]
            p = np.full((len(tokens), len(vocab)), 1e-9)
            p[t == 0, 4:7] = np.exp([-0.1, -1.0, -2.0])
            p[t > 0, vocab.end_id] = 1.0
            return np.log(p / p.sum(axis=1, keepdims=True)), [state[0] + 1], None

    def run(groups, penalty):
        cfg = DecodeConfig(strategy="diverse", beam_width=groups, num_groups=groups, diversity_penalty=penalty,
                           max_length=3, num_return_sequences=groups)
        return [c.words for c in beam_search(Fixed(), np.zeros((1, 1)), vocab, cfg)[0]]

    assert run(3, 0.6) == [["a"], ["a"], ["b"]]
    assert run(2, 1.0) == [["a"], ["b"]]
    assert run(2, 0.5) == [["a"], ["a"]]
    assert run(3, 0.0) == [["a"], ["a"], ["a"]]


def test_a_diverse_group_keeps_searching_after_an_earlier_group_finished():
    """Group 0 ends after one word ("a"); group 1, pushed to "b" by the penalty, needs three words ("b c a")."""
    vocab = Vocabulary(["a", "b", "c"])

    class Fixed:
        def start(self, features, repeat=1):
            return np.zeros((len(features) * repeat, 1)), [np.zeros((len(features) * repeat, 1))]

        def step(self, context, tokens, state):
            t = state[0][:, 0]
            p = np.full((len(tokens), len(vocab)), 1e-9)
            p[t == 0, 4:6] = [0.6, 0.4]
            after_a, after_b, after_c = tokens == 4, tokens == 5, tokens == 6
            p[(t > 0) & after_a, vocab.end_id] = 1.0
            p[(t > 0) & after_b, 6] = 1.0
            p[(t > 0) & after_c, 4] = 1.0
            return np.log(p / p.sum(axis=1, keepdims=True)), [state[0] + 1], None

    cfg = DecodeConfig(strategy="diverse", beam_width=2, num_groups=2, diversity_penalty=1.0, max_length=6,
                       num_return_sequences=2)
    caps = beam_search(Fixed(), np.zeros((1, 1)), vocab, cfg)[0]
    assert [c.words for c in caps] == [["b", "c", "a"], ["a"]]          # both are their group's best: by score
    assert all(c.finished for c in caps)


def test_diverse_n_best_takes_every_groups_best_first_ordered_by_score():
    vocab = big_vocab(6)
    model = MarkovDecoder(len(vocab), 9)
    feats = np.random.default_rng(9).normal(size=(3, len(vocab)))
    cfg = DecodeConfig(strategy="diverse", beam_width=6, num_groups=3, diversity_penalty=0.5, max_length=6,
                       num_return_sequences=6)
    for caps in beam_search(model, feats, vocab, cfg):
        firsts, seconds = caps[:3], caps[3:]
        assert [c.score for c in firsts] == sorted((c.score for c in firsts), reverse=True)
        assert [c.score for c in seconds] == sorted((c.score for c in seconds), reverse=True)


def test_decode_reports_progress_per_batch_and_decode_one_is_the_first_image():
    from captioning.decoding.search import decode_one

    vocab = big_vocab(5)
    model = MarkovDecoder(len(vocab), 4)
    feats = np.random.default_rng(4).normal(size=(7, len(vocab)))
    seen = []
    cfg = DecodeConfig(beam_width=2, max_length=5, num_return_sequences=2)
    out = decode(model, feats, vocab, cfg, batch_size=3, progress=seen.append)
    assert seen == [3, 3, 1]
    one = decode_one(model, feats[0], vocab, cfg)
    assert [c.words for c in one] == [c.words for c in out[0]] and len(one) == 2
    assert [c.words for c in decode_one(model, feats[0], vocab)] == [greedy_search(model, feats[:1], vocab)[0].words]


@pytest.mark.parametrize("kwargs, message", [
    ({"strategy": "greedy", "num_groups": 2}, "num_groups only applies to diverse beam search; use strategy 'diverse'"),
    ({"strategy": "greedy", "beam_width": 2}, "greedy decoding keeps one beam; use strategy 'beam' for beam_width 2, "
                                              "or set beam_width=1"),
    ({"strategy": "greedy", "num_return_sequences": 2}, "num_return_sequences (2) must be <= beam_width (1); raise "
                                                        "beam_width to get an n-best list"),
    ({"strategy": "diverse", "beam_width": 4, "num_groups": 2, "num_return_sequences": 5},
     "num_return_sequences (5) must be <= beam_width (4); raise beam_width to get an n-best list"),
    ({"strategy": "diverse", "beam_width": 1, "num_groups": 2}, "num_groups (2) must divide beam_width (1), "
                                                                "e.g. beam_width=2"),
])
def test_more_config_errors_are_exact(kwargs, message):
    with pytest.raises(ValueError) as err:
        DecodeConfig(**kwargs)
    assert str(err.value) == message


def test_a_value_without_a_key_names_every_key():
    with pytest.raises(ValueError) as err:
        parse_spec("sample:5")
    keys = ("ban, banned_words, beam_width, beams, consensus, consensus_weight, cw, diversity_penalty, groups, "
            "length_penalty, lp, max_length, "
            "min_length, n, n_best, no_repeat_ngram, no_repeat_ngram_size, no_repeat_word, penalty, "
            "repetition_penalty, seed, t, temperature, top_k, top_p, width")
    assert str(err.value) == f"decoding spec 'sample:5': '5' should be KEY=VALUE (keys: {keys})"


@pytest.mark.parametrize("seed", range(6))
def test_nucleus_ties_split_at_the_boundary_equal_the_reference(seed):
    """Words in groups of equal probability: where top-p cuts through a group, the lower ids stay (a stable sort)."""
    rng = np.random.default_rng(seed)
    weights = rng.integers(1, 5, size=(4, 60)).astype(float)
    log_probs = np.log(weights / weights.sum(axis=1, keepdims=True))
    for top_p in (0.3, 0.5, 0.71):
        got = sampling_distribution(log_probs.copy(), top_p=top_p)
        np.testing.assert_allclose(got, _reference_sampling(log_probs, 1.0, 0, top_p), rtol=1e-12, atol=0)


def test_a_row_whose_constraints_forbid_every_word_may_still_end():
    from captioning.decoding.constraints import constraints_for

    vocab = Vocabulary(["a"])                                             # one word, id 4
    log_probs = np.log(np.array([[0.1, 0.1, 0.1, 0.3, 0.4], [0.1, 0.1, 0.1, 0.3, 0.4]]))
    history = np.array([[4], [3]])                                        # "a" just emitted; a finished row
    constraints_for(DecodeConfig(no_repeat_word=True, min_length=2), vocab)(log_probs, history, 1)
    # row 0: "a" may not repeat and <end> is too early: nothing is left, so <end> keeps its probability
    assert log_probs[0].tolist() == [-np.inf, -np.inf, -np.inf, pytest.approx(np.log(0.3)), -np.inf]
    assert log_probs[1].tolist() == [-np.inf, -np.inf, -np.inf, -np.inf, pytest.approx(np.log(0.4))]


def test_a_vanishing_temperature_samples_each_rows_likeliest_word_silently():
    """Below ~1e-38, log_probs / T overflows float32: a row whose logits all become -inf falls back to its
    likeliest word (the limit of T -> 0), a row that stays finite keeps its own distribution, and no numpy
    warning escapes (an overflow warning would be an error in a caller that turns warnings into errors)."""
    import warnings

    from captioning.decoding.constraints import sampling_distribution

    log_probs = np.array([[-1.0, 0.0, -np.inf], [-0.5, -0.9, -2.0], [-3.0, -2.0, -0.1]], np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        probs = sampling_distribution(log_probs, temperature=1e-40)
    assert probs.tolist() == [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]   # each broken row its own
