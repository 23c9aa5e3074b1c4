"""The app's first caption without TensorFlow (captioning/service/lite.py): the lite copies of the tiny MobileNetV2
bundles caption real Flickr8k photos in a process that never imports TensorFlow (the same captions as the Keras
Captioner); a stale, damaged or switched-off copy is not used. The numpy decoders themselves: test_numpy_steps.py.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


# --- lite copies of the tiny bundles ------------------------------------------------------------
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
    assert make_lite(bundle) == folder and encoder.read_bytes() == blob   # made again, the same graph
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


def test_the_command_says_in_one_line_why_a_bundle_gets_no_copy(lite_env, tiny_run, tmp_path, capsys):
    import shutil

    from captioning.service.lite import main

    assert main([str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.strip() == (f"error: No bundle at {tmp_path / 'nowhere'}. Train one with: "
                                               f"python train.py --out {tmp_path / 'nowhere'}")
    other = tmp_path / "topdown"
    shutil.copytree(tiny_run[0] / "tiny-attention", other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["decoder"]["kind"] = "topdown"
    (other / "manifest.json").write_text(json.dumps(manifest))
    assert main([str(other)]) == 1
    assert capsys.readouterr().err.strip() == (f"{other}: no lite copy (its decoder is a topdown decoder; only "
                                               f"attention and merge decoders have one)")
    assert not lite_env[0].exists()                              # nothing written
