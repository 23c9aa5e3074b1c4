"""The ``PATH@1,3`` syntax of ``train.py ensemble`` (and the scripts): a bundle and which of its decoders to take.
"""
from __future__ import annotations

from pathlib import Path


def split_pick(arg: str) -> tuple[str, list[int] | None]:
    """``PATH`` or ``PATH@1,3``: a bundle, or some decoders of an ensemble bundle (numbered from 1 in decoder
    order, the order of its manifest's ``ensemble_of``). Returns the path and the 0-based indices (None: all)."""
    path, at, picks = str(arg).rpartition("@")
    if not at or Path(arg).exists():
        return str(arg), None
    try:
        numbers = [int(x) for x in picks.split(",")]
    except ValueError:
        raise ValueError(f"{arg}: after @ give decoder numbers separated by commas, e.g. {path}@1,3") from None
    if min(numbers) < 1 or len(set(numbers)) != len(numbers):
        raise ValueError(f"{arg}: decoder numbers start at 1 and each is picked at most once")
    return path, [n - 1 for n in numbers]


def check_pick(arg: str, indices: list[int] | None, n_decoders: int) -> list[int]:
    """The chosen decoder indices of a bundle with ``n_decoders`` decoders (all when ``indices`` is None)."""
    if indices is None:
        return list(range(n_decoders))
    if max(indices) >= n_decoders:
        raise ValueError(f"{arg}: the bundle has decoders 1 to {n_decoders}")
    return indices
