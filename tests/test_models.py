"""The merge decoder: the step API reproduces the teacher-forced pass; decoding works on the real model."""
import numpy as np
import pytest

from captioning.decoding import DecodeConfig, beam_search, greedy_search
from captioning.models import MergeDecoder, build_decoder
from captioning.stepper import EnsembleStepDecoder, StepDecoder
from captioning.text import Vocabulary


@pytest.fixture(scope="module")
def model():
    m = build_decoder("merge", vocab_size=12, feature_dim=16, embed_dim=8, units=8, dropout=0.5)
    m.init_output_bias(np.arange(12, dtype=float))
    return m


def test_step_api_matches_the_teacher_forced_pass(model):
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(3, 16)).astype("float32")
    tokens = rng.integers(4, 12, size=(3, 6)).astype("int32")
    tokens[:, 0] = Vocabulary.start_id
    full = model((feats, tokens), training=False).numpy()                   # (3, 6, 12)
    full = full - np.log(np.exp(full).sum(-1, keepdims=True))
    steps = StepDecoder(model)
    context, state = steps.start(feats)
    for t in range(tokens.shape[1]):
        logp, state, extras = steps.step(context, tokens[:, t], state)
        np.testing.assert_allclose(logp, full[:, t], atol=1e-4)
        assert extras is None


def test_beam_width_one_equals_greedy_on_the_real_model(model):
    vocab = Vocabulary([f"w{i}" for i in range(8)])
    feats = np.random.default_rng(1).normal(size=(5, 16)).astype("float32")
    steps = StepDecoder(model)
    cfg = DecodeConfig(max_length=10)
    greedy = greedy_search(steps, feats, vocab, cfg)
    beam = beam_search(steps, feats, vocab, cfg)
    assert [g.words for g in greedy] == [b[0].words for b in beam]


def test_output_bias_starts_at_word_frequencies(model):
    probs = np.exp(model.classifier.bias.numpy())
    np.testing.assert_allclose(probs / probs.sum(), (np.arange(12) + 1) / (np.arange(12) + 1).sum(), rtol=1e-5)


def test_config_round_trip(model):
    again = MergeDecoder.from_config(model.get_config())
    assert again.get_config() == model.get_config()


# --- attention decoder ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def attention_model():
    m = build_decoder("attention", vocab_size=12, feature_dim=16, embed_dim=8, units=8, attention_dim=6,
                      feature_proj=10, dropout=0.5)
    m.init_output_bias(np.arange(12, dtype=float))
    return m


def test_attention_step_api_matches_the_teacher_forced_pass(attention_model):
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(3, 9, 16)).astype("float32")                  # (B, P=3x3, D)
    tokens = rng.integers(4, 12, size=(3, 5)).astype("int32")
    tokens[:, 0] = Vocabulary.start_id
    full = attention_model((feats, tokens), training=False).numpy()
    full = full - np.log(np.exp(full).sum(-1, keepdims=True))
    steps = StepDecoder(attention_model)
    context, state = steps.start(feats)
    for t in range(tokens.shape[1]):
        logp, state, alpha = steps.step(context, tokens[:, t], state)
        np.testing.assert_allclose(logp, full[:, t], atol=1e-4)
        assert alpha.shape == (3, 9)
        np.testing.assert_allclose(alpha.sum(axis=1), 1.0, rtol=1e-5)   # a distribution over locations
        assert (alpha >= 0).all()


def test_attention_beam_width_one_equals_greedy_and_returns_weights(attention_model):
    vocab = Vocabulary([f"w{i}" for i in range(8)])
    feats = np.random.default_rng(3).normal(size=(4, 9, 16)).astype("float32")
    steps = StepDecoder(attention_model)
    cfg = DecodeConfig(max_length=7)
    greedy = greedy_search(steps, feats, vocab, cfg)
    beam = beam_search(steps, feats, vocab, cfg)
    for g, (b,) in zip(greedy, beam):
        assert g.words == b.words
        assert g.attention.shape == (g.num_tokens, 9)
        np.testing.assert_allclose(g.attention, b.attention, atol=1e-6)
        np.testing.assert_allclose(g.attention.sum(axis=1), 1.0, rtol=1e-5)
    for caps in beam_search(steps, feats, vocab, DecodeConfig(beam_width=3, max_length=7, num_return_sequences=3)):
        for c in caps:
            assert c.attention.shape == (c.num_tokens, 9)


def test_select_keeps_the_context_of_the_given_rows(model, attention_model):
    maps = np.random.default_rng(8).normal(size=(5, 9, 16)).astype("float32")
    rows = np.array([4, 1, 2])
    for steps in (StepDecoder(attention_model), EnsembleStepDecoder([StepDecoder(model),
                                                                     StepDecoder(attention_model)])):
        context, _ = steps.start(maps)
        picked = steps.select(context, rows)
        fulls, parts = (context, picked) if isinstance(context, list) else ([context], [picked])
        assert len(parts) == len(fulls)
        for full, part in zip(fulls, parts):
            np.testing.assert_array_equal(np.asarray(part), np.asarray(full)[rows])


def test_doubly_stochastic_regulariser_is_a_training_loss(attention_model):
    feats = np.random.default_rng(4).normal(size=(2, 9, 16)).astype("float32")
    tokens = np.array([[2, 5, 6, 0], [2, 7, 0, 0]], "int32")
    attention_model((feats, tokens), training=True)
    assert len(attention_model.losses) == 1 and float(attention_model.losses[0]) > 0


def test_attention_overlay_draws_a_heat_map():
    from PIL import Image

    from captioning.visualize import attention_overlay, attention_strip

    image = Image.new("RGB", (300, 200), (128, 128, 128))
    weights = np.zeros(49)
    weights[0] = 1.0                                                         # all attention on the top-left cell
    over = attention_overlay(image, weights, size=140)
    arr = np.asarray(over, float)
    assert over.size == (140, 140)
    assert np.abs(arr[5, 5] - arr[130, 130]).sum() > 60                      # hot corner differs from cold one
    strip = attention_strip(image, ["a", "dog"], np.stack([weights, weights[::-1]]))
    assert [w for w, _ in strip] == ["a", "dog"]
    with pytest.raises(ValueError):
        attention_overlay(image, np.ones(10))


def test_merge_and_attention_decoders_ensemble_on_one_spatial_map(model, attention_model):
    """Given the spatial map, a merge member pools it (as the encoder does), so the two kinds can ensemble."""
    maps = np.random.default_rng(6).normal(size=(2, 9, 16)).astype("float32")        # (B, P, D)
    merge = StepDecoder(model)
    np.testing.assert_allclose(merge.start(maps)[0].numpy(), merge.start(maps.mean(axis=1))[0].numpy(), atol=1e-6)
    vocab = Vocabulary([f"w{i}" for i in range(8)])
    ensemble = EnsembleStepDecoder([merge, StepDecoder(attention_model)])
    caps = beam_search(ensemble, maps, vocab, DecodeConfig(beam_width=3, max_length=6))
    assert len(caps) == 2 and all(c[0].num_tokens <= 6 for c in caps)
