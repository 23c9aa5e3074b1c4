"""The top-down attention decoder through train.py (train, scst, ensemble) on a tiny real Flickr8k run; its
maths, step API and bundle on made-up sizes: test_models_topdown.py."""
import numpy as np
import pytest

from captioning.artifacts.bundle import load_bundle


# --- train.py on a tiny real run ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_topdown(tiny_run, flickr_dir, mobilenet_weights, tmp_path_factory):
    """train.py --decoder topdown on 60 Flickr8k images (MobileNetV2-0.35 features cached by tiny_run)."""
    import train

    out = tmp_path_factory.mktemp("topdown") / "tiny-topdown"
    code = train.main(["--data-dir", str(flickr_dir), "--encoder", "mobilenetv2", "--alpha", "0.35",
                       "--weights", str(mobilenet_weights), "--limit", "60", "--epochs", "2", "--decoder", "topdown",
                       "--units", "48", "--embed-dim", "32", "--attention-dim", "32",
                       "--out", str(out), "--cache-dir", str(tiny_run[1]), "--quiet", "--beam-widths", "3",
                       "--no-human", "--no-meteor", "--no-sweep"])
    assert code == 0
    return out


def test_train_py_topdown_writes_a_bundle_that_captions(tiny_topdown, flickr_dir, mobilenet_weights):
    from captioning.service.captioner import Captioner

    bundle = load_bundle(tiny_topdown)
    assert bundle.manifest["decoder"]["kind"] == "topdown" and bundle.decoder.units == 48
    assert bundle.manifest["encoder"]["spatial_grid"] == 7
    assert [r["beam_width"] for r in bundle.metrics["results"]] == [1, 3]
    assert len(bundle.manifest["training"]["epochs"]) == 2
    captioner = Captioner(bundle, mobilenet_weights)
    image = flickr_dir / "Images" / bundle.predictions["image"].iloc[0]
    caption = captioner.caption(image, beam_width=3)[0]
    assert caption.words and caption.log_prob < 0
    assert caption.attention.shape == (caption.num_tokens, 49)           # the app's per-word 7x7 maps
    np.testing.assert_allclose(caption.attention.sum(axis=1), 1.0, rtol=1e-4)


def test_train_py_scst_fine_tunes_a_topdown_bundle(tiny_topdown, tiny_run, flickr_dir, tmp_path):
    import train

    out = tmp_path / "td-scst"
    assert train.main(["scst", "--from", str(tiny_topdown), "--out", str(out), "--epochs", "1",
                       "--learning-rate", "0.01", "--batch-size", "16",
                       "--data-dir", str(flickr_dir), "--limit", "60", "--cache-dir", str(tiny_run[1]), "--quiet",
                       "--beam-widths", "3", "--no-human", "--no-meteor", "--no-sweep"]) == 0
    bundle = load_bundle(out)
    assert bundle.decoder.kind == "topdown" and len(bundle.manifest["scst"]["epochs"]) == 1
    source = load_bundle(tiny_topdown).decoder.get_weights()
    changed = not all(np.array_equal(a, b) for a, b in zip(source, bundle.decoder.get_weights()))
    assert changed == (bundle.manifest["scst"]["best_epoch"] == 1)


def test_train_py_ensemble_mixes_topdown_with_merge_and_attention(tiny_topdown, tiny_run, flickr_dir, tmp_path):
    import train

    artifacts, cache = tiny_run
    out = tmp_path / "ens"
    assert train.main(["ensemble", "--members", str(tiny_topdown), str(artifacts / "tiny"),
                       str(artifacts / "tiny-attention"), "--out", str(out), "--data-dir", str(flickr_dir),
                       "--limit", "60", "--cache-dir", str(cache), "--quiet", "--beam-widths", "3",
                       "--no-human", "--no-meteor", "--no-sweep"]) == 0
    bundle = load_bundle(out)
    assert [d.kind for d in bundle.decoders] == ["topdown", "merge", "attention"]
    assert [m["kind"] for m in bundle.manifest["members"]] == ["merge", "attention"]
    assert [r["beam_width"] for r in bundle.metrics["results"]] == [1, 3]
