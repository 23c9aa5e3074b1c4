"""Caption many photos at once: the batch stream every caller shares (CLI, app, API, folder runs).

Data flows: sources (paths, bytes, images) -> safe loader (a few at a time, in threads) -> encoder in
batches -> decoder in batches -> one :class:`BatchResult` per source, in order, as each batch is ready.
The encoder works on batch k+1 while batch k is decoded, so the decoder's small steps hide behind the
encoder's large ones. A bad file becomes an error result; the rest of the batch goes on.

Beside it: ``folders.py`` (a folder run and its result file), ``records.py`` (result records, files, resume),
``uploads.py`` (the app's uploads and zips).
"""
from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from captioning.decoding.captions import Caption
from captioning.decoding.config import DecodeConfig
from captioning.vision.images import ImageSource, InvalidImageError, load_image, to_canonical

DEFAULT_BATCH_SIZE = 16
LOAD_WORKERS = 2                # images decoded at once per batch run (PIL releases the GIL while decoding)


@dataclass
class BatchResult:
    """What one source became: its n-best list (best first), or the reason it could not be captioned."""

    index: int                          # position in the input
    name: str                           # path or upload name, as given
    captions: list[Caption] | None
    error: str | None = None
    trust: object | None = None         # retrieval.Assessment of the best caption, where the bundle has an index
    memory: object | None = None        # memory_use.MemoryUse: the remembered captions used, words copied

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def best(self) -> Caption | None:
        return self.captions[0] if self.captions else None


def caption_stream(captioner, sources: Iterable[ImageSource], config: DecodeConfig,
                   batch_size: int = DEFAULT_BATCH_SIZE, names: Sequence[str] | None = None,
                   neighbours: int = 0, memory=None) -> Iterator[BatchResult]:
    """Caption every source through ``captioner``'s encoder and decoder ``batch_size`` at a time.

    Yields one :class:`BatchResult` per source, in input order, each batch as soon as it is decoded.
    Every file goes through :func:`captioning.vision.images.load_image`; one that fails gets an error result.
    Where the bundle has a retrieval index, each result carries its in-domain assessment (with ``neighbours``
    nearest training photos). ``memory`` (a :class:`~captioning.service.memory.use.CaptionMemory`) decodes with the
    remembered captions and gives each result its ``memory`` use.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch size must be a whole number >= 1, got {batch_size!r}")
    encode = captioner.encode

    def prepare(start: int, chunk: list):                 # runs in the encoder thread
        loaded = list(loaders.map(_load, chunk))          # [(uint8 (224, 224, 3) | None, error | None)]
        good = [i for i, (array, _) in enumerate(loaded) if array is not None]
        features = encode(np.stack([loaded[i][0] for i in good])) if good else None   # (G, D), (G, P, D) or multi
        return start, chunk, [err for _, err in loaded], good, features

    def finish(job) -> Iterator[BatchResult]:              # runs in the caller's thread, overlapping the next encode
        start, chunk, errors, good, features = job.result()
        uses: list = []
        if good and memory is not None:
            decoded, uses = memory.decode(captioner, features, config)
        else:
            decoded = captioner.decode(features, config) if good else []
        nbest, used = dict(zip(good, decoded)), dict(zip(good, uses))
        trust = {}
        if good and captioner.can_assess:
            trust = dict(zip(good, captioner.assess(features, [d[0] for d in decoded], neighbours)))
        for i in range(len(chunk)):
            index = start + i
            name = names[index] if names is not None else _name_of(chunk[i], index)
            yield BatchResult(index, name, nbest.get(i), errors[i], trust.get(i), used.get(i))

    with ThreadPoolExecutor(1, thread_name_prefix="encode") as encoder, \
            ThreadPoolExecutor(LOAD_WORKERS, thread_name_prefix="load") as loaders:
        pending: deque = deque()
        try:
            for start, chunk in _chunks(sources, batch_size):
                pending.append(encoder.submit(prepare, start, chunk))
                if len(pending) > 1:
                    yield from finish(pending.popleft())
            while pending:
                yield from finish(pending.popleft())
        finally:                                  # Ctrl-C or a consumer that stops: no batch is encoded for nobody
            for job in pending:
                job.cancel()


def _chunks(items: Iterable, size: int) -> Iterator[tuple[int, list]]:
    chunk, start = [], 0
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield start, chunk
            start, chunk = start + size, []
    if chunk:
        yield start, chunk


def _load(source) -> tuple[np.ndarray | None, str | None]:
    try:
        if isinstance(source, np.ndarray):
            from PIL import Image
            source = Image.fromarray(np.asarray(source, np.uint8))
        return to_canonical(load_image(source)), None
    except InvalidImageError as exc:
        return None, str(exc)


def _name_of(source, index: int) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    return getattr(source, "name", None) or f"image {index + 1}"
