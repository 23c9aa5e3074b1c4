#!/usr/bin/env python
"""Cache the features of the mirrored photos (left and right swapped) of some splits, for test-time flip.

    python scripts/flip_features.py --encoder xception --splits dev,test [--spatial]

They go to ``.cache/features/<encoder key>-flip/`` beside the photos' own features;
``scripts/evaluate_ensemble.py --flip`` then decodes every photo as the mean of its decoders on both.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path


def main() -> None:
    from captioning.vision.encoders import ENCODER_NAMES

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", default="xception", choices=ENCODER_NAMES)
    parser.add_argument("--alpha", type=float, default=None, help="MobileNetV2 width multiplier")
    parser.add_argument("--weights", default=None, help="encoder weights file (default: found as train.py does)")
    parser.add_argument("--splits", default="dev,test", help="comma-separated: train, dev, test")
    parser.add_argument("--spatial", action="store_true", help="also the spatial maps (for attention decoders)")
    parser.add_argument("--cache-dir", default=".cache")
    parser.add_argument("--data-dir", default=os.environ.get("FLICKR8K_DIR", "../shared/flickr8k"))
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    from captioning.data.flickr8k import Flickr8k
    from captioning.vision.encoders import build_encoder, get_spec
    from captioning.vision.features import FLIP_SUFFIX, FeatureCache, extract_features

    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    unknown = [s for s in splits if s not in ("train", "dev", "test")]
    if unknown:
        parser.error(f"--splits: unknown split(s) {', '.join(unknown)}; choose from train, dev, test")
    ds = Flickr8k.load(args.data_dir, check_images=False)
    spec = get_spec(args.encoder, args.alpha)
    paths = {n: ds.image_path(n) for split in splits for n in ds.splits[split]}
    cache = FeatureCache(Path(args.cache_dir) / "features", spec.key + FLIP_SUFFIX)
    if not cache.missing(list(paths), args.spatial):
        print(f"all {len(paths)} mirrored photos already cached in {cache.dir}")
        return
    encoder, source = build_encoder(spec, args.weights, spatial=args.spatial)
    stats = extract_features(encoder, spec, paths, cache, batch_size=args.batch_size, spatial=args.spatial,
                             flip=True)
    print(f"{stats['images']} mirrored photos in {stats['seconds']:.0f}s ({stats['images_per_second']:.1f} img/s; "
          f"weights: {source}) -> {cache.dir}")


if __name__ == "__main__":
    main()
