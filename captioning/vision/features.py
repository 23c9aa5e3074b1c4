"""Batched feature extraction with tf.data and an on-disk, resumable float16 cache.

Cache layout (one folder per encoder key, e.g. ``.cache/features/xception-299/``)::

    shard-00000.json        {"names": [...]}            written last: marks the shard complete
    shard-00000.pooled.npy  float16 (n, D)
    shard-00000.spatial.npy float16 (n, H*W, D)         only when spatial maps were asked for

A shard is complete when its ``.json`` exists; arrays are written first under temporary names and
renamed, so a run killed at any point leaves only complete shards, and a rerun extracts the rest.

Photos are read through the project's safe loader first (:func:`captioning.vision.images.load_image`, the CLI's and
the API's): a photo it refuses (empty, not an image, a decompression bomb, over the memory budget) stops the run
with one line naming the file (:class:`BadImageError`), or with ``skip_bad`` is left out and listed. The pixels of
an ordinary photo (an upright RGB or grey JPEG, PNG or BMP up to ``MAX_SIDE``, every Flickr8k photo) are then
decoded by TensorFlow exactly as before, so cached features stay valid; any other photo gets the loader's pixels
(shrunk, upright, transparency on white).

Several machines can fill one cache (``train.py features --num-shards N --shard-index I``): each extracts the
disjoint slice :func:`shard_slice` gives it and names its files ``shard-w<I>of<N>-00000.*``, so writers never
touch each other's files; readers index every ``shard-*.json`` alike.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from captioning.data.flickr8k import DataError
from captioning.files import atomic_save_npy, atomic_write
from captioning.vision.encoders import EncoderSpec
from captioning.vision.images import CANONICAL_SIZE, MAX_SIDE, InvalidImageError, load_image

SHARD_SIZE = 512
FLIP_SUFFIX = "-flip"          # the cache of mirrored photos' features: .cache/features/xception-299-flip/


def shard_slice(names: Sequence[str], num_shards: int, index: int, block: int) -> list[str]:
    """The names worker ``index`` of ``num_shards`` extracts: blocks of ``block`` consecutive names, dealt out
    round-robin (block b goes to worker b mod N). Slices are disjoint and cover ``names``; with ``block`` the
    extraction batch size every batch holds the same images as a single process's would, so the features are
    byte-identical to one machine's."""
    if num_shards < 1 or not 0 <= index < num_shards:
        raise ValueError(f"shard index must be in 0..{num_shards - 1}, got {index} of {num_shards}")
    names = list(names)
    return [n for start in range(index * block, len(names), num_shards * block) for n in names[start:start + block]]


class FeatureCache:
    """Read and append feature shards for one encoder key.

    ``writer`` (e.g. ``"w1of4"``) names this process's files when several processes fill one cache.
    """

    def __init__(self, root: str | os.PathLike, key: str, writer: str | None = None):
        self.dir = Path(root) / key
        self.dir.mkdir(parents=True, exist_ok=True)
        self.prefix = f"shard-{writer}-" if writer else "shard-"

    def remove_temporaries(self) -> None:
        """Drop half-written files a killed run of this writer may have left (never part of a complete shard);
        other writers' files in progress are left alone."""
        for tmp in self.dir.glob(f"{self.prefix}[0-9]*.tmp*"):
            tmp.unlink(missing_ok=True)

    def _shards(self) -> list[Path]:
        return sorted(self.dir.glob("shard-*.json"))

    def index(self, spatial: bool = False) -> dict[str, tuple[Path, int]]:
        """name -> (shard json, row) for every complete shard (that has spatial maps, if asked)."""
        out = {}
        for meta in self._shards():
            if spatial and not meta.with_suffix(".spatial.npy").is_file():
                continue
            for row, name in enumerate(json.loads(meta.read_text())["names"]):
                out[name] = (meta, row)
        return out

    def missing(self, names: Sequence[str], spatial: bool = False) -> list[str]:
        have = self.index(spatial)
        return [n for n in dict.fromkeys(names) if n not in have]

    def add_shard(self, names: list[str], pooled: np.ndarray, spatial: np.ndarray | None = None) -> None:
        own = self.dir.glob(f"{self.prefix}[0-9]*.json")
        number = max((int(p.stem[len(self.prefix):]) for p in own), default=-1) + 1
        stem = self.dir / f"{self.prefix}{number:05d}"
        atomic_save_npy(stem.with_suffix(".pooled.npy"), pooled.astype(np.float16))
        if spatial is not None:
            atomic_save_npy(stem.with_suffix(".spatial.npy"), spatial.astype(np.float16))
        atomic_write(stem.with_suffix(".json"), json.dumps({"names": names}))

    def rows(self, names: Sequence[str], spatial: bool = False) -> FeatureRows:
        """Features for ``names`` in that order as a table read from disk a batch at a time."""
        index = self.index(spatial)
        absent = [n for n in names if n not in index]
        if absent:
            raise KeyError(f"{len(absent)} images have no cached features (first: {absent[0]}); "
                           f"run: python train.py features")
        kind = "spatial" if spatial else "pooled"
        return FeatureRows([(index[n][0].with_suffix(f".{kind}.npy"), index[n][1]) for n in names])

    def load(self, names: Sequence[str], spatial: bool = False) -> np.ndarray:
        """Features for ``names`` in that order (float16); spatial maps are memory-mapped."""
        index = self.index(spatial)
        absent = [n for n in names if n not in index]
        if absent:
            raise KeyError(f"{len(absent)} images have no cached features (first: {absent[0]}); "
                           f"run: python train.py features")
        kind = "spatial" if spatial else "pooled"
        arrays: dict[Path, np.ndarray] = {}
        rows = []
        for n in names:
            meta, row = index[n]
            if meta not in arrays:
                arrays[meta] = np.load(meta.with_suffix(f".{kind}.npy"), mmap_mode="r" if spatial else None,
                                       allow_pickle=False)
            rows.append(arrays[meta][row])
        return np.stack(rows) if rows else np.zeros((0,), np.float16)


