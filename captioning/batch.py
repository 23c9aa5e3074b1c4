"""Caption many photos at once: batched captioning, folder walking, result records and their files.

Data flows: sources (paths, bytes, images) -> safe loader (a few at a time, in threads) -> encoder in
batches -> decoder in batches -> one :class:`BatchResult` per source, in order, as each batch is ready.
The encoder works on batch k+1 while batch k is decoded, so the decoder's small steps hide behind the
encoder's large ones. A bad file becomes an error result; the rest of the batch goes on.

Result files (``.csv``, ``.jsonl``, ``.json``) are rewritten atomically after every batch, so an interrupted
run leaves a valid file and rerunning with the same output skips what it already holds (files that failed
are tried again).
"""
from __future__ import annotations

import csv
import io
import json
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .decoding import Caption, DecodeConfig
from .files import atomic_write
from .images import SUPPORTED_TYPES, ImageSource, InvalidImageError, load_image, to_canonical

IMAGE_SUFFIXES = frozenset(f".{t}" for t in SUPPORTED_TYPES)
OUTPUT_FORMATS = (".csv", ".jsonl", ".json")
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

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def best(self) -> Caption | None:
        return self.captions[0] if self.captions else None


def caption_stream(captioner, sources: Iterable[ImageSource], config: DecodeConfig,
                   batch_size: int = DEFAULT_BATCH_SIZE, names: Sequence[str] | None = None,
                   neighbours: int = 0) -> Iterator[BatchResult]:
    """Caption every source through ``captioner``'s encoder and decoder ``batch_size`` at a time.

    Yields one :class:`BatchResult` per source, in input order, each batch as soon as it is decoded.
    Every file goes through :func:`captioning.images.load_image`; one that fails gets an error result.
    Where the bundle has a retrieval index, each result carries its in-domain assessment (with ``neighbours``
    nearest training photos).
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
        decoded = captioner.decode(features, config) if good else []
        nbest = dict(zip(good, decoded))
        trust = {}
        if good and captioner.can_assess:
            trust = dict(zip(good, captioner.assess(features, [d[0] for d in decoded], neighbours)))
        for i in range(len(chunk)):
            index = start + i
            name = names[index] if names is not None else _name_of(chunk[i], index)
            yield BatchResult(index, name, nbest.get(i), errors[i], trust.get(i))

    with ThreadPoolExecutor(1, thread_name_prefix="encode") as encoder, \
            ThreadPoolExecutor(LOAD_WORKERS, thread_name_prefix="load") as loaders:
        pending: deque = deque()
        for start, chunk in _chunks(sources, batch_size):
            pending.append(encoder.submit(prepare, start, chunk))
            if len(pending) > 1:
                yield from finish(pending.popleft())
        while pending:
            yield from finish(pending.popleft())


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


# ---- gathering files -------------------------------------------------------------------------------------

def gather_images(paths: Iterable[str | os.PathLike]) -> list[str]:
    """Files as given (the loader judges them) and, for each folder, its image files, recursively and sorted.

    Hidden files and folders (``.thumbnails``, ``.DS_Store``...) are skipped inside folders; a path that
    does not exist is kept, so it gets its own error result.
    """
    found: list[str] = []
    for given in paths:
        path = Path(given)
        if not path.is_dir():
            found.append(str(given))
            continue
        for root, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            found.extend(str(Path(root) / f) for f in sorted(files)
                         if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_SUFFIXES)
    seen: set[str] = set()
    return [p for p in found if not (p in seen or seen.add(p))]


# ---- records and files -----------------------------------------------------------------------------------

def to_record(result: BatchResult, n_best: int = 1, neighbours: int = 0) -> dict:
    """A flat, JSON-safe record: path, caption, log p (sum and per token), the n-best list where asked, error;
    and, where the bundle has a retrieval index, ``in_domain`` / ``confidence`` (+ ``neighbours``)."""
    record = {"path": result.name, "caption": None, "log_prob": None, "mean_log_prob": None, "error": result.error}
    if result.ok and result.captions:
        best = result.captions[0]
        record.update(caption=best.text, log_prob=round(best.log_prob, 4),
                      mean_log_prob=round(best.normalized_log_prob, 4))
        if n_best > 1:
            record["n_best"] = [{"caption": c.text, "log_prob": round(c.log_prob, 4), "score": round(c.score, 4)}
                                for c in result.captions[:n_best]]
        if result.trust is not None:
            record.update(result.trust.to_json(neighbours))
    return record


def records_csv(records: Sequence[dict]) -> str:
    """CSV text; an n-best list becomes columns caption_2, log_prob_2, ... beside the best caption."""
    extra = max((len(r.get("n_best") or []) for r in records), default=0)
    columns = ["path", "caption", "log_prob", "mean_log_prob"]
    if any("in_domain" in r for r in records):
        columns += ["in_domain", "confidence"]
    columns += [f"{field}_{k}" for k in range(2, extra + 1) for field in ("caption", "log_prob")]
    columns += ["error"]
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in records:
        row = {k: ("" if r.get(k) is None else r[k]) for k in columns}
        for k, alt in enumerate((r.get("n_best") or [])[1:], 2):
            row[f"caption_{k}"], row[f"log_prob_{k}"] = alt["caption"], alt["log_prob"]
        writer.writerow(row)
    return out.getvalue()


def records_text(records: Sequence[dict], suffix: str) -> str:
    if suffix == ".csv":
        return records_csv(records)
    if suffix == ".jsonl":
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    return json.dumps(list(records), ensure_ascii=False, indent=1) + "\n"


def output_format(path: str | os.PathLike) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise ValueError(f"--out must end in .csv, .jsonl or .json, got {Path(path).name!r}")
    return suffix


def read_records(path: str | os.PathLike) -> list[dict]:
    """The records of an earlier run's output (empty if there is none). A torn last JSONL line is dropped."""
    path = Path(path)
    suffix = output_format(path)
    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8")
    try:
        if suffix == ".csv":
            rows = list(csv.DictReader(io.StringIO(text)))
            if rows and not {"path", "caption", "error"} <= set(rows[0]):
                raise ValueError("it has no path, caption and error columns")
            return [_record_from_csv(r) for r in rows]
        if suffix == ".jsonl":
            lines = [ln for ln in text.splitlines() if ln.strip()]
            records = []
            for i, line in enumerate(lines):
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    if i == len(lines) - 1:
                        break                             # torn by an interruption: that file is redone
                    raise
        else:
            records = json.loads(text) if text.strip() else []
        if not isinstance(records, list) or not all(isinstance(r, dict) and "path" in r for r in records):
            raise ValueError("it does not hold a list of records with a path")
        return records
    except (ValueError, csv.Error) as exc:
        raise ValueError(f"{path} exists but is not a caption file this command wrote ({exc}); "
                         f"choose another --out or delete it") from None


