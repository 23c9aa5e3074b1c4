"""Flickr8k on disk: captions, official splits, validation and the optional download.

Two layouts are accepted in one data directory:
  * ``captions.txt``       CSV ``image,caption`` (the Kaggle layout), or
  * ``Flickr8k.token.txt`` ``image#n<TAB>caption`` (the original release; stray ``.jpg.1`` keys
                           whose image does not exist are skipped),
plus ``Flickr_8k.{train,dev,test}Images.txt`` and the images under ``Images/`` (or the original
``Flicker8k_Dataset/``).
"""
from __future__ import annotations

import csv
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from captioning.data.text import tokenize
from captioning.files import atomic_path

ENV_VAR = "FLICKR8K_DIR"
SPLITS = ("train", "dev", "test")
IMAGE_DIR_NAMES = ("Images", "Flicker8k_Dataset", "Flickr8k_Dataset")
DOWNLOAD_URLS = {
    "Flickr8k_Dataset.zip": "https://github.com/jbrownlee/Datasets/releases/download/Flickr8k/Flickr8k_Dataset.zip",
    "Flickr8k_text.zip": "https://github.com/jbrownlee/Datasets/releases/download/Flickr8k/Flickr8k_text.zip",
}


class DataError(RuntimeError):
    """The dataset is missing or malformed; the message says which file and what to do."""


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The data directory from the argument, else ``$FLICKR8K_DIR``; errors say how to set it."""
    chosen = data_dir or os.environ.get(ENV_VAR)
    if not chosen:
        raise DataError(f"No Flickr8k directory given. Pass --data-dir DIR or set {ENV_VAR}=DIR "
                        f"(get the data with: python train.py download --data-dir DIR).")
    path = Path(chosen).expanduser()
    if not path.is_dir():
        raise DataError(f"Flickr8k directory {path} does not exist. Point --data-dir / {ENV_VAR} at the "
                        f"folder holding captions.txt, or run: python train.py download --data-dir {path}")
    return path


@dataclass
class Flickr8k:
    """The dataset's records: raw captions per image, the official splits and the image folder."""

    root: Path
    images_dir: Path
    captions: dict[str, list[str]]
    splits: dict[str, list[str]]
    skipped_keys: int = 0
    image_dirs: dict[str, Path] | None = None     # per-image folders (COCO keeps train/val apart)
    name: str = "flickr8k"

    @classmethod
    def load(cls, data_dir: str | os.PathLike | None = None, check_images: bool = True) -> Flickr8k:
        root = resolve_data_dir(data_dir)
        captions, skipped = _read_captions(root)
        images_dir = _find_images_dir(root)
        splits = {s: _read_split(root, s) for s in SPLITS}
        ds = cls(root, images_dir, captions, splits, skipped)
        ds.validate(check_images=check_images)
        return ds

    def validate(self, check_images: bool = True) -> None:
        """Every split image has captions (and, if asked, a file); every caption has words."""
        for split, names in self.splits.items():
            missing = [n for n in names if n not in self.captions]
            if missing:
                raise DataError(f"{len(missing)} images of Flickr_8k.{split}Images.txt have no captions "
                                f"(first: {missing[0]}); the captions file in {self.root} does not match the "
                                f"split files. Re-download with: python train.py download --data-dir {self.root}")
        for name, caps in self.captions.items():
            if not any(tokenize(c) for c in caps):
                raise DataError(f"Image {name} has only empty captions in {self.root}; fix or remove its lines.")
        if check_images:
            listings: dict[Path, set[str]] = {}
            absent = []
            for n in sorted({n for names in self.splits.values() for n in names}):
                folder = self.image_path(n).parent
                if folder not in listings:
                    listings[folder] = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
                if n not in listings[folder]:
                    absent.append(n)
            if absent:
                raise DataError(f"{len(absent)} images listed in the split files are missing from {self.images_dir} "
                                f"(first: {absent[0]}). Re-download with: "
                                f"python train.py download --data-dir {self.root}")

    def image_path(self, name: str) -> Path:
        if self.image_dirs and name in self.image_dirs:
            return self.image_dirs[name] / name
        return self.images_dir / name

    def split_records(self, split: str, limit: int | None = None) -> list[str]:
        if split not in self.splits:
            raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        names = self.splits[split]
        return names[:limit] if limit else list(names)

    def references(self, names: list[str]) -> list[list[list[str]]]:
        """Tokenised references (all five) for each image, cleaned exactly like training captions."""
        return [[tokenize(c) for c in self.captions[n]] for n in names]


def read_token_file(path: Path) -> tuple[dict[str, list[str]], int]:
    """``image.jpg#n<TAB>caption`` lines (Flickr8k, Flickr30k) -> captions per image, skipped stray keys."""
    try:
        return _read_token_lines(path)
    except UnicodeDecodeError as exc:
        raise _not_utf8(path, exc) from None


