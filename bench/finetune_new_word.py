"""Does fine-tuning teach a new word, and what does replay change? (issue 36's "What to show")

Builds a user dataset from Flickr8k's training split: the photos of one kind of scene (at least two captions say
"beach") re-captioned with a word the shipped vocabulary lacks ("beach" -> "strand"), plus photos of other scenes
with their captions unchanged (500 photos in all by default). Fine-tunes ``--base`` on it with ``--replay 0`` and
with the default replay, timing each run (features included on the first), then decodes held-out Flickr8k test
photos (beam 3): how often photos of that kind get the new word, how often other photos do, and the test scores
(CIDEr-D, BLEU-4 against the original references) of base and fine-tuned bundles.

    nice -n 10 python bench/finetune_new_word.py [--base artifacts/xception-merge] [--photos 500] [--work DIR]
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import resource
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OLD, NEW = "beach", "strand"


def build_dataset(flickr: Path, out: Path, photos: int, seed: int = 0) -> tuple[Path, list[str]]:
    from captioning.data.text import tokenize

    caps = defaultdict(list)
    with open(flickr / "captions.txt", encoding="utf-8-sig", newline="") as fh:
        for row in csv.DictReader(fh):
            caps[row["image"]].append(row["caption"])
    train = sorted(set((flickr / "Flickr_8k.trainImages.txt").read_text().split()))
    kind = [n for n in train if sum(OLD in tokenize(c) for c in caps[n]) >= 2]
    others = [n for n in train if not any(OLD in tokenize(c) for c in caps[n])]
    rng = np.random.default_rng(seed)
    kind = sorted(rng.choice(kind, min(len(kind), photos // 2), replace=False))
    others = sorted(rng.choice(others, photos - len(kind), replace=False))
    out.mkdir(parents=True, exist_ok=True)
    path = out / "captions.csv"
    with open(path, "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "caption"])
        for n in kind:
            for c in caps[n]:
                w.writerow([n, re.sub(rf"\b{OLD}\b", NEW, c, flags=re.IGNORECASE)])
        for n in others:
            for c in caps[n]:
                w.writerow([n, c])
    print(f"dataset: {len(kind)} photos of the kind ('{OLD}' -> '{NEW}'), {len(others)} others; {path}")
    return path, kind


def run_finetune(base: str, captions: Path, flickr: Path, out: Path, cache: Path, replay: float) -> dict:
    cmd = [sys.executable, str(ROOT / "train.py"), "finetune", "--from", base, "--captions", str(captions),
           "--images", str(flickr / "Images"), "--out", str(out), "--cache-dir", str(cache), "--data-dir", str(flickr),
           "--replay", str(replay), "--quiet"]
    start, cpu = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_seconds = (used.ru_utime - cpu.ru_utime) + (used.ru_stime - cpu.ru_stime)
    if done.returncode:
        raise SystemExit(f"finetune failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    peak = re.search(r"peak memory (\d+) MB", done.stdout)
    print(done.stdout[-1500:])
    return {"replay": replay, "seconds": round(seconds, 1), "cpu_seconds": round(cpu_seconds, 1),
            "peak_rss_mb": int(peak[1]) if peak else None,
            "load_average": os.getloadavg()}


def held_out(bundles: dict[str, Path], flickr: Path, cache: Path, others: int = 150) -> dict:
    from captioning.artifacts.bundle import load_bundle
    from captioning.data.flickr8k import Flickr8k
    from captioning.decoding.config import DecodeConfig
    from captioning.decoding.search import decode
    from captioning.evaluation.metrics import coco_scores
    from captioning.training.inputs import bundle_features, decoder_inputs
    from captioning.training.settings import FeatureSettings, Workspace

    ds = Flickr8k.load(flickr, check_images=False)
    refs_all = {n: ds.references([n])[0] for n in ds.splits["test"]}
    kind = [n for n, rs in refs_all.items() if sum(OLD in r for r in rs) >= 2]
    rest = [n for n, rs in refs_all.items() if not any(OLD in r for r in rs)]
    rest = sorted(np.random.default_rng(1).choice(rest, others, replace=False))
    names = kind + rest
    ws = Workspace(cache_dir=str(cache), quiet=True)
    results = {}
    for label, path in bundles.items():
        bundle = load_bundle(path, load_results=False)
        bundle_features(ws, FeatureSettings(), bundle, ds, {"test": names})
        hyps = [c[0].words for c in decode(bundle.step_decoder(), decoder_inputs(ws, bundle, names), bundle.vocab,
                                           DecodeConfig(beam_width=3, max_length=bundle.max_length))]
        coco, _, _ = coco_scores([refs_all[n] for n in names], hyps, meteor=False)
        k, r = hyps[:len(kind)], hyps[len(kind):]
        # forgetting, apart from the word the kind's photos were taught to say: scores on the other photos only
        rest_coco, _, _ = coco_scores([refs_all[n] for n in rest], r, meteor=False)
        results[label] = {"kind_new_word": round(float(np.mean([NEW in h for h in k])), 3),
                          "kind_old_word": round(float(np.mean([OLD in h for h in k])), 3),
                          "others_new_word": round(float(np.mean([NEW in h for h in r])), 3),
                          "test_cider": round(coco["cider"], 4), "test_bleu_4": round(coco["coco_bleu_4"], 4),
                          "others_cider": round(rest_coco["cider"], 4),
                          "others_bleu_4": round(rest_coco["coco_bleu_4"], 4),
                          "examples": [" ".join(h) for h in k[:3]]}
        print(label, json.dumps(results[label]))
    return {"kind_photos": len(kind), "other_photos": len(rest), "decoding": "beam 3", "bundles": results}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", default=str(ROOT / "artifacts" / "xception-merge"))
    p.add_argument("--flickr", type=Path, default=Path(os.environ.get("FLICKR8K_DIR") or ROOT.parent / "shared" /
                                                            "flickr8k"))
    p.add_argument("--photos", type=int, default=500)
    p.add_argument("--work", type=Path, default=ROOT / ".cache" / "finetune-experiment")
    p.add_argument("--replays", default="0.5,0")
    p.add_argument("--evaluate-only", action="store_true", help="score the bundles an earlier run left in --work")
    args = p.parse_args()
    cache = args.work / "cache"
    runs = []
    bundles = {"base": Path(args.base)}
    if not args.evaluate_only:
        captions, _ = build_dataset(args.flickr, args.work, args.photos)
    for replay in [float(r) for r in args.replays.split(",")]:
        out = args.work / f"bundle-replay{replay:g}"
        if not args.evaluate_only:
            runs.append(run_finetune(args.base, captions, args.flickr, out, cache, replay))
        bundles[f"replay {replay:g}"] = out
    if args.evaluate_only and (args.work / "report.json").is_file():
        runs = json.loads((args.work / "report.json").read_text())["runs"]
    report = {"runs": runs, "held_out": held_out(bundles, args.flickr, cache)}
    for label, path in bundles.items():
        if label != "base":
            ft = json.loads((path / "manifest.json").read_text())["finetune"]
            report["held_out"]["bundles"][label]["user_test"] = ft["metrics"]
    (args.work / "report.json").write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k != "held_out"}, indent=1))


if __name__ == "__main__":
    main()