class FeatureRows:
    """A read-only (n, ...) float16 table over cached shards that reads only the rows asked for.

    The spatial maps of Flickr8k's train and dev splits are 2.9 GB as float16; holding them in memory (plus
    TensorFlow's copy) took attention training to 10.5 GB. This reads each batch's rows with ``os.preadv``
    straight into the output array, so the process holds a batch at a time and the OS page cache (shared,
    reclaimable) keeps repeated epochs fast.
    """

    def __init__(self, locations: Sequence[tuple[Path, int]]):
        self._fds: list[int] = []
        self._starts: list[int] = []                      # per open file: byte offset of its first row
        self._rows_in: list[int] = []                     # per open file: number of rows
        fd_of: dict[Path, int] = {}
        self._file = np.empty(len(locations), np.int32)
        self._offset = np.empty(len(locations), np.int64)
        row_shape = dtype = None
        try:
            for i, (path, row) in enumerate(locations):
                if path not in fd_of:
                    with open(path, "rb") as f:
                        version = np.lib.format.read_magic(f)
                        shape, fortran, file_dtype = (np.lib.format.read_array_header_1_0(f) if version == (1, 0)
                                                      else np.lib.format.read_array_header_2_0(f))
                        data_start = f.tell()
                    if fortran or file_dtype.hasobject or len(shape) < 2:
                        raise ValueError(f"{path} is not a C-ordered feature array; delete it and run: "
                                         f"python train.py features")
                    if row_shape is None:
                        row_shape, dtype = tuple(shape[1:]), file_dtype
                    elif (tuple(shape[1:]), file_dtype) != (row_shape, dtype):
                        raise ValueError(f"{path} holds {shape[1:]} {file_dtype} rows, others {row_shape} {dtype}")
                    expected = data_start + int(np.prod(shape)) * file_dtype.itemsize
                    if os.path.getsize(path) < expected:
                        raise ValueError(f"{path} is truncated; delete it and run: python train.py features")
                    fd_of[path] = len(self._fds)
                    self._fds.append(os.open(path, os.O_RDONLY))
                    self._starts.append(data_start)
                    self._rows_in.append(shape[0])
                k = fd_of[path]
                if not 0 <= row < self._rows_in[k]:
                    raise IndexError(f"row {row} is outside {path} ({self._rows_in[k]} rows)")
                self._file[i] = k
                self._offset[i] = self._starts[k] + row * int(np.prod(row_shape)) * dtype.itemsize
        except BaseException:
            self.close()
            raise
        self.row_shape = row_shape or ()
        self.dtype = dtype or np.dtype(np.float16)
        self.shape = (len(locations), *self.row_shape)
        self._row_bytes = int(np.prod(self.row_shape)) * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def take(self, indices) -> np.ndarray:
        """Rows ``indices`` (any int array) as a new (len(indices), ...) array."""
        indices = np.asarray(indices, np.int64).reshape(-1)
        out = np.empty((len(indices), *self.row_shape), self.dtype)
        for j, i in enumerate(indices):
            got = os.preadv(self._fds[self._file[i]], [out[j]], int(self._offset[i]))
            if got != self._row_bytes:
                raise OSError(f"short read of cached features ({got} of {self._row_bytes} bytes); "
                              f"delete the feature cache and run: python train.py features")
        return out

    def __getitem__(self, key) -> np.ndarray:
        return self.take(np.arange(len(self))[key])

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self.take(np.arange(len(self)))
        return out if dtype is None else out.astype(dtype)

    def astype(self, dtype) -> np.ndarray:
        return np.asarray(self).astype(dtype)

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []

    def __del__(self):
        try:
            self.close()
        except (AttributeError, TypeError, OSError):   # at interpreter exit ``os`` may already be torn down
            pass