def _record_from_csv(row: dict) -> dict:
    record = {"path": row["path"], "caption": row.get("caption") or None, "error": row.get("error") or None}
    for field in ("log_prob", "mean_log_prob", "in_domain"):
        if field in row or field != "in_domain":
            record[field] = float(row[field]) if row.get(field) else None
    if "confidence" in row:
        record["confidence"] = row["confidence"] or None
    alts = [{"caption": row[f"caption_{k}"], "log_prob": float(row[f"log_prob_{k}"] or "nan")}
            for k in range(2, 100) if row.get(f"caption_{k}")]
    if alts:
        record["n_best"] = [{"caption": record["caption"], "log_prob": record["log_prob"]}, *alts]
    return record


@dataclass
class RunSummary:
    captioned: int = 0
    failed: int = 0
    skipped: int = 0                   # already in the output file (resume)

    def line(self, out: str | None = None) -> str:
        text = f"captioned {self.captioned}, failed {self.failed}"
        if self.skipped:
            text += f", skipped {self.skipped} already in {out}"
        return text


def caption_files(captioner, paths: Sequence[str], config: DecodeConfig, out: str | os.PathLike | None = None,
                  batch_size: int = DEFAULT_BATCH_SIZE,
                  on_result: Callable[[BatchResult], None] | None = None,
                  progress: bool = False, neighbours: int = 0) -> RunSummary:
    """Caption the image files ``paths`` (folders already gathered) and, with ``out``, keep the records there.

    With ``out``, files it already holds without an error are skipped (resume), and it is rewritten
    atomically after every batch in its format (by suffix). ``on_result`` sees every new result.
    """
    suffix = output_format(out) if out is not None else None
    kept = [r for r in read_records(out) if not r.get("error")] if out is not None else []
    done = {r["path"] for r in kept}
    todo = [p for p in paths if p not in done]
    summary = RunSummary(skipped=len(paths) - len(todo))
    records = list(kept)
    from tqdm.auto import tqdm

    with tqdm(total=len(todo), unit="img", desc="captioning", disable=not progress or not todo) as bar:
        pending = 0
        for result in caption_stream(captioner, todo, config, batch_size, neighbours=neighbours):
            if result.ok:
                summary.captioned += 1
            else:
                summary.failed += 1
            records.append(to_record(result, config.num_return_sequences, neighbours))
            if on_result is not None:
                on_result(result)
            bar.update(1)
            pending += 1
            if out is not None and (pending == batch_size or result.index == len(todo) - 1):
                atomic_write(out, records_text(records, suffix), newline="")
                pending = 0
    if out is not None and not todo:
        atomic_write(out, records_text(records, suffix), newline="")
    return summary


