#!/usr/bin/env python
"""Decoding speed: this project's batched step-wise decoding vs the seed tutorials' way, same model, same images,
for every strategy (greedy, beam, sampling, diverse beam search), with the decoder rows each one computes.

The seed way re-runs the whole model on the padded prefix for every word, one image at a time
(``model.predict([photo, sequence])`` in a loop), and its beam search does that for every beam. Both decoders
(merge and attention) take that full-sequence call, so the comparison holds for either.

    python bench/decoding.py [--bundle artifacts/xception-attention] [--images 1000] [--seed-images 50]
                             [--json out.json]
    python bench/decoding.py --quick        # works on a fresh clone: trains a small MobileNetV2-0.35 merge bundle
                                            # (120 images, 3 epochs) in a temporary folder, then 100 images ours,
                                            # 10 seed-style

Without --quick it needs the bundle's encoder features cached (python train.py features --encoder xception --spatial).

Ratios come from one run on one machine; seed-style totals are extrapolated from --seed-images per image.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED_MOBILENET = ROOT.parent / "shared" / "weights" / "mobilenet_v2_0.35_224_imagenet_notop.weights.h5"


def quick_bundle(work: Path, data_dir: str, names: list[str]) -> tuple[Path, Path]:
    """A small real bundle (MobileNetV2-0.35 features, merge decoder) and the features of ``names``."""
    from captioning.data.flickr8k import Flickr8k
    from captioning.vision.encoders import build_encoder, get_spec
    from captioning.vision.features import FeatureCache, extract_features

    bundle, cache = work / "quick-merge", work / "cache"
    common = ["--data-dir", data_dir, "--encoder", "mobilenetv2", "--weights", str(SHARED_MOBILENET),
              "--cache-dir", str(cache), "--quiet"]
    start = time.perf_counter()
    print("quick: training a small MobileNetV2-0.35 merge bundle on 120 images (3 epochs) ...", flush=True)
    for step in (["features", "--limit", "120"], ["train", "--limit", "120", "--epochs", "3", "--out", str(bundle)]):
        done = subprocess.run([sys.executable, str(ROOT / "train.py"), *step, *common], cwd=ROOT)
        if done.returncode != 0:
            sys.exit(f"error: the quick bundle could not be trained (train.py {step[0]} exited {done.returncode})")
    spec = get_spec("mobilenetv2", 0.35)
    ds = Flickr8k.load(data_dir, check_images=False)
    encoder, _ = build_encoder(spec, SHARED_MOBILENET)
    extract_features(encoder, spec, {n: ds.image_path(n) for n in names}, FeatureCache(cache / "features", spec.key),
                     progress=False)
    print(f"quick: bundle and {len(names)} test features ready in {time.perf_counter() - start:.0f}s", flush=True)
    return bundle, cache


def seed_style_greedy(model, feature, vocab, max_length):
    """Re-run the full teacher-forcing model on the growing prefix for every word (one image)."""
    tokens = [vocab.start_id]
    for _ in range(max_length):
        logits = model((feature[None], np.array([tokens], np.int32)), training=False).numpy()[0, -1]
        logits[[vocab.pad_id, vocab.start_id, vocab.unk_id]] = -np.inf
        word = int(logits.argmax())
        if word == vocab.end_id:
            break
        tokens.append(word)
    return vocab.decode(tokens)


def seed_style_beam(model, feature, vocab, max_length, width):
    """Beam search the seed way: every beam's prefix re-run through the whole model, one beam at a time."""
    beams = [([vocab.start_id], 0.0)]
    finished = []
    for _ in range(max_length):
        candidates = []
        for tokens, score in beams:
            logits = model((feature[None], np.array([tokens], np.int32)), training=False).numpy()[0, -1]
            logp = logits - np.log(np.exp(logits - logits.max()).sum()) - logits.max()
            logp[[vocab.pad_id, vocab.start_id, vocab.unk_id]] = -np.inf
            for word in np.argsort(-logp)[:width]:
                candidates.append((tokens + [int(word)], score + float(logp[word])))
        candidates.sort(key=lambda c: -c[1])
        beams = []
        for tokens, score in candidates[:width]:
            (finished if tokens[-1] == vocab.end_id else beams).append((tokens, score))
        if len(finished) >= width or not beams:
            break
    best = max(finished + beams, key=lambda c: c[1] / (len(c[0]) - 1))
    return vocab.decode(best[0])


def seed_style_sample(model, feature, vocab, max_length, n, rng):
    """n captions drawn the seed way: the whole model re-run on the prefix for every word of every sample."""
    out = []
    for _ in range(n):
        tokens = [vocab.start_id]
        for _ in range(max_length):
            logits = model((feature[None], np.array([tokens], np.int32)), training=False).numpy()[0, -1] / 0.7
            logits[[vocab.pad_id, vocab.start_id, vocab.unk_id]] = -np.inf
            probs = np.exp(logits - logits.max())
            word = int(rng.choice(len(probs), p=probs / probs.sum()))
            if word == vocab.end_id:
                break
            tokens.append(word)
        out.append(vocab.decode(tokens))
    return out


