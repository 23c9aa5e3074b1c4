"""Instant adaptation by memory, no training (issue 38, experiment b): the held-out-word experiment of
bench/finetune_new_word.py, answered by a memory instead of fine-tuning.

The user dataset it built (``--captions``, default /work/runs/ft500/captions.csv: Flickr8k training photos of beach
scenes re-captioned "beach" -> "strand", plus photos of other scenes with their captions) becomes the memory; the
held-out Flickr8k test photos of that kind (at least two references say "beach") and 150 others are captioned
(beam 3, as there) by each ``--bundle`` without and with the memory. Reported per run: how often photos of the
kind get the new word, how often they keep the old one, how often other photos get the new word (false
adaptation), CIDEr-D / BLEU-4 on the test photos against the original references, and the share of kind / other
photos whose best remembered photo clears the user floor (the rule's hit rate). The fine-tuned bundles' numbers are
read from that run's report.json (``--finetune-report``), not recomputed.

The memory's photos are Flickr8k training photos, so their pooled features are read from the feature cache (the
same encoder and image pipeline :func:`captioning.service.memory.user.load_user_memory` uses; it would only cache them
again under content ids).

    nice -n 10 python bench/memory_new_word.py [--bundle artifacts/xception-merge ...] [--out FILE.json]
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OLD, NEW = "beach", "strand"


def test_photos(flickr: Path, others: int = 150, split: str = "test"):
    from captioning.data.flickr8k import Flickr8k

    ds = Flickr8k.load(flickr, check_images=False)
    refs = {n: ds.references([n])[0] for n in ds.splits[split]}
    kind = [n for n, rs in refs.items() if sum(OLD in r for r in rs) >= 2]
    rest = [n for n, rs in refs.items() if not any(OLD in r for r in rs)]
    rest = sorted(np.random.default_rng(1).choice(rest, others, replace=False))      # as finetune_new_word.py
    return ds, refs, kind, rest


def user_store(captions: Path, flickr: Path, cache: Path, key: str, floor: float):
    from captioning.data.user_data import load_user_data
    from captioning.service.memory.store import Datastore, MemoryEntry
    from captioning.vision.features import FeatureCache

    data = load_user_data(captions, flickr / "Images", split=False, check_photos=False)
    photos = list(data.captions)
    feats = np.asarray(FeatureCache(cache, key).load(photos), np.float32)              # (N, D) pooled
    rows, entries = [], []
    for i, p in enumerate(photos):
        for c in data.captions[p]:
            rows.append(i)
            entries.append(MemoryEntry(p, c, "user"))
    return Datastore.from_arrays(feats[rows], entries, key, floor)


def run(bundle_path: str, ds, names, refs, kind_n: int, captions: Path, flickr: Path, cache_dir: Path,
        boost: float | None = None) -> dict:
    from captioning.artifacts.bundle import load_bundle
    from captioning.decoding.config import DecodeConfig
    from captioning.decoding.search import decode
    from captioning.evaluation.metrics import coco_scores
    from captioning.service.memory.store import training_datastore, user_floor_of
    from captioning.service.memory.use import CaptionMemory
    from captioning.training.inputs import bundle_features, decoder_inputs
    from captioning.training.settings import FeatureSettings, Workspace
    from captioning.vision.encoders import get_spec
    from captioning.vision.features import FeatureCache

    bundle = load_bundle(bundle_path, load_results=False)
    ws = Workspace(cache_dir=str(cache_dir), quiet=True)
    key = get_spec(bundle.encoder.name, bundle.encoder.alpha).key
    bundle_features(ws, FeatureSettings(), bundle, ds, {"test": names}, pooled={"test": names})
    features = decoder_inputs(ws, bundle, names)
    steps, vocab = bundle.step_decoder(), bundle.vocab
    if boost is not None:
        steps.new_word_boost = boost                  # the retrieval decoder's rule for new words (dev-chosen)
    config = DecodeConfig(beam_width=3, max_length=bundle.max_length)
    captioner = SimpleNamespace(spec=SimpleNamespace(key=key), steps=steps, vocab=vocab,
                                decode=lambda f, c: decode(steps, f, vocab, c))
    user = user_store(captions, flickr, Path(cache_dir) / "features", key, user_floor_of(bundle))
    memory = CaptionMemory(training_datastore(bundle).extended(user))
    query = np.asarray(FeatureCache(Path(cache_dir) / "features", key).load(names), np.float32)   # pooled
    out = {"bundle": bundle_path, "new_word_boost": getattr(steps, "new_word_boost", None),
           "user_floor": round(user.user_floor, 4), "memory_photos": user.photo_count}
    for label in ("without memory", "with memory"):
        start = time.perf_counter()
        if label == "without memory":
            hyps = [c[0].words for c in decode(steps, features, vocab, config)]
            uses = None
        else:
            decoded, uses = [], []
            for lo in range(0, len(names), 32):           # the memory searches the pooled features, the decoder
                part = features[lo:lo + 32]               # reads its own (maps for attention decoders)
                hits_q = query[lo:lo + 32]
                d, u = _decode_with(memory, captioner, part, hits_q, config)
                decoded += d
                uses += u
            hyps = [c[0].words for c in decoded]
        seconds = time.perf_counter() - start
        coco, _, _ = coco_scores([refs[n] for n in names], hyps, meteor=False)
        k, r = hyps[:kind_n], hyps[kind_n:]
        row = {"kind_new_word": round(float(np.mean([NEW in h for h in k])), 3),
               "kind_old_word": round(float(np.mean([OLD in h for h in k])), 3),
               "others_new_word": round(float(np.mean([NEW in h for h in r])), 3),
               "test_cider": round(coco["cider"], 4), "test_bleu_4": round(coco["coco_bleu_4"], 4),
               "seconds": round(seconds, 1), "examples": [" ".join(h) for h in k[:4]],
               "kind_captions": [" ".join(h) for h in k]}
        if uses is not None:
            used = [bool(u.hits and any(h.entry.source == "user" for h in u.hits)) for u in uses]
            row["kind_with_user_hit"] = round(float(np.mean(used[:kind_n])), 3)
            row["others_with_user_hit"] = round(float(np.mean(used[kind_n:])), 3)
        out[label] = row
        print(bundle_path, label, json.dumps(row), flush=True)
    return out


def _decode_with(memory, captioner, features, pooled_query, config):
    """CaptionMemory.decode, with the search on pooled features of the bundle's own encoder (what the captioner
    would compute) while the decoder reads ``features``."""
    class Query:                                  # what CaptionMemory reads: features.of(key) for the search
        def __init__(self, decoder_features, pooled):
            self.decoder_features, self.pooled = decoder_features, pooled

        def of(self, key):
            return self.pooled

        def __len__(self):
            return len(self.pooled)

    if hasattr(captioner.steps, "memory"):        # a retrieval decoder reads pooled features itself
        return memory.decode(captioner, features, config)
    wrapped = Query(features, pooled_query)
    original = captioner.decode
    captioner.decode = lambda f, c: original(f.decoder_features if isinstance(f, Query) else f, c)
    try:
        return memory.decode(captioner, wrapped, config)
    finally:
        captioner.decode = original


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", nargs="+", default=[str(ROOT / "artifacts" / "xception-merge")])
    p.add_argument("--captions", type=Path, default=Path("/work/runs/ft500/captions.csv"))
    p.add_argument("--finetune-report", type=Path, default=Path("/work/runs/ft500/report.json"))
    p.add_argument("--cache-dir", type=Path, default=ROOT / ".cache")
    p.add_argument("--flickr", type=Path, default=Path(os.environ.get("FLICKR8K_DIR") or ROOT.parent / "shared" /
                                                            "flickr8k"))
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--new-word-boost", type=float, default=None,
                   help="a retrieval bundle's new-word boost (default: the one its manifest records)")
    p.add_argument("--split", choices=("test", "dev"), default="test",
                   help="the held-out photos: the test split (the record) or dev (to choose a bundle on)")
    args = p.parse_args()
    ds, refs, kind, rest = test_photos(args.flickr, split=args.split)
    names = kind + rest
    report = {"split": args.split, "kind_photos": len(kind), "other_photos": len(rest), "decoding": "beam 3",
              "load_average_start": os.getloadavg(), "runs": []}
    for bundle in args.bundle:
        report["runs"].append(run(bundle, ds, names, refs, len(kind), args.captions, args.flickr, args.cache_dir,
                                  args.new_word_boost))
    if args.finetune_report.is_file():
        ft = json.loads(args.finetune_report.read_text())["held_out"]["bundles"]
        report["fine_tuned (bench/finetune_new_word.py)"] = {
            k: {f: v.get(f) for f in ("kind_new_word", "kind_old_word", "others_new_word", "test_cider",
                                      "test_bleu_4")} for k, v in ft.items()}
    report["load_average_end"] = os.getloadavg()
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