def _read_token_lines(path: Path) -> tuple[dict[str, list[str]], int]:
    captions: dict[str, list[str]] = {}
    skipped = 0
    with path.open(encoding="utf-8-sig") as fh:     # a BOM (Windows editors) is not text
        for lineno, line in enumerate(fh, start=1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            key, sep, caption = line.partition("\t")
            if not sep or "#" not in key:
                raise DataError(f"{path}:{lineno}: expected 'image.jpg#n<TAB>caption'.")
            image = key.rsplit("#", 1)[0]
            if not image.endswith(".jpg"):  # the original Flickr8k file's stray '...jpg.1' keys
                skipped += 1
                continue
            captions.setdefault(image, []).append(caption.strip())
    return captions, skipped


def _not_utf8(path: Path, exc: UnicodeDecodeError) -> DataError:
    line = path.read_bytes()[: exc.start].count(b"\n") + 1
    return DataError(f"{path} is not UTF-8 text (line {line}, byte 0x{exc.object[exc.start]:02x}); save it as UTF-8, "
                     f"e.g.: iconv -f latin1 -t utf-8 {path.name} > {path.stem}.utf8{path.suffix} && mv "
                     f"{path.stem}.utf8{path.suffix} {path.name}")


def _read_captions(root: Path) -> tuple[dict[str, list[str]], int]:
    try:
        return _read_captions_utf8(root)
    except UnicodeDecodeError as exc:
        bad = next(p for p in (root / "captions.txt", root / "Flickr8k.token.txt") if p.is_file())
        raise _not_utf8(bad, exc) from None


def _read_captions_utf8(root: Path) -> tuple[dict[str, list[str]], int]:
    csv_path, token_path = root / "captions.txt", root / "Flickr8k.token.txt"
    captions: dict[str, list[str]] = {}
    skipped = 0
    if csv_path.is_file():
        with csv_path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None or [h.strip().lower() for h in header[:2]] != ["image", "caption"]:
                raise DataError(f"{csv_path} must be a CSV whose header is 'image,caption'.")
            for lineno, row in enumerate(reader, start=2):
                if len(row) < 2:
                    raise DataError(f"{csv_path}:{lineno}: expected 'image,caption', got {row!r}.")
                image, caption = row[0].strip(), ",".join(row[1:]).strip()
                captions.setdefault(image, []).append(caption)
    elif token_path.is_file():
        captions, skipped = read_token_file(token_path)
    else:
        raise DataError(f"No captions in {root}: expected captions.txt (CSV image,caption) or "
                        f"Flickr8k.token.txt. Get them with: python train.py download --data-dir {root}")
    if not captions:
        raise DataError(f"The captions file in {root} holds no captions.")
    return captions, skipped


def _read_split(root: Path, split: str) -> list[str]:
    path = root / f"Flickr_8k.{split}Images.txt"
    if not path.is_file():
        raise DataError(f"Missing split file {path}. The official splits come with Flickr8k_text.zip: "
                        f"python train.py download --data-dir {root}")
    try:
        names = [ln.strip() for ln in path.read_text(encoding="utf-8-sig").splitlines() if ln.strip()]
    except UnicodeDecodeError as exc:
        raise _not_utf8(path, exc) from None
    if not names:
        raise DataError(f"Split file {path} is empty.")
    return names


def _find_images_dir(root: Path) -> Path:
    for name in IMAGE_DIR_NAMES:
        if (root / name).is_dir():
            return root / name
    raise DataError(f"No image folder in {root}: expected one of {', '.join(IMAGE_DIR_NAMES)}. "
                    f"Get the images with: python train.py download --data-dir {root}")


# --- download (needs internet) ------------------------------------------------------------------
def download(data_dir: str | os.PathLike, timeout: float = 15.0, progress: bool = True) -> Path:
    """Fetch the public Flickr8k archives into ``data_dir`` and lay them out for :meth:`Flickr8k.load`.

    Offline, the first connection fails within ``timeout`` seconds with a :class:`DataError`.
    """
    from tqdm.auto import tqdm

    root = Path(data_dir).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    for filename, url in DOWNLOAD_URLS.items():
        target = root / filename
        if not target.exists():
            try:
                with atomic_path(target) as tmp, urllib.request.urlopen(url, timeout=timeout) as resp, \
                        tmp.open("wb") as out:
                    total = int(resp.headers.get("Content-Length") or 0) or None
                    with tqdm(total=total, unit="B", unit_scale=True, desc=filename, disable=not progress) as bar:
                        while chunk := resp.read(1 << 20):
                            out.write(chunk)
                            bar.update(len(chunk))
            except (TimeoutError, urllib.error.URLError, OSError) as exc:
                raise DataError(f"Could not download {url} ({exc}). Check the internet connection, or copy "
                                f"Flickr8k into {root} by hand (captions.txt or Flickr8k.token.txt, the "
                                f"Flickr_8k.*Images.txt split files and an Images/ folder).") from exc
        with zipfile.ZipFile(target) as zf, tempfile.TemporaryDirectory(dir=root) as tmpdir:
            zf.extractall(tmpdir)
            for path in Path(tmpdir).rglob("*"):
                if path.is_file() and "__MACOSX" not in path.parts:
                    in_images = path.suffix.lower() == ".jpg"
                    dest = root / ("Images" if in_images else "") / path.name
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.move(str(path), dest)
    return root
