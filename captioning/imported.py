"""Datasets the studio has imported (a user's captioned photos): the record a fine-tune keeps of its data, where
the records are found, and how one is read back for browsing.

A fine-tune writes its dataset record twice: ``dataset.json`` in its run directory when the import is done (so
a job still running already shows its data) and ``finetune.dataset`` in the new bundle's manifest. The record
holds the captions file (path, format, SHA-256), the photos folder, the counts, the skipped rows by kind, the
split's source and the photos of each split (``split_photos``), so the split browsed later is the one trained
on. The captions themselves are read again from the captions file (its SHA-256 says whether it changed since).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .data import DataError, Flickr8k
from .files import atomic_write

RECORD_FILE = "dataset.json"
RECORD_KEYS = ("file", "images_dir", "format", "sha256", "rows", "captions", "photos", "bad_by_kind", "splits",
               "split_source")


def dataset_record(data) -> dict:
    """The record of an imported :class:`~captioning.user_data.UserDataset` (JSON-ready)."""
    summary = data.summary(sample=0)
    return {**{k: summary[k] for k in RECORD_KEYS},
            "split_photos": {split: list(photos) for split, photos in data.splits.items()}}


def write_record(run_dir: str | Path, record: dict) -> Path:
    """``run_dir/dataset.json``, written atomically."""
    path = Path(run_dir) / RECORD_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(record, ensure_ascii=False, indent=1))
    return path


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _usable(record) -> bool:
    return (isinstance(record, dict) and isinstance(record.get("file"), str)
            and isinstance(record.get("images_dir"), str) and isinstance(record.get("split_photos"), dict))


@dataclass(frozen=True)
class ImportedDataset:
    """A record and where it was found: a bundle (``bundle`` set) or a job's run directory."""

    record: dict
    source: Path
    bundle: str | None = None

    @property
    def key(self) -> str:
        return f"{self.record.get('sha256', '')}:{self.record['images_dir']}"

    @property
    def name(self) -> str:
        """The captions file with its folder, as the user named them (``my-photos/captions.csv``)."""
        file = Path(self.record["file"])
        return f"{file.parent.name}/{file.name}" if file.parent.name else file.name

    @property
    def label(self) -> str:
        photos = sum(len(v) for v in self.record["split_photos"].values())
        where = f"fine-tuned into {self.bundle}" if self.bundle else "a fine-tune not finished yet"
        return f"{self.name} · {photos:,} photos ({where})"


def bundle_record(bundle: str | Path) -> dict | None:
    """The dataset record in a fine-tuned bundle's manifest (None for other bundles and older fine-tunes)."""
    manifest = _read_json(Path(bundle) / "manifest.json")
    record = (manifest.get("finetune") or {}).get("dataset") if isinstance(manifest.get("finetune"), dict) else None
    return record if _usable(record) else None


def find_imported(bundles: list[Path], run_dirs: list[Path]) -> list[ImportedDataset]:
    """The datasets recorded by these bundles and run directories, each once (a bundle's record first)."""
    found: dict[str, ImportedDataset] = {}
    for bundle in bundles:
        record = bundle_record(bundle)
        if record is not None:
            item = ImportedDataset(record, Path(bundle), Path(bundle).name)
            found.setdefault(item.key, item)
    for run in run_dirs:
        record = _read_json(Path(run) / RECORD_FILE)
        if _usable(record):
            item = ImportedDataset(record, Path(run))
            found.setdefault(item.key, item)
    return list(found.values())


def load_imported(record: dict) -> tuple[Flickr8k, str | None]:
    """The recorded dataset as records to browse (photo paths relative to its photos folder as names, the split
    trained on), and a note when the captions file changed since. DataError with what to do when it is gone."""
    from .user_data import load_user_data

    file, images = Path(record["file"]), Path(record["images_dir"])
    if not file.is_file():
        raise DataError(f"the captions file {file} is no longer there; import the photos again on the Train page")
    if not images.is_dir():
        raise DataError(f"the photos folder {images} is no longer there; import the photos again on the Train page")
    data = load_user_data(file, images, check_photos=False)
    note = None
    if record.get("sha256") and data.sha256 != record["sha256"]:
        note = "The captions file changed after the fine-tune read it: these are its captions as they are now."
    splits = {s: [p for p in photos if p in data.captions] for s, photos in record["split_photos"].items()
              if isinstance(photos, list)}
    kept = {p for photos in splits.values() for p in photos}
    captions = {p: caps for p, caps in data.captions.items() if p in kept}
    return Flickr8k(file.parent, images, captions, splits, name=f"user:{file.name}"), note
