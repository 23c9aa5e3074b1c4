"""What the training commands share: the split names, the cached features of a split (extracted when missing),
a bundle's decoder inputs, the checks before work starts, memory and output reporting.
"""
from __future__ import annotations

import dataclasses
import resource
from pathlib import Path

from captioning.data.flickr8k import DataError, Flickr8k
from captioning.training.rundirs import RunDir
from captioning.training.settings import (
    FeatureSettings,
    OptionError,
    RunConfig,
    Workspace,
)
from captioning.vision.encoders import get_spec

Splits = dict[str, list[str]]


def split_names(ds: Flickr8k, limit: int | None) -> Splits:
    """The train / dev / test image names, or ``limit`` images cut 70/15/15 from them."""
    if not limit:
        return {s: ds.split_records(s) for s in ("train", "dev", "test")}
    small = max(1, round(limit * 0.15))
    return {"train": ds.split_records("train", limit - 2 * small), "dev": ds.split_records("dev", small),
            "test": ds.split_records("test", small)}


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def saved_since(ws: Workspace, since: float) -> bool:
    """Whether a run has finished anything a rerun resumes from (a feature shard or a checkpoint) since ``since``."""
    cache = Path(ws.cache_dir)
    files = [*(cache / "features").glob("*/shard-*.json"), *(cache / "runs").glob("*/**/*")]
    return any(f.is_file() and f.stat().st_mtime >= since for f in files)


# --- features ---------------------------------------------------------------------------------------------
def ensure_features(ws: Workspace, settings: FeatureSettings, ds: Flickr8k, names: Splits) -> dict:
    """Extract and cache the features of every image in ``names`` not cached yet (this shard's slice only)."""
    from captioning.vision.encoders import build_encoder
    from captioning.vision.features import BadImageError, FeatureCache, extract_features, shard_slice

    spec = get_spec(settings.encoder, settings.alpha)
    wanted = {n: ds.image_path(n) for split in names.values() for n in split}
    shards, index = settings.num_shards, settings.shard_index
    writer = f"w{index}of{shards}" if shards > 1 else None
    cache = FeatureCache(Path(ws.cache_dir) / "features", spec.key, writer=writer)
    if writer:       # this machine's disjoint slice; the others fill the rest of the same cache
        wanted = {n: wanted[n] for n in shard_slice(list(wanted), shards, index, settings.feature_batch_size)}
        print(f"features: slice {index} of {shards} (0-based): {len(wanted)} images")
    todo = cache.missing(list(wanted), settings.spatial)
    if not todo:
        print(f"features: all {len(wanted)} images already cached for {spec.key}")
        return {"images": 0, "cached": len(wanted), "seconds": 0.0, "weights_source": None}
    encoder, source = build_encoder(spec, settings.weights, spatial=settings.spatial)
    print(f"features: {len(todo)} of {len(wanted)} images to extract with {spec.key} (weights: {source})")
    try:
        stats = extract_features(encoder, spec, wanted, cache, batch_size=settings.feature_batch_size,
                                 spatial=settings.spatial, progress=not ws.quiet, shard_size=settings.shard_size,
                                 skip_bad=settings.skip_bad_images)
    except BadImageError as exc:
        raise OptionError(f"{exc} Fix or remove it, or pass {{skip_bad_images}} to leave out every photo that "
                          f"cannot be read (they are listed at the end)") from None
    stats["weights_source"] = source
    if stats["skipped"]:
        left_out = {name for name, _ in stats["skipped"]}
        for split in names.values():                 # the rest of the run works without them
            split[:] = [n for n in split if n not in left_out]
        ws.skipped_images.extend(str(ds.image_path(n)) + f": {why}" for n, why in stats["skipped"])
        print(f"features: left out {len(left_out)} photos that cannot be read (listed at the end)")
    print(f"features: {stats['images']} images in {stats['seconds']:.0f}s "
          f"({stats['images_per_second']:.1f} img/s)")
    return stats


