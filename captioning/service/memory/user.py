"""A user's captioned photos as a memory: read the captions file (every :mod:`captioning.data.user_data` format, bad
rows reported with their line numbers), compute the photos' pooled features with the bundle's own encoder
(cached by content under ``.cache/features/<encoder>/`` as ``user-<sha256>``, so a photo is encoded once) and
build a :class:`~captioning.service.memory.store.Datastore` of source ``user``."""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from captioning.service.memory.store import Datastore, MemoryEntry, user_floor_of

BATCH = 16


def default_cache_root() -> Path:
    """The project's feature cache (``$CAPTIONING_CACHE_DIR`` or ``.cache``, as the Train page's jobs use)."""
    from captioning.artifacts.bundle import PROJECT_ROOT

    return Path(os.environ.get("CAPTIONING_CACHE_DIR") or PROJECT_ROOT / ".cache") / "features"


def _captioner(bundle, weights=None):
    from captioning.service.captioner import Captioner

    if isinstance(bundle, Captioner):
        return bundle
    if isinstance(bundle, (str, os.PathLike)):
        return Captioner.from_bundle(bundle, weights)
    return Captioner(bundle, weights)


def photo_features(captioner, photos: dict[str, Path | bytes], cache_root: str | os.PathLike | None = None,
                   on_batch: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Pooled features (N, D) float32 of ``photos`` (cache id -> file or bytes), in that order, with the
    captioner's own encoder; ids already in the feature cache are not encoded again."""
    from captioning.evaluation.trust import pooled
    from captioning.vision.features import FeatureCache

    ids = list(photos)
    cache = FeatureCache(Path(cache_root) if cache_root else default_cache_root(), captioner.spec.key)
    cache.remove_temporaries()
    todo = cache.missing(ids)
    for lo in range(0, len(todo), BATCH):
        batch = todo[lo:lo + BATCH]
        feats = pooled(captioner.index_features([photos[n] for n in batch]))         # (B, D)
        cache.add_shard(batch, feats.astype(np.float16))
        if on_batch:
            on_batch(lo + len(batch), len(todo))
    return np.asarray(cache.load(ids), np.float32) if ids else np.zeros((0, 1), np.float32)


def memory_from_dataset(data, captioner, cache_root=None, on_batch=None) -> Datastore:
    """A user Datastore of a :class:`~captioning.data.user_data.UserDataset` (every usable photo and caption)."""
    photos = list(data.captions)
    feats = photo_features(captioner, {data.photo_ids[p]: data.path(p) for p in photos}, cache_root, on_batch)
    entries, rows = [], []
    for i, p in enumerate(photos):
        for caption in data.captions[p]:
            entries.append(MemoryEntry(p, caption, "user"))
            rows.append(i)
    return Datastore.from_arrays(feats[rows], entries, captioner.spec.key, user_floor_of(captioner))


def load_user_memory(captions_file, images_dir, bundle, cache_root=None, strict: bool = False,
                     weights=None) -> Datastore:
    """The user's captioned photos (``captions_file`` in any captioning.data.user_data format, photo paths relative
    to ``images_dir``) as a Datastore of the bundle's encoder. ``bundle``: a Captioner (its encoder is reused),
    a Bundle or a bundle folder. The import report (counts, every bad row with its line number) is kept as
    ``store.imported`` (a UserDataset); DataError when the file cannot be used at all."""
    from captioning.data.user_data import load_user_data

    data = load_user_data(captions_file, images_dir, strict=strict, split=False)
    store = memory_from_dataset(data, _captioner(bundle, weights), cache_root)
    store.imported = data
    return store


def describe_import(data) -> str:
    """One line for a terminal: what the memory took, and the bad rows (with line numbers) it skipped."""
    lines = [f"memory: {data.caption_count} captions of {len(data.captions)} photos from {data.captions_file}"
             + (f"; {len(data.bad)} bad rows skipped" if data.bad else "")]
    lines += [f"  {b.describe()}" for b in data.bad[:10]]
    if len(data.bad) > 10:
        lines.append(f"  ... and {len(data.bad) - 10} more")
    return "\n".join(lines)
