#!/usr/bin/env python
"""Per-image costs behind docs/scaling.md, measured in one process on the same Flickr8k images.

    python bench/scaling.py [--images 64] [--json out.json]

Measures, one after another in this process: feature extraction per image (Xception 299 and MobileNetV2-0.35
224, after a warm-up batch), teacher-forced training per caption per epoch (merge decoder, embedding and LSTM
256, the default; an epoch after the first), SCST per image (one epoch, 5 samples per image) and decoding per
image (greedy, beam 5). On a shared machine the absolute times move with the load; the ratios between them,
measured minutes apart in one process, move much less.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=str(SHARED / "flickr8k"))
    p.add_argument("--images", type=int, default=64, help="training images measured (5 captions each)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    import keras

    from captioning.data.flickr8k import Flickr8k
    from captioning.data.text import Vocabulary, tokenize
    from captioning.decoding.config import DecodeConfig
    from captioning.decoding.search import decode
    from captioning.models.decoders import build_decoder
    from captioning.models.stepper import StepDecoder
    from captioning.training.fit import TrainConfig, encode_captions, fit, make_dataset
    from captioning.training.scst import SCSTConfig, finetune
    from captioning.vision.encoders import build_encoder, get_spec
    from captioning.vision.features import FeatureCache, extract_features

    ds = Flickr8k.load(args.data_dir)
    names = ds.split_records("train", args.images)
    paths = {n: ds.image_path(n) for n in names}
    rows = []
    work = Path(tempfile.mkdtemp(prefix="scaling-"))
    feats = {}
    for name, alpha, weights in (("xception", None, ROOT / "weights" / "xception_imagenet_notop.weights.h5"),
                                 ("mobilenetv2", 0.35, SHARED / "weights" /
                                  "mobilenet_v2_0.35_224_imagenet_notop.weights.h5")):
        spec = get_spec(name, alpha)
        encoder, _ = build_encoder(spec, str(weights), spatial=False)
        cache = FeatureCache(work / "features", spec.key)
        stats = extract_features(encoder, spec, paths, cache, batch_size=16, progress=False)
        per_image = 1.0 / stats["steady_images_per_second"]
        rows.append((f"features, {spec.key}", "image", per_image))
        feats[name] = cache.load(names).astype(np.float32)
        print(f"{spec.key}: {stats['steady_images_per_second']:.1f} img/s steady", flush=True)

    x = feats["xception"]
    caps = [(i, tokenize(c)) for i, n in enumerate(names) for c in ds.captions[n]]
    idx, words = np.array([i for i, _ in caps]), [w for _, w in caps]
    vocab = Vocabulary.build(words, 1)
    tokens = encode_captions(words, vocab)
    config = TrainConfig(epochs=2, patience=5)
    keras.utils.set_random_seed(42)
    decoder = build_decoder("merge", vocab_size=len(vocab), feature_dim=x.shape[1], embed_dim=256, units=256,
                            dropout=0.5)
    train_ds = make_dataset(x, idx, tokens, 64, shuffle=True, seed=42)
    state = fit(decoder, train_ds, make_dataset(x, idx, tokens, 256, shuffle=False), config, work / "run", verbose=0)
    rows.append(("training, merge 256 (epoch 2)", "caption", state["epochs"]["2"]["seconds"] / len(words)))

    steps = StepDecoder(decoder)
    for label, width in (("greedy", 1), ("beam 5", 5)):
        decode(steps, x[:8], vocab, DecodeConfig(beam_width=width))                     # warm-up (tracing)
        t0 = time.perf_counter()
        decode(steps, x, vocab, DecodeConfig(beam_width=width))
        rows.append((f"decoding, {label}", "image", (time.perf_counter() - t0) / len(x)))

    refs = [[tokenize(c) for c in ds.captions[n]] for n in names]
    scst = finetune(decoder, vocab, x, refs, lambda model: {"cider": 0.0},
                    SCSTConfig(epochs=1, batch_size=16, samples=5), work / "scst", progress=False, log=lambda s: None)
    rows.append(("SCST, merge 256 (5 samples)", "image", scst["epochs"]["1"]["seconds"] / len(names)))

    print(f"\n{args.images} Flickr8k training images ({len(words)} captions), one process\n"
          f"{'cost':<40} {'per':<8} {'ms':>9}")
    for what, per, seconds in rows:
        print(f"{what:<40} {per:<8} {seconds * 1000:9.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps([{"what": w, "per": p, "ms": round(s * 1000, 3)} for w, p, s in rows],
                                              indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
