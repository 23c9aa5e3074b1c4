"""Ensembles whose decoders read different encoders (issue 22, lever 3).

Unit tests pin the pieces on tiny data (the features container, the ensemble's routing, the manifest's member
encoder blocks); the integration test trains a tiny EfficientNet-Lite0 decoder on 60 real Flickr8k images and
ensembles it with the MobileNetV2 attention bundle through ``train.py ensemble``, then captions photos with it.
"""
from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
from conftest import missing
from test_app import navigation_like_the_server, start, texts  # noqa: F401  (the app's page-navigation fixture)

from captioning.artifacts.bundle import load_bundle, save_bundle
from captioning.artifacts.manifest import BundleError, read_manifest
from captioning.data.text import Vocabulary
from captioning.decoding.config import DecodeConfig
from captioning.decoding.search import decode
from captioning.models.decoders import build_decoder
from captioning.models.stepper import EnsembleStepDecoder, MultiFeatures, StepDecoder, as_float32, features_for

VOCAB = Vocabulary(["a", "dog", "runs", "on", "grass"], {"a": 9, "dog": 4}, 2)
MOBILE = {"name": "mobilenetv2", "alpha": 0.35, "key": "mobilenetv2-a0.35-224"}          # 1280-d
XCEPTION = {"name": "xception", "alpha": None, "key": "xception-299"}                    # 2048-d


def decoder(kind="merge", feature_dim=1280, seed=0):
    extra = {"attention_dim": 4, "feature_proj": 6} if kind == "attention" else {}
    model = build_decoder(kind, vocab_size=len(VOCAB), feature_dim=feature_dim, embed_dim=4, units=5, dropout=0.5,
                          **extra)
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(size=w.shape).astype("float32") for w in model.get_weights()])
    return model


# --- the features container -------------------------------------------------------------------------------
def test_multi_features_index_and_slice_every_encoder_together():
    a, b = np.arange(12.0).reshape(4, 3), np.arange(40.0).reshape(4, 5, 2)
    feats = MultiFeatures({"x": a, "y": b})
    assert len(feats) == 4 and feats.keys == ["x", "y"]
    part = feats[1:3]
    assert isinstance(part, MultiFeatures) and len(part) == 2
    np.testing.assert_array_equal(part.of("x"), a[1:3])
    np.testing.assert_array_equal(part.of("y"), b[1:3])
    picked = feats[np.array([3, 0])]
    np.testing.assert_array_equal(picked.of("y"), b[[3, 0]])
    with pytest.raises(KeyError, match="no features from encoder 'z'; there are: x, y"):
        feats.of("z")
    with pytest.raises(ValueError, match=r"same images; rows per encoder: \{'x': 4, 'y': 3\}"):
        MultiFeatures({"x": a, "y": b[:3]})
    with pytest.raises(ValueError, match="at least one encoder"):
        MultiFeatures({})


def test_float32_and_routing_helpers():
    feats = MultiFeatures({"x": np.ones((2, 3), np.float16), "y": np.ones((2, 4), np.float64)})
    converted = as_float32(feats)
    assert {k: v.dtype for k, v in converted.groups.items()} == {"x": np.float32, "y": np.float32}
    assert as_float32(np.ones((2, 3), np.float16)).dtype == np.float32
    assert features_for(feats, "y").shape == (2, 4)
    plain = np.zeros((2, 3))
    assert features_for(plain, "anything") is plain and features_for(plain, None) is plain
    with pytest.raises(ValueError, match="need each decoder's encoder key"):
        features_for(feats, None)


def test_the_ensemble_hands_each_member_its_own_encoders_rows():
    class Member:
        """Next-word distribution from the first feature of its row: checks the rows come from its encoder."""

        def __init__(self, width):
            self.width = width

        def start(self, features, repeat=1):
            assert features.shape[1] == self.width, "a member got another encoder's features"
            return np.repeat(features[:, :1], repeat, axis=0), []

        def step(self, context, tokens, state):
            probs = np.full((len(tokens), 6), 0.1)
            probs[:, 4] = 0.1 + 0.4 * context[:, 0]          # token 4's weight comes from the features
            probs[:, 5] = 1 - probs[:, :5].sum(axis=1)
            return np.log(probs), state, None

    with pytest.raises(ValueError, match="2 decoders but 1 encoder keys"):
        EnsembleStepDecoder([Member(3), Member(5)], ["x"])
    ensemble = EnsembleStepDecoder([Member(3), Member(5)], ["x", "y"])
    feats = MultiFeatures({"x": np.full((2, 3), 1.0), "y": np.full((2, 5), 0.0)})
    context, state = ensemble.start(feats)
    logp, _, attention = ensemble.step(context, np.array([1, 1]), state)
    np.testing.assert_allclose(np.exp(logp[:, 4]), [0.3, 0.3])          # the mean of 0.5 (x) and 0.1 (y)
    assert attention is None
    swapped = EnsembleStepDecoder([Member(5), Member(3)], ["y", "x"])
    np.testing.assert_allclose(swapped.step(*swapped.start(feats)[:1], np.array([1, 1]), [])[0], logp)


