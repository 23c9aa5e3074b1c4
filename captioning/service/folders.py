"""A folder run: walk folders for photos, caption them through the batch stream, and keep the result file up to
date after every batch.

Result files (``.csv``, ``.jsonl``, ``.json``) are rewritten atomically after every batch, so an interrupted
run leaves a valid file and rerunning with the same output skips what it already holds (files that failed
are tried again); ``records.py`` reads and writes them.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from captioning.decoding.config import DecodeConfig
from captioning.files import atomic_write
from captioning.service.batch import DEFAULT_BATCH_SIZE, BatchResult, caption_stream
from captioning.service.records import (
    _merged,
    judged,
    output_format,
    plan_resume,
    records_text,
    same_file_key,
    to_record,
)
from captioning.vision.images import SUPPORTED_TYPES

IMAGE_SUFFIXES = frozenset(f".{t}" for t in SUPPORTED_TYPES)


def gather_images(paths: Iterable[str | os.PathLike]) -> list[str]:
    """Files as given (the loader judges them) and, for each folder, its image files, recursively and sorted.

    Hidden files and folders (``.thumbnails``, ``.DS_Store``...) are skipped inside folders; a path that
    does not exist is kept, so it gets its own error result. Symbolic links are followed, to files and to
    folders alike and wherever they point; each real folder is walked once (so a link loop ends) and each photo
    is listed once, under the first name it was met by (``../b/x.jpg`` and ``/abs/b/x.jpg`` are one photo).
    """
    found: list[str] = []
    photos: set[str] = set()
    walked: set[str] = set()

    def add(name: str) -> None:
        if (key := same_file_key(name)) not in photos:
            photos.add(key)
            found.append(name)

    for given in paths:
        path = Path(given)
        if not path.is_dir():
            add(str(given))
            continue
        for root, dirs, files in os.walk(path, followlinks=True):
            real = os.path.realpath(root)
            if real in walked:                    # reached again through a link (or a loop): walked already
                dirs[:] = []
                continue
            walked.add(real)
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for f in sorted(files):
                if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_SUFFIXES:
                    add(str(Path(root) / f))
    return found


@dataclass
class RunSummary:
    captioned: int = 0
    failed: int = 0
    skipped: int = 0                   # already in the output file (resume)
    interrupted: bool = False          # Ctrl-C: what was captioned until then is saved

    def line(self, out: str | None = None) -> str:
        text = f"captioned {self.captioned}, failed {self.failed}"
        if self.skipped:
            text += f", skipped {self.skipped} already in {out}"
        return text


def caption_files(captioner, paths: Sequence[str], config: DecodeConfig, out: str | os.PathLike | None = None,
                  batch_size: int = DEFAULT_BATCH_SIZE,
                  on_result: Callable[[BatchResult], None] | None = None,
                  progress: bool = False, neighbours: int = 0, run: dict | None = None,
                  recaption: bool = False, stream: Callable[[list[str]], Iterable[BatchResult]] | None = None,
                  save_share: float | None = None, memory=None) -> RunSummary:
    """Caption the image files ``paths`` (folders already gathered) and, with ``out``, keep the records there.

    With ``out``, the photos it already holds without an error are skipped (resume, see :func:`plan_resume`;
    ``run`` and ``recaption`` as there), and it is rewritten atomically after every batch in its format (by
    suffix), every earlier row and every column the user added kept. ``on_result`` sees every new result.
    Ctrl-C stops the run after saving what was captioned (``summary.interrupted``). ``stream`` (the photos to
    caption -> their results, in any order) replaces this process's :func:`caption_stream`, e.g. a Ray pipeline
    (:mod:`captioning.service.ray_engine`); with ``save_share``, the file is rewritten after a batch only once the time
    since the last save is at least that save's duration / ``save_share`` (a large file is not rewritten for
    every 16 photos).
    """
    suffix = output_format(out) if out is not None else None
    plan = plan_resume(out, paths, run, recaption)
    records, rows = plan.records, plan.rows
    summary = RunSummary(skipped=plan.skipped)

    def keep(result: BatchResult, extra: dict | None = None) -> None:
        record = to_record(result, config.num_return_sequences, neighbours, run)
        record.update(extra or {})                  # what on_result adds, e.g. where --write-metadata wrote
        key = same_file_key(result.name)
        if key in rows:
            records[rows[key]] = _merged(records[rows[key]], record)
        else:
            rows[key] = len(records)
            records.append(record)

    saved = [0.0, 0.0]                              # when the last save ended, how long it took

    def save() -> None:
        if out is not None:
            began = time.monotonic()
            atomic_write(out, records_text(records, suffix, plan.header), newline="")
            ended = time.monotonic()
            saved[:] = ended, ended - began

    def save_due() -> bool:
        return save_share is None or time.monotonic() - saved[0] >= saved[1] / save_share

    from tqdm.auto import tqdm

    pending = 0
    results = stream(plan.todo) if stream is not None else caption_stream(captioner, plan.todo, config, batch_size,
                                                                          neighbours=neighbours, memory=memory)
    try:
        with tqdm(total=len(plan.todo), unit="img", desc="captioning", disable=not progress or not plan.todo) as bar:
            for result in results:
                result = judged(result)
                if result.ok:
                    summary.captioned += 1
                else:
                    summary.failed += 1
                keep(result, on_result(result) if on_result is not None else None)
                bar.update(1)
                pending += 1
                if pending >= batch_size and save_due():
                    save()
                    pending = 0
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        getattr(results, "close", lambda: None)()  # a pipeline stopped early lets go of its workers now
    if pending or not plan.todo:
        save()
    return summary
