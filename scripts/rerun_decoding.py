#!/usr/bin/env python
"""Re-run one decoding run of a bundle's evaluation and put it in place of the old one, leaving every other
run, the dev sweep and the metric-vs-human agreement exactly as they are.

    python scripts/rerun_decoding.py artifacts/default --decode diverse:beams=6,groups=3,penalty=0.5,n=5

What ``train.py evaluate --decode ...`` would write for that run (same split, features from the cache, training
captions for the novel fraction, METEOR when the old run has it), without decoding the other runs again: for
instance a diverse beam run first evaluated with one caption per photo, re-run with its n-best so it gets
self-BLEU and oracle CIDEr-D like the sampling runs. The run replaced is the one with the same strategy and
options apart from the number of captions per photo (or ``--replace LABEL``). metrics.json and predictions.csv
are rewritten atomically (the bundle's checksums with them); prints the old and new numbers side by side.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def same_run(entry: dict, config) -> bool:
    """Whether a metrics.json run is ``config`` apart from how many captions per photo it keeps."""
    def core(options: dict) -> dict:
        return {k: v for k, v in options.items() if k != "num_return_sequences"}
    return entry.get("decoding") == config.kind and core(entry.get("options") or {}) == core(config.options())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle")
    parser.add_argument("--decode", required=True, metavar="SPEC", help="the run, as train.py evaluate --decode")
    parser.add_argument("--replace", default=None, metavar="LABEL",
                        help="the label of the run to replace (default: the same strategy and options)")
    parser.add_argument("--data-dir", default=os.environ.get("FLICKR8K_DIR", str(ROOT.parent / "shared" / "flickr8k")))
    parser.add_argument("--cache-dir", default=str(ROOT / ".cache"))
    parser.add_argument("--keep-time", action="store_true",
                        help="keep the old run's decoding seconds (the same search; a time measured on a busy "
                             "machine would not compare with the other runs')")
    parser.add_argument("--add", action="store_true",
                        help="score the decoding as a new run after the others instead of replacing one (e.g. "
                             "beam:5,consensus=10,cw=1.5, the app's default decoding); same split as the others")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)

    import pandas as pd

    from captioning.artifacts.bundle import load_bundle, update_results
    from captioning.data.flickr8k import Flickr8k
    from captioning.decoding.config import parse_spec
    from captioning.evaluation.runs import evaluate
    from captioning.models.stepper import MultiFeatures
    from captioning.training.inputs import split_names
    from captioning.vision.features import FeatureCache

    bundle = load_bundle(args.bundle)
    metrics, predictions = bundle.metrics, bundle.predictions
    if not metrics or predictions is None:
        sys.exit(f"{args.bundle} has no evaluation to change; run: python train.py evaluate --out {args.bundle}")
    try:
        config = parse_spec(args.decode, max_length=bundle.max_length)
    except ValueError as exc:
        sys.exit(str(exc))
    runs = metrics["results"]
    found = [i for i, r in enumerate(runs) if (r.get("label") == args.replace if args.replace else same_run(r, config))]
    if args.add:
        if found and not args.replace:
            sys.exit(f"{args.bundle} already has a run of {args.decode!r}; drop --add to re-run it in place")
        found = [len(runs)]
        runs = [*runs, dict(runs[0], label=None)]          # the split, size and METEOR of the others
    if len(found) != 1:
        sys.exit(f"{len(found)} runs of {args.bundle} match {args.replace or args.decode!r}; its runs are: "
                 + "; ".join(r.get("label", r["decoding"]) for r in runs) + ". Name one with --replace LABEL")
    at = found[0]
    old = runs[at]
    ds = Flickr8k.load(args.data_dir, check_images=False)
    names = split_names(ds, bundle.manifest.data.get("limit"))
    test = names[old["split"]]
    root = Path(args.cache_dir) / "features"
    arrays = {}
    for key in dict.fromkeys(bundle.decoder_keys):
        spatial = bundle.spatial_for(key) if bundle.multi_encoder else bundle.uses_spatial
        cache = FeatureCache(root, key)
        if cache.missing(test, spatial):
            sys.exit(f"{len(cache.missing(test, spatial))} {old['split']} photos have no cached {key} features; "
                     f"run: python train.py evaluate --out {args.bundle} (it extracts them) or train.py features")
        arrays[key] = cache.load(test, spatial)
    feats = next(iter(arrays.values())) if len(arrays) == 1 else MultiFeatures(arrays)
    training = [c for refs in ds.references(names["train"]) for c in refs]
    results, rows, notes = evaluate(bundle.step_decoder(), bundle.vocab, feats, test, ds.references(test), [config],
                                    split=old["split"], progress=not args.quiet, meteor="meteor" in old,
                                    training_captions=training)
    new = results[0]
    if args.keep_time and "decode_seconds" in old and not args.add:
        new["decode_seconds"] = old["decode_seconds"]
    label = old.get("label") or old["decoding"]
    # --add: nothing to take out, the new rows go after the others
    kept = predictions if args.add else predictions[predictions["label"] != label]
    first = [] if args.add else predictions.index[predictions["label"] == label]
    place = int(first[0]) if len(first) else len(predictions)
    before, after = kept[kept.index < place], kept[kept.index >= place]
    merged = pd.concat([before, rows[predictions.columns.intersection(rows.columns)], after], ignore_index=True)
    update_results(bundle.path, {**metrics, "results": [*runs[:at], new, *runs[at + 1:]]}, merged)
    for key in sorted(set(old) | set(new)):
        if args.add:
            print(f"{key:<22} {new.get(key)!s}")
        elif old.get(key) != new.get(key):
            print(f"{key:<22} {old.get(key)!s:>44} -> {new.get(key)!s}")
    for note in notes:
        print(note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
