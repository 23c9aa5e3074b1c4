"""The merge decoder: the step API reproduces the teacher-forced pass; decoding works on the real model."""
import numpy as np
import pytest

from captioning.data.text import Vocabulary
from captioning.decoding.config import DecodeConfig
from captioning.decoding.search import beam_search, greedy_search
from captioning.models.decoders import MergeDecoder, build_decoder
from captioning.models.stepper import EnsembleStepDecoder, StepDecoder


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

    from captioning.models.visualize import attention_overlay, attention_strip

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


def test_the_scst_sampler_draws_through_the_compiled_step_api(model):
    """Sampler wraps the Keras decoder in the step API and returns padded ids: the same draws as sample_search."""
    from captioning.decoding.search import Sampler, sample_search

    vocab = Vocabulary([f"w{i}" for i in range(8)])
    feats = np.random.default_rng(3).normal(size=(2, 16))
    sampler = Sampler(model, vocab, seed=5)
    assert sampler.steps.model is model and sampler.seed == 5 and sampler.vocab is vocab and sampler.calls == 0
    ids = sampler.sample(feats, 3, 6)
    cfg = DecodeConfig(strategy="sample", num_return_sequences=3, max_length=6, min_length=0)
    want = sample_search(StepDecoder(model), feats.astype("float32"), vocab, cfg, seed=(5, 0))
    for row, c in enumerate(x for caps in want for x in caps):
        tokens = [vocab.stoi[w] for w in c.words] + ([vocab.end_id] if c.finished else [])
        assert ids[row].tolist() == tokens + [0] * (6 - len(tokens))


def test_step_decoder_start_repeats_rows_and_pools_maps_for_models_without_attention(model):
    feats = np.random.default_rng(4).normal(size=(2, 16)).astype("float32")
    steps = StepDecoder(model)
    once, state_once = steps.start(feats)
    thrice, state_thrice = steps.start(feats, repeat=3)
    np.testing.assert_array_equal(np.asarray(thrice), np.repeat(np.asarray(once), 3, axis=0))
    assert [s.shape for s in state_thrice] == [(6, 8), (6, 8)]
    maps = np.random.default_rng(5).normal(size=(2, 4, 16)).astype("float32")      # (B, P, D): pooled first
    np.testing.assert_allclose(np.asarray(steps.start(maps)[0]), np.asarray(steps.start(maps.mean(axis=1))[0]),
                               rtol=1e-6)

    class Plain:                                      # a decoder without the uses_spatial attribute pools too
        def start(self, features):
            return features, [features[:, :1]]

        def step(self, context, tokens, state):
            return context, state, None

    plain = StepDecoder(Plain())
    assert np.asarray(plain.start(maps)[0]).shape == (2, 16)


def test_ensemble_members_each_get_their_own_state_and_attention_on_one_grid():
    class Member:
        """State [id, step]; attention of its own width; checks that it is handed back its own state."""

        def __init__(self, ident, attention_width=None):
            self.ident, self.width = ident, attention_width

        def start(self, features, repeat=1):
            n = len(features) * repeat
            return np.zeros((n, 1)), [np.full((n, 1), float(self.ident)), np.zeros((n, 1))]

        def step(self, context, tokens, state):
            assert (state[0] == self.ident).all(), "a member got another member's state"
            logp = np.log(np.full((len(tokens), 6), 1 / 6))
            maps = None if self.width is None else np.full((len(tokens), self.width), 1 / self.width)
            return logp, [state[0], state[1] + 1], maps

    with pytest.raises(ValueError) as err:
        EnsembleStepDecoder([])
    assert str(err.value) == "an ensemble needs at least one decoder"
    ensemble = EnsembleStepDecoder([Member(1, 4), Member(2, 4), Member(3)])
    context, state = ensemble.start(np.zeros((2, 3)))
    assert len(state) == 6
    for _ in range(2):
        logp, state, attention = ensemble.step(context, np.array([4, 5]), state)
    np.testing.assert_allclose(logp, np.log(1 / 6))
    assert [float(s[0, 0]) for s in state] == [1, 2, 2, 2, 3, 2]
    np.testing.assert_array_equal(attention, np.full((2, 4), 0.25))
    no_maps = EnsembleStepDecoder([Member(1), Member(2)])
    context, state = no_maps.start(np.zeros((2, 3)))
    assert no_maps.step(context, np.array([4, 5]), state)[2] is None
    # 2x2 and 3x3 maps (e.g. 7x7 and 10x10): resampled to the largest grid and averaged there (issue 34.9)
    ragged = EnsembleStepDecoder([Member(1, 4), Member(2, 9)])
    context, state = ragged.start(np.zeros((2, 3)))
    np.testing.assert_allclose(ragged.step(context, np.array([4, 5]), state)[2], np.full((2, 9), 1 / 9), rtol=1e-6)


