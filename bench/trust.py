#!/usr/bin/env python
"""What knowing when to trust a caption costs, and how well the in-domain score tells Flickr8k from the rest.

    python bench/trust.py [--bundle artifacts/default] [--images 20] [--json out.json]
    python bench/trust.py --auroc [--test-images 1000] [--ood-dir DIR] [--json out.json]

Cost: per new photo (median over ``--images`` test photos, warm): the encoder (image -> features), beam-5
decoding, and the assessment (exact top-k cosine over the training index + level); plus the index's size on
disk against the rest of the bundle.

``--auroc``: the in-domain score of Flickr8k test photos (in domain) against photos of things the model never
saw (out of domain: the tests' drawn and synthetic photos, plus every image in ``--ood-dir``), each read as the
app reads an upload. AUROC = the chance that a random test photo scores above a random out-of-domain one (ties
count half); also the share of each set per level. No caption enters the score, so no decoding is run.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path


def synthetic_photos() -> dict:
    """Photos from outside Flickr8k's world, drawn here (the same six as tests/test_retrieval.py's)."""
    import numpy as np
    from PIL import Image, ImageDraw

    photos = {"flat orange": Image.new("RGB", (320, 240), (200, 120, 40)),
              "flat blue": Image.new("RGB", (320, 240), (30, 60, 200))}
    board = np.kron(np.indices((8, 8)).sum(0) % 2, np.ones((40, 40)))
    photos["chessboard"] = Image.fromarray((board * 255).astype(np.uint8)).convert("RGB")
    photos["noise"] = Image.fromarray(np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8))
    cup = Image.new("RGB", (320, 320), "white")
    d = ImageDraw.Draw(cup)
    d.ellipse((60, 120, 260, 260), fill=(235, 235, 235), outline="black", width=4)      # saucer
    d.rectangle((110, 80, 210, 200), fill=(120, 70, 30), outline="black", width=4)     # cup
    d.arc((190, 100, 250, 160), 270, 90, fill="black", width=6)                        # handle
    photos["drawn cup"] = cup
    shapes = Image.new("RGB", (320, 320), (250, 250, 235))
    d = ImageDraw.Draw(shapes)
    for i, colour in enumerate([(220, 40, 40), (40, 160, 60), (40, 80, 220), (240, 200, 30)]):
        d.regular_polygon((80 + 160 * (i % 2), 80 + 160 * (i // 2), 60), 3 + i, fill=colour)
    photos["drawn shapes"] = shapes
    return photos


def auroc(inside, outside) -> float:
    """P(score of a random in-domain photo > that of a random out-of-domain one), ties counting half."""
    import numpy as np

    a, b = np.asarray(inside, np.float64)[:, None], np.asarray(outside, np.float64)[None, :]
    return float((a > b).mean() + 0.5 * (a == b).mean())


def measure_auroc(args) -> dict:
    from captioning.evaluation.trust import LEVELS
    from captioning.service.captioner import Captioner
    from captioning.vision.images import SUPPORTED_TYPES

    captioner = Captioner.from_bundle(args.bundle)
    index = captioner.bundle.index
    if index is None or index.calibration is None:
        sys.exit(f"error: {args.bundle} has no calibrated index; run: python train.py index --out {args.bundle}")
    names = (Path(args.data_dir) / "Flickr_8k.testImages.txt").read_text().split()[: args.test_images]
    outside = synthetic_photos()
    if args.ood_dir:
        for path in sorted(Path(args.ood_dir).iterdir()):
            if path.suffix.lower().lstrip(".") in SUPPORTED_TYPES:
                outside[path.name] = path.read_bytes()

    def scores(images: list) -> list:
        out = []
        for start in range(0, len(images), 16):
            out += index.assess(captioner.index_features(images[start:start + 16]))
        return out

    inside = scores([Path(args.data_dir) / "Images" / n for n in names])
    odd = scores(list(outside.values()))
    share = {label: {lv: round(sum(a.level == lv for a in group) / len(group), 3) for lv in LEVELS}
             for label, group in (("flickr8k_test", inside), ("out_of_domain", odd))}
    return {"bundle": str(args.bundle), "test_photos": len(inside), "out_of_domain_photos": len(odd),
            "auroc": round(auroc([a.in_domain for a in inside], [a.in_domain for a in odd]), 4),
            "levels": share, "thresholds": [index.calibration.unfamiliar_below, index.calibration.familiar_from],
            "out_of_domain": {n: {"in_domain": round(a.in_domain, 4), "level": a.level,
                                  "nearest": a.neighbours[0].captions[0] if a.neighbours[0].captions else ""}
                              for n, a in zip(outside, odd)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default="artifacts/default")
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--data-dir", default=os.environ.get("FLICKR8K_DIR", "../shared/flickr8k"))
    parser.add_argument("--json", default=None)
    parser.add_argument("--auroc", action="store_true", help="Flickr8k test photos against out-of-domain ones")
    parser.add_argument("--test-images", type=int, default=1000, help="--auroc: how many test photos")
    parser.add_argument("--ood-dir", default=None, help="--auroc: a folder of out-of-domain photos to add")
    args = parser.parse_args()
    if args.auroc:
        out = measure_auroc(args)
        print(f"bundle {args.bundle}: AUROC {out['auroc']:.3f} ({out['test_photos']} Flickr8k test photos against "
              f"{out['out_of_domain_photos']} out-of-domain ones)")
        for label, share in out["levels"].items():
            print(f"  {label:<15} " + "  ".join(f"{lv} {v:.0%}" for lv, v in share.items()))
        for name, row in out["out_of_domain"].items():
            print(f"  {name:<24} {row['in_domain']:.3f} {row['level']:<10} nearest: {row['nearest'][:60]}")
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=2))
        return

    from captioning.evaluation.trust import INDEX_FILES
    from captioning.service.captioner import Captioner

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
