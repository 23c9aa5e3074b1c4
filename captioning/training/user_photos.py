"""A user's captioned photos for training: imported (:mod:`captioning.data.user_data`; ``train.py import-check``),
their features cached through the safe loader (keyed by content, resumable shard by shard), a replay pool of
Flickr8k training photos, and the photos as dataset records for training from scratch.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

from captioning.data.flickr8k import DataError, Flickr8k
from captioning.data.user_data import UserDataset, load_user_data
from captioning.training.settings import RunConfig


# --- import --------------------------------------------------------------------------------------------------
def import_data(config: RunConfig) -> UserDataset:
    user, seed = config.user_data, config.train.seed
    return load_user_data(user.captions, user.images, strict=user.strict, split_file=user.split_file, seed=seed)


def import_check(config: RunConfig) -> dict:
    """Print the import summary (``--json``: the machine-readable one) and return it."""
    data = import_data(config)
    summary = data.summary()
    print(json.dumps(summary, ensure_ascii=False, indent=1) if config.user_data.json else data.describe())
    return summary


# --- features ------------------------------------------------------------------------------------------------
def extract_user_features(spec, weights, photos: dict[str, Path], cache, spatial: bool, batch_size: int = 16,
                          shard_size: int = 128, progress: bool = True, on_batch=None) -> dict:
    """Cache the features of ``photos`` (cache id -> file) not cached yet, reading each through the safe loader
    (:func:`captioning.vision.images.load_image`, so WebP and photos of any size work) at the canonical size. Shards
    are written as they fill: Ctrl-C loses at most one shard. ``on_batch(done, total)`` after every batch."""
    import tensorflow as tf
    from tqdm.auto import tqdm

    from captioning.vision.encoders import build_encoder
    from captioning.vision.features import image_pipeline
    from captioning.vision.images import load_image, to_canonical

    cache.remove_temporaries()
    todo = cache.missing(list(photos), spatial)
    stats = {"images": len(todo), "cached": len(photos) - len(todo), "seconds": 0.0}
    if not todo:
        return stats
    encoder, source = build_encoder(spec, weights, spatial=spatial)
    stats["weights_source"] = source
    to_input = image_pipeline(spec)
    forward = tf.function(lambda x: encoder(to_input(x), training=False), reduce_retracing=True)
    start = time.perf_counter()
    names, pooled, maps = [], [], []
    with tqdm(total=len(todo), unit="img", desc=f"features {spec.key} (your photos)", disable=not progress) as bar:
        for lo in range(0, len(todo), batch_size):
            batch = todo[lo:lo + batch_size]
            images = np.stack([to_canonical(load_image(photos[n])) for n in batch])       # (B, 224, 224, 3)
            out = forward(tf.constant(images))
            names += batch
            pooled.append((out[0] if isinstance(out, (list, tuple)) else out).numpy().astype(np.float16))
            if spatial:
                maps.append(out[1].numpy().astype(np.float16))
            bar.update(len(batch))
            if on_batch:
                on_batch(lo + len(batch), len(todo))
            if len(names) >= shard_size or lo + batch_size >= len(todo):
                cache.add_shard(names, np.concatenate(pooled), np.concatenate(maps) if spatial else None)
                names, pooled, maps = [], [], []
    stats["seconds"] = round(time.perf_counter() - start, 1)
    return stats


def _flickr8k(config: RunConfig) -> Flickr8k | None:
    """Flickr8k for replay when it is reachable (``--data-dir`` or $FLICKR8K_DIR), else None."""
    try:
        return Flickr8k.load(config.workspace.data_dir, check_images=False)
    except DataError:
        return None


def replay_pool(ds: Flickr8k, user_captions: int, replay: float, seed: int) -> list[str]:
    """Flickr8k training photos enough for every epoch's replay share (five captions a photo), seeded."""
    if replay <= 0:
        return []
    needed = math.ceil(user_captions * replay / (1 - replay) / 5)
    names = sorted(ds.splits["train"])
    np.random.default_rng(seed).shuffle(names)
    return sorted(names[:max(needed, 1)])


# --- training from scratch on a user's photos ----------------------------------------------------------------
def user_records(config: RunConfig) -> Flickr8k:
    """The user's photos as dataset records for ``train.py [train] --captions FILE --images DIR`` (training from
    scratch): imported and split as for finetune, their features cached first through the safe loader, records
    named by the photos' content ids (the names the feature cache knows them by)."""
    from captioning.vision.encoders import get_spec
    from captioning.vision.features import FeatureCache

    data = import_data(config)
    print(data.describe())
    ids = data.photo_ids
    feats = config.features
    spec = get_spec(feats.encoder, feats.alpha)
    cache = FeatureCache(Path(config.workspace.cache_dir) / "features", spec.key)
    photos = {ids[p]: data.path(p) for split in data.splits.values() for p in split}
    extract_user_features(spec, feats.weights, photos, cache, feats.spatial or config.train.spatial,
                          progress=not config.workspace.quiet)
    captions = {ids[p]: caps for p, caps in data.captions.items()}
    splits = {s: [ids[p] for p in photos_] for s, photos_ in data.splits.items()}
    if not splits.get("test"):
        splits["test"] = list(splits["dev"])      # a split file without test photos: scores on dev
    return Flickr8k(data.captions_file.parent, data.images_dir, captions, splits,
                    name=f"user:{data.captions_file.name}")