@pytest.mark.parametrize("kind, sizes, config", [
    ("merge", {}, {"name": "merge_decoder", "vocab_size": 12, "feature_dim": 16, "embed_dim": 8, "units": 5,
                   "dropout": 0.25}),
    ("attention", {"attention_dim": 6, "feature_proj": 10, "alpha_c": 2},
     {"name": "attention_decoder", "vocab_size": 12, "feature_dim": 16, "embed_dim": 8, "units": 5,
      "attention_dim": 6, "feature_proj": 10, "dropout": 0.25, "alpha_c": 2.0}),
    ("topdown", {"attention_dim": 6, "feature_proj": 10},
     {"name": "top_down_decoder", "vocab_size": 12, "feature_dim": 16, "embed_dim": 8, "units": 5,
      "attention_dim": 6, "feature_proj": 10, "dropout": 0.25}),
])
def test_each_decoders_config_is_exact_and_round_trips(kind, sizes, config):
    m = build_decoder(kind, name=config["name"], vocab_size=12, feature_dim=16, embed_dim=8, units=5, dropout=0.25,
                      **sizes)
    got = m.get_config()
    assert got == config and [type(v) for v in got.values()] == [type(v) for v in config.values()]
    again = type(m).from_config(got)
    assert again.get_config() == config and again.kind == kind


def test_defaults_of_each_decoder():
    assert build_decoder("merge", name="m", vocab_size=9, feature_dim=4).get_config() == {
        "name": "m", "vocab_size": 9, "feature_dim": 4, "embed_dim": 256, "units": 256, "dropout": 0.5}
    a = build_decoder("attention", vocab_size=9, feature_dim=4).get_config()
    assert (a["embed_dim"], a["units"], a["attention_dim"], a["feature_proj"], a["dropout"], a["alpha_c"]) == \
        (256, 512, 256, 256, 0.5, 1.0)
    t = build_decoder("topdown", vocab_size=9, feature_dim=4).get_config()
    assert (t["embed_dim"], t["units"], t["attention_dim"], t["feature_proj"], t["dropout"]) == \
        (256, 512, 256, 256, 0.5)
    with pytest.raises(ValueError) as err:
        build_decoder("bottomup", vocab_size=9, feature_dim=4)
    assert str(err.value) == "unknown decoder 'bottomup'; choose one of merge, attention, topdown"


@pytest.mark.parametrize("kind", ["merge", "attention", "topdown"])
def test_embeddings_and_output_bias_start_from_the_given_numbers_even_before_build(kind):
    from captioning.models.decoders import DECODERS

    m = DECODERS[kind](vocab_size=7, feature_dim=4, embed_dim=3, units=4)
    assert not m.built
    matrix = np.arange(21, dtype=np.float64).reshape(7, 3) / 10
    m.init_embeddings(matrix)
    assert m.built
    np.testing.assert_array_equal(m.embedding.embeddings.numpy(), matrix.astype(np.float32))
    with pytest.raises(ValueError) as err:
        m.init_embeddings(np.zeros((7, 4)))
    assert str(err.value) == "embedding matrix has shape (7, 4), the decoder needs (7, 3)"
    fresh = DECODERS[kind](vocab_size=7, feature_dim=4, embed_dim=3, units=4)
    counts = np.array([0, 0, 0, 5, 1, 2, 3], dtype=float)
    fresh.init_output_bias(counts)
    np.testing.assert_allclose(fresh.classifier.bias.numpy(), np.log((counts + 1) / (counts + 1).sum()), rtol=1e-6)


