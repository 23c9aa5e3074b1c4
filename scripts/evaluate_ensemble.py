#!/usr/bin/env python
"""Score bundles alone and together as an ensemble (mean of their next-word probabilities) on a split.

    python scripts/evaluate_ensemble.py artifacts/default artifacts/xception-attention-seed7 ... \
        [--split dev] [--beam-widths 1,3,5] [--json out.json]

The bundles must share a vocabulary and an encoder (e.g. the same recipe trained with different seeds);
features come from the cache ``train.py features`` filled. Prints one row per bundle and per decoding, then the
ensemble's rows: the evidence for whether an ensemble is worth its decoding time.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

COLUMNS = ["bleu_1", "bleu_4", "cider", "rouge_l", "mean_length", "decode_seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundles", nargs="+")
    parser.add_argument("--split", default="dev", choices=["dev", "test"])
    parser.add_argument("--beam-widths", default="1,3,5")
    parser.add_argument("--length-penalty", type=float, default=1.0)
    parser.add_argument("--cache-dir", default=".cache")
    parser.add_argument("--data-dir", default=os.environ.get("FLICKR8K_DIR", "../shared/flickr8k"))
    parser.add_argument("--no-singles", action="store_true", help="score only the ensemble")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    from captioning.bundle import load_bundle
    from captioning.data import Flickr8k
    from captioning.decoding import DecodeConfig
    from captioning.encoders import get_spec
    from captioning.evaluation import evaluate
    from captioning.features import FeatureCache
    from captioning.stepper import EnsembleStepDecoder, StepDecoder

    bundles = [load_bundle(b, load_results=False) for b in args.bundles]
    first = bundles[0]
    for path, b in zip(args.bundles[1:], bundles[1:]):
        if b.vocab.itos != first.vocab.itos:
            sys.exit(f"{path} has another vocabulary than {args.bundles[0]}; an ensemble needs one vocabulary")
        if b.encoder.key != first.encoder.key:
            sys.exit(f"{path} uses encoder {b.encoder.key}, {args.bundles[0]} uses {first.encoder.key}")
    ds = Flickr8k.load(args.data_dir, check_images=False)
    names = ds.splits[args.split]
    spec = get_spec(first.encoder.name, first.encoder.alpha)
    cache = FeatureCache(Path(args.cache_dir) / "features", spec.key)
    spatial = any(b.uses_spatial for b in bundles)   # merge members pool the map
    missing = cache.missing(names, spatial)
    if missing:
        sys.exit(f"{len(missing)} {args.split} images have no cached {spec.key} features; run: "
                 f"python train.py features --encoder {spec.name}{' --spatial' if spatial else ''}")
    feats = cache.load(names, spatial)
    refs = ds.references(names)
    max_length = max(b.max_length for b in bundles)
    configs = [DecodeConfig(beam_width=int(w), max_length=max_length, length_penalty=args.length_penalty)
               for w in args.beam_widths.split(",")]

    rows = []
    # A bundle that is itself an ensemble scores as one; the ensemble row pools every decoder of every bundle.
    candidates = [] if args.no_singles else [(p, b.step_decoder()) for p, b in zip(args.bundles, bundles)]
    decoders = [d for b in bundles for d in b.decoders]
    if len(bundles) > 1:
        candidates.append((f"ensemble of {len(decoders)}", EnsembleStepDecoder([StepDecoder(d) for d in decoders])))
    if not candidates:
        sys.exit("--no-singles with one bundle leaves nothing to score: give two or more bundles")
    for label, steps in candidates:
        results, _, _ = evaluate(steps, first.vocab, feats, names, refs, configs, split=args.split, meteor=False)
        for r in results:
            rows.append({"model": label, **r})
            print(f"{label:<44} {r['label']:<7} "
                  + " ".join(f"{c} {r[c]:.4f}" for c in COLUMNS), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"split": args.split, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