def image_pipeline(spec: EncoderSpec):
    """A tf function: uint8 images (B, 224, 224, 3) -> encoder inputs (B, S, S, 3), preprocessed."""
    import tensorflow as tf

    preprocess = spec.preprocess()

    def to_encoder_input(images):
        x = tf.image.resize(tf.cast(images, tf.float32), (spec.input_size, spec.input_size))  # (B, S, S, 3)
        return preprocess(x)

    return to_encoder_input


class BadImageError(DataError):
    """A photo of the dataset that the safe loader refuses; the message names the file and the reason."""

    def __init__(self, path, reason: str):
        self.path, self.reason = path, reason
        super().__init__(f"photo {os.fsdecode(path)!r} cannot be read: {reason}")


TF_FORMATS = ("JPEG", "PNG", "BMP")         # whose ordinary files TensorFlow's decoder reads like Pillow


def check_image(path: str | os.PathLike) -> bool:
    """Read ``path`` through the safe loader, as the CLI and the API would; raises :class:`BadImageError`.

    Returns whether TensorFlow may decode the file itself, as extraction always did (an upright RGB or grey
    JPEG, PNG or BMP without transparency, at most ``MAX_SIDE`` pixels a side); else the loader's pixels are used.
    """
    from PIL import Image

    try:
        load_image(path)
        with Image.open(path) as header:                       # the header only: no pixels decoded again
            orientation = header.getexif().get(0x0112, 1) if header.format == "JPEG" else 1
            return (header.format in TF_FORMATS and header.mode in ("RGB", "L") and orientation in (0, 1)
                    and "transparency" not in header.info and max(header.size) <= MAX_SIDE)
    except InvalidImageError as exc:
        raise BadImageError(path, str(exc)) from None
    except OSError as exc:                                     # e.g. unreadable after the loader read it
        raise BadImageError(path, f"The file could not be read ({exc}).") from None


def check_images(paths: dict[str, Path], skip_bad: bool = False, progress: bool = False
                 ) -> tuple[dict[str, bool], list[tuple[str, str]]]:
    """:func:`check_image` on every photo: (name -> TensorFlow decodes it, [(name, reason) left out]). The first
    bad photo raises :class:`BadImageError` unless ``skip_bad``."""
    from tqdm.auto import tqdm

    ordinary, skipped = {}, []
    for name, path in tqdm(paths.items(), total=len(paths), unit="img", desc="checking photos",
                           disable=not progress):
        try:
            ordinary[name] = check_image(path)
        except BadImageError as exc:
            if not skip_bad:
                raise
            skipped.append((name, exc.reason))
    return ordinary, skipped


def _decode_file(path):
    """tf: JPEG/PNG/BMP path -> uint8 (h, w, 3), TensorFlow's own decoder (what every cached feature came from)."""
    import tensorflow as tf

    img = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)   # (h, w, 3)
    img.set_shape([None, None, 3])
    return img


def _loader_pixels(path) -> np.ndarray:
    """numpy: the safe loader's upright RGB pixels (h, w, 3), at most MAX_SIDE a side (``path``: bytes, as
    ``tf.numpy_function`` hands it over)."""
    return np.asarray(load_image(os.fsdecode(np.asarray(path).item())), np.uint8)


def _read_checked(path, ordinary):
    """tf: a checked photo -> uint8 (224, 224, 3): TensorFlow's decoder for an ordinary one, else the loader's."""
    import tensorflow as tf

    img = tf.cond(ordinary, lambda: _decode_file(path),
                  lambda: tf.numpy_function(_loader_pixels, [path], tf.uint8, stateful=False))
    img.set_shape([None, None, 3])
    return _canonical(img)


def _read_canonical(path):
    """tf: JPEG/PNG path -> uint8 (224, 224, 3), antialiased to the canonical size when needed (no checks)."""
    return _canonical(_decode_file(path))


