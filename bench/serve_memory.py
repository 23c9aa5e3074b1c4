"""The API server under load, through a real ``python -m captioning serve`` process on a loopback port.

    .venv/bin/python bench/serve_memory.py [--bundle artifacts/xception-merge] [--requests 6] [--photos 16]
                                           [--abandon 30] [--skip-memory]

Memory (issue 34.4): ``--requests`` concurrent requests of ``--photos`` large photos each (6000x4000 noise JPEGs at
quality 95, ~17 MB, made once into ``--photo-dir``), streamed from disk; the server's RSS is sampled every 50 ms
from /proc/PID/status and its true peak read from VmHWM (reset after the idle reading). Prints idle / peak / after
(5 s after the last answer) and each request's status. Target: peak within 1.2 GB of idle, after within 0.4 GB.

Abandoned clients (issue 34.5): ``--abandon N`` requests of one Flickr8k photo with a 1 s client timeout, then a
fresh request: its latency should be that of an idle server, not of the N abandoned ones.
"""
from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHUNK = 1 << 20
LOG = ROOT / "bench-output" / "serve.log"                 # the server's output


def make_photos(folder: Path, count: int, size=(6000, 4000), quality: int = 95) -> list[Path]:
    """``count`` distinct large JPEGs (a gradient under Gaussian noise: ~17 MB each at 6000x4000, quality 95)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"noise-{size[0]}x{size[1]}-q{quality}-{i}.jpg"
        if not path.exists():
            rng = np.random.default_rng(i)
            w, h = size
            base = np.linspace(0, 200, w, dtype=np.float32)[None, :, None]            # (1, W, 1)
            pixels = np.clip(base + rng.normal(0, 24, (h, w, 3)).astype(np.float32), 0, 255).astype(np.uint8)
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, "JPEG", quality=quality)
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(buffer.getvalue())
            os.replace(tmp, path)
        paths.append(path)
    return paths


def post_files(base: str, paths: list[Path], fields: dict | None = None, timeout: float = 600,
               headers: dict | None = None) -> tuple[int, float]:
    """POST ``paths`` as multipart ``images``, streamed from disk with an exact Content-Length: (status, seconds)."""
    boundary = uuid.uuid4().hex
    parts: list[bytes | Path] = []
    for key, value in (fields or {}).items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode())
    for path in paths:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="{path.name}"\r\n'
                     f"Content-Type: image/jpeg\r\n\r\n".encode())
        parts.append(path)
        parts.append(b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    length = sum(p.stat().st_size if isinstance(p, Path) else len(p) for p in parts)
    host, port = base.removeprefix("http://").split(":")
    start = time.perf_counter()
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.putrequest("POST", "/v1/captions")
        conn.putheader("Content-Type", f"multipart/form-data; boundary={boundary}")
        conn.putheader("Content-Length", str(length))
        for key, value in (headers or {}).items():
            conn.putheader(key, value)
        conn.endheaders()
        for part in parts:
            if isinstance(part, Path):
                with open(part, "rb") as f:
                    while chunk := f.read(CHUNK):
                        conn.send(chunk)
            else:
                conn.send(part)
        response = conn.getresponse()
        response.read()
        return response.status, time.perf_counter() - start
    finally:
        conn.close()


def rss(pid: int, field: str = "VmRSS") -> int:
    """A /proc/PID/status memory field in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} for process {pid}")


class Sampler(threading.Thread):
    """The largest RSS seen every ``every`` seconds while running."""

    def __init__(self, pid: int, every: float = 0.05):
        super().__init__(daemon=True)
        self.pid, self.every, self.peak, self.stop = pid, every, 0, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, rss(self.pid))
            time.sleep(self.every)


