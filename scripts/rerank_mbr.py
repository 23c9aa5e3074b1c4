#!/usr/bin/env python
"""Minimum-Bayes-risk reranking by CIDEr-D: does picking the consensus caption beat the beam's top caption?

    python scripts/rerank_mbr.py artifacts/default [--split dev] [--beam 10] [--samples 20] \
        [--temperature 0.7] [--weights 0,1,3] [--json out.json]

For every image: the hypotheses are the beam's n-best list (``--beam`` captions) plus the distinct sampled
captions; the evidence is the ``--samples`` sampled captions with repeats (a Monte Carlo estimate of what the
model believes). Each hypothesis h scores ``mean_e CIDEr-D(h, [e]) + w * (log-probability per token)``
(document frequencies from the training references), and the best one is kept (Kumar & Byrne 2004; for
captioning, e.g. Borgeaud & Emerson 2020). Prints the beam's own top caption and one row per weight ``w``,
scored as train.py scores (coco-caption BLEU-1 / BLEU-4 / CIDEr-D).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def expected_cider(cider, hypotheses, evidence) -> list[float]:
    """Each hypothesis's mean CIDEr-D against every evidence caption taken alone (repeats count)."""
    return [sum(cider.score(h, [e]) for e in evidence) / len(evidence) for h in hypotheses]


def choose(expected, per_token, weight: float) -> int:
    """The index of the hypothesis with the best expected CIDEr-D + weight * log-probability per token
    (the first on ties: the beam's n-best list comes first)."""
    totals = [e + weight * p for e, p in zip(expected, per_token)]
    return totals.index(max(totals))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle")
    parser.add_argument("--split", default="dev", choices=["dev", "test"])
    parser.add_argument("--beam", type=int, default=10, help="beam width; its whole n-best list is kept")
    parser.add_argument("--samples", type=int, default=20, help="sampled captions per image (the evidence)")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--weights", default="0,1,3",
                        help="weights w of the per-token log-probability added to the expected CIDEr-D")
    parser.add_argument("--cache-dir", default=".cache")
    parser.add_argument("--data-dir", default=os.environ.get("FLICKR8K_DIR", "../shared/flickr8k"))
    parser.add_argument("--limit", type=int, default=None, help="bundles trained with train.py --limit N")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.beam < 1 or args.samples < 2:
        sys.exit("--beam must be at least 1 and --samples at least 2 (the evidence needs several captions)")
    try:
        weights = [float(w) for w in args.weights.split(",")]
    except ValueError:
        sys.exit(f"--weights takes numbers separated by commas, e.g. 0,1,3; got {args.weights!r}")

    import numpy as np

    from captioning.artifacts.bundle import load_bundle
    from captioning.data.flickr8k import Flickr8k
    from captioning.decoding.config import DecodeConfig
    from captioning.decoding.search import decode
    from captioning.evaluation.metrics import CiderD, coco_scores
    from captioning.models.stepper import MultiFeatures
    from captioning.training.inputs import split_names
    from captioning.vision.features import FeatureCache

    bundle = load_bundle(args.bundle, load_results=False)
    ds = Flickr8k.load(args.data_dir, check_images=False)
    splits = split_names(ds, args.limit)
    names = splits[args.split]
    arrays = {}
    for key in dict.fromkeys(bundle.decoder_keys):
        cache = FeatureCache(Path(args.cache_dir) / "features", key)
        if cache.missing(names, bundle.spatial_for(key)):
            sys.exit(f"some {args.split} images have no cached {key} features; run train.py features first "
                     f"(see scripts/evaluate_ensemble.py for the command)")
        arrays[key] = cache.load(names, bundle.spatial_for(key))
    features = next(iter(arrays.values())) if len(arrays) == 1 else MultiFeatures(arrays)
    steps = bundle.step_decoder()
    beam = decode(steps, features, bundle.vocab, DecodeConfig(beam_width=args.beam, num_return_sequences=args.beam,
                                                               max_length=bundle.max_length))
    sampled = decode(steps, features, bundle.vocab,
                     DecodeConfig(strategy="sample", num_return_sequences=args.samples, temperature=args.temperature,
                                  max_length=bundle.max_length, seed=0))
    refs = ds.references(names)
    cider = CiderD(ds.references(splits["train"]))

    rows = []

    def report(label: str, hyps) -> None:
        scores, _, _ = coco_scores(refs, hyps, meteor=False)
        row = {"label": label, "bleu_1": scores["coco_bleu_1"], "bleu_4": scores["coco_bleu_4"],
               "cider": scores["cider"], "mean_length": float(np.mean([len(h) for h in hyps]))}
        rows.append(row)
        print(f"{label:<34} BLEU-1 {row['bleu_1']:.4f}  BLEU-4 {row['bleu_4']:.4f}  CIDEr-D {row['cider']:.4f}  "
              f"words {row['mean_length']:.2f}", flush=True)

    report(f"beam {args.beam}, top caption", [caps[0].words for caps in beam])
    pools = []
    for nbest, samples in zip(beam, sampled):
        hyps, seen = [], set()
        for caption in (*nbest, *samples):
            if tuple(caption.words) not in seen:
                seen.add(tuple(caption.words))
                hyps.append(caption)
        pools.append(([h.words for h in hyps], expected_cider(cider, [h.words for h in hyps],
                                                              [c.words for c in samples]),
                      [h.log_prob / max(h.num_tokens, 1) for h in hyps]))
    for w in weights:
        report(f"MBR, log-prob weight {w:g}",
               [hyps[choose(expected, per_token, w)] for hyps, expected, per_token in pools])
    if args.json:
        Path(args.json).write_text(json.dumps({"split": args.split, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
