"""The app's first caption without TensorFlow: a bundle's own decoder and encoder as a lite copy.

Importing TensorFlow takes 4-5 s here and building and tracing the Xception encoder another 3, so a person who
opens the app a few seconds after ``make app`` used to wait behind them for a first caption (issue 39). The lite copy
of a bundle is made once, in a background process after the app's first full load of an ensemble (``python -m
captioning.service.lite BUNDLE`` by hand), under ``<cache>/lite/`` (``$CAPTIONING_CACHE_DIR``, default ``.cache``):

- ``encoder.tflite``: the bundle's own encoder with its preprocessing, uint8 photo (1, 224, 224, 3) to features,
  weights frozen in, as a LiteRT (TensorFlow Lite) graph; the ``ai-edge-litert`` interpreter runs it without
  importing TensorFlow (0.1 s to load, about 0.1 s per photo for Xception);
- ``decoder.npz``: the own decoder's weights for :class:`~captioning.models.numpy_steps.NumpyStepDecoder`;
- ``lite.json``, written last: what the copy was made from (the decoder's and vocabulary's checksums, the encoder
  weights file's path, size and modification time) and the two files' SHA-256.

:func:`load_lite` gives a :class:`~captioning.service.captioner.Captioner` over the copy when it is complete and
made from the files the bundle has now; anything else (no copy, a stale or damaged one) gives None and the app loads
as before. Only attention and merge decoders have a numpy twin.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from captioning.files import atomic_path, atomic_write, cache_dir
from captioning.models.numpy_steps import KINDS, NumpyStepDecoder
from captioning.vision.encoders import file_sha256

LITE_FORMAT = 1
ENABLE_ENV = "CAPTIONING_LITE"          # "0": neither read nor make lite copies (the test suite's default)
FILES = ("encoder.tflite", "decoder.npz")
PHOTO = (1, 224, 224, 3)                # what the lite encoder reads: one canonical photo


def enabled() -> bool:
    return os.environ.get(ENABLE_ENV, "1") != "0"


def fingerprint(path: str | os.PathLike) -> dict | None:
    """What bundle ``path``'s lite copy is made from; None when it cannot have one (its decoder has no numpy twin,
    or its encoder's weights are not on this machine)."""
    from captioning.artifacts.manifest import read_manifest
    from captioning.vision.encoders import find_weights, get_spec

    manifest = read_manifest(path)
    if manifest.get("decoder", {}).get("kind") not in KINDS:
        return None
    encoder = manifest["encoder"]
    try:
        spec = get_spec(encoder["name"], encoder.get("alpha"))
        weights = find_weights(spec, None, encoder.get("weights_file"))
    except Exception:                    # an unknown encoder, a bad $CAPTIONING_*_WEIGHTS: the full load says so
        return None
    if weights is None:
        return None
    stat = weights.stat()
    return {"format": LITE_FORMAT, "bundle": str(Path(path).resolve()), "encoder": spec.key,
            "decoder": manifest["files"]["decoder.keras"], "vocab": manifest["files"]["vocab.json"],
            "weights": [str(weights.resolve()), stat.st_size, stat.st_mtime_ns]}


