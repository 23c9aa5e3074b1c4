#!/usr/bin/env python
"""Feature extraction throughput on the same images: the project's pipeline vs a per-image ``model.predict``
loop (the seed tutorials) vs the raw batched encoder forward on preloaded tensors (the limit).

The limit is measured warm (traced before timing), so the pipeline is compared on its steady state, after its
first batch (which traces the encoder call once per run: seconds that vanish over Flickr8k's 8,091 images);
its end-to-end rate including that is printed too.

    python bench/features.py [--encoder xception] [--images 256] [--json out.json]
    python bench/features.py --quick      # MobileNetV2-0.35 (../shared/weights), 96 images
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

SHARED_MOBILENET = Path(__file__).resolve().parents[2] / "shared" / "weights" / \
    "mobilenet_v2_0.35_224_imagenet_notop.weights.h5"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", default="xception")
    parser.add_argument("--alpha", type=float, default=None)
    parser.add_argument("--weights", default=None)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--data-dir", default=os.environ.get("FLICKR8K_DIR", "../shared/flickr8k"))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.quick:
        args.encoder, args.alpha, args.images = "mobilenetv2", 0.35, 96
        args.weights = args.weights or str(SHARED_MOBILENET)

    import keras
    import tensorflow as tf

    from captioning.vision.encoders import build_encoder, get_spec
    from captioning.vision.features import FeatureCache, _read_canonical, extract_features, image_pipeline

    spec = get_spec(args.encoder, args.alpha)
    encoder, source = build_encoder(spec, args.weights)
    names = (Path(args.data_dir) / "Flickr_8k.trainImages.txt").read_text().split()[: args.images]
    paths = {n: Path(args.data_dir) / "Images" / n for n in names}
    to_input = image_pipeline(spec)
    forward = tf.function(lambda x: encoder(x, training=False), reduce_retracing=True)
    warm = to_input(tf.stack([_read_canonical(str(paths[names[0]]))] * args.batch_size))
    forward(warm)                                                                  # trace once for all
    encoder.predict(warm[:1], verbose=0)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:                                     # 1. the project's pipeline
        stats = extract_features(encoder, spec, paths, FeatureCache(tmp, spec.key), batch_size=args.batch_size,
                                 progress=False)
    rows.append(("pipeline, steady state (after the 1st batch)", stats["steady_images_per_second"]))
    rows.append(("pipeline, end to end (incl. tracing)", stats["images"] / stats["seconds"]))

    start = time.perf_counter()                                                    # 2. seed style
    preprocess = spec.preprocess()
    for n in names:
        img = keras.utils.img_to_array(keras.utils.load_img(paths[n], target_size=(spec.input_size,) * 2))
        encoder.predict(preprocess(img[None]), verbose=0)
    rows.append(("per-image model.predict loop (seeds)", len(names) / (time.perf_counter() - start)))

    batches = [to_input(tf.stack([_read_canonical(str(paths[n])) for n in names[i:i + args.batch_size]]))
               for i in range(0, len(names), args.batch_size)]                     # 3. the limit
    start = time.perf_counter()
    for b in batches:
        forward(b).numpy()
    raw = len(names) / (time.perf_counter() - start)
    rows.append(("raw batched forward, preloaded (limit)", raw))

    print(f"{spec.key} ({source}), {len(names)} images, batch {args.batch_size}")
    print(f"{'method':<46} {'img/s':>8} {'% of limit':>11}")
    for label, rate in rows:
        print(f"{label:<46} {rate:8.1f} {100 * rate / raw:10.0f}%")
    if args.json:
        Path(args.json).write_text(json.dumps([{"method": m, "images_per_second": round(r, 2),
                                                "fraction_of_limit": round(r / raw, 3)} for m, r in rows], indent=2))


if __name__ == "__main__":
    main()
