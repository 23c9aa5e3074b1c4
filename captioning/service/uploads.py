"""Photos uploaded in the app: single photos and zips of photos (bounded: members, bytes), captioned through the
batch stream; and a zip of photos + captions file as a user's training dataset.
"""
from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from captioning.decoding.config import DecodeConfig
from captioning.service.batch import DEFAULT_BATCH_SIZE, BatchResult, caption_stream
from captioning.service.folders import IMAGE_SUFFIXES
from captioning.service.records import judged

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

    from captioning.vision.images import MAX_BYTES

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
        result = judged(result)
        result.index = good[result.index]
        yield result
        nxt = result.index + 1
    for i in range(nxt, len(uploads)):
        yield BatchResult(i, uploads[i].name, None, uploads[i].error)


CAPTION_SUFFIXES = (".csv", ".jsonl", ".json", ".txt")


MAX_CAPTIONS_BYTES = 64 * 2**20        # the captions file inside a zip


def dataset_from_zip(data: bytes, root: str | os.PathLike, max_members: int = MAX_ZIP_MEMBERS,
                     max_total: int = MAX_ZIP_BYTES) -> tuple[Path, Path]:
    """Unpack an uploaded dataset zip (photos in any folders + exactly one captions file) under ``root``, in a
    folder named by the zip's SHA-256 (the same zip twice is unpacked once). Returns (captions file, photos folder:
    the captions file's own folder).

    The same bounds as :func:`photos_from_zip`: member count, inflated size (counted on the bytes actually read),
    per-photo size; absolute paths, ``..`` and links are refused. The folder appears only when complete (unpacked
    beside it, then renamed), so a failure leaves nothing half-written. Raises ValueError with what to do.
    """
    import shutil
    import stat
    import uuid
    import zipfile

    from captioning.vision.images import MAX_BYTES

    root = Path(root)
    target = root / hashlib.sha256(data).hexdigest()[:16]
    if target.is_dir():
        return _dataset_files(target)
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ValueError(f"the zip file cannot be read ({exc}); upload a valid zip") from None
    if len(members) > max_members:
        raise ValueError(f"the zip holds {len(members):,} files; the limit is {max_members:,}. Use a folder on the "
                         f"server for bigger datasets")
    wanted, total = [], 0
    for info in members:
        inner = info.filename.replace("\\", "/")
        parts = inner.split("/")
        if inner.startswith("/") or ".." in parts or (len(inner) > 1 and inner[1] == ":"):
            raise ValueError(f"unsafe path inside the zip: {info.filename!r} (absolute or with '..'); nothing was "
                             f"unpacked")
        if info.is_dir() or any(p.startswith(".") or p == "__MACOSX" for p in parts if p not in ("", ".")):
            continue
        if stat.S_ISLNK(info.external_attr >> 16):
            raise ValueError(f"the zip holds a link ({info.filename!r}); zip the files themselves")
        suffix = Path(inner).suffix.lower()
        if suffix not in IMAGE_SUFFIXES and suffix not in CAPTION_SUFFIXES:
            continue
        limit = MAX_BYTES if suffix in IMAGE_SUFFIXES else MAX_CAPTIONS_BYTES
        if info.file_size > limit:
            raise ValueError(f"{inner} is larger than the {limit / 2**20:g} MB limit ({info.file_size:,} bytes)")
        total += info.file_size
        if total > max_total:
            raise ValueError(f"the zip unpacks to more than {max_total / 2**20:g} MB; use a folder on the server "
                             f"for bigger datasets")
        wanted.append((info, inner, limit))
    captions = [inner for _, inner, _ in wanted if Path(inner).suffix.lower() in CAPTION_SUFFIXES]
    if len(captions) != 1:
        found = ", ".join(captions[:5]) or "none"
        raise ValueError(f"the zip must hold exactly one captions file (.csv, .jsonl, .json or .txt) beside the "
                         f"photos; it holds {len(captions)} ({found})")
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".{target.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        read = 0
        for info, inner, limit in wanted:
            with archive.open(info) as member:
                content = member.read(limit + 1)              # never more than the limit, whatever it declares
            read += len(content)
            if len(content) > limit or read > max_total:
                raise ValueError(f"{inner} inflates past its declared size; the zip was refused")
            path = staging.joinpath(*[p for p in inner.split("/") if p not in ("", ".")])
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        (staging / ".captions").write_text(captions[0], encoding="utf-8")
        try:
            os.replace(staging, target)
        except OSError:
            if not target.is_dir():                           # else: the same zip, unpacked meanwhile by another
                raise
    except (zipfile.BadZipFile, OSError, NotImplementedError, RuntimeError) as exc:
        raise ValueError(f"the zip cannot be unpacked ({exc})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return _dataset_files(target)


def _dataset_files(folder: Path) -> tuple[Path, Path]:
    """(captions file, photos folder): the photos' paths are read relative to the captions file's folder, so a zip
    of one top folder (``mine/captions.csv``, ``mine/photos/1.jpg``) works as well as a flat one."""
    captions = folder / (folder / ".captions").read_text(encoding="utf-8")
    return captions, captions.parent
