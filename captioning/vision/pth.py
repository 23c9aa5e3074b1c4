"""Read a PyTorch ``.pth`` state dict into numpy arrays without PyTorch and without running arbitrary pickles.

A ``.pth`` is a pickle that names its tensors' storages by key, plus the storages' raw bytes. Two layouts:

* legacy (torch < 1.6): five pickles in a row (magic number, protocol version, system info, the state dict,
  the list of storage keys), then every storage as an int64 element count and its raw bytes;
* zip (torch >= 1.6): ``<archive>/data.pkl`` and one ``<archive>/data/<key>`` member per storage.

The unpickler resolves only the names a state dict needs (``collections.OrderedDict``,
``torch._utils._rebuild_tensor_v2`` and the typed storage classes), each mapped to a numpy stand-in here;
any other global (``os.system``, ``builtins.eval``, ...) raises :class:`UnsafePickleError` before it runs.
"""
from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16, "CharStorage": np.int8,
    "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class UnsafePickleError(ValueError):
    """The file asks the unpickler for something a state dict never needs."""


class PthFormatError(ValueError):
    """The file is not a readable PyTorch state dict."""


class _StorageType:
    """Stand-in for ``torch.FloatStorage`` etc.: only carries the numpy dtype."""

    def __init__(self, name: str):
        self.name, self.dtype = name, np.dtype(STORAGE_DTYPES[name])


class _TensorRef:
    """What ``_rebuild_tensor_v2`` leaves in the state dict until the storages' bytes are read."""

    def __init__(self, key: str, offset: int, size: tuple, stride: tuple):
        self.key, self.offset, self.size, self.stride = key, int(offset), tuple(size), tuple(stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    if not isinstance(storage, str):
        raise PthFormatError("a tensor refers to no storage key")
    return _TensorRef(storage, storage_offset, size, stride)


class RestrictedUnpickler(pickle.Unpickler):
    """Allows exactly the globals of a state dict; persistent ids become storage keys."""

    ALLOWED = {("collections", "OrderedDict"): collections.OrderedDict,
               ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2}

    def __init__(self, file, storages: dict):
        super().__init__(file)
        self.storages = storages                     # key -> (dtype, element count), filled while loading

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return self.ALLOWED[(module, name)]
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        raise UnsafePickleError(f"the file asks for {module}.{name}, which a state dict never needs; refusing it")

    def persistent_load(self, pid):
        # ('storage', storage_type, key, location, numel[, view_metadata])
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str) and isinstance(pid[4], int)):
            raise PthFormatError(f"unexpected persistent id {str(pid)[:80]}")
        if len(pid) > 5 and pid[5] is not None:
            raise PthFormatError("storage views (pre-0.4 files) are not supported")
        self.storages[pid[2]] = (pid[1].dtype, pid[4])
        return pid[2]


def _materialise(tree, buffers: dict[str, np.ndarray]):
    """Replace every _TensorRef in the (ordered) dict by a numpy array viewing its storage."""
    out = collections.OrderedDict()
    for name, value in tree.items():
        if isinstance(value, dict):
            out[name] = _materialise(value, buffers)
            continue
        if not isinstance(value, _TensorRef):
            out[name] = value
            continue
        storage = buffers[value.key]
        needed = value.offset + sum((n - 1) * s for n, s in zip(value.size, value.stride)) + 1
        if any(n == 0 for n in value.size):
            out[name] = np.zeros(value.size, storage.dtype)
            continue
        if value.offset < 0 or needed > storage.size or any(s < 0 for s in value.stride):
            raise PthFormatError(f"tensor {name} reaches past its storage")
        item = storage.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(storage[value.offset:], shape=value.size,
                                               strides=[s * item for s in value.stride], writeable=False)
        out[name] = np.array(view)                   # a contiguous copy
    return out


def _read_legacy(fh) -> collections.OrderedDict:
    header = [RestrictedUnpickler(fh, {}).load() for _ in range(3)]
    if header[0] != LEGACY_MAGIC or header[1] != LEGACY_PROTOCOL:
        raise PthFormatError("not a PyTorch legacy .pth (wrong magic number or protocol)")
    if not header[2].get("little_endian", True):
        raise PthFormatError("big-endian .pth files are not supported")
    storages: dict = {}
    tree = RestrictedUnpickler(fh, storages).load()
    keys = RestrictedUnpickler(fh, {}).load()
    if not isinstance(keys, list) or set(keys) != set(storages):
        raise PthFormatError("the storage key list does not match the tensors")
    buffers = {}
    for key in keys:
        dtype, numel = storages[key]
        raw = fh.read(8)
        if len(raw) != 8 or struct.unpack("<q", raw)[0] != numel:
            raise PthFormatError(f"storage {key}: size header does not match ({numel} elements expected)")
        data = fh.read(numel * dtype.itemsize)
        if len(data) != numel * dtype.itemsize:
            raise PthFormatError(f"storage {key} is truncated")
        buffers[key] = np.frombuffer(data, dtype.newbyteorder("<"))
    return tree, buffers


def _read_zip(path: Path):
    with zipfile.ZipFile(path) as zf:
        pkl = [n for n in zf.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pkl) != 1:
            raise PthFormatError("the zip holds no single data.pkl")
        root = pkl[0][: -len("data.pkl")]
        storages: dict = {}
        tree = RestrictedUnpickler(io.BytesIO(zf.read(pkl[0])), storages).load()
        buffers = {}
        for key, (dtype, numel) in storages.items():
            data = zf.read(f"{root}data/{key}")
            if len(data) < numel * dtype.itemsize:
                raise PthFormatError(f"storage {key} is truncated")
            buffers[key] = np.frombuffer(data[: numel * dtype.itemsize], dtype.newbyteorder("<"))
    return tree, buffers


def load_state_dict(path: str | os.PathLike) -> collections.OrderedDict[str, np.ndarray]:
    """A ``.pth`` state dict as {name: numpy array} in the file's order (raises UnsafePickleError / PthFormatError)."""
    path = Path(path)
    try:
        if zipfile.is_zipfile(path):
            tree, buffers = _read_zip(path)
        else:
            with path.open("rb") as fh:
                tree, buffers = _read_legacy(fh)
    except (pickle.UnpicklingError, EOFError, KeyError, struct.error, TypeError, AttributeError) as exc:
        raise PthFormatError(f"{path.name} is not a readable PyTorch state dict ({type(exc).__name__}: {exc})") \
            from None
    if not isinstance(tree, dict):
        raise PthFormatError(f"{path.name} holds a {type(tree).__name__}, not a state dict")
    return _materialise(tree, buffers)
