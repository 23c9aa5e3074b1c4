#!/usr/bin/env python
"""Batch captioning and API latency, each against its own limit, measured in the same run.

1. Captioning the test images from their files (``Captioner.caption_many``: safe loader, encoder in batches,
   decoder overlapped with the next batch's encoder) against the encoder's raw batched throughput on the
   same images preloaded as tensors (no file reading, no decoding: the limit). The raw figure is measured
   before and after the pipeline and averaged, so CPU contention from other processes affects both alike.
2. Warm latency of one photo through the REST API (a real ``python -m captioning serve`` process on loopback,
   multipart upload, JSON back) against the in-process ``Captioner.caption`` on the same photos, the two
   interleaved call by call.

    python bench/batch.py [--bundle artifacts/default] [--images 1000] [--batch-size 16] [--json out.json]
    python bench/batch.py --quick          # 96 images, 10 latency rounds
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def raw_encoder_rate(captioner, arrays: np.ndarray, batch_size: int) -> float:
    """Images per second of the compiled encoder alone on preloaded uint8 (N, 224, 224, 3) batches."""
    start = time.perf_counter()
    for i in range(0, len(arrays), batch_size):
        captioner.encode(arrays[i:i + batch_size])
    return len(arrays) / (time.perf_counter() - start)


def start_api(bundle: str, weights: str | None) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # one client measuring latency back to back: the per-client rate limit (60 a minute) is not what is measured
    cmd = [sys.executable, "-m", "captioning", "serve", "--port", str(port), "--bundle", bundle, "--rate-limit", "0"]
    if weights:
        cmd += ["--weights", weights]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            urllib.request.urlopen(f"{url}/v1/health", timeout=2)
            return proc, url
        except OSError:
            if proc.poll() is not None:
                raise SystemExit(f"error: the API exited with {proc.returncode}") from None
            time.sleep(0.5)
    proc.terminate()
    raise SystemExit("error: the API did not start within 5 minutes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default="artifacts/default")
    parser.add_argument("--weights", default=None)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--beam-width", type=int, default=1, help="1 = greedy (the CLI's default is beam 5)")
    parser.add_argument("--rounds", type=int, default=30, help="latency samples per side")
    parser.add_argument("--data-dir", default=os.environ.get("FLICKR8K_DIR", str(ROOT.parent / "shared" / "flickr8k")))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--skip-api", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.quick:
        args.images, args.rounds = 96, 10

    import builtins
    import functools

    import requests

    print = functools.partial(builtins.print, flush=True)    # noqa: A001  (a long run shows each table at once)

    from captioning.service.captioner import Captioner
    from captioning.vision.images import load_image, to_canonical

    data = Path(args.data_dir)
    names = (data / "Flickr_8k.testImages.txt").read_text().split()[: args.images]
    paths = [str(data / "Images" / n) for n in names]
    captioner = Captioner.from_bundle(args.bundle, args.weights)
    captioner.warm_up()
    config = captioner.config(beam_width=args.beam_width)
    arrays = np.stack([to_canonical(load_image(p)) for p in paths])              # (N, 224, 224, 3) uint8
    for size in {args.batch_size, len(arrays) % args.batch_size or args.batch_size}:
        captioner.encode(arrays[:size])                                                   # trace every batch shape once
    list(captioner.caption_many(paths[: args.batch_size * 2], config, args.batch_size))   # and the pipeline's

    out = {"bundle": args.bundle, "encoder": " + ".join(captioner.encoders), "images": len(paths),
           "batch_size": args.batch_size,
           "decoding": config.describe(), "cpu_count": os.cpu_count(), "load_average_1min": os.getloadavg()[0]}
    raw_before = raw_encoder_rate(captioner, arrays, args.batch_size)
    start = time.perf_counter()
    results = list(captioner.caption_many(paths, config, args.batch_size))
    pipeline = len(paths) / (time.perf_counter() - start)
    raw_after = raw_encoder_rate(captioner, arrays, args.batch_size)
    assert all(r.ok for r in results)
    raw = (raw_before + raw_after) / 2
    out["throughput"] = {"raw_encoder_img_s": round(raw, 2), "raw_before": round(raw_before, 2),
                         "raw_after": round(raw_after, 2), "caption_many_img_s": round(pipeline, 2),
                         "fraction_of_raw": round(pipeline / raw, 3)}
    print(f"{args.bundle} ({' + '.join(captioner.encoders)}), {len(paths)} test images, batch {args.batch_size}, "
          f"{config.describe()}; load average {out['load_average_1min']:.1f} on {os.cpu_count()} CPUs")
    print(f"{'throughput':<52} {'img/s':>8} {'% of raw':>9}")
    print(f"{'raw batched encoder, preloaded tensors (limit)':<52} {raw:8.1f} {100:8.0f}%"
          f"   (before {raw_before:.1f}, after {raw_after:.1f})")
    print(f"{'caption_many from files (load+encode+decode)':<52} {pipeline:8.1f} {100 * pipeline / raw:8.0f}%")

    if not args.skip_api:
        proc, url = start_api(args.bundle, args.weights)
        try:
            photos = [Path(p).read_bytes() for p in paths[: args.rounds + 3]]
            fields = {"beam_width": str(args.beam_width)}

            def api(photo):
                r = requests.post(f"{url}/v1/captions", files=[("images", ("photo.jpg", photo, "image/jpeg"))],
                                  data=fields, timeout=120)
                r.raise_for_status()
                return r.json()["results"][0]["captions"][0]["text"]

            for photo in photos[:3]:                                          # warm the server
                api(photo)
            api_times, local_times, same = [], [], 0
            for photo in photos[3:]:                                          # interleaved: same conditions
                t = time.perf_counter()
                remote = api(photo)
                api_times.append(time.perf_counter() - t)
                t = time.perf_counter()
                local = captioner.caption(photo, config)[0].text
                local_times.append(time.perf_counter() - t)
                same += remote == local
        finally:
            proc.terminate()
            proc.wait(30)
        api_med, local_med = statistics.median(api_times), statistics.median(local_times)
        out["latency"] = {"api_median_s": round(api_med, 4), "in_process_median_s": round(local_med, 4),
                          "ratio": round(api_med / local_med, 3), "rounds": len(api_times),
                          "same_caption": same}
        print(f"\n{'warm latency, one photo':<52} {'median':>8} {'ratio':>9}")
        print(f"{'in-process Captioner.caption':<52} {local_med:8.3f} {1:9.2f}")
        print(f"{'REST API POST /v1/captions (loopback, multipart)':<52} {api_med:8.3f} {api_med / local_med:9.2f}"
              f"   ({same}/{len(api_times)} identical captions)")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