def _canonical(img):
    """tf: uint8 (h, w, 3) -> (224, 224, 3), antialiased to the canonical size when needed."""
    import tensorflow as tf

    same = tf.logical_and(tf.shape(img)[0] == CANONICAL_SIZE, tf.shape(img)[1] == CANONICAL_SIZE)
    return tf.cond(same, lambda: img,
                   lambda: tf.cast(tf.round(tf.clip_by_value(
                       tf.image.resize(img, (CANONICAL_SIZE, CANONICAL_SIZE), antialias=True), 0, 255)), tf.uint8))


def extract_features(encoder, spec: EncoderSpec, paths: dict[str, Path], cache: FeatureCache,
                     batch_size: int = 32, spatial: bool = False, progress: bool = True,
                     shard_size: int = SHARD_SIZE, flip: bool = False, skip_bad: bool = False) -> dict:
    """Extract and cache features for every image in ``paths`` (name -> file) not cached yet.

    Every photo to extract is first read through the safe loader (:func:`check_images`): a bad one raises
    :class:`BadImageError` before any extraction, or with ``skip_bad`` is left out (``stats["skipped"]``).

    ``flip``: of the mirrored photos (left and right swapped), for test-time augmentation; keep them in a cache
    of their own (:data:`FLIP_SUFFIX` after the encoder key).

    Returns timing stats: images done, seconds, images per second (overall, and after the first batch, which
    also traces the encoder call).
    """
    import tensorflow as tf
    from tqdm.auto import tqdm

    cache.remove_temporaries()
    todo = cache.missing(list(paths), spatial)
    ordinary, skipped = check_images({n: paths[n] for n in todo}, skip_bad, progress)
    todo = [n for n in todo if n in ordinary]
    stats = {"images": len(todo), "cached": len(paths) - len(todo) - len(skipped), "seconds": 0.0,
             "skipped": skipped}
    if not todo:
        return stats
    to_input = image_pipeline(spec)
    files = [os.fsencode(paths[n]) for n in todo]             # bytes: any file name the OS allows
    ds = (tf.data.Dataset.from_tensor_slices((files, [ordinary[n] for n in todo]))
          .map(_read_checked, num_parallel_calls=tf.data.AUTOTUNE)
          .map(tf.image.flip_left_right if flip else (lambda img: img))
          .batch(batch_size)
          .map(to_input, num_parallel_calls=tf.data.AUTOTUNE)
          .prefetch(2))
    # No tf.data autotuner: its optimisation thread, whose period grows to 60 s in a long run, held the iterator's
    # teardown for a minute of silence after the last of 8,000 images (TF 2.21, 2 cores; py-spy showed the main
    # thread in RootDataset::Iterator's destructor). The two maps still run in parallel, one call per core.
    options = tf.data.Options()
    options.autotune.enabled = False
    ds = ds.with_options(options)
    forward = tf.function(lambda x: encoder(x, training=False), reduce_retracing=True)

    start = time.perf_counter()
    offset = 0                       # images of ``todo`` consumed so far (tf.data keeps their order)
    buf_names: list[str] = []
    buf_pooled: list[np.ndarray] = []
    buf_spatial: list[np.ndarray] = []
    with tqdm(total=len(todo), unit="img", desc=f"features {spec.key}", disable=not progress) as bar:
        for batch in ds:
            out = forward(batch)
            pooled = out[0] if isinstance(out, (list, tuple)) else out
            n = int(pooled.shape[0])
            buf_names.extend(todo[offset:offset + n])
            offset += n
            buf_pooled.append(pooled.numpy().astype(np.float16))
            if spatial:
                buf_spatial.append(out[1].numpy().astype(np.float16))
            bar.update(n)
            if "first_batch_seconds" not in stats:      # includes tracing the encoder call: paid once per run
                stats["first_batch_seconds"], stats["first_batch_images"] = time.perf_counter() - start, n
            if len(buf_names) >= shard_size or offset >= len(todo):   # the last shard as soon as it is whole,
                _flush(cache, buf_names, buf_pooled, buf_spatial, spatial)  # not after the pipeline's teardown
                buf_names, buf_pooled, buf_spatial = [], [], []
            if offset >= len(todo):
                break
    stats["seconds"] = time.perf_counter() - start
    stats["images_per_second"] = stats["images"] / stats["seconds"] if stats["seconds"] else 0.0
    rest = stats["seconds"] - stats["first_batch_seconds"]
    stats["steady_images_per_second"] = (stats["images"] - stats["first_batch_images"]) / rest if rest > 0 else 0.0
    return stats


def _flush(cache, names, pooled, spatial_maps, spatial) -> None:
    cache.add_shard(list(names), np.concatenate(pooled), np.concatenate(spatial_maps) if spatial else None)
