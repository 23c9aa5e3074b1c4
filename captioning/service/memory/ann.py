"""Approximate nearest-neighbour search for large memories (captioning.service.memory.store), optional: ``pip install -e
'.[memory]'``.

Two backends, chosen by what is installed: ``ivf`` (faiss-cpu's inverted file over k-means cells, exact inner
products inside the :data:`NPROBE` cells nearest the query; preferred: it builds in seconds at 2,048 dimensions) and
``hnsw`` (hnswlib's graph; its build took 102 s for 6,000 photos at 2,048-d on the shared 2-core machine, so it is
only the fallback). Both index unit vectors by inner product (= cosine); the memory recomputes the exact
similarity of every candidate, so only the candidate set is approximate (recall: bench/memory_latency.py).
"""
from __future__ import annotations

import math

import numpy as np

NPROBE = 24                       # ivf: cells searched per query (of about sqrt(N))
HNSW_M, HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH = 16, 100, 128


def available() -> str | None:
    """The backend to use: ``ivf``, ``hnsw`` or None (neither library installed)."""
    try:
        import faiss  # noqa: F401
        return "ivf"
    except ImportError:
        pass
    try:
        import hnswlib  # noqa: F401
        return "hnsw"
    except ImportError:
        return None


class AnnIndex:
    """An index over ``matrix`` (N, D) float32 unit rows; :meth:`query` gives candidate row numbers."""

    def __init__(self, matrix: np.ndarray, kind: str, seed: int = 0):
        self.kind, self.size = kind, len(matrix)
        x = np.ascontiguousarray(matrix, np.float32)
        if kind == "ivf":
            import faiss

            faiss.omp_set_num_threads(1)
            cells = max(1, min(int(math.sqrt(len(x))), len(x) // 39))
            self.index = faiss.IndexIVFFlat(faiss.IndexFlatIP(x.shape[1]), x.shape[1], cells,
                                            faiss.METRIC_INNER_PRODUCT)
            sample = np.random.default_rng(seed).choice(len(x), min(len(x), 40 * cells), replace=False)
            self.index.train(x[np.sort(sample)])
            self.index.add(x)
            self.index.nprobe = min(NPROBE, cells)
        elif kind == "hnsw":
            import hnswlib

            self.index = hnswlib.Index(space="ip", dim=x.shape[1])
            self.index.init_index(max_elements=len(x), ef_construction=HNSW_EF_CONSTRUCTION, M=HNSW_M,
                                  random_seed=seed)
            self.index.add_items(x, np.arange(len(x)), num_threads=1)
        else:
            raise ValueError(f"unknown nearest-neighbour backend {kind!r} (ivf or hnsw)")

    def query(self, q: np.ndarray, n: int) -> np.ndarray:
        """(Q, n) candidate rows, best first; -1 where the index found fewer."""
        n = min(n, self.size)
        q = np.ascontiguousarray(q, np.float32)
        if self.kind == "ivf":
            _, rows = self.index.search(q, n)
            return rows.astype(np.int64)
        self.index.set_ef(max(HNSW_EF_SEARCH, n))
        rows, _ = self.index.knn_query(q, k=n, num_threads=1)
        return rows.astype(np.int64)
