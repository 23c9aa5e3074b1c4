#!/usr/bin/env python
"""App latency: cold start to first caption, and warm upload-to-caption, for a bundle (default: artifacts/default).

    python bench/app_latency.py [--bundle artifacts/default] [--images 20] [--json out.json]

"Upload-to-caption" is what the Caption page does for a new photo: decode and validate the upload, bring it to
the canonical 224x224, run the encoder, decode the caption. Each measured image is new to the process.
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

    t0 = time.perf_counter()
    from captioning.artifacts.manifest import BundleError
    from captioning.service.captioner import Captioner
    from captioning.vision.encoders import EncoderWeightsError

    names_file = Path(args.data_dir) / "Flickr_8k.testImages.txt"
    if not names_file.is_file():
        sys.exit(f"error: no Flickr8k at {args.data_dir} (Flickr_8k.testImages.txt); "
                 "pass --data-dir or set FLICKR8K_DIR")
    names = names_file.read_text().split()
    uploads = [(Path(args.data_dir) / "Images" / n).read_bytes() for n in names[: 2 * args.images + 1]]
    try:
        captioner = Captioner.from_bundle(args.bundle)
        first = captioner.caption(uploads[0])[0].text
    except (BundleError, EncoderWeightsError) as exc:
        sys.exit(f"error: {exc} (make setup puts the default bundle's encoder weights in weights/)")
    cold = time.perf_counter() - t0

    out = {"bundle": args.bundle, "encoder": " + ".join(captioner.encoders),
           "cold_start_to_first_caption_s": round(cold, 2),
           "first_caption": first}
    for label, width, batch in (("greedy", 1, uploads[1: args.images + 1]),
                                ("beam 5", 5, uploads[args.images + 1: 2 * args.images + 1])):
        times = []
        for data in batch:
            start = time.perf_counter()
            captioner.caption(data, beam_width=width)
            times.append(time.perf_counter() - start)
        p90 = sorted(times)[int(0.9 * len(times)) - 1]
        out[label] = {"median_s": round(statistics.median(times), 3), "p90_s": round(p90, 3),
                      "mean_s": round(statistics.mean(times), 3), "n": len(times)}
    print(f"bundle {args.bundle} ({out['encoder']})")
    print(f"cold start to first caption: {out['cold_start_to_first_caption_s']:.2f} s")
    print(f"{'warm upload-to-caption':<24} {'median':>8} {'p90':>8} {'mean':>8}")
    for label in ("greedy", "beam 5"):
        r = out[label]
        print(f"{label:<24} {r['median_s']:8.3f} {r['p90_s']:8.3f} {r['mean_s']:8.3f}   (s, {r['n']} new images)")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
