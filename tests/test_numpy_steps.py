"""The numpy twins of the attention and merge decoders' step API (captioning/models/numpy_steps.py), pinned to the
Keras decoders on random weights: what the app's first caption decodes with before TensorFlow is loaded."""
from __future__ import annotations

import numpy as np
import pytest

from captioning.data.text import Vocabulary
from captioning.decoding.config import DecodeConfig
from captioning.decoding.search import decode
from captioning.models.numpy_steps import LAYERS, NumpyStepDecoder, numpy_weights


def keras_decoder(kind: str, seed: int):
    """A small Keras decoder with every weight random (biases too: zero biases would hide a missing one)."""
    import keras

    from captioning.models.decoders import build_decoder

    config = {"vocab_size": 14, "feature_dim": 12, "embed_dim": 6, "units": 10}
    if kind == "attention":
        config.update(attention_dim=7, feature_proj=9)
    model = build_decoder(kind, **config)
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        weight.assign(rng.normal(scale=0.5, size=tuple(weight.shape)).astype("float32"))
    keras.utils.set_random_seed(seed)
    return model


@pytest.mark.parametrize("kind", ["attention", "merge"])
def test_the_numpy_step_decoder_computes_what_the_keras_one_does(kind):
    from captioning.models.stepper import StepDecoder

    model = keras_decoder(kind, seed=3)
    ours, theirs = NumpyStepDecoder(kind, model.get_config(), numpy_weights(model)), StepDecoder(model)
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(3, 16, 12) if kind == "attention" else (3, 12)).astype("float32")
    context, state = ours.start(feats, repeat=2)
    expected_context, expected_state = theirs.start(feats, repeat=2)
    np.testing.assert_allclose(context, np.asarray(expected_context), atol=1e-5)
    for got, want in zip(state, expected_state):
        np.testing.assert_allclose(got, want, atol=1e-5)
    rows = np.array([5, 0, 3, 3])                        # select and repeat as beam search uses them
    context, expected_context = ours.select(context, rows), theirs.select(expected_context, rows)
    context, expected_context = ours.repeat(context, 2), theirs.repeat(expected_context, 2)
    state = expected_state = [np.repeat(s[rows], 2, axis=0) for s in state]
    for _ in range(4):
        tokens = rng.integers(0, 14, size=len(context))
        logp, state, alpha = ours.step(context, tokens, state)
        expected, expected_state, expected_alpha = theirs.step(expected_context, tokens, expected_state)
        np.testing.assert_allclose(logp, expected, atol=1e-4)
        np.testing.assert_allclose(np.exp(logp).sum(axis=1), 1.0, atol=1e-5)
        for got, want in zip(state, expected_state):
            np.testing.assert_allclose(got, want, atol=1e-5)
        if kind == "attention":
            assert alpha.shape == (8, 16)
            np.testing.assert_allclose(alpha, expected_alpha, atol=1e-5)
        else:
            assert alpha is None and expected_alpha is None


def test_a_merge_decoder_pools_a_spatial_map_as_the_keras_one_does():
    from captioning.models.stepper import StepDecoder

    model = keras_decoder("merge", seed=4)
    ours, theirs = NumpyStepDecoder("merge", model.get_config(), numpy_weights(model)), StepDecoder(model)
    spatial = np.random.default_rng(1).normal(size=(2, 9, 12)).astype("float32")
    np.testing.assert_allclose(ours.start(spatial)[0], np.asarray(theirs.start(spatial)[0]), atol=1e-5)


@pytest.mark.parametrize("kind", ["attention", "merge"])
def test_beam_search_with_the_numpy_decoder_finds_the_keras_decoders_captions(kind):
    from captioning.models.stepper import StepDecoder

    model = keras_decoder(kind, seed=5)
    vocab = Vocabulary([f"w{i}" for i in range(10)])
    feats = np.random.default_rng(2).normal(size=(4, 16, 12) if kind == "attention" else (4, 12)).astype("float32")
    config = DecodeConfig(beam_width=3, max_length=8)
    ours = decode(NumpyStepDecoder(kind, model.get_config(), numpy_weights(model)), feats, vocab, config)
    theirs = decode(StepDecoder(model), feats, vocab, config)
    assert [[c.words for c in n] for n in ours] == [[c.words for c in n] for n in theirs]
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose([c.log_prob for c in a], [c.log_prob for c in b], atol=1e-4)


