"""The top-down attention decoder (Anderson et al. 2018) on tiny made-up sizes: its maths against the paper's
equations in numpy, its step API, decoding, ensembles and the bundle. train.py on a real run: test_topdown.py."""
import numpy as np
import pytest

from captioning.artifacts.bundle import load_bundle, save_bundle
from captioning.data.text import Vocabulary
from captioning.decoding.config import DecodeConfig
from captioning.decoding.search import beam_search, greedy_search
from captioning.models.decoders import TopDownDecoder, build_decoder
from captioning.models.stepper import EnsembleStepDecoder, StepDecoder

SIZES = dict(vocab_size=12, feature_dim=16, embed_dim=8, units=8, attention_dim=6, feature_proj=10, dropout=0.5)
TOKENS = np.array([[2, 5, 7, 9], [2, 4, 11, 0]], "int32")         # <start> w w w; one row padded


def _fixed(model, seed: int = 22):
    """Deterministic weights: N(0, 0.5) drawn in the order of the weights' sorted paths."""
    rng = np.random.default_rng(seed)
    for w in sorted(model.weights, key=lambda w: w.path):
        w.assign(rng.normal(scale=0.5, size=tuple(w.shape)).astype("float32"))
    return model


@pytest.fixture(scope="module")
def model():
    return _fixed(build_decoder("topdown", **SIZES))


@pytest.fixture(scope="module")
def maps():
    return np.random.default_rng(7).normal(size=(2, 9, 16)).astype("float32")       # (B, P=3x3, D)


def _log_softmax(x):
    return x - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True)) - x.max(-1, keepdims=True)


def _reference(model, maps, tokens):
    """The paper's equations in numpy, from the model's weights: log-probs (B, T, V) and weights (B, T, P)."""
    W = {w.path.split("/", 1)[1]: w.numpy() for w in model.weights}
    sig = lambda x: 1 / (1 + np.exp(-x))

    def lstm(name, x, h, c):                       # Keras gate order: input, forget, candidate, output
        z = x @ W[f"{name}/kernel"] + h @ W[f"{name}/recurrent_kernel"] + W[f"{name}/bias"]
        i, f, g, o = np.split(z, 4, axis=-1)
        c = sig(f) * c + sig(i) * np.tanh(g)
        return sig(o) * np.tanh(c), c

    v = np.maximum(maps @ W["feature_proj/kernel"] + W["feature_proj/bias"], 0)           # (B, P, F)
    v_mean = v.mean(axis=1)                                                                # (B, F)
    keys = v @ W["att_keys/kernel"] + W["att_keys/bias"]                                  # (B, P, A)
    B, U = len(maps), model.units
    h1 = c1 = h2 = c2 = np.zeros((B, U))
    out, alphas = [], []
    for t in range(tokens.shape[1]):
        word = W["embedding/embeddings"][tokens[:, t]]                                    # (B, E)
        h1, c1 = lstm("attention_lstm", np.concatenate([h2, v_mean, word], -1), h1, c1)   # attention LSTM
        query = h1 @ W["att_query/kernel"] + W["att_query/bias"]                          # (B, A)
        a = (np.tanh(keys + query[:, None]) @ W["att_score/kernel"])[..., 0] + W["att_score/bias"]   # (B, P)
        alpha = np.exp(a - a.max(-1, keepdims=True))
        alpha /= alpha.sum(-1, keepdims=True)
        attended = (alpha[..., None] * v).sum(axis=1)                                     # (B, F)
        h2, c2 = lstm("language_lstm", np.concatenate([attended, h1], -1), h2, c2)        # language LSTM
        out.append(_log_softmax(h2 @ W["classifier/kernel"] + W["classifier/bias"]))
        alphas.append(alpha)
    return np.stack(out, 1), np.stack(alphas, 1)


def test_teacher_forced_pass_follows_the_papers_equations(model, maps):
    logits = model((maps, TOKENS), training=False).numpy()
    expected, _ = _reference(model, maps, TOKENS)
    np.testing.assert_allclose(_log_softmax(logits.astype(np.float64)), expected, atol=1e-4)


def test_golden_next_word_log_probabilities(model, maps):
    """Fixed weights and inputs -> these numbers (log p of words 4..7 at every step); a change to the maths
    (wiring, gate order, attention, initial state) moves them."""
    logits = model((maps, TOKENS), training=False).numpy()
    got = _log_softmax(logits.astype(np.float64))[:, :, 4:8]
    golden = np.array([[[-2.697646, -2.099685, -2.534929, -1.537998],
                        [-2.736459, -2.276645, -2.722481, -1.420509],
                        [-2.706640, -2.267969, -2.920880, -1.361319],
                        [-2.538863, -2.069425, -2.697790, -1.559868]],
                       [[-2.673281, -2.211093, -2.510330, -1.508833],
                        [-2.691650, -2.384389, -2.633525, -1.364278],
                        [-2.657472, -2.431276, -2.775495, -1.321621],
                        [-2.633666, -2.401088, -2.665047, -1.357724]]])
    np.testing.assert_allclose(got, golden, atol=2e-5)


