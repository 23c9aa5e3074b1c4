"""A memory of captioned photos, searched by pooled encoder features: the training photos, plus the user's own.

A :class:`Datastore` holds captioned photos of ONE encoder (key like ``xception-299``): one unit vector per photo
(pooled features, L2-normalised) and that photo's captions, each an :class:`MemoryEntry` whose ``source`` is
``training`` or ``user``. :meth:`Datastore.search` returns one :class:`Hit` per caption, best first, by
:data:`USER_FIRST_RULE`:

    user entries whose cosine similarity to the photo reaches the store's user floor come first (most similar
    first), then every other entry (training, and user entries under the floor) by similarity.

The floor is the bundle's calibrated "familiar" threshold when its trust index has one (a user photo at least as
close as the neighbourhood of a typical familiar photo is "a photo like this one"), else :data:`USER_FLOOR`.

Search is exact (one float32 matrix product) up to :data:`ANN_MIN_PHOTOS` training photos; above it, when faiss-cpu
or hnswlib is installed (``pip install -e '.[memory]'``, :mod:`captioning.service.memory.ann`), an approximate
index over the training photos finds the candidates and their exact similarities are recomputed; the user's photos
are always searched exactly, so the rule holds. bench/memory_latency.py measures both.

Files (no pickle)::

    memory.npy    float16 (M, D): one unit row per photo (np.save, allow_pickle=False)
    memory.json   {"format", "encoder", "dim", "user_floor", "sha256" (of the npy's array bytes),
                   "photos": [{"image", "source", "captions": [...]}, ...M]}
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from captioning.evaluation.trust import NORM_TOLERANCE, normalise, pooled

FORMAT = 1
VECTORS_FILE, META_FILE = "memory.npy", "memory.json"
SOURCES = ("training", "user")
K = 5                          # captions retrieved per photo by default
USER_FLOOR = 0.635             # without a calibrated index: xception-299's dev "familiar" threshold (the 25%
#                                quantile of the dev photos' mean similarity to their 5 nearest training photos)
ANN_MIN_PHOTOS = 20_000        # training photos: exact below; approximate above, when installed (memory_ann)
USER_FIRST_RULE = ("user entries whose cosine similarity to the photo reaches the user floor (the bundle's "
                   "calibrated 'familiar' threshold, else 0.635) come first, most similar first; then every "
                   "other entry by similarity")


class MemoryFileError(ValueError):
    """A memory file is missing, malformed or does not belong to the bundle; the message says which."""


@dataclass(frozen=True)
class MemoryEntry:
    image: str            # a training photo's name, or the user's photo path relative to its images folder
    caption: str          # raw text as given
    source: str           # "training" | "user"


@dataclass(frozen=True)
class Hit:
    entry: MemoryEntry
    similarity: float     # cosine similarity of pooled, L2-normalised features, in [-1, 1]

    def to_json(self) -> dict:
        return {"image": self.entry.image, "caption": self.entry.caption,
                "similarity": round(float(self.similarity), 4), "source": self.entry.source}


class Datastore:
    """Captioned photos searchable by pooled encoder features of one encoder; see the module docstring."""

    def __init__(self, vectors: np.ndarray, photos: Sequence[tuple[str, str]], captions: Sequence[Sequence[str]],
                 encoder: str, user_floor: float = USER_FLOOR, ann_min_photos: int = ANN_MIN_PHOTOS):
        self.vectors = np.asarray(vectors, np.float16)                     # (M, D) unit rows, as stored
        if self.vectors.ndim != 2 or len(self.vectors) != len(photos) or len(photos) != len(captions):
            raise ValueError(f"{self.vectors.shape} vectors for {len(photos)} photos and {len(captions)} caption "
                             f"lists")
        self.photos = [(str(i), str(s)) for i, s in photos]                # (image, source) per row
        self.captions = [list(c) for c in captions]
        bad = [s for _, s in self.photos if s not in SOURCES]
        if bad:
            raise ValueError(f"an entry's source must be 'training' or 'user', got {bad[0]!r}")
        self.encoder, self.user_floor, self.ann_min_photos = str(encoder), float(user_floor), int(ann_min_photos)
        self._matrix = self.vectors.astype(np.float32)                     # (M, D)
        self._user = np.flatnonzero([s == "user" for _, s in self.photos])  # rows of the user's photos
        self._train = np.flatnonzero([s == "training" for _, s in self.photos])    # rows the ANN index covers
        self._ann = None
        self.imported = None          # the UserDataset a user memory was read from (its bad rows), when known

    # --- building ---------------------------------------------------------------------------------------------
    @classmethod
    def from_arrays(cls, vectors, entries: Sequence[MemoryEntry], encoder: str,
                    user_floor: float = USER_FLOOR) -> Datastore:
        """One row of pooled features per ENTRY (a photo's captions share its vector; the vector it is given
        first is kept); rows are normalised here and stored once per photo."""
        x = normalise(pooled(np.asarray(vectors)))                          # (N, D)
        if len(x) != len(entries):
            raise ValueError(f"{len(x)} feature rows for {len(entries)} entries")
        row_of: dict[tuple[str, str], int] = {}
        rows, photos, captions = [], [], []
        for i, e in enumerate(entries):
            key = (e.image, e.source)
            if key not in row_of:
                row_of[key] = len(photos)
                rows.append(i)
                photos.append(key)
                captions.append([])
            if e.caption not in captions[row_of[key]]:
                captions[row_of[key]].append(e.caption)
        return cls(x[rows].astype(np.float16) if rows else np.zeros((0, x.shape[-1]), np.float16), photos,
                   captions, encoder, user_floor)

    def __len__(self) -> int:
        return sum(len(c) for c in self.captions)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def photo_count(self) -> int:
        return len(self.photos)

    @property
    def entries(self) -> list[MemoryEntry]:
        return [MemoryEntry(img, cap, src) for (img, src), caps in zip(self.photos, self.captions) for cap in caps]

    def extended(self, other: Datastore) -> Datastore:
        """This store plus ``other``'s photos (same encoder and size); this store's user floor is kept."""
        if other.encoder != self.encoder or other.dim != self.dim:
            raise ValueError(f"a memory of {other.encoder} ({other.dim}-d) cannot join one of {self.encoder} "
                             f"({self.dim}-d): build it with the same bundle's encoder")
        out = Datastore(np.concatenate([self.vectors, other.vectors]), self.photos + other.photos,
                        self.captions + other.captions, self.encoder, self.user_floor, self.ann_min_photos)
        if self._ann is not None and not other._train.size:                    # the same training rows
            out._ann = self._ann
        return out

    def without(self, images: set[str], source: str = "user") -> Datastore:
        """A copy without the photos ``images`` of ``source``."""
        keep = [i for i, (img, src) in enumerate(self.photos) if not (src == source and img in images)]
        return Datastore(self.vectors[keep], [self.photos[i] for i in keep], [self.captions[i] for i in keep],
                         self.encoder, self.user_floor, self.ann_min_photos)

    # --- search -----------------------------------------------------------------------------------------------
    @property
    def backend(self) -> str:
        """``exact``, or ``ivf`` / ``hnsw`` (a store of many training photos, the library installed)."""
        if len(self._train) < self.ann_min_photos:
            return "exact"
        from captioning.service.memory.ann import available

        return available() or "exact"

    def ann(self):
        """The approximate index over the training photos (built on first use, kept by :meth:`extended`)."""
        if self._ann is None:
            from captioning.service.memory.ann import AnnIndex

            self._ann = AnnIndex(self._matrix[self._train], self.backend)
        return self._ann

    def _candidates(self, q: np.ndarray, n: int) -> np.ndarray | None:
        """(Q, C) photo rows to rank exactly: the approximate index's best n training photos plus the best n user
        photos (searched exactly); None for an exact search of every row."""
        if self.backend == "exact":
            return None
        found = self.ann().query(q, n)                                       # (Q, n) rows of self._train, -1
        rows = np.where(found >= 0, self._train[np.maximum(found, 0)], -1)
        if len(self._user):
            user_sims = q @ self._matrix[self._user].T                       # (Q, U)
            take = min(n, len(self._user))
            best = np.argpartition(-user_sims, take - 1, axis=1)[:, :take]
            rows = np.concatenate([rows, self._user[best]], axis=1)
        return rows

    def search(self, features, k: int = K, exclude_images: Sequence[set[str]] | None = None) -> list[list[Hit]]:
        """Q lists of up to ``k`` Hits (one per caption), best first by :data:`USER_FIRST_RULE`; features are
        (Q, D) or (Q, P, D) (pooled here); ``exclude_images[q]``: photo names never returned for query q."""
        q = normalise(pooled(features))                                      # (Q, D)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"features of size {q.shape[-1]} do not match the memory's {self.dim}")
        if not self.photo_count or k < 1:
            return [[] for _ in range(len(q))]
        if exclude_images is not None and len(exclude_images) != len(q):
            raise ValueError(f"exclude_images has {len(exclude_images)} sets for {len(q)} photos")
        most_excluded = max((len(s) for s in exclude_images), default=0) if exclude_images else 0
        rows = self._candidates(q, k + most_excluded)                        # (Q, C) or None: every row
        if rows is None:
            rows = np.broadcast_to(np.arange(self.photo_count), (len(q), self.photo_count))
            sims = q @ self._matrix.T                                        # (Q, M)
        else:
            sims = np.where(rows >= 0, np.einsum("qd,qcd->qc", q, self._matrix[np.maximum(rows, 0)]), -np.inf)
        is_user = np.isin(rows, self._user)
        rank = sims + 4.0 * (is_user & (sims >= self.user_floor))           # cosines in [-1, 1]: +4 sorts first
        out = []
        for i in range(len(q)):
            n = min(k + most_excluded, rows.shape[1])
            top = np.argpartition(-rank[i], n - 1)[:n] if n < rows.shape[1] else np.arange(rows.shape[1])
            top = top[np.argsort(-rank[i, top], kind="stable")]
            seen, hits = set(), []
            skip = exclude_images[i] if exclude_images else ()
            for c in top:
                r = int(rows[i, c])
                image, source = self.photos[r] if r >= 0 else ("", "")
                if r < 0 or r in seen or image in skip:
                    continue
                seen.add(r)
                hits += [Hit(MemoryEntry(image, cap, source), float(sims[i, c])) for cap in self.captions[r]]
                if len(hits) >= k:
                    break
            out.append(hits[:k])
        return out

    # --- files ------------------------------------------------------------------------------------------------
    def meta(self) -> dict:
        return {"format": FORMAT, "encoder": self.encoder, "dim": self.dim, "user_floor": self.user_floor,
                "sha256": _checksum(self.vectors),
                "photos": [{"image": i, "source": s, "captions": c}
                           for (i, s), c in zip(self.photos, self.captions)]}

    def save(self, folder: str | os.PathLike) -> None:
        """memory.npy, then memory.json (which holds the npy's checksum), each through a temporary file +
        rename: a reader sees a consistent pair or a checksum mismatch, never a half-written file."""
        from captioning.files import atomic_save_npy, atomic_write

        folder = Path(folder)
        atomic_save_npy(folder / VECTORS_FILE, self.vectors)
        atomic_write(folder / META_FILE, json.dumps(self.meta(), ensure_ascii=False))

    @classmethod
    def load(cls, folder: str | os.PathLike, encoder: str | None = None, dim: int | None = None) -> Datastore:
        """Read and validate a saved memory; ``encoder`` / ``dim`` must match the bundle's when given."""
        folder = Path(folder)
        for name in (VECTORS_FILE, META_FILE):
            if not (folder / name).is_file():
                raise MemoryFileError(f"{folder / name} is missing")
        try:
            meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise MemoryFileError(f"{META_FILE} is not valid JSON ({exc})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise MemoryFileError(f"{META_FILE} is not a memory of format {FORMAT}")
        photos = meta.get("photos")
        if not isinstance(photos, list) or not all(
                isinstance(p, dict) and isinstance(p.get("image"), str) and p.get("source") in SOURCES
                and isinstance(p.get("captions"), list) and p["captions"]
                and all(isinstance(c, str) for c in p["captions"]) for p in photos):
            raise MemoryFileError(f"{META_FILE} needs a list of photos, each with an image, a source (training or "
                                  f"user) and a non-empty list of captions")
        try:
            vectors = np.load(folder / VECTORS_FILE, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise MemoryFileError(f"{VECTORS_FILE} is not a numpy array file ({exc})") from None
        if vectors.dtype != np.float16 or vectors.ndim != 2 or vectors.shape[0] != len(photos):
            raise MemoryFileError(f"{VECTORS_FILE} holds {vectors.dtype} {vectors.shape}; expected float16 "
                                  f"({len(photos)}, dim), one row per photo in {META_FILE}")
        if meta.get("sha256") != _checksum(vectors):
            raise MemoryFileError(f"{VECTORS_FILE} does not match the checksum in {META_FILE} (a write was "
                                  f"interrupted or a file was replaced); add the photos again")
        if not np.isfinite(vectors).all():
            raise MemoryFileError(f"{VECTORS_FILE} holds non-finite values")
        norms = np.linalg.norm(vectors.astype(np.float32), axis=1)
        bad = np.flatnonzero(np.abs(norms - 1.0) > NORM_TOLERANCE)
        if len(bad):
            raise MemoryFileError(f"{VECTORS_FILE} row {bad[0]} ({photos[bad[0]]['image']}) has norm "
                                  f"{norms[bad[0]]:.4g}, not 1: a memory holds unit vectors")
        if vectors.shape[1] != meta.get("dim") or (dim is not None and vectors.shape[1] != dim):
            raise MemoryFileError(f"{VECTORS_FILE} has {vectors.shape[1]}-d rows, expected {dim or meta.get('dim')}")
        if encoder is not None and meta.get("encoder") != encoder:
            raise MemoryFileError(f"the memory was built with encoder {meta.get('encoder')!r}, the bundle uses "
                                  f"{encoder!r}")
        floor = meta.get("user_floor", USER_FLOOR)
        if not isinstance(floor, (int, float)) or not -1.0 <= floor <= 1.0:
            raise MemoryFileError(f"{META_FILE} has an invalid user_floor ({floor!r})")
        return cls(vectors, [(p["image"], p["source"]) for p in photos], [p["captions"] for p in photos],
                   str(meta["encoder"]), float(floor))


def _checksum(vectors: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(vectors, np.float16).tobytes()).hexdigest()


def _index_of(source):
    """A RetrievalIndex from a Bundle, a Captioner, a RetrievalIndex or a bundle folder."""
    from captioning.evaluation.trust import RetrievalIndex

    if isinstance(source, RetrievalIndex):
        return source
    bundle = getattr(source, "bundle", source)                              # a Captioner holds its Bundle
    if isinstance(source, (str, os.PathLike)):
        from captioning.artifacts.bundle import load_bundle

        bundle = load_bundle(source, load_results=False)
    index = getattr(bundle, "index", None)
    if index is None:
        raise MemoryFileError(f"bundle {getattr(bundle, 'path', source)} has no retrieval index; add one with: "
                              f"python train.py index --out {getattr(bundle, 'path', source)}")
    return index


def user_floor_of(source) -> float:
    """The user floor a bundle's (or index's) store uses: its calibrated familiar threshold, else USER_FLOOR."""
    try:
        index = _index_of(source)
    except MemoryFileError:
        return USER_FLOOR
    return float(index.calibration.familiar_from) if index.calibration is not None else USER_FLOOR


def training_datastore(source) -> Datastore:
    """The training photos of a bundle's trust index (index.npy/json: the captions it keeps per photo) as a
    Datastore; ``source`` is a Bundle, a Captioner, a RetrievalIndex or a bundle folder."""
    index = _index_of(source)
    return Datastore(index.vectors, [(n, "training") for n in index.names], index.captions, index.encoder,
                     user_floor_of(index))


def empty_datastore(encoder: str, dim: int, user_floor: float = USER_FLOOR) -> Datastore:
    return Datastore(np.zeros((0, dim), np.float16), [], [], encoder, user_floor)