def test_weights_that_do_not_fit_the_config_are_refused():
    model = keras_decoder("attention", seed=6)
    weights = numpy_weights(model)
    assert set(weights) == {f"{layer}.{name}" for layer, names in LAYERS["attention"].items() for name in names}
    with pytest.raises(ValueError, match=r"no numpy step decoder for a 'topdown' decoder \(only attention, merge\)"):
        NumpyStepDecoder("topdown", model.get_config(), weights)
    with pytest.raises(ValueError, match="the attention decoder's weights lack gate.kernel, gate.bias$"):
        NumpyStepDecoder("attention", model.get_config(),
                         {k: v for k, v in weights.items() if not k.startswith("gate")})
    with pytest.raises(ValueError, match=r"embedding.embeddings has shape \(14, 6\), the decoder's config wants "
                                         r"\(20, any\)"):
        NumpyStepDecoder("attention", {**model.get_config(), "vocab_size": 20}, weights)
    with pytest.raises(ValueError, match=r"classifier.kernel has shape \(10, 14\), the decoder's config wants "
                                         r"\(10, 20\)"):
        NumpyStepDecoder("attention", {**model.get_config(), "vocab_size": 20},
                         {**weights, "embedding.embeddings": np.zeros((20, 6), np.float32)})
    with pytest.raises(ValueError, match=r"feature_proj.kernel has shape \(12, 9\)"):
        NumpyStepDecoder("attention", {**model.get_config(), "feature_dim": 13}, weights)
    with pytest.raises(ValueError, match=r"cell.recurrent_kernel has shape \(10, 40\)"):
        NumpyStepDecoder("attention", {**model.get_config(), "units": 11},
                         {**weights, "classifier.kernel": np.zeros((11, 14), np.float32)})


def test_the_softmaxes_shift_each_row_by_its_own_maximum():
    """Rows whose scores lie thousands apart (a shift by the whole array's maximum would make the lower row's
    exponentials 0, and adding the maximum would overflow): each row as on its own."""
    from captioning.models.numpy_steps import _log_softmax, _softmax

    scores = np.array([[1000.0, 0.0, 999.0], [-1000.0, -1001.0, -1000.0]], np.float32)
    rows = [np.array(r, np.float64) - r.max() for r in scores]
    expected = np.stack([r - np.log(np.exp(r).sum()) for r in rows])
    np.testing.assert_allclose(_log_softmax(scores), expected, atol=1e-6)
    np.testing.assert_allclose(_softmax(scores), np.exp(expected), atol=1e-6)


@pytest.mark.parametrize("kind", ["attention", "merge"])
def test_everything_is_float32_whatever_the_input(kind):
    """Keras computes in float32; float64 features or state (numpy's default) stay float32 throughout."""
    model = keras_decoder(kind, seed=7)
    ours = NumpyStepDecoder(kind, model.get_config(), numpy_weights(model))
    feats = np.random.default_rng(3).normal(size=(2, 16, 12) if kind == "attention" else (2, 12))   # float64
    context, state = ours.start(feats)
    assert context.dtype == np.float32 and [s.dtype for s in state] == [np.float32, np.float32]
    logp, state, alpha = ours.step(context, [4, 5], [s.astype(np.float64) for s in state])
    assert logp.dtype == np.float32 and [s.dtype for s in state] == [np.float32, np.float32]
    assert alpha is None or alpha.dtype == np.float32
    wide = NumpyStepDecoder(kind, model.get_config(),
                            {k: v.astype(np.float64) for k, v in numpy_weights(model).items()})
    context, state = wide.start(feats.astype(np.float32))                   # float64 weights: kept as float32
    logp, state, alpha = wide.step(context, [4, 5], state)
    assert context.dtype == logp.dtype == state[0].dtype == np.float32