def test_step_api_reproduces_the_teacher_forced_pass_and_attends(model, maps):
    full = model((maps, TOKENS), training=False).numpy()
    full = _log_softmax(full.astype(np.float64))
    _, ref_alpha = _reference(model, maps, TOKENS)
    steps = StepDecoder(model)
    context, state = steps.start(maps)
    assert len(state) == 4 and all(s.shape == (2, 8) and not s.any() for s in state)   # [h1, c1, h2, c2] = 0
    for t in range(TOKENS.shape[1]):
        logp, state, alpha = steps.step(context, TOKENS[:, t], state)
        np.testing.assert_allclose(logp, full[:, t], atol=1e-4)
        assert alpha.shape == (2, 9) and (alpha >= 0).all()
        np.testing.assert_allclose(alpha.sum(axis=1), 1.0, rtol=1e-5)        # a distribution over locations
        np.testing.assert_allclose(alpha, ref_alpha[:, t], atol=1e-5)


def test_dropout_acts_only_in_training(model, maps):
    a = model((maps, TOKENS), training=False).numpy()
    assert np.array_equal(a, model((maps, TOKENS), training=False).numpy())
    assert not np.allclose(a, model((maps, TOKENS), training=True).numpy())


def test_beam_width_one_equals_greedy_with_attention_maps(model):
    vocab = Vocabulary([f"w{i}" for i in range(8)])
    feats = np.random.default_rng(3).normal(size=(4, 9, 16)).astype("float32")
    steps = StepDecoder(model)
    cfg = DecodeConfig(max_length=7)
    greedy = greedy_search(steps, feats, vocab, cfg)
    beam = beam_search(steps, feats, vocab, cfg)
    for g, (b,) in zip(greedy, beam):
        assert g.words == b.words and g.log_prob == pytest.approx(b.log_prob, abs=1e-5)
        assert g.attention.shape == (g.num_tokens, 9)
        np.testing.assert_allclose(g.attention, b.attention, atol=1e-6)
    for caps in beam_search(steps, feats, vocab, DecodeConfig(beam_width=3, max_length=7, num_return_sequences=3)):
        assert all(c.attention.shape == (c.num_tokens, 9) for c in caps)


def test_ensembles_with_merge_and_attention_decoders(model):
    vocab = Vocabulary([f"w{i}" for i in range(8)])
    feats = np.random.default_rng(5).normal(size=(3, 9, 16)).astype("float32")
    merge = build_decoder("merge", vocab_size=12, feature_dim=16, embed_dim=8, units=8)
    attention = build_decoder("attention", vocab_size=12, feature_dim=16, embed_dim=8, units=8, attention_dim=6,
                              feature_proj=10)
    ensemble = EnsembleStepDecoder([StepDecoder(model), StepDecoder(merge), StepDecoder(attention)])
    caps = beam_search(ensemble, feats, vocab, DecodeConfig(beam_width=3, max_length=6))
    assert len(caps) == 3 and all(c[0].attention.shape == (c[0].num_tokens, 9) for c in caps)
    alone = greedy_search(StepDecoder(model), feats, vocab, DecodeConfig(max_length=6))
    mixed = greedy_search(ensemble, feats, vocab, DecodeConfig(max_length=6))
    assert any(a.log_prob != m.log_prob for a, m in zip(alone, mixed))


def test_config_round_trip_and_unknown_kind():
    m = build_decoder("topdown", **SIZES)
    again = TopDownDecoder.from_config(m.get_config())
    assert again.get_config() == m.get_config() and again.kind == "topdown" and again.uses_spatial
    with pytest.raises(ValueError, match="topdown"):
        build_decoder("bottomup", **SIZES)


def test_bundle_round_trip_in_float16(tmp_path):
    """Saved with float16 weights, loaded into float32: the loaded model computes what the half weights say."""
    model = _fixed(build_decoder("topdown", **{**SIZES, "feature_dim": 1280}))
    vocab = Vocabulary([f"w{i}" for i in range(8)])
    manifest = {"encoder": {"name": "mobilenetv2", "alpha": 0.35, "key": "mobilenetv2-a0.35-224",
                            "feature_dim": 1280}, "max_length": 10}
    bundle = load_bundle(save_bundle(tmp_path / "td", model, vocab, manifest))
    assert bundle.manifest["decoder"]["kind"] == "topdown" and bundle.uses_spatial
    assert isinstance(bundle.decoder, TopDownDecoder)
    assert bundle.decoder.get_config() | {"name": ""} == model.get_config() | {"name": ""}
    half = [w.astype(np.float16).astype(np.float32) for w in model.get_weights()]
    for a, b in zip(bundle.decoder.get_weights(), half):
        assert a.dtype == np.float32 and np.array_equal(a, b)
    model.set_weights(half)
    feats = np.random.default_rng(9).normal(size=(2, 4, 1280)).astype("float32")
    np.testing.assert_allclose(bundle.decoder((feats, TOKENS)).numpy(), model((feats, TOKENS)).numpy(), atol=1e-5)
