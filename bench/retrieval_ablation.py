"""Experiment (a) of issue 38 for a retrieval bundle: its captions at several k (captions read per photo) and with
the copy gate forced to 1 (the vocabulary distribution alone), on dev (where a choice would be made) and test
(the record). Beam 5, no consensus reranking, coco-caption metrics; features from the cache ``train.py features``
filled. Prints one row per setting and split, and writes them as JSON with ``--json``.

    python bench/retrieval_ablation.py [--bundle artifacts/xception-retrieval] [--k 3 5 8] [--splits dev test]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", default=str(ROOT / "artifacts" / "xception-retrieval"))
    p.add_argument("--k", type=int, nargs="+", default=[3, 5, 8])
    p.add_argument("--splits", nargs="+", default=["dev", "test"], choices=["dev", "test"])
    p.add_argument("--cache-dir", default=str(ROOT / ".cache"))
    p.add_argument("--data-dir", default=os.environ.get("FLICKR8K_DIR") or str(ROOT.parent / "shared" / "flickr8k"))
    p.add_argument("--json", default=None)
    args = p.parse_args()

    from captioning.artifacts.bundle import load_bundle
    from captioning.artifacts.manifest import encoder_key
    from captioning.data.flickr8k import Flickr8k
    from captioning.decoding.config import DecodeConfig
    from captioning.evaluation.runs import evaluate
    from captioning.models.retrieval_steps import IndexMemory, RetrievalStepDecoder
    from captioning.training.inputs import split_names
    from captioning.vision.features import FeatureCache

    bundle = load_bundle(args.bundle, load_results=False)
    if not getattr(bundle.decoder, "uses_memory", False):
        sys.exit(f"{args.bundle} has no retrieval decoder (its kind is {bundle.decoder.kind})")
    ds = Flickr8k.load(args.data_dir, check_images=False)
    cache = FeatureCache(Path(args.cache_dir) / "features", encoder_key(bundle.encoder))
    config = DecodeConfig(beam_width=5, max_length=bundle.max_length)
    rows = []
    for split in args.splits:
        names = split_names(ds, None)[split]
        missing = cache.missing(names, False)
        if missing:
            sys.exit(f"{len(missing)} {split} photos have no cached features; run: python train.py features "
                     f"--encoder {bundle.encoder.name}")
        feats, refs = cache.load(names, False), ds.references(names)
        for k in args.k:
            for copy in (True, False):
                steps = RetrievalStepDecoder(bundle.decoder, IndexMemory(bundle.index), bundle.vocab, neighbours=k,
                                             copy=copy)
                start = time.perf_counter()
                results, predictions, _ = evaluate(steps, bundle.vocab, feats, names, refs, [config], split=split,
                                                   progress=False, meteor=False)
                r = results[0]
                copied = int(sum(any(w not in bundle.vocab.stoi for w in str(c).split())
                                 for c in predictions["caption"]))
                row = {"split": split, "k": min(k, bundle.decoder.neighbours), "copy_gate": copy,
                       "bleu_1": round(r["coco_bleu_1"], 4), "bleu_4": round(r["coco_bleu_4"], 4),
                       "cider": round(r["cider"], 4), "rouge_l": round(r["rouge_l"], 4),
                       "captions_with_a_copied_word": copied, "seconds": round(time.perf_counter() - start, 1)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    report = {"bundle": args.bundle, "decoding": "beam 5", "load_average": os.getloadavg(), "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
