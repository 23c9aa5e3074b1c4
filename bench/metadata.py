#!/usr/bin/env python
"""What ``--write-metadata`` costs: ms per photo in each mode on copies of Flickr8k photos, against captioning.

Each mode writes a realistic caption into N fresh copies (in-place, copy, sidecar, and in-place again to time a
rerun that keeps every description), through :class:`captioning.publish.metadata.MetadataWriter` exactly as the CLI
calls it (write a temporary copy, read it back, compare image data, replace), in wall time and in CPU time (this
process + ExifTool's). With ``--caption-cpu-ms`` (CPU per photo of captioning alone: user + sys of
``python -m captioning caption`` on 50 photos minus a 5-photo run, over 45) it prints the share writing adds.

    python bench/metadata.py [--images 1000] [--caption-cpu-ms 500] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CAPTION = "a black and white dog is running through the grass"


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux /proc): ExifTool's share of the work."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--data-dir", default=os.environ.get("FLICKR8K_DIR", str(ROOT.parent / "shared" / "flickr8k")))
    parser.add_argument("--caption-cpu-ms", type=float, default=None,
                        help="CPU ms per photo of captioning alone (user + sys of a caption run, start-up excluded)")
    parser.add_argument("--modes", nargs="+", default=None, help="only these rows, e.g. in-place")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    from captioning.publish.metadata import MetadataWriter

    images = sorted((Path(args.data_dir) / "Images").glob("*.jpg"))[: args.images]
    rows = {}
    with tempfile.TemporaryDirectory(prefix="bench-metadata-") as tmp:
        src = Path(tmp) / "photos"
        src.mkdir()
        for image in images:
            (src / image.name).write_bytes(image.read_bytes())          # writable copies (the dataset is read-only)
        paths = [str(src / image.name) for image in images]
        megabytes = sum(os.path.getsize(p) for p in paths) / 2**20
        for label, mode, extra in [("sidecar", "sidecar", {}), ("copy", "copy", {"out_dir": Path(tmp) / "out"}),
                                   ("in-place", "in-place", {}), ("in-place rerun (kept)", "in-place", {})]:
            if args.modes and label not in args.modes:
                continue
            writer = MetadataWriter(mode, **extra)
            writer.remember(paths)
            writer.tool.run("-ver")                                      # start ExifTool outside the timing
            child = writer.tool._proc.pid
            start, cpu, child_cpu = time.perf_counter(), time.process_time(), cpu_seconds(child)
            for p in paths:
                writer.write(p, CAPTION)
            seconds = time.perf_counter() - start
            cpu = time.process_time() - cpu + cpu_seconds(child) - child_cpu
            writer.close()
            rows[label] = {"ms_per_photo": 1000 * seconds / len(paths), "cpu_ms_per_photo": 1000 * cpu / len(paths),
                           "counts": dict(writer.counts)}
        shutil.rmtree(Path(tmp) / "out", ignore_errors=True)
    load = os.getloadavg()
    print(f"{len(paths)} Flickr8k JPEGs ({megabytes:.0f} MB), load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"{'mode':<24}{'wall ms / photo':>16}{'CPU ms / photo':>16}{'CPU share of run':>18}   outcome")
    for label, row in rows.items():
        share = ""
        if args.caption_cpu_ms:             # CPU, not wall time: on a shared machine wall time measures the others
            row["share_of_run"] = row["cpu_ms_per_photo"] / (args.caption_cpu_ms + row["cpu_ms_per_photo"])
            share = f"{100 * row['share_of_run']:.1f}%"
        print(f"{label:<24}{row['ms_per_photo']:>16.1f}{row['cpu_ms_per_photo']:>16.1f}{share:>18}   {row['counts']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"images": len(paths), "load_average": load, "modes": rows,
                                               "caption_cpu_ms": args.caption_cpu_ms}, indent=1))


if __name__ == "__main__":
    main()
