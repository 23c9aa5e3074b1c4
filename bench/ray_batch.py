#!/usr/bin/env python
"""`caption --engine ray` against this process's batch path, on the same photos, measured in one run.

Each configuration runs in a fresh process of its own (so that memory figures are its own): ``local`` (the
single-process path, :func:`captioning.service.folders.caption_files` as the CLI runs it), then ``ray:N`` for each
``--workers`` N (a local Ray instance, N captioning actors). Each reports its wall time from the driver's model
loaded to the last photo, the time to the first photo (Ray: instance, actors and the first batch), the steady
rate (photos per second over the second half of the run), the driver's peak RSS, the workers' peak RSS (the
actors, the read tasks, the raylet that holds the object store) and the object store's size. The result files
of all configurations must hold the same captions (and log p), or the script fails. ``--listing N`` adds a run
that hands Ray Data a listing of N paths and streams it back, to show the driver's memory under a long listing.

    python bench/ray_batch.py [--bundle artifacts/xception-merge] [--photos 500] [--workers 1 2] \\
        [--batch-size 16] [--listing 100000] [--json out.json]
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def rss_mb(pid: int | str = "self", field: str = "VmRSS") -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


class WorkerMemory(threading.Thread):
    """Samples the RSS of this process's Ray descendants twice a second: peak per kind of process."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak: dict[str, float] = {}
        self.stopped = threading.Event()

    def run(self):
        while not self.stopped.wait(0.5):
            for pid in descendants(os.getpid()):
                try:
                    title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
                except OSError:
                    continue
                kind = ("caption actor" if "CaptionWorker" in title else "raylet (object store)"
                        if title.endswith("raylet") else "read task" if "read_photos" in title or "ReadPhotos" in
                        title else None)
                if kind:
                    self.peak[kind] = max(self.peak.get(kind, 0.0), rss_mb(pid))


def child(args) -> dict:
    from captioning import import_tensorflow_quietly

    import_tensorflow_quietly()
    from captioning.artifacts.manifest import read_manifest
    from captioning.service.captioner import Captioner
    from captioning.service.folders import caption_files
    from captioning.service.ray_engine import RayEngine, object_store_bytes
    from captioning.service.records import run_record

    captioner = Captioner.from_bundle(args.bundle)
    config = captioner.default_config                           # the CLI's default: beam search, 5 beams
    images = Path(args.data_dir) / "Images"
    paths = [str(images / n) for n in sorted(os.listdir(images))[: args.photos]]
    out = Path(args.out)
    engine = {} if args.child == "local" else RayEngine(None, int(args.child.split(":")[1]) if ":" in args.child
                                                       else 1).caption_files_options(captioner, config,
                                                                                     args.batch_size)
    memory = WorkerMemory()
    memory.start()
    times: list[float] = []
    before = rss_mb()
    start = time.perf_counter()
    summary = caption_files(captioner, paths, config, out, args.batch_size,
                            on_result=lambda r: times.append(time.perf_counter()),
                            run=run_record(args.bundle, read_manifest(args.bundle), config), **engine)
    wall = time.perf_counter() - start
    memory.stopped.set()
    half = len(times) // 2
    return {"config": args.child, "photos": len(paths), "captioned": summary.captioned, "failed": summary.failed,
            "wall_s": round(wall, 1), "first_s": round(times[0] - start, 1),
            "steady_rate": round((len(times) - half) / (times[-1] - times[half]), 2) if len(times) > 3 else None,
            "driver_rss_before_mb": round(before), "driver_peak_rss_mb": round(rss_mb("self", "VmHWM")),
            "worker_peak_rss_mb": {k: round(v) for k, v in memory.peak.items()},
            "object_store_mb": None if args.child == "local" else round(object_store_bytes() / 2**20)}


def listing_child(args) -> dict:
    """The driver's memory for a listing of ``args.listing`` paths handed to Ray Data and streamed back (what
    the read tasks consume), on a local instance: the path strings, the listing blocks, the iteration."""
    from captioning.service.ray_engine import BLOCKS_PER_BATCH, RayEngine, listing, object_store_bytes

    RayEngine()                                       # this run's token and niceness, before Ray is imported
    import ray

    ray.init(address="local", num_cpus=2, object_store_memory=object_store_bytes(), include_dashboard=False,
             _node_ip_address="127.0.0.1", log_to_driver=False, logging_level="warning")
    try:
        small = listing(ray, [f"/photos/{i}.jpg" for i in range(1000)], args.batch_size * BLOCKS_PER_BATCH)
        sum(len(b["index"]) for b in small.iter_batches(batch_size=None, batch_format="numpy"))
        del small                                         # Ray Data, pyarrow and pandas imported: the baseline
        figures = {"config": "listing", "paths": args.listing, "driver_rss_after_1000_paths_mb": round(rss_mb())}
        paths = [f"/photos/library/folder{i // 1000:04d}/IMG_{i:08d}.jpg" for i in range(args.listing)]
        figures["driver_rss_after_paths_mb"] = round(rss_mb())
        started = time.perf_counter()
        dataset = listing(ray, paths, args.batch_size * BLOCKS_PER_BATCH)
        figures["driver_rss_after_listing_mb"] = round(rss_mb())
        rows = sum(len(b["index"]) for b in dataset.iter_batches(batch_size=None, batch_format="numpy"))
        figures.update(rows=rows, seconds=round(time.perf_counter() - started, 1),
                       driver_rss_after_stream_mb=round(rss_mb()), driver_peak_rss_mb=round(rss_mb("self", "VmHWM")))
        return figures
    finally:
        ray.shutdown()