# ---- uploads (the app's Batch page): photos and zips of photos ------------------------------------------

MAX_ZIP_MEMBERS = 2000                 # files listed in one zip (folders and skipped files included)
MAX_ZIP_BYTES = 256 * 2**20            # total uncompressed size of the photos taken from one zip


@dataclass
class Upload:
    """One file to caption: its name (a zip member is ``archive.zip/inner/path.jpg``) and its bytes, or the
    reason it was refused before captioning."""

    name: str
    data: bytes | None
    error: str | None = None


def expand_uploads(files: Iterable[tuple[str, bytes]]) -> tuple[list[Upload], list[str]]:
    """Uploaded files -> the photos to caption, a zip's image members taken out (safely); and the names of
    files skipped as not photos (a zip's text files, folders' hidden files...)."""
    photos: list[Upload] = []
    skipped: list[str] = []
    for name, data in files:
        if Path(name).suffix.lower() == ".zip":
            taken, passed = photos_from_zip(name, data)
            photos.extend(taken)
            skipped.extend(passed)
        else:
            photos.append(Upload(name, data))
    return photos, skipped


def photos_from_zip(name: str, data: bytes, max_members: int = MAX_ZIP_MEMBERS,
                    max_total: int = MAX_ZIP_BYTES) -> tuple[list[Upload], list[str]]:
    """The image members of a zip, read into memory (nothing is written to disk), within bounds.

    A zip that cannot be read, lists more than ``max_members`` files or would unpack to more than
    ``max_total`` bytes becomes one error; a member with an unsafe path (absolute, ``..``) or over the
    per-image limit becomes an error of its own; members that are not images (by extension) are skipped.
    Sizes are enforced on the bytes actually inflated, not only on what the zip declares.
    """
    import zipfile

    from .images import MAX_BYTES

    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        return [Upload(name, None, f"The zip file cannot be read ({exc}). Upload photos or a valid zip.")], []
    if len(members) > max_members:
        return [Upload(name, None, f"The zip holds {len(members):,} files; the limit is {max_members:,}. "
                                   "Split it into smaller zips.")], []
    photos, skipped, total = [], [], 0
    for info in members:
        inner = info.filename
        parts = inner.replace("\\", "/").split("/")
        if info.is_dir():
            continue
        label = f"{name}/{inner}"
        if inner.startswith(("/", "\\")) or ".." in parts or (len(inner) > 1 and inner[1] == ":"):
            photos.append(Upload(label, None, "Unsafe path inside the zip (absolute or with '..'); "
                                              "the file was not read."))
            continue
        if Path(inner).suffix.lower() not in IMAGE_SUFFIXES or any(p.startswith(".") or p == "__MACOSX"
                                                                   for p in parts if p not in ("", ".")):
            skipped.append(label)                   # not a photo, or a hidden / macOS resource file
            continue
        if info.file_size > MAX_BYTES:
            photos.append(Upload(label, None, f"The file is larger than the {MAX_BYTES / 2**20:g} MB limit "
                                              f"({info.file_size:,} bytes). Use a smaller image."))
            continue
        if total + info.file_size > max_total:
            return [Upload(name, None, f"The zip unpacks to more than {max_total / 2**20:g} MB of photos. "
                                       "Split it into smaller zips.")], []
        try:
            with archive.open(info) as member:
                content = member.read(MAX_BYTES + 1)       # never more than the limit, whatever it declares
        except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError, RuntimeError) as exc:
            photos.append(Upload(label, None, f"This zip member cannot be read ({exc})."))
            continue
        total += len(content)
        if len(content) > MAX_BYTES:
            photos.append(Upload(label, None, f"The file is larger than the {MAX_BYTES / 2**20:g} MB limit. "
                                              "Use a smaller image."))
            continue
        photos.append(Upload(label, content))
    return photos, skipped


def caption_uploads(captioner, uploads: Sequence[Upload], config: DecodeConfig,
                    batch_size: int = DEFAULT_BATCH_SIZE) -> Iterator[BatchResult]:
    """Caption uploads in batches; refused ones (zip errors) come back as error results, in order."""
    good = [i for i, u in enumerate(uploads) if u.error is None]
    results = caption_stream(captioner, [uploads[i].data for i in good], config, batch_size,
                             names=[uploads[i].name for i in good])
    nxt = 0
    for result in results:
        while nxt < good[result.index]:            # refused uploads before this one
            yield BatchResult(nxt, uploads[nxt].name, None, uploads[nxt].error)
            nxt += 1
        result.index = good[result.index]
        yield result
        nxt = result.index + 1
    for i in range(nxt, len(uploads)):
        yield BatchResult(i, uploads[i].name, None, uploads[i].error)