def bundle_features(ws: Workspace, settings: FeatureSettings, bundle, ds: Flickr8k, names: Splits,
                    pooled: Splits | None = None):
    """The feature cache of a bundle's encoder, holding what its decoders read for ``names`` (spatial maps for
    attention) and pooled vectors for ``pooled``; missing ones are extracted first. A cross-encoder ensemble's
    other encoders get their features for ``names`` too (read them with :func:`decoder_inputs`); the cache
    returned is the bundle's own encoder's (the retrieval index reads it)."""
    from captioning.vision.features import FeatureCache

    first = None
    for i, enc in enumerate(bundle.encoders):
        spec = get_spec(enc.name, enc.alpha)
        spatial = bundle.spatial_for(spec.key)
        cache = FeatureCache(Path(ws.cache_dir) / "features", spec.key)
        wanted = [n for split in names.values() for n in split]
        extra = (pooled or {}) if i == 0 else {}
        plain = [n for split in extra.values() for n in split]
        if cache.missing(plain) or cache.missing(wanted, spatial):
            own = dataclasses.replace(settings, encoder=spec.name, alpha=spec.alpha,
                                      spatial=settings.spatial or spatial)
            ensure_features(ws, own, ds, {**extra, **names})
        first = first or (cache, spec)
    return first


def decoder_inputs(ws: Workspace, bundle, names: list[str]):
    """What the bundle's decoders read for ``names`` from the feature cache: one array (spatial maps when any
    decoder attends), or :class:`~captioning.models.stepper.MultiFeatures` for a cross-encoder ensemble. Call
    :func:`bundle_features` first: it extracts what is missing."""
    from captioning.models.stepper import MultiFeatures
    from captioning.vision.features import FeatureCache

    root = Path(ws.cache_dir) / "features"
    keys = list(dict.fromkeys(bundle.decoder_keys))
    if len(keys) == 1:
        return FeatureCache(root, keys[0]).load(names, bundle.uses_spatial)
    return MultiFeatures({key: FeatureCache(root, key).load(names, bundle.spatial_for(key)) for key in keys})


def _load_bundle(path: str, **kwargs):
    from captioning.artifacts.bundle import load_bundle
    from captioning.artifacts.manifest import BundleError

    try:
        return load_bundle(path, **kwargs)
    except BundleError as exc:
        raise DataError(str(exc)) from None


# --- checks before work -----------------------------------------------------------------------------------
def check_before_work(config: RunConfig, ds: Flickr8k | None, names: Splits | None) -> None:
    """What can be checked before minutes of work: the bundle to read, a checkpoint to finish, the vocabulary."""
    from captioning.artifacts.manifest import BundleError, read_manifest

    ws, tr = config.workspace, config.train
    if config.command in ("evaluate", "sweep"):
        try:
            read_manifest(ws.out)
        except BundleError as exc:
            raise OptionError(f"{{out}}: {exc}") from None
    if tr.finish and config.command in ("all", "train"):
        best = RunDir(train_run_dir(ws)).best_path
        if not best.is_file():
            raise OptionError(f"{{finish}}: no checkpoint for {Path(ws.bundle).name} in {best.parent} yet; train "
                              f"at least one epoch first (run the same command without {{finish}})")
    if ds is not None and config.command in ("all", "train"):
        from collections import Counter

        from captioning.data.text import tokenize

        counts = Counter(w for n in names["train"] for c in ds.captions[n] for w in tokenize(c))
        word, top = counts.most_common(1)[0]
        if tr.min_count > top:
            raise OptionError(f"{{min_count}} {tr.min_count} is above every word's count in the "
                              f"{len(names['train'])} training images (the most frequent, '{word}', appears {top} "
                              f"times); use {{min_count}} between 1 and {top}")


def train_run_dir(ws: Workspace) -> Path:
    return ws.runs_dir() / Path(ws.bundle).name