def start_server(bundle: str, port: int, extra: list[str]) -> subprocess.Popen:
    (ROOT / "bench-output").mkdir(exist_ok=True)
    log = open(LOG, "w")
    proc = subprocess.Popen([sys.executable, "-m", "captioning", "serve", "--port", str(port), "--bundle", bundle,
                             *extra], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"the server exited with {proc.returncode}; see {LOG}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/health", timeout=2):
                return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    sys.exit(f"the server did not answer within 300 s; see {LOG}")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def memory(base: str, pid: int, photos: list[Path], requests: int, per_request: int) -> dict:
    time.sleep(3)
    idle = rss(pid)
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")        # reset VmHWM: the peak from here on
        hwm = True
    except OSError:
        hwm = False
    sampler = Sampler(pid)
    sampler.start()
    batches = [[photos[(r + i) % len(photos)] for i in range(per_request)] for r in range(requests)]
    start = time.perf_counter()
    with ThreadPoolExecutor(requests) as pool:
        outcomes = list(pool.map(lambda b: post_files(base, b, {"beam_width": 1}), batches))
    wall = time.perf_counter() - start
    time.sleep(5)
    after = rss(pid)
    sampler.stop.set()
    sampler.join()
    peak = max(sampler.peak, rss(pid, "VmHWM") if hwm else 0)
    gb = 2**30
    statuses = ", ".join(f"{s} in {t:.1f} s" for s, t in outcomes)
    print(f"memory: {requests} concurrent requests x {per_request} photos of {photos[0].stat().st_size / 2**20:.1f} MB"
          f" ({wall:.1f} s): {statuses}")
    print(f"  idle {idle / gb:.2f} GB | peak {peak / gb:.2f} GB (+{(peak - idle) / gb:.2f}) | "
          f"after {after / gb:.2f} GB (+{(after - idle) / gb:.2f})   [target: +1.2 peak, +0.4 after]")
    return {"idle_gb": round(idle / gb, 3), "peak_gb": round(peak / gb, 3), "after_gb": round(after / gb, 3),
            "statuses": [s for s, _ in outcomes], "seconds": round(wall, 1)}


def abandon(base: str, count: int, flickr: Path) -> dict:
    photo = sorted((flickr / "Images").glob("*.jpg"))[0]
    status, idle = post_files(base, [photo])
    print(f"abandoned clients: one request on the idle server: {status} in {idle:.2f} s")

    def leave(_):
        try:
            post_files(base, [photo], timeout=1)
        except OSError:                                      # the client gives up after 1 s
            pass

    with ThreadPoolExecutor(count) as pool:
        list(pool.map(leave, range(count)))
    status, fresh = post_files(base, [photo])
    print(f"  after {count} requests abandoned at 1 s: a fresh request {status} in {fresh:.2f} s")
    return {"idle_s": round(idle, 3), "fresh_after_abandoned_s": round(fresh, 3), "fresh_status": status}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default=str(ROOT / "artifacts" / "xception-merge"))
    parser.add_argument("--requests", type=int, default=6)
    parser.add_argument("--photos", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=1, help="memory rounds on the same server")
    parser.add_argument("--distinct", type=int, default=4, help="distinct large photos made (then reused)")
    parser.add_argument("--photo-dir", default="/tmp/captioning-bench-photos")
    parser.add_argument("--abandon", type=int, default=0, metavar="N")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "flickr8k"))
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the numbers as JSON")
    parser.add_argument("--server-arg", action="append", default=[], help="passed to serve (repeat)")
    args = parser.parse_args()

    photos = [] if args.skip_memory else make_photos(Path(args.photo_dir), args.distinct)
    port = free_port()
    proc = start_server(args.bundle, port, args.server_arg)
    base = f"http://127.0.0.1:{port}"
    try:
        out = {"bundle": args.bundle, "load_before": os.getloadavg()[:2]}
        print(f"bundle {args.bundle}; load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}")
        if not args.skip_memory:
            out["memory"] = [memory(base, proc.pid, photos, args.requests, args.photos)   # more rounds: no ratchet?
                             for _ in range(args.rounds)]
        if args.abandon:
            out["abandoned"] = abandon(base, args.abandon, Path(args.data_dir))
        out["load_after"] = os.getloadavg()[:2]
        print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}")
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=1))
    finally:
        proc.terminate()
        proc.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