def _layer_signature(layer):
    config = layer.get_config()
    keys = ("units", "activation", "rate", "input_dim", "output_dim", "mask_zero", "return_sequences")
    return layer.name, type(layer).__name__, {k: config[k] for k in keys if k in config}


R, T, L = {"activation": "relu"}, {"activation": "tanh"}, {"activation": "linear"}
LAYERS = {   # the sublayers' names are the weight paths inside every saved bundle: renaming one breaks loading
    "merge": [("image_dropout", "Dropout", {"rate": 0.25}), ("image_proj", "Dense", {"units": 5, **R}),
              ("embedding", "Embedding", {"input_dim": 12, "output_dim": 8, "mask_zero": False}),
              ("word_dropout", "Dropout", {"rate": 0.25}),
              ("lstm", "LSTM", {"units": 5, **T, "return_sequences": True}),
              ("merge_proj", "Dense", {"units": 5, **R}), ("classifier", "Dense", {"units": 12, **L})],
    "attention": [("feature_proj", "Dense", {"units": 10, **R}), ("init_h", "Dense", {"units": 5, **T}),
                  ("init_c", "Dense", {"units": 5, **T}), ("att_keys", "Dense", {"units": 6, **L}),
                  ("att_query", "Dense", {"units": 6, **L}), ("att_score", "Dense", {"units": 1, **L}),
                  ("gate", "Dense", {"units": 10, "activation": "sigmoid"}),
                  ("embedding", "Embedding", {"input_dim": 12, "output_dim": 8, "mask_zero": False}),
                  ("lstm_cell", "LSTMCell", {"units": 5, **T}), ("dropout", "Dropout", {"rate": 0.25}),
                  ("classifier", "Dense", {"units": 12, **L})],
    "topdown": [("feature_proj", "Dense", {"units": 10, **R}), ("att_keys", "Dense", {"units": 6, **L}),
                ("att_query", "Dense", {"units": 6, **L}), ("att_score", "Dense", {"units": 1, **L}),
                ("embedding", "Embedding", {"input_dim": 12, "output_dim": 8, "mask_zero": False}),
                ("attention_lstm", "LSTMCell", {"units": 5, **T}), ("language_lstm", "LSTMCell", {"units": 5, **T}),
                ("dropout", "Dropout", {"rate": 0.25}), ("classifier", "Dense", {"units": 12, **L})],
}


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_each_decoder_is_built_from_exactly_these_layers(kind):
    extra = {} if kind == "merge" else {"attention_dim": 6, "feature_proj": 10}
    m = build_decoder(kind, vocab_size=12, feature_dim=16, embed_dim=8, units=5, dropout=0.25, **extra)
    assert [_layer_signature(layer) for layer in m.layers] == LAYERS[kind]
    assert m.built


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_a_call_without_a_training_flag_is_inference(kind):
    extra = {} if kind == "merge" else {"attention_dim": 6, "feature_proj": 10}
    m = build_decoder(kind, vocab_size=12, feature_dim=16, embed_dim=8, units=5, dropout=0.5, **extra)
    rng = np.random.default_rng(7)
    feats = rng.normal(size=(2, 16) if kind == "merge" else (2, 4, 16)).astype("float32")
    tokens = rng.integers(4, 12, size=(2, 5)).astype("int32")
    plain = m((feats, tokens)).numpy()
    np.testing.assert_array_equal(plain, m((feats, tokens), training=False).numpy())
    assert not np.allclose(m((feats, tokens), training=True).numpy(), plain)      # dropout 0.5 does act in training


def test_merge_masks_only_padding_so_an_unknown_word_is_read_like_any_word(model):
    """Teacher forcing masks id 0 (<pad>); <unk> (id 1) mid-caption is an input like any other, as in the step API."""
    feats = np.random.default_rng(8).normal(size=(1, 16)).astype("float32")
    tokens = np.array([[Vocabulary.start_id, 5, Vocabulary.unk_id, 7, 0, 0]], "int32")
    full = model((feats, tokens), training=False).numpy()
    full = full - np.log(np.exp(full).sum(-1, keepdims=True))
    steps = StepDecoder(model)
    context, state = steps.start(feats)
    for t in range(4):                                                   # up to the padding
        logp, state, _ = steps.step(context, tokens[:, t], state)
        np.testing.assert_allclose(logp, full[:, t], atol=1e-4)