def lite_dir(print_: dict) -> Path:
    name = hashlib.sha256(json.dumps(print_, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / "lite" / name


class LiteEncoder:
    """A lite encoder graph: uint8 canonical photos (N, 224, 224, 3) -> features, one photo at a time."""

    def __init__(self, file: str | os.PathLike, threads: int = 2):
        from ai_edge_litert.interpreter import Interpreter

        self._interpreter = Interpreter(model_path=str(file), num_threads=threads)
        self._interpreter.allocate_tensors()
        source, = self._interpreter.get_input_details()
        target, = self._interpreter.get_output_details()
        if tuple(source["shape"]) != PHOTO or source["dtype"] != np.uint8:
            raise ValueError(f"{file}: the lite encoder reads {tuple(source['shape'])} {source['dtype']}, "
                             f"not uint8 {PHOTO}")
        self._in, self._out = source["index"], target["index"]
        self.output_shape = tuple(int(s) for s in target["shape"][1:])
        self._lock = threading.Lock()             # one interpreter: one photo at a time

    def __call__(self, images) -> np.ndarray:
        images = np.asarray(images, np.uint8)
        out = []
        with self._lock:
            for image in images:
                self._interpreter.set_tensor(self._in, image[None])
                self._interpreter.invoke()
                out.append(self._interpreter.get_tensor(self._out)[0].copy())
        return np.stack(out) if out else np.zeros((0, *self.output_shape), np.float32)


def load_lite(path: str | os.PathLike, quick_of: int | None = None):
    """A Captioner over bundle ``path``'s own decoder and encoder from its lite copy, or None when the copy is
    missing, stale or damaged (or lite copies are off). No TensorFlow is imported. ``quick_of``: the Captioner's
    ``quick_of`` (how many decoders the whole bundle has)."""
    if not enabled():
        return None
    print_ = fingerprint(path)
    if print_ is None:
        return None
    folder = lite_dir(print_)
    meta = _current(folder, print_)
    path = Path(path)
    if meta is None or any(file_sha256(path / name) != print_[key] for name, key in (("decoder.keras", "decoder"),
                                                                                  ("vocab.json", "vocab"))):
        return None                      # no current copy; a damaged bundle is the full load's to report
    try:
        return _captioner(path, folder, meta["kind"], quick_of)
    except Exception as exc:            # e.g. a damaged index or lite file: the full load goes on and reports
        print(f"captioning: the lite copy of {path} was not used ({type(exc).__name__}: {exc})", file=sys.stderr)
        return None


def _current(folder: Path, print_: dict) -> dict | None:
    """The lite copy's record when the copy in ``folder`` is complete, made from ``print_`` and undamaged."""
    try:
        meta = json.loads((folder / "lite.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("fingerprint") != print_ or meta.get("kind") not in KINDS:
        return None
    digests = meta.get("sha256")
    if not isinstance(digests, dict):
        return None
    if any(not (folder / name).is_file() or file_sha256(folder / name) != digests.get(name) for name in FILES):
        return None
    return meta


def _captioner(path: Path, folder: Path, kind: str, quick_of: int | None):
    from captioning.artifacts.bundle import Bundle, read_index
    from captioning.artifacts.manifest import Manifest, read_manifest
    from captioning.data.text import Vocabulary
    from captioning.service.captioner import Captioner
    from captioning.vision.encoders import get_spec

    manifest = read_manifest(path)
    spec = get_spec(manifest["encoder"]["name"], manifest["encoder"].get("alpha"))
    vocab = Vocabulary.load(path / "vocab.json")
    with np.load(folder / "decoder.npz", allow_pickle=False) as arrays:
        decoder = NumpyStepDecoder(kind, manifest["decoder"]["config"], dict(arrays))
    if decoder.vocab_size != len(vocab) or decoder.feature_dim != spec.feature_dim:
        return None
    encoder = LiteEncoder(folder / "encoder.tflite")
    if encoder.output_shape[-1] != spec.feature_dim or (len(encoder.output_shape) == 2) != decoder.uses_spatial:
        return None
    bundle = Bundle(path, Manifest.from_dict(manifest), vocab, decoder, None, None, (),
                    read_index(path, spec)).alone()
    captioner = Captioner(bundle)
    captioner._encoders[captioner.spec.key] = encoder
    captioner.quick_of = quick_of
    return captioner


def make_lite(path: str | os.PathLike) -> Path | None:
    """Make bundle ``path``'s lite copy unless it is current (or being made by another process); its folder, or
    None when the bundle cannot have one. Imports TensorFlow. The lite encoder is checked against the Keras one on
    a photo before anything is written."""
    print_ = fingerprint(path)
    if print_ is None:
        return None
    folder = lite_dir(print_)
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / ".making").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None                  # another process is making it
        if _current(folder, print_) is not None:
            return folder
        (folder / "lite.json").unlink(missing_ok=True)      # a damaged or stale record goes before its files change
        kind, weights, blob, check = _convert(Path(path))
        with atomic_path(folder / "decoder.npz", ".npz") as tmp:
            np.savez(tmp, **weights)
        atomic_write(folder / "encoder.tflite", blob)
        if _max_difference(LiteEncoder(folder / "encoder.tflite"), check) > 1e-3:
            raise RuntimeError(f"the lite encoder of {path} does not match its Keras encoder; no lite copy made")
        meta = {"fingerprint": print_, "kind": kind, "made": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "sha256": {name: file_sha256(folder / name) for name in FILES}}
        atomic_write(folder / "lite.json", json.dumps(meta, indent=2))
    _forget_older(folder, print_["bundle"])
    return folder


def _max_difference(encoder: LiteEncoder, check: tuple[np.ndarray, np.ndarray]) -> float:
    """Largest difference of the lite encoder's features from the Keras encoder's, relative to their scale."""
    photo, expected = check
    got = encoder(photo)
    return float(np.abs(got - expected).max() / max(1.0, float(np.abs(expected).max())))


def _convert(path: Path):
    """The own decoder's weights and kind, the encoder as a LiteRT flatbuffer, and a check photo with its Keras
    features."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    from captioning.artifacts.bundle import load_bundle
    from captioning.models.numpy_steps import numpy_weights
    from captioning.vision.encoders import build_encoder, get_spec
    from captioning.vision.features import image_pipeline

    bundle = load_bundle(path, load_results=False, load_index=False, members=False)
    spec = get_spec(bundle.encoder.name, bundle.encoder.alpha)
    spatial = bundle.uses_spatial
    model, _ = build_encoder(spec, None, spatial=spatial, hint=bundle.encoder.weights_file)
    to_input = image_pipeline(spec)

    def encode(images):
        out = model(to_input(images), training=False)
        return out[1] if spatial else out

    function = tf.function(encode, input_signature=[tf.TensorSpec(PHOTO, tf.uint8)]).get_concrete_function()
    # The converter wants constants, not the Keras model's variables (left as variables, they read as NaN).
    blob = tf.lite.TFLiteConverter.from_concrete_functions([convert_variables_to_constants_v2(function)]).convert()
    photo = np.random.default_rng(0).integers(0, 256, PHOTO, dtype=np.uint8)
    return bundle.decoder.kind, numpy_weights(bundle.decoder), blob, (photo, function(tf.constant(photo)).numpy())


def _forget_older(folder: Path, bundle: str) -> None:
    """Remove the lite copies this bundle's files had before (each about the encoder's size)."""
    import shutil

    for other in folder.parent.iterdir():
        if other == folder or not other.is_dir():
            continue
        try:
            made_from = json.loads((other / "lite.json").read_text(encoding="utf-8"))["fingerprint"]["bundle"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if made_from == bundle:
            shutil.rmtree(other, ignore_errors=True)


def make_in_background(path: str | os.PathLike) -> subprocess.Popen | None:
    """Start ``python -m captioning.service.lite BUNDLE`` at low priority (the app after its first full load of an
    ensemble with no current lite copy); None when lite copies are off."""
    if not enabled():
        return None
    return subprocess.Popen([sys.executable, "-m", "captioning.service.lite", str(path)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=lambda: os.nice(10), start_new_session=True)


def main(argv: list[str] | None = None) -> int:
    import argparse

    import captioning  # noqa: F401  (quiet TensorFlow's logs)

    parser = argparse.ArgumentParser(prog="python -m captioning.service.lite",
                                     description="Make a bundle's lite copy: the app's first caption without "
                                                 "TensorFlow.")
    parser.add_argument("bundle", help="the bundle folder, e.g. artifacts/default")
    args = parser.parse_args(argv)
    from captioning.artifacts.manifest import BundleError, read_manifest

    try:
        folder = make_lite(args.bundle)
        manifest = read_manifest(args.bundle)
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if folder is not None:
        print(f"lite copy of {args.bundle}: {folder}")
        return 0
    kind, encoder = manifest["decoder"].get("kind"), manifest["encoder"]
    if kind not in KINDS:
        reason = f"its decoder is a {kind} decoder; only attention and merge decoders have one"
    elif fingerprint(args.bundle) is None:
        reason = (f"its encoder's weights are not on this machine: python -m captioning setup-weights --encoder "
                  f"{encoder['name']}")
    else:
        reason = "another process is making it now"
    print(f"{args.bundle}: no lite copy ({reason})", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
