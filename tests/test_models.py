"""The merge decoder: the step API reproduces the teacher-forced pass; decoding works on the real model."""
import numpy as np
import pytest

from captioning.decoding import DecodeConfig, StepDecoder, beam_search, greedy_search
from captioning.models import MergeDecoder, build_decoder
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
