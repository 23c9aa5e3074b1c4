#!/usr/bin/env python
"""Peak memory of ``train.py train`` on all of Flickr8k, for the merge and the attention decoder.

    python bench/memory.py [--encoder xception] [--epochs 1] [--decoders merge,attention] [--json out.json]
    python bench/memory.py --quick     # MobileNetV2-0.35 (../shared/weights) on 200 images, both decoders

Each decoder trains in its own ``train.py train`` process (the real command, loading all the data it would),
and that process's peak resident set size comes from the kernel (``os.wait4``'s rusage, the number
``/usr/bin/time -v`` reports). One epoch is enough to reach the training peak; a whole ``train.py`` run (with
evaluation and the sweep) records its own peak in the bundle's manifest (``training.peak_rss_mb``). Needs the
encoder's features cached (``python train.py features --encoder xception --spatial``), except with --quick,
which extracts what it needs into a temporary folder.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_MOBILENET = ROOT.parent / "shared" / "weights" / "mobilenet_v2_0.35_224_imagenet_notop.weights.h5"


def run(cmd: list[str]) -> tuple[float, float]:
    """Run ``cmd``; return (wall seconds, peak RSS in MB of that child), from ``os.wait4``'s rusage."""
    with tempfile.TemporaryFile("w+") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            log.seek(0)
            sys.exit(f"{' '.join(cmd)} failed:\n{log.read()[-3000:]}")
    return seconds, usage.ru_maxrss / 1024                                   # KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", default="xception")
    parser.add_argument("--alpha", type=float, default=None)
    parser.add_argument("--weights", default=None)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--decoders", default="merge,attention")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--cache-dir", default=".cache")
    parser.add_argument("--data-dir", default=os.environ.get("FLICKR8K_DIR", "../shared/flickr8k"))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    tmp = tempfile.TemporaryDirectory()
    cache_dir = Path(args.cache_dir).resolve()
    common = ["--data-dir", str(Path(args.data_dir).resolve()), "--encoder", args.encoder, "--quiet"]
    if args.quick:
        args.encoder, args.alpha, args.limit = "mobilenetv2", 0.35, args.limit or 200
        args.weights = args.weights or str(SHARED_MOBILENET)
        cache_dir = Path(tmp.name) / "cache"
        common = ["--data-dir", str(Path(args.data_dir).resolve()), "--encoder", "mobilenetv2", "--quiet"]
    if args.alpha:
        common += ["--alpha", str(args.alpha)]
    if args.weights:
        common += ["--weights", str(args.weights)]
    if args.limit:
        common += ["--limit", str(args.limit)]
    common += ["--cache-dir", str(cache_dir)]
    py = [sys.executable, "-u", str(ROOT / "train.py")]
    if args.quick:
        run(py + ["features", "--spatial", *common])

    rows = []
    for decoder in args.decoders.split(","):
        name = f"bench-memory-{decoder}-{os.getpid()}"
        out = Path(tmp.name) / name
        try:
            seconds, peak = run(py + ["train", "--decoder", decoder, "--epochs", str(args.epochs), "--out", str(out),
                                      *common])
        finally:
            shutil.rmtree(cache_dir / "runs" / name, ignore_errors=True)
        rows.append({"decoder": decoder, "epochs": args.epochs, "seconds": round(seconds, 1),
                     "peak_rss_mb": round(peak)})

    print(f"train.py train, {args.encoder}{' (quick: ' + str(args.limit) + ' images)' if args.quick else ''}")
    print(f"{'decoder':<12} {'epochs':>6} {'wall s':>8} {'peak RSS MB':>12}")
    for r in rows:
        print(f"{r['decoder']:<12} {r['epochs']:>6} {r['seconds']:>8.1f} {r['peak_rss_mb']:>12}")
    if args.json:
        Path(args.json).write_text(json.dumps({"encoder": args.encoder, "quick": args.quick, "runs": rows}, indent=2))


if __name__ == "__main__":
    main()
