"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Everything the project writes (feature shards, checkpoints, run state, bundles' parts, weights, batch outputs,
downloads) goes through :func:`atomic_path`: write to a temporary file beside the target, rename it into place
(``os.replace``, atomic on one file system), remove the temporary file when writing fails.
"""
from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

CACHE_ENV = "CAPTIONING_CACHE_DIR"          # where features, runs and the app's lite copies go (default .cache)


def cache_dir() -> Path:
    """The project's cache folder: ``$CAPTIONING_CACHE_DIR``, else ``.cache`` in the checkout."""
    return Path(os.environ.get(CACHE_ENV) or Path(__file__).resolve().parents[1] / ".cache")


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``target``; it replaces ``target`` when the block succeeds.

    The temporary name is ``<name>.<random>.tmp<suffix>`` (Keras wants ``.weights.h5`` at the end, NumPy
    ``.npy``), so an interrupted write is recognisable and never mistaken for the target. The parent folder is
    created when missing.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.{uuid.uuid4().hex[:8]}.tmp{suffix}")
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(target: str | os.PathLike, data: str | bytes, encoding: str = "utf-8",
                 newline: str | None = None) -> Path:
    """Write text (``encoding``, ``newline`` as in :func:`open`) or bytes to ``target`` atomically."""
    with atomic_path(target) as tmp:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            with tmp.open("w", encoding=encoding, newline=newline) as fh:
                fh.write(data)
    return Path(target)


def atomic_save_npy(target: str | os.PathLike, array) -> Path:
    """``np.save`` an array (no pickles) to ``target`` atomically."""
    import numpy as np

    with atomic_path(target, ".npy") as tmp:
        np.save(tmp, array, allow_pickle=False)
    return Path(target)