STRATEGIES = [  # label, DecodeConfig fields, seed-style counterpart (None: the seed tutorials have none)
    ("greedy", {}, "greedy"),
    ("beam 3", {"beam_width": 3}, "beam"),
    ("beam 5", {"beam_width": 5}, "beam"),
    ("beam 10", {"beam_width": 10}, "beam"),
    ("sample T0.7 n5", {"strategy": "sample", "temperature": 0.7, "num_return_sequences": 5}, "sample"),
    ("sample p0.9 n5", {"strategy": "sample", "temperature": 0.7, "top_p": 0.9, "num_return_sequences": 5}, None),
    ("diverse 6/3", {"strategy": "diverse", "beam_width": 6, "num_groups": 3, "diversity_penalty": 0.5,
                     "num_return_sequences": 3}, None),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default="artifacts/xception-attention",
                        help="a single-decoder bundle (the seed-style side re-runs one model; not an ensemble)")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--seed-images", type=int, default=50)
    parser.add_argument("--cache-dir", default=".cache")
    parser.add_argument("--data-dir", default=os.environ.get("FLICKR8K_DIR", "../shared/flickr8k"))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    names_file = Path(args.data_dir) / "Flickr_8k.testImages.txt"
    if not names_file.is_file():
        sys.exit(f"error: no Flickr8k at {args.data_dir} (Flickr_8k.testImages.txt); "
                 "pass --data-dir or set FLICKR8K_DIR")
    work = tempfile.TemporaryDirectory()
    if args.quick:
        args.images, args.seed_images = 100, 10
        if not SHARED_MOBILENET.is_file():
            sys.exit(f"error: --quick needs the small encoder weights at {SHARED_MOBILENET}")
        bundle_dir, cache_dir = quick_bundle(Path(work.name), args.data_dir, names_file.read_text().split()[:100])
        args.bundle, args.cache_dir = str(bundle_dir), str(cache_dir)
    print(f"bundle {args.bundle}")

    from captioning.artifacts.bundle import load_bundle
    from captioning.artifacts.manifest import BundleError
    from captioning.decoding.config import DecodeConfig
    from captioning.decoding.search import decode
    from captioning.models.stepper import StepDecoder
    from captioning.vision.features import FeatureCache

    try:
        bundle = load_bundle(args.bundle)
    except BundleError as exc:
        sys.exit(f"error: {exc}")
    if bundle.members:
        sys.exit(f"{args.bundle} is an ensemble of {len(bundle.decoders)} decoders; the seed-style side re-runs one "
                 f"model, so give one of its member bundles (e.g. artifacts/xception-attention)")
    names = names_file.read_text().split()[: args.images]
    cache = FeatureCache(Path(args.cache_dir) / "features", bundle.encoder.key)
    missing = cache.missing(names, bundle.decoder.uses_spatial)
    if missing:
        enc = bundle.encoder
        sys.exit(f"error: {len(missing)} of {len(names)} test images have no cached {enc.key} features in "
                 f"{args.cache_dir}; run: python train.py features --encoder {enc.name}"
                 f"{' --spatial' if bundle.decoder.uses_spatial else ''} (or use --quick, which needs no cache)")
    feats = cache.load(names, spatial=bundle.decoder.uses_spatial).astype(np.float32)
    steps, vocab, max_len = StepDecoder(bundle.decoder), bundle.vocab, bundle.max_length
    decode(steps, feats[:8], vocab, DecodeConfig(max_length=max_len, beam_width=3))       # trace once
    seed_style_greedy(bundle.decoder, feats[0], vocab, 3)

    counted = []
    step = steps.step
    steps.step = lambda context, tokens, state: (counted.append(len(tokens)), step(context, tokens, state))[1]
    rng = np.random.default_rng(0)
    rows = []
    for label, fields, seed_kind in STRATEGIES:
        config = DecodeConfig(max_length=max_len, **fields)
        counted.clear()
        start = time.perf_counter()
        decode(steps, feats, vocab, config)
        ours_total = time.perf_counter() - start
        row = {"decoding": label, "ours_total_s": round(ours_total, 2),
               "ours_ms_per_image": round(1000 * ours_total / len(feats), 2),
               "decoder_rows_per_image": round(sum(counted) / len(feats), 1), "images": len(feats)}
        if seed_kind:
            start = time.perf_counter()
            for f in feats[: args.seed_images]:
                if seed_kind == "greedy":
                    seed_style_greedy(bundle.decoder, f, vocab, max_len)
                elif seed_kind == "beam":
                    seed_style_beam(bundle.decoder, f, vocab, max_len, config.beam_width)
                else:
                    seed_style_sample(bundle.decoder, f, vocab, max_len, config.num_return_sequences, rng)
            seed_per_image = (time.perf_counter() - start) / args.seed_images
            row.update(seed_ms_per_image=round(1000 * seed_per_image, 1),
                       seed_total_s_extrapolated=round(seed_per_image * len(feats), 1),
                       speedup=round(seed_per_image * len(feats) / ours_total, 1))
        rows.append(row)
    greedy = rows[0]
    print(f"{'decoding':<15} {'ours total':>11} {'ours ms/img':>12} {'rows/img':>9} {'x greedy rows':>14} "
          f"{'x greedy time':>14} {'seed ms/img':>12} {'seed total*':>12} {'speed-up':>9}")
    for r in rows:
        seed = (f"{r['seed_ms_per_image']:12.1f} {r['seed_total_s_extrapolated']:11.1f}s {r['speedup']:8.1f}x"
                if "speedup" in r else f"{'-':>12} {'-':>12} {'-':>9}")
        print(f"{r['decoding']:<15} {r['ours_total_s']:10.2f}s {r['ours_ms_per_image']:12.2f} "
              f"{r['decoder_rows_per_image']:9.1f} "
              f"{r['decoder_rows_per_image'] / greedy['decoder_rows_per_image']:14.2f} "
              f"{r['ours_total_s'] / greedy['ours_total_s']:14.2f} {seed}")
    print(f"* seed-style extrapolated from {args.seed_images} images (sampling: 5 captions at temperature 0.7); "
          f"rows/img = decoder rows computed per image over all steps")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
