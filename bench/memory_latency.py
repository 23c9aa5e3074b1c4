"""What retrieval costs per photo (issue 38, experiment c): the memory's search with a 6,000-photo datastore (the
shipped bundle's trust index: Flickr8k's training photos) and a 100,000-photo one, exact numpy vs the approximate
backends (faiss IVF; hnswlib HNSW up to --hnsw-max photos), and their recall@k against the exact search.

The 100,000-photo store is the 6,000 real vectors plus 94,000 synthetic ones of the real dimension: each a random
mix of two real training photos' features plus ReLU'd noise, renormalised (so the synthetic photos crowd the real
ones' neighbourhoods as a large real collection would, which is the hard case for an approximate search). Queries
are the dev split's real pooled features (the shared feature cache), one photo at a time as the app and the API
search. Timings: median and 95th percentile of single-photo searches, after a warm-up, one thread; wall time and
CPU time (the process's own: on a shared, loaded machine the wall time is mostly waiting for a core).

    nice -n 10 python bench/memory_latency.py [--bundle artifacts/default] [--queries 300] [--out FILE.json]
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):   # one thread, before numpy loads
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def dev_queries(encoder: str, n: int, flickr: Path) -> np.ndarray | None:
    from captioning.vision.features import FeatureCache

    names = (flickr / "Flickr_8k.devImages.txt").read_text().split()[:n] if flickr.is_dir() else []
    cache = FeatureCache(ROOT / ".cache" / "features", encoder)
    have = [x for x in names if x not in set(cache.missing(names))]
    return np.asarray(cache.load(have), np.float32) if have else None


def synthetic(real: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, len(real), n), rng.integers(0, len(real), n)
    w = rng.uniform(0.2, 0.8, (n, 1)).astype(np.float32)
    scale = float(real.std())
    mixed = w * real[a] + (1 - w) * real[b] + np.maximum(rng.normal(0, scale, real[a].shape), 0).astype(np.float32)
    return mixed / np.linalg.norm(mixed, axis=1, keepdims=True)


def timed(store, queries: np.ndarray, k: int) -> dict:
    for q in queries[:10]:
        store.search(q[None], k)                                        # warm-up (builds the HNSW graph)
    times, cpu = [], []
    for q in queries:
        start, start_cpu = time.perf_counter(), time.process_time()
        store.search(q[None], k)
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    t, c = np.asarray(times) * 1000, np.asarray(cpu) * 1000
    return {"median_ms": round(float(np.median(t)), 3), "p95_ms": round(float(np.percentile(t, 95)), 3),
            "cpu_mean_ms": round(float(c.mean()), 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", default=str(ROOT / "artifacts" / "default"))
    p.add_argument("--flickr", type=Path, default=Path(os.environ.get("FLICKR8K_DIR") or ROOT.parent / "shared" /
                                                            "flickr8k"))
    p.add_argument("--queries", type=int, default=300)
    p.add_argument("--size", type=int, default=100_000)
    p.add_argument("--k", type=int, default=10, help="hits retrieved per photo (recall@k: share of the exact search's "
                   "photos among them that HNSW finds too)")
    p.add_argument("--hnsw-max", type=int, default=20_000, help="build HNSW only for stores up to this size")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    from captioning.evaluation.trust import RetrievalIndex
    from captioning.service.memory.store import Datastore, training_datastore

    index = RetrievalIndex.load(args.bundle)
    train = training_datastore(index)
    real = index.vectors.astype(np.float32)
    queries = dev_queries(index.encoder, args.queries, args.flickr)
    source = "dev photos' cached features"
    if queries is None:
        queries, source = synthetic(real, args.queries, seed=1), "synthetic (no cached dev features)"
    report = {"encoder": index.encoder, "dim": index.dim, "queries": len(queries), "query_source": source,
              "k_hits": args.k, "load_average_start": os.getloadavg(), "stores": {}}
    extra = synthetic(real, args.size - len(real))
    big_vectors = np.concatenate([real, extra]).astype(np.float16)
    big_photos = train.photos + [(f"synthetic-{i}", "training") for i in range(len(extra))]
    big_caps = train.captions + [["synthetic"]] * len(extra)
    for label, (vectors, photos, caps) in {
            f"{train.photo_count:,} photos (Flickr8k train)": (train.vectors, train.photos, train.captions),
            f"{args.size:,} photos (6,000 real + synthetic)": (big_vectors, big_photos, big_caps)}.items():
        store = Datastore(vectors, photos, caps, index.encoder, 2.0)   # floor 2: no user rule, pure search
        default = store.backend
        store.ann_min_photos = 10**9                                   # exact
        row = {"photos": len(photos), "default_backend": default, "exact": timed(store, queries, args.k)}
        truth = {k: [{h.entry.image for h in hs} for hs in store.search(queries, k)] for k in (1, args.k)}
        from captioning.service.memory import ann as memory_ann

        original = memory_ann.available
        for kind, module in (("ivf", "faiss"), ("hnsw", "hnswlib")):
            try:
                __import__(module)
            except ImportError:
                row[kind] = f"{module} not installed (pip install -e '.[memory]')"
                continue
            if kind == "hnsw" and len(photos) > args.hnsw_max:
                row[kind] = f"not built: over --hnsw-max {args.hnsw_max:,} photos (its build is the slow part)"
                continue
            store.ann_min_photos, store._ann = 1, None
            memory_ann.available = lambda kind=kind: kind
            start = time.perf_counter()
            store.ann()
            row[f"{kind}_build_seconds"] = round(time.perf_counter() - start, 1)
            row[kind] = timed(store, queries, args.k)
            for k, want in truth.items():
                got = [{h.entry.image for h in hs} for hs in store.search(queries, k)]
                row[f"{kind}_recall_at_{k}"] = round(float(np.mean([len(g & w) / len(w)
                                                                    for g, w in zip(got, want)])), 4)
        memory_ann.available = original
        del store
        report["stores"][label] = row
        print(label, json.dumps(row), flush=True)
    report["load_average_end"] = os.getloadavg()
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