def test_decoding_multi_features_in_batches_equals_decoding_them_at_once():
    merge, attention = decoder("merge", 1280, 1), decoder("attention", 2048, 2)
    steps = EnsembleStepDecoder([StepDecoder(merge), StepDecoder(attention)], ["m", "x"])
    rng = np.random.default_rng(0)
    feats = MultiFeatures({"m": rng.normal(size=(5, 1280)).astype("float32"),
                           "x": rng.normal(size=(5, 4, 2048)).astype("float32")})
    config = DecodeConfig(beam_width=2, max_length=6)
    whole = decode(steps, feats, VOCAB, config)
    batched = decode(steps, feats, VOCAB, config, batch_size=2)
    assert [[c.words for c in n] for n in whole] == [[c.words for c in n] for n in batched]
    np.testing.assert_allclose([n[0].score for n in whole], [n[0].score for n in batched], rtol=1e-5)
    # and each row is the ensemble of the two decoders on that photo's own two feature sets
    alone = decode(EnsembleStepDecoder([StepDecoder(merge), StepDecoder(attention)], ["m", "x"]), feats[3:4],
                   VOCAB, config)
    assert alone[0][0].words == whole[3][0].words
    # each member's step traced once for batches of 5, 2 and 1 photos and every beam's rows (issue 39: a CLI run
    # printed "triggered tf.function retracing" warnings)
    assert [member._step.experimental_get_tracing_count() for member in steps.members] == [1, 1]


# --- the bundle format ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cross(tmp_path_factory):
    """A merge decoder on MobileNetV2-0.35 features with an attention member on Xception maps."""
    root = tmp_path_factory.mktemp("cross")
    main, member = decoder("merge", 1280, 1), decoder("attention", 2048, 2)
    path = save_bundle(root / "cross", main, VOCAB, {"encoder": MOBILE}, members=(member,),
                       member_encoders=[XCEPTION])
    return path


def test_a_member_on_another_encoder_carries_that_encoders_block(cross):
    manifest = read_manifest(cross)
    assert manifest["encoder"] == MOBILE
    assert manifest["members"][0]["encoder"] == XCEPTION and manifest["members"][0]["kind"] == "attention"
    b = load_bundle(cross)
    assert b.decoder_keys == ["mobilenetv2-a0.35-224", "xception-299"] and b.multi_encoder
    assert [e.name for e in b.encoders] == ["mobilenetv2", "xception"]
    assert not b.spatial_for("mobilenetv2-a0.35-224") and b.spatial_for("xception-299") and b.uses_spatial
    steps = b.step_decoder()
    assert steps.encoders == ["mobilenetv2-a0.35-224", "xception-299"]


def test_members_on_the_bundles_own_encoder_need_no_block(tmp_path):
    path = save_bundle(tmp_path / "same", decoder(), VOCAB, {"encoder": MOBILE}, members=(decoder(seed=3),),
                       member_encoders=[None])
    b = load_bundle(path)
    assert "encoder" not in b.manifest["members"][0] and not b.multi_encoder
    assert b.decoder_keys == ["mobilenetv2-a0.35-224"] * 2 and b.step_decoder().encoders == [None, None]
    with pytest.raises(ValueError, match="1 members but 2 member encoders"):
        save_bundle(tmp_path / "bad", decoder(), VOCAB, {"encoder": MOBILE}, members=(decoder(),),
                    member_encoders=[None, None])


def edited(cross, tmp_path, change):
    target = tmp_path / "b"
    shutil.copytree(cross, target)
    manifest = json.loads((target / "manifest.json").read_text())
    change(manifest)
    (target / "manifest.json").write_text(json.dumps(manifest))
    return target


@pytest.mark.parametrize("block, message", [
    ("xception", "has a malformed 'members[1].encoder' (expected an object with a 'name')"),
    ({"alpha": 1.0}, "has a malformed 'members[1].encoder' (expected an object with a 'name')"),
    ({"name": "xception", "alpha": "wide"}, "has a malformed 'members[1].encoder.alpha' (expected a number or null)"),
])
def test_a_malformed_member_encoder_is_refused(cross, tmp_path, block, message):
    def change(m):
        m["members"][0]["encoder"] = block
    with pytest.raises(BundleError, match=re.escape(message)):
        read_manifest(edited(cross, tmp_path, change))


