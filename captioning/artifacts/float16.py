"""A decoder saved at half size: the ``.keras`` file's HDF5 weights rewritten as float16 (read back as float32).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def _save_half(model, file: Path) -> None:
    """Save a decoder as ``.keras`` with its float32 weights stored as float16 (half the file).

    Keras loads them back into float32 variables, so the model computes exactly as the stored numbers say;
    bundles are evaluated after saving, so their metrics describe these weights.
    """
    import io
    import zipfile

    import h5py

    full = file.with_name(file.name + ".f32.keras")
    model.save(full)
    with zipfile.ZipFile(full) as zin, zipfile.ZipFile(file, "w", zipfile.ZIP_DEFLATED) as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename.endswith(".weights.h5"):
                out = io.BytesIO()
                with h5py.File(io.BytesIO(data), "r") as src, h5py.File(out, "w") as dst:
                    def copy(name, obj):
                        if isinstance(obj, h5py.Dataset):
                            arr = obj[()]
                            dst.create_dataset(name, data=arr.astype(np.float16) if arr.dtype == np.float32 else arr)
                        else:
                            dst.require_group(name)
                        dst[name].attrs.update(obj.attrs)
                    src.visititems(copy)
                    dst.attrs.update(src.attrs)
                data = out.getvalue()
            item.compress_type = zipfile.ZIP_DEFLATED     # writestr(ZipInfo) uses the entry's own setting, not zout's
            zout.writestr(item, data)
    full.unlink()


def _without_optimizer(decoder):
    """A copy that carries weights only: the optimizer's state would triple the file for nothing."""
    if getattr(decoder, "optimizer", None) is None:
        return decoder
    clean = type(decoder).from_config(decoder.get_config())
    clean.build()
    clean.set_weights(decoder.get_weights())
    return clean
