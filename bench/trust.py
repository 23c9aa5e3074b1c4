#!/usr/bin/env python
"""What knowing when to trust a caption costs: the nearest-photo lookup against the encoder and the decoder.

    python bench/trust.py [--bundle artifacts/default] [--images 20] [--json out.json]

Per new photo (median over ``--images`` test photos, warm): the encoder (image -> features), beam-5 decoding,
and the assessment (exact top-k cosine over the training index + level); plus the index's size on disk
against the rest of the bundle.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default="artifacts/default")
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--data-dir", default=os.environ.get("FLICKR8K_DIR", "../shared/flickr8k"))
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    from captioning.captioner import Captioner
    from captioning.retrieval import INDEX_FILES

    bundle = Path(args.bundle)
    names = (Path(args.data_dir) / "Flickr_8k.testImages.txt").read_text().split()
    uploads = [(Path(args.data_dir) / "Images" / n).read_bytes() for n in names[: args.images + 1]]
    captioner = Captioner.from_bundle(bundle)
    if not captioner.can_assess:
        sys.exit(f"error: {bundle} has no retrieval index; add one with: python train.py index --out {bundle}")
    captioner.assess(captioner.features(uploads[0]))                  # warm: builds the encoder
    times: dict[str, list[float]] = {"encoder": [], "beam 5 decoding": [], "assessment (top-k + level)": []}
    for data in uploads[1:]:
        t0 = time.perf_counter()
        feats = captioner.features(data)
        t1 = time.perf_counter()
        best = captioner.decode(feats, beam_width=5)[0][:1]
        t2 = time.perf_counter()
        captioner.assess(feats, best)
        t3 = time.perf_counter()
        for key, dt in zip(times, (t1 - t0, t2 - t1, t3 - t2)):
            times[key].append(dt)
    index_bytes = sum((bundle / n).stat().st_size for n in INDEX_FILES)
    rest_bytes = sum(p.stat().st_size for p in bundle.iterdir() if p.name not in INDEX_FILES)
    index = captioner.bundle.index
    out = {"bundle": str(bundle), "index_images": len(index), "index_dim": index.dim,
           "index_mb": round(index_bytes / 1e6, 2), "rest_of_bundle_mb": round(rest_bytes / 1e6, 2),
           **{k: {"median_ms": round(1000 * statistics.median(v), 2), "n": len(v)} for k, v in times.items()}}
    print(f"bundle {bundle}: index {len(index)} photos x {index.dim} float16 = {out['index_mb']:.1f} MB "
          f"(rest of the bundle {out['rest_of_bundle_mb']:.1f} MB)")
    print(f"{'per new photo':<28} {'median ms':>10}")
    for key in times:
        print(f"{key:<28} {out[key]['median_ms']:10.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