def test_a_member_whose_encoder_does_not_fit_it_is_refused(cross, tmp_path):
    def wrong_width(m):
        m["members"][0]["encoder"] = {"name": "mobilenetv2", "alpha": 0.35}
    with pytest.raises(BundleError, match="encoder mobilenetv2-a0.35-224 gives 1280-d features but ensemble "
                                          "member member-1.keras expects 2048"):
        load_bundle(edited(cross, tmp_path, wrong_width), verify=False)

    def unknown(m):
        m["members"][0]["encoder"] = {"name": "clip"}
    with pytest.raises(BundleError, match="unknown encoder for ensemble member member-1.keras"):
        load_bundle(edited(cross, tmp_path / "u", unknown), verify=False)


# --- the real thing: train.py ensemble across MobileNetV2 and EfficientNet-Lite0 ------------------------
@pytest.fixture(scope="module")
def lite_weights():
    from captioning.vision.encoders import find_weights, get_spec

    path = find_weights(get_spec("efficientnet-lite0"))
    if path is None:
        missing("EfficientNet-Lite0 weights not set up: python -m captioning setup-weights --encoder "
                "efficientnet-lite0 (make test does it)")
    return path


@pytest.fixture(scope="module")
def cross_run(tiny_run, flickr_dir, lite_weights):
    """A tiny merge decoder trained on EfficientNet-Lite0 features of the same 60 photos, then
    ``train.py ensemble`` of the MobileNetV2 attention bundle with it, evaluated and swept."""
    import train

    artifacts, cache = tiny_run
    lite = artifacts.parent / "tiny-lite0"
    common = ["--data-dir", str(flickr_dir), "--limit", "60", "--cache-dir", str(cache), "--quiet",
              "--beam-widths", "3", "--no-human", "--no-meteor"]
    assert train.main(["--encoder", "efficientnet-lite0", "--weights", str(lite_weights), "--epochs", "2",
                       "--units", "64", "--embed-dim", "64", "--out", str(lite), "--no-sweep", *common]) == 0
    out = artifacts.parent / "cross-ensemble"
    assert train.main(["ensemble", "--members", str(artifacts / "tiny-attention"), str(lite), "--out", str(out),
                       *common]) == 0
    return out, artifacts / "tiny-attention", lite


def test_train_py_ensemble_across_encoders_is_evaluated_and_swept(cross_run):
    out, attention, lite = cross_run
    bundle = load_bundle(out)
    assert [d.kind for d in bundle.decoders] == ["attention", "merge"]
    assert bundle.decoder_keys == ["mobilenetv2-a0.35-224", "efficientnetlite0-224"]
    assert bundle.manifest["members"][0]["encoder"]["name"] == "efficientnetlite0"
    assert [p["encoder"] for p in bundle.manifest["ensemble_of"]] == bundle.decoder_keys
    assert [r["beam_width"] for r in bundle.metrics["results"]] == [1, 3] and bundle.metrics["sweep"]
    assert bundle.predictions["caption"].str.len().min() > 0


def test_the_captioner_runs_each_encoder_once_and_decodes_as_the_ensemble_does(cross_run, flickr_dir,
                                                                               mobilenet_weights):
    from captioning.service.captioner import Captioner

    out, attention, lite = cross_run
    captioner = Captioner.from_bundle(out, mobilenet_weights)
    image = flickr_dir / "Images" / load_bundle(out).predictions["image"].iloc[0]
    feats = captioner.features(image)
    assert isinstance(feats, MultiFeatures)
    assert {k: v.shape for k, v in feats.groups.items()} == {"mobilenetv2-a0.35-224": (1, 49, 1280),
                                                             "efficientnetlite0-224": (1, 1280)}
    # the same numbers as each single-encoder bundle's own captioner gives
    single = {"mobilenetv2-a0.35-224": Captioner.from_bundle(attention, mobilenet_weights).features(image),
              "efficientnetlite0-224": Captioner.from_bundle(lite).features(image)}
    for key, want in single.items():
        np.testing.assert_allclose(feats.of(key), want, rtol=1e-5, atol=1e-5)
    # plain beam search on both sides (the captioner's default reranks by consensus with its index's photos)
    caption = captioner.caption(image, beam_width=3, consensus=0)[0]
    steps = EnsembleStepDecoder([StepDecoder(load_bundle(attention).decoder), StepDecoder(load_bundle(lite).decoder)],
                                list(single))
    want = decode(steps, MultiFeatures(single), captioner.vocab, captioner.config(beam_width=3, consensus=0))[0][0]
    assert caption.words == want.words and caption.score == pytest.approx(want.score, rel=1e-4)
    assert caption.attention.shape == (caption.num_tokens, 49)       # the attention member's map
    # many photos at once: the same captions as one at a time
    names = list(load_bundle(out).predictions["image"].unique()[:3])
    batch = list(captioner.caption_many([flickr_dir / "Images" / n for n in names], batch_size=2, beam_width=3))
    for result, name in zip(batch, names):
        assert result.ok and result.best.words == captioner.caption(flickr_dir / "Images" / name,
                                                                    beam_width=3)[0].words