def captions_of(path: Path) -> list[tuple]:
    with open(path, newline="", encoding="utf-8") as fh:
        return [(r["path"], r["caption"], r["log_prob"], r["error"]) for r in csv.DictReader(fh)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default=str(ROOT / "artifacts" / "xception-merge"))
    parser.add_argument("--photos", type=int, default=500)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--listing", type=int, default=0, help="also hand Ray Data a listing of this many paths")
    parser.add_argument("--data-dir", default=os.environ.get("FLICKR8K_DIR", str(ROOT.parent / "shared" / "flickr8k")))
    parser.add_argument("--json", default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(listing_child(args) if args.child == "listing" else child(args)), flush=True)
        return

    load = [Path("/proc/loadavg").read_text().split()[0]]
    rows, files = [], {}
    with tempfile.TemporaryDirectory(prefix="ray-bench-") as tmp:
        configs = ["local", *(f"ray:{n}" for n in args.workers)] + (["listing"] if args.listing else [])
        for config in configs:
            out = Path(tmp) / f"{config.replace(':', '-')}.csv"
            cmd = [sys.executable, __file__, "--child", config, "--out", str(out), "--bundle", args.bundle,
                   "--photos", str(args.photos), "--batch-size", str(args.batch_size), "--listing",
                   str(args.listing), "--data-dir", args.data_dir]
            done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
            if done.returncode or not lines:
                raise SystemExit(f"error: {config} failed:\n{done.stderr[-3000:]}")
            rows.append(json.loads(lines[-1][len("RESULT "):]))
            print(json.dumps(rows[-1]), flush=True)
            if config != "listing":
                files[config] = captions_of(out)
    load.append(Path("/proc/loadavg").read_text().split()[0])
    same = all(f == files["local"] for f in files.values())
    local = next(r for r in rows if r["config"] == "local")
    print(f"\n{args.photos} Flickr8k photos, {Path(args.bundle).name}, beam 5, batch {args.batch_size}; "
          f"load average {load[0]} -> {load[1]} (2 cores); captions identical across engines: {same}")
    print(f"{'config':<9} {'wall s':>7} {'first s':>8} {'steady/s':>9} {'x local':>8} {'driver MB':>10}  workers MB")
    for r in (r for r in rows if r["config"] != "listing"):
        ratio = r["steady_rate"] / local["steady_rate"] if r["steady_rate"] and local["steady_rate"] else None
        print(f"{r['config']:<9} {r['wall_s']:>7} {r['first_s']:>8} {r['steady_rate'] or '-':>9} "
              f"{(f'{ratio:.2f}' if ratio else '-'):>8} {r['driver_peak_rss_mb']:>10}  {r['worker_peak_rss_mb']}")
    per_worker = max((r["steady_rate"] / int(r["config"].split(":")[1]) for r in rows
                      if r["config"].startswith("ray:") and r["steady_rate"]), default=None)
    if per_worker:
        for machines in (1, 10, 100):
            days = 10_000_000 / (per_worker * machines) / 86400
            print(f"paper estimate, 10 million photos at {per_worker:.2f} photos/s per worker, one worker per "
                  f"machine like this one, {machines} machines: {days:.1f} days")
    for r in (r for r in rows if r["config"] == "listing"):
        print(f"listing of {r['paths']:,} paths through Ray Data and back ({r['seconds']} s): driver RSS "
              f"{r['driver_rss_after_1000_paths_mb']} MB after a listing of 1,000, "
              f"{r['driver_rss_after_paths_mb']} with the paths, {r['driver_rss_after_listing_mb']} with the "
              f"listing blocks, {r['driver_rss_after_stream_mb']} after streaming them back (peak "
              f"{r['driver_peak_rss_mb']})")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "load": load, "identical": same}, indent=1))
    if not same:
        raise SystemExit("error: the engines' captions differ")


if __name__ == "__main__":
    main()
