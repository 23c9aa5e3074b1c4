"""The decoders' maths, pinned: next-word log-probabilities against numpy written from the papers' equations, golden
numbers for fixed weights and inputs (computed once; a change to the maths changes them), and the doubly stochastic
regulariser against its formula on a batch with padding. The step API and the teacher-forced pass share their code,
so agreeing with each other proves nothing about what they compute; these tests do."""
import zlib

import numpy as np
import pytest

from captioning.models.decoders import build_decoder
from captioning.models.stepper import StepDecoder

V, D = 9, 6


def fixed_weights(model):
    """Every variable filled from a generator seeded by its own path (layer/variable), independent of layer order."""
    for v in model.weights:
        rng = np.random.default_rng(zlib.crc32(v.path.split("/", 1)[1].encode()))
        v.assign(rng.normal(0.0, 0.6, size=tuple(v.shape)).astype("float32"))
    return model


@pytest.fixture(scope="module")
def merge():
    return fixed_weights(build_decoder("merge", vocab_size=V, feature_dim=D, embed_dim=4, units=5, dropout=0.5))


@pytest.fixture(scope="module")
def attention():
    return fixed_weights(build_decoder("attention", vocab_size=V, feature_dim=D, embed_dim=4, units=5,
                                       attention_dim=3, feature_proj=4, dropout=0.5, alpha_c=0.7))


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def dense(layer, x):
    return x @ layer.kernel.numpy() + layer.bias.numpy()


def lstm(cell, x, h, c):
    """Keras' LSTM cell: gates i, f, g, o in that order."""
    z = x @ cell.kernel.numpy() + h @ cell.recurrent_kernel.numpy() + cell.bias.numpy()
    i, f, g, o = np.split(z, 4, axis=-1)
    c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
    return sigmoid(o) * np.tanh(c), c


def merge_reference(m, feats, tokens):
    """Tanti et al.'s merge decoder, written out: (B, D), (B, T) -> log-probs (B, T, V)."""
    image = np.maximum(dense(m.image_proj, feats), 0)
    h = c = np.zeros((len(feats), m.units))
    out = []
    for t in range(tokens.shape[1]):
        h, c = lstm(m.lstm.cell, m.embedding.embeddings.numpy()[tokens[:, t]], h, c)
        out.append(log_softmax(dense(m.classifier, np.maximum(dense(m.merge_proj, h + image), 0))))
    return np.stack(out, 1)


def attention_reference(m, maps, tokens):
    """Show, Attend and Tell with the beta gate, written out: (B, P, D), (B, T) -> log-probs (B, T, V), alphas."""
    feats = np.maximum(dense(m.feature_proj, maps), 0)                      # (B, P, F)
    keys = dense(m.att_keys, feats)                                         # (B, P, A)
    mean = feats.mean(axis=1)
    h, c = np.tanh(dense(m.init_h, mean)), np.tanh(dense(m.init_c, mean))
    out, alphas = [], []
    for t in range(tokens.shape[1]):
        energy = dense(m.att_score, np.tanh(keys + dense(m.att_query, h)[:, None]))[..., 0]   # (B, P)
        alpha = np.exp(energy - energy.max(-1, keepdims=True))
        alpha /= alpha.sum(-1, keepdims=True)
        context = sigmoid(dense(m.gate, h)) * (alpha[..., None] * feats).sum(axis=1)         # beta * z
        x = np.concatenate([m.embedding.embeddings.numpy()[tokens[:, t]], context], axis=-1)
        h, c = lstm(m.cell, x, h, c)
        out.append(log_softmax(dense(m.classifier, h)))
        alphas.append(alpha)
    return np.stack(out, 1), np.stack(alphas, 1)


FEATS = np.random.default_rng(11).normal(size=(2, D)).astype("float32")
MAPS = np.random.default_rng(12).normal(size=(2, 5, D)).astype("float32")
TOKENS = np.array([[2, 4, 7, 5], [2, 8, 4, 0]], "int32")                  # the second caption is padded


def step_log_probs(model, features, tokens):
    steps = StepDecoder(model)
    context, state = steps.start(features)
    out, extras = [], []
    for t in range(tokens.shape[1]):
        logp, state, ex = steps.step(context, tokens[:, t], state)
        out.append(logp)
        extras.append(ex)
    return np.stack(out, 1), extras


def test_merge_decoder_equals_the_written_out_equations(merge):
    want = merge_reference(merge, FEATS, TOKENS)
    got, _ = step_log_probs(merge, FEATS, TOKENS)
    np.testing.assert_allclose(got, want, atol=1e-5)
    full = merge((FEATS, TOKENS[:, :3]), training=False).numpy()
    np.testing.assert_allclose(log_softmax(full), want[:, :3], atol=1e-5)


def test_attention_decoder_equals_the_written_out_equations_with_its_beta_gate(attention):
    want, want_alpha = attention_reference(attention, MAPS, TOKENS)
    got, alphas = step_log_probs(attention, MAPS, TOKENS)
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(np.stack(alphas, 1), want_alpha, atol=1e-6)
    full = attention((MAPS, TOKENS), training=False).numpy()
    np.testing.assert_allclose(log_softmax(full), want, atol=1e-5)


# Computed once from the decoders above (fixed weights, FEATS/MAPS, TOKENS): log P(next word) of caption 0, steps 0-3,
# for words 4..8.
GOLDEN_MERGE = np.array([[-0.59508, -4.32840, -5.97583, -6.29662, -1.89304],
                         [-0.72360, -4.08007, -5.43069, -5.45447, -1.77983],
                         [-0.63108, -4.20741, -5.84596, -6.13072, -1.83568],
                         [-0.73157, -3.68130, -5.75852, -6.26182, -1.59391]])
GOLDEN_ATTENTION = np.array([[-2.61637, -2.11527, -3.04166, -2.94005, -1.45843],
                             [-2.68541, -2.80109, -2.99262, -2.17081, -1.57423],
                             [-3.10769, -2.60737, -2.77052, -1.52027, -1.99498],
                             [-3.04008, -2.62255, -2.89180, -1.63799, -1.85632]])


def test_golden_next_word_log_probabilities(merge, attention):
    got_merge, _ = step_log_probs(merge, FEATS, TOKENS)
    got_attention, _ = step_log_probs(attention, MAPS, TOKENS)
    np.testing.assert_allclose(got_merge[0, :, 4:], GOLDEN_MERGE, atol=2e-5)
    np.testing.assert_allclose(got_attention[0, :, 4:], GOLDEN_ATTENTION, atol=2e-5)


def test_doubly_stochastic_regulariser_equals_its_formula_on_padded_captions(attention):
    """alpha_c * mean over images and locations of (1 - sum over real tokens of alpha_tp)^2; padding is left out."""
    _, alphas = attention_reference(attention, MAPS, TOKENS)                # (B, T, P)
    mask = (TOKENS != 0).astype(float)[..., None]
    want = 0.7 * np.mean((1.0 - (alphas * mask).sum(axis=1)) ** 2)
    unmasked = 0.7 * np.mean((1.0 - alphas.sum(axis=1)) ** 2)
    assert abs(want - unmasked) > 1e-3                                       # the padding matters here
    attention((MAPS, TOKENS), training=True)
    assert len(attention.losses) == 1
    assert float(attention.losses[0]) == pytest.approx(want, rel=1e-5)
    attention((MAPS, TOKENS), training=False)
    assert len(attention.losses) == 0                                        # only a training loss