def test_a_cross_encoder_ensemble_gets_a_retrieval_index_on_its_own_encoder(cross_run, tiny_run, flickr_dir,
                                                                            tmp_path, mobilenet_weights):
    import train
    from captioning.service.captioner import Captioner

    out, _, _ = cross_run
    copy = tmp_path / "indexed"
    shutil.copytree(out, copy)
    cache = tiny_run[1]
    assert train.main(["index", "--out", str(copy), "--data-dir", str(flickr_dir), "--limit", "60",
                       "--cache-dir", str(cache), "--quiet"]) == 0
    captioner = Captioner.from_bundle(copy, mobilenet_weights)
    assert captioner.bundle.index.dim == 1280 and captioner.can_assess
    image = flickr_dir / "Images" / captioner.bundle.predictions["image"].iloc[0]
    feats = captioner.features(image)
    caption = captioner.caption(image, beam_width=3)[0]
    got = captioner.assess(feats, [caption])[0]
    want = captioner.assess(feats.of("mobilenetv2-a0.35-224"), [caption])[0]
    assert got == want


def test_encoders_have_the_names_people_know():
    from captioning.artifacts.manifest import EncoderInfo

    assert EncoderInfo.from_dict({"name": "efficientnetlite0"}).label == "EfficientNet-Lite0"
    assert EncoderInfo.from_dict({"name": "xception", "alpha": None}).label == "Xception"
    assert EncoderInfo.from_dict({"name": "mobilenetv2", "alpha": 0.35}).label == "MobileNetV2 x0.35"
    assert EncoderInfo.from_dict({"name": "future-net"}).label == "future-net"


def test_an_ensemble_of_an_ensemble_keeps_each_decoders_encoder_and_origin(cross_run, tiny_run, flickr_dir,
                                                                           tmp_path):
    import train

    out, _, _ = cross_run
    artifacts, cache = tiny_run
    nested = tmp_path / "nested"
    assert train.main(["ensemble", "--members", str(out), str(artifacts / "tiny"), "--out", str(nested),
                       "--data-dir", str(flickr_dir), "--limit", "60", "--cache-dir", str(cache), "--quiet",
                       "--beam-widths", "2", "--no-human", "--no-meteor", "--no-sweep"]) == 0
    bundle = load_bundle(nested)
    assert bundle.decoder_keys == ["mobilenetv2-a0.35-224", "efficientnetlite0-224", "mobilenetv2-a0.35-224"]
    assert [p["bundle"] for p in bundle.manifest["ensemble_of"]] == ["tiny-attention", "tiny-lite0", "tiny"]
    assert ["encoder" in m for m in bundle.manifest["members"]] == [True, False]
    assert [r["beam_width"] for r in bundle.metrics["results"]] == [1, 2]


@pytest.mark.usefixtures("navigation_like_the_server")
def test_the_app_names_both_encoders_and_each_members_encoder(cross_run, flickr_dir, mobilenet_weights, monkeypatch):

    out, _, _ = cross_run
    monkeypatch.setenv("CAPTIONING_ARTIFACTS", str(out.parent))
    monkeypatch.setenv("FLICKR8K_DIR", str(flickr_dir))
    monkeypatch.setenv("CAPTIONING_WEIGHTS_DIR", str(mobilenet_weights.parent))
    at = start()
    at.sidebar.selectbox[0].select(str(out)).run()
    sidebar = " ".join(c.value for c in at.sidebar.caption)
    assert "**MobileNetV2 x0.35** (224px) + **EfficientNet-Lite0** (224px)" in sidebar, sidebar
    at.switch_page("app_pages/evaluation.py").run()
    assert not at.exception, at.exception
    members = next(d.value for d in at.dataframe if "Member" in d.value.columns)
    assert list(members["Encoder"]) == ["MobileNetV2 x0.35", "EfficientNet-Lite0"]
    assert "How it was trained" in texts(at)


