#!/usr/bin/env python
"""Score bundles alone and together as an ensemble (mean of their next-word probabilities) on a split.

    python scripts/evaluate_ensemble.py artifacts/default artifacts/xception-attention-seed7 ... \
        [--split dev] [--beam-widths 1,3,5] [--flip] [--max-length 16] [--json out.json]
    python scripts/evaluate_ensemble.py artifacts/default@1,3,5 ...     # some decoders of an ensemble bundle

``BUNDLE@1,3`` takes only those decoders of an ensemble bundle (numbered from 1 in the order of its manifest's
``ensemble_of``), so disjoint sub-ensembles of one bundle score without splitting it into folders.

The bundles must share a vocabulary; they may read different encoders (a cross-encoder ensemble: each
decoder gets its own encoder's features). Features come from the cache ``train.py features`` filled.
Prints one row per bundle and per decoding, then the ensemble's rows: the evidence for whether an ensemble
is worth its decoding time.
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
    parser.add_argument("--max-length", type=int, default=None,
                        help="most tokens per caption (words + <end>; default: the bundles' longest training caption)")
    parser.add_argument("--cache-dir", default=".cache")
    parser.add_argument("--data-dir", default=os.environ.get("FLICKR8K_DIR", "../shared/flickr8k"))
    parser.add_argument("--limit", type=int, default=None,
                        help="bundles trained with train.py --limit N: score the same N-image cut's split")
    parser.add_argument("--no-singles", action="store_true", help="score only the ensemble")
    parser.add_argument("--flip", action="store_true",
                        help="test-time flip: every decoder also reads the mirrored photos' features (cached by "
                             "scripts/flip_features.py) and decoding averages the two")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    from captioning.artifacts.bundle import load_bundle
    from captioning.data.flickr8k import Flickr8k
    from captioning.decoding.config import DecodeConfig
    from captioning.evaluation.runs import evaluate
    from captioning.models.stepper import EnsembleStepDecoder, MultiFeatures, StepDecoder
    from captioning.training.inputs import split_names
    from captioning.vision.encoders import get_spec
    from captioning.vision.features import FLIP_SUFFIX, FeatureCache

    selections = [pick_decoders(arg, load_bundle) for arg in args.bundles]
    bundles = [b for b, _, _ in selections]
    first = bundles[0]
    for path, b in zip(args.bundles[1:], bundles[1:]):
        if b.vocab.itos != first.vocab.itos:
            sys.exit(f"{path} has another vocabulary than {args.bundles[0]}; an ensemble needs one vocabulary")
    ds = Flickr8k.load(args.data_dir, check_images=False)
    names = split_names(ds, args.limit)[args.split]
    # Every encoder any decoder reads, each loaded once: spatial maps when a decoder of it attends (merge
    # decoders pool the map, as the encoder would).
    decoders = [d for _, ds, _ in selections for d in ds]
    decoder_keys = [k for _, _, ks in selections for k in ks]

    def spatial_for(key: str) -> bool:
        return any(getattr(d, "uses_spatial", False) for d, k in zip(decoders, decoder_keys) if k == key)

    keys = list(dict.fromkeys(decoder_keys))
    specs = {spec.key: spec for spec in (get_spec(e.name, e.alpha) for b in bundles for e in b.encoders)}
    arrays = {}
    for key in keys:
        spatial = spatial_for(key)
        cache = FeatureCache(Path(args.cache_dir) / "features", key)
        missing = cache.missing(names, spatial)
        if missing:
            sys.exit(f"{len(missing)} {args.split} images have no cached {key} features; run: "
                     f"python train.py features {specs[key].cli_args}{' --spatial' if spatial else ''}")
        arrays[key] = cache.load(names, spatial)

    def inputs(wanted: list[str]):
        wanted = list(dict.fromkeys(wanted))
        return arrays[wanted[0]] if len(wanted) == 1 else MultiFeatures({k: arrays[k] for k in wanted})

    refs = ds.references(names)
    max_length = args.max_length or max(b.max_length for b in bundles)
    if max_length < 2:
        sys.exit("--max-length must be at least 2 (one word and <end>)")
    configs = [DecodeConfig(beam_width=int(w), max_length=max_length, length_penalty=args.length_penalty)
               for w in args.beam_widths.split(",")]

    if args.flip:                                    # every decoder also reads the mirrored photo's features
        for key in keys:
            cache = FeatureCache(Path(args.cache_dir) / "features", key + FLIP_SUFFIX)
            spatial = spatial_for(key)
            missing = cache.missing(names, spatial)
            if missing:
                sys.exit(f"{len(missing)} {args.split} images have no mirrored {key} features; run: python "
                         f"scripts/flip_features.py {specs[key].cli_args} --splits {args.split}"
                         f"{' --spatial' if spatial else ''}")
            arrays[key + FLIP_SUFFIX] = cache.load(names, spatial)

    def steps_for(models: list, model_keys: list[str]):
        """The step decoder and its features: one decoder alone, or the mean of several (each on its encoder's
        features; with --flip each decoder twice, on the photo and on its mirror image)."""
        if args.flip:
            models, model_keys = models * 2, model_keys + [k + FLIP_SUFFIX for k in model_keys]
        if len(models) == 1:
            return StepDecoder(models[0]), arrays[model_keys[0]]
        across = len(set(model_keys)) > 1
        return (EnsembleStepDecoder([StepDecoder(m) for m in models], model_keys if across else None),
                inputs(model_keys))

    rows = []
    # A bundle that is itself an ensemble scores as one; the ensemble row pools every decoder of every bundle.
    candidates = [] if args.no_singles else [(p, *steps_for(ds, ks))
                                             for p, (_, ds, ks) in zip(args.bundles, selections)]
    if len(bundles) > 1:
        across = len(set(decoder_keys)) > 1
        label = f"ensemble of {len(decoders)}" + (f" over {len(set(decoder_keys))} encoders" if across else "")
        candidates.append((label, *steps_for(decoders, decoder_keys)))
    if not candidates:
        sys.exit("--no-singles with one bundle leaves nothing to score: give two or more bundles")
    for label, steps, feats in candidates:
        results, _, _ = evaluate(steps, first.vocab, feats, names, refs, configs, split=args.split, meteor=False)
        for r in results:
            rows.append({"model": label, **r})
            print(f"{label:<44} {r['label']:<7} "
                  + " ".join(f"{c} {r[c]:.4f}" for c in COLUMNS), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"split": args.split, "rows": rows}, indent=2))


def pick_decoders(arg: str, load_bundle):
    """``PATH`` or ``PATH@1,3``: (the bundle, the chosen decoders, the encoder key each reads)."""
    from captioning.training.picks import check_pick, split_pick

    try:
        path, indices = split_pick(arg)
        bundle = load_bundle(path, load_results=False)
        indices = check_pick(arg, indices, len(bundle.decoders))
    except ValueError as exc:
        sys.exit(str(exc))
    return bundle, [bundle.decoders[i] for i in indices], [bundle.decoder_keys[i] for i in indices]


if __name__ == "__main__":
    main()
