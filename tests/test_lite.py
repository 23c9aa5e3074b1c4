"""The app's first caption without TensorFlow (captioning/service/lite.py, captioning/models/numpy_steps.py).

Unit tests pin the numpy step decoders to the Keras ones on random weights; integration tests make the lite copy of
the tiny MobileNetV2 bundles, caption real Flickr8k photos from it in a process that never imports TensorFlow (the
same captions as the Keras Captioner), and show when a copy is not used (stale, damaged, turned off).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from captioning.data.text import Vocabulary
from captioning.decoding.config import DecodeConfig
from captioning.decoding.search import decode
from captioning.models.numpy_steps import LAYERS, NumpyStepDecoder, numpy_weights

ROOT = Path(__file__).resolve().parents[1]


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
    with pytest.raises(ValueError, match="no numpy step decoder for a 'topdown' decoder"):
        NumpyStepDecoder("topdown", model.get_config(), weights)
    with pytest.raises(ValueError, match="lack gate.bias"):
        NumpyStepDecoder("attention", model.get_config(), {k: v for k, v in weights.items() if k != "gate.bias"})
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


# --- the real thing: lite copies of the tiny bundles ------------------------------------------------------------
@pytest.fixture()
def lite_env(monkeypatch, tmp_path, mobilenet_weights):
    """Lite copies on, in a cache folder of the test's, from a copy of the small encoder's weights (the test may
    touch it)."""
    import shutil

    weights = tmp_path / "weights"
    weights.mkdir()
    shutil.copy(mobilenet_weights, weights / mobilenet_weights.name)
    monkeypatch.setenv("CAPTIONING_LITE", "1")
    monkeypatch.setenv("CAPTIONING_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CAPTIONING_WEIGHTS_DIR", str(weights))
    return tmp_path / "cache" / "lite", weights / mobilenet_weights.name


def photos(bundle: Path, flickr_dir: Path, n: int) -> list[Path]:
    from captioning.artifacts.bundle import load_bundle

    return [flickr_dir / "Images" / name for name in load_bundle(bundle).predictions["image"].iloc[:n]]


LITE_CAPTIONS = """
import json, sys
from captioning.service.lite import load_lite
captioner = load_lite(sys.argv[1], quick_of=3)
out = [[c.words, c.log_prob] for path in sys.argv[2:] for c in captioner.caption(path, beam_width=3)[:1]]
print(json.dumps({"captions": out, "tensorflow": "tensorflow" in sys.modules or "keras" in sys.modules,
                  "quick_of": captioner.quick_of, "steps": type(captioner.steps).__name__}))
"""


@pytest.mark.parametrize("name", ["tiny-attention", "tiny"])
def test_a_lite_copy_captions_like_the_bundle_without_importing_tensorflow(name, lite_env, tiny_run, flickr_dir,
                                                                           mobilenet_weights):
    from captioning.service.captioner import Captioner
    from captioning.service.lite import load_lite, make_lite

    bundle = tiny_run[0] / name
    assert load_lite(bundle) is None                             # not made yet
    folder = make_lite(bundle)
    assert folder.parent == lite_env[0] and sorted(p.name for p in folder.iterdir()) == [
        ".making", "decoder.npz", "encoder.tflite", "lite.json"]
    meta = json.loads((folder / "lite.json").read_text())
    assert meta["kind"] == ("attention" if name == "tiny-attention" else "merge")
    assert meta["fingerprint"]["weights"][0] == str(lite_env[1].resolve())
    assert make_lite(bundle) == folder and (folder / "lite.json").read_text() == json.dumps(meta, indent=2)
    images = photos(bundle, flickr_dir, 4)
    run = subprocess.run([sys.executable, "-c", LITE_CAPTIONS, str(bundle), *map(str, images)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120, env=os.environ.copy())
    assert run.returncode == 0, run.stderr
    lite = json.loads(run.stdout.strip().splitlines()[-1])
    assert lite["tensorflow"] is False and lite["quick_of"] == 3 and lite["steps"] == "NumpyStepDecoder"
    keras = Captioner.from_bundle(bundle, mobilenet_weights)
    expected = [keras.caption(path, beam_width=3)[0] for path in images]
    assert [words for words, _ in lite["captions"]] == [c.words for c in expected]
    np.testing.assert_allclose([p for _, p in lite["captions"]], [c.log_prob for c in expected], atol=1e-3)


def test_a_stale_damaged_or_switched_off_lite_copy_is_not_used(lite_env, tiny_run, monkeypatch):
    from captioning.service.lite import load_lite, make_lite

    bundle = tiny_run[0] / "tiny-attention"
    folder = make_lite(bundle)
    assert load_lite(bundle) is not None
    monkeypatch.setenv("CAPTIONING_LITE", "0")
    assert load_lite(bundle) is None                             # switched off
    monkeypatch.setenv("CAPTIONING_LITE", "1")
    encoder = folder / "encoder.tflite"
    blob = encoder.read_bytes()
    encoder.write_bytes(blob[:-1] + bytes([blob[-1] ^ 1]))       # one bit flipped
    assert load_lite(bundle) is None
    encoder.write_bytes(blob)
    assert load_lite(bundle) is not None
    meta = json.loads((folder / "lite.json").read_text())
    (folder / "lite.json").write_text(json.dumps({**meta, "kind": "topdown"}))
    assert load_lite(bundle) is None                             # not a kind with a numpy twin
    (folder / "lite.json").write_text("{not json")
    assert load_lite(bundle) is None
    (folder / "lite.json").write_text(json.dumps(meta, indent=2))
    # the encoder's weights file changed (a new copy with the same name): the copy is stale, a new one replaces it
    weights = lite_env[1]
    assert meta["fingerprint"]["weights"][0] == str(weights.resolve())
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert load_lite(bundle) is None
    fresh = make_lite(bundle)
    assert fresh != folder and not folder.exists() and load_lite(bundle) is not None   # the stale copy is gone