def test_the_app_loads_an_ensemble_in_two_stages_its_own_decoder_first(cross_run, flickr_dir, mobilenet_weights):
    """captioning.service.warm_load: the bundle's own decoder on its own encoder is ready (and captions as that bundle
    alone does) before the other encoder is even built; then the whole ensemble, reusing what was built."""
    from captioning.service.captioner import Captioner
    from captioning.service.warm_load import StagedLoad

    out, attention, lite = cross_run
    load, order = StagedLoad(out), []
    load.quick.add_done_callback(lambda f: order.append(("quick", set(f.result()._encoders))))
    load.full.add_done_callback(lambda f: order.append(("full", set(f.result()._encoders))))
    load.run()
    own, other = "mobilenetv2-a0.35-224", "efficientnetlite0-224"
    assert order == [("quick", {own}), ("full", {own, other})]
    quick, full = load.quick.result(), load.full.result()
    assert quick.quick_of == 2 and full.quick_of is None and len(quick.bundle.decoders) == 1
    assert quick.steps is full.steps.members[0] and quick._encoders is full._encoders     # traced once, shared
    assert list(load.timings) == ["own decoder", f"encoder {own}", f"trace encoder {own}", "consensus table",
                                  "trace quick decoding", "other decoders", f"encoder {other}",
                                  f"trace encoder {other}", "trace full decoding"]
    assert "cider" in quick.steps.consensus._made       # the reranking's table, made beside the encoder's build
    assert quick.bundle.decoder is full.bundle.decoder and quick.bundle.index is full.bundle.index
    image = flickr_dir / "Images" / load_bundle(out).predictions["image"].iloc[0]
    alone = Captioner.from_bundle(attention, mobilenet_weights).caption(image, beam_width=3)[0]
    assert quick.caption(image, beam_width=3)[0].words == alone.words
    whole = Captioner.from_bundle(out, mobilenet_weights).caption(image, beam_width=3)[0]
    assert full.caption(image, beam_width=3)[0].words == whole.words


def test_with_a_lite_copy_the_first_stage_needs_no_tensorflow_and_the_first_full_load_makes_it(
        cross_run, flickr_dir, mobilenet_weights, monkeypatch, tmp_path):
    """captioning.service.lite: the first full load of an ensemble starts a background process that makes its lite
    copy; the next load's first stage is that copy (numpy decoder, LiteRT encoder), captioning as the bundle's own
    decoder does, and the whole ensemble after it captions as before."""
    import time

    from captioning.models.numpy_steps import NumpyStepDecoder
    from captioning.service import lite
    from captioning.service.captioner import Captioner
    from captioning.service.warm_load import StagedLoad

    monkeypatch.setenv("CAPTIONING_LITE", "1")
    monkeypatch.setenv("CAPTIONING_CACHE_DIR", str(tmp_path))
    out, attention, _ = cross_run
    started = []
    real = lite.make_in_background
    monkeypatch.setattr(lite, "make_in_background", lambda path: started.append(real(path)))
    first = StagedLoad(out)
    first.run()
    assert "lite copy" in first.timings and first.quick.result().quick_of == 2
    assert not isinstance(first.quick.result().steps, NumpyStepDecoder)         # no copy yet: Keras first stage
    process, = started                                                           # ... and one is being made
    assert process.wait(timeout=300) == 0
    assert sorted(p.name for p in next((tmp_path / "lite").iterdir()).iterdir()) == [
        ".making", "decoder.npz", "encoder.tflite", "lite.json"]

    second = StagedLoad(out)
    ready = []
    second.quick.add_done_callback(lambda f: ready.append(("quick", time.perf_counter())))
    second.run()
    quick, full = second.quick.result(), second.full.result()
    assert isinstance(quick.steps, NumpyStepDecoder) and quick.quick_of == 2 and full.quick_of is None
    assert list(second.timings)[:2] == ["lite copy", "lite first caption"]
    assert quick.bundle.index is full.bundle.index and "cider" in quick.steps.consensus._made   # made once
    assert not started[1:]                                                       # current: nothing more to make
    image = flickr_dir / "Images" / load_bundle(out).predictions["image"].iloc[0]
    alone = Captioner.from_bundle(attention, mobilenet_weights).caption(image, beam_width=3)[0]
    assert quick.caption(image, beam_width=3)[0].words == alone.words
    whole = Captioner.from_bundle(out, mobilenet_weights).caption(image, beam_width=3)[0]
    assert full.caption(image, beam_width=3)[0].words == whole.words
