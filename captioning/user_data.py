"""A user's own captioned photos: read a captions file of any supported format, check every row, split by photo.

``--captions FILE --images DIR``; the format is told from the content, not the file name:

* CSV with a header ``image,caption`` (one row per caption; a photo may have several rows; Flickr8k's Kaggle
  ``captions.txt`` is this format);
* JSON lines, one ``{"image": ..., "caption": ...}`` object per line;
* COCO captions JSON: ``{"images": [{"id", "file_name"}], "annotations": [{"image_id", "caption"}]}``;
* Flickr8k ``token.txt``: ``image.jpg#n<TAB>caption`` lines.

A UTF-8 BOM is accepted. Image paths are relative to ``--images`` (subfolders allowed, ``\\`` read as ``/``);
every photo goes through the app's safe loader (:func:`captioning.images.load_image`: JPEG, PNG, WebP, any size).

Every bad row is reported with its line number and reason, and skipped (``strict`` makes any bad row an error):
``malformed`` (not a row of the format), ``bad_path`` (absolute, or outside ``--images``), ``missing_photo``,
``unreadable_photo``, ``empty_caption`` (no words: empty or punctuation only), ``duplicate`` (the same caption of
the same photo again) and ``no_caption`` (a photo none of whose rows is usable; a COCO image without
annotations). A file where more than half the rows are bad is refused with the summary.

Split: by photo, seeded (:data:`DEV_SHARE` and :data:`TEST_SHARE` of the photos, at least one each), or from a
``--split-file``: lines ``image,split`` (split ``train``, ``dev`` or ``test``; a header line is optional), photos
it does not name are not used.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from .data import DataError
from .text import tokenize

MAX_FILE_BYTES = 100 * 1024 * 1024      # a captions file above this is refused before it is read
MAX_PHOTOS = 20_000                     # an import of more photos is refused (features, time, disk)
MAX_BAD_SHARE = 0.5                     # more bad rows than this share: the file is refused
DEV_SHARE, TEST_SHARE = 0.1, 0.1        # default split by photo (seeded); at least one photo each
FORMATS = {"csv": "CSV image,caption", "jsonl": "JSON lines", "coco": "COCO captions JSON",
           "token": "Flickr8k token.txt"}
BAD_KINDS = {"malformed": "not a row of this format", "bad_path": "path outside the image folder",
             "missing_photo": "photo not found", "unreadable_photo": "photo cannot be read",
             "empty_caption": "empty or punctuation-only caption", "duplicate": "duplicate caption",
             "no_caption": "photo with no caption"}
_TOKEN_KEY = re.compile(r".+#\d+$")


@dataclass
class BadRow:
    """One skipped row: where it is (1-based line of the captions file), why, and the photo it names."""

    line: int | None
    kind: str
    reason: str
    image: str | None = None

    def describe(self) -> str:
        where = f"line {self.line}" if self.line else "(no line)"
        return f"{where}: {self.reason}" + (f" [{self.image}]" if self.image else "")


@dataclass
class UserDataset:
    """The usable captions of a user's photos, what was skipped, and the split by photo.

    ``captions`` maps a photo's path relative to the image folder to its raw captions; ``photo_ids`` maps it to
    the content id its features are cached under (``user-<sha256 prefix>``: renaming a photo reuses them).
    """

    captions_file: Path
    images_dir: Path
    format: str
    sha256: str
    rows: int
    captions: dict[str, list[str]]
    photo_ids: dict[str, str]
    bad: list[BadRow]
    splits: dict[str, list[str]] = field(default_factory=dict)
    split_source: str = ""

    @property
    def caption_count(self) -> int:
        return sum(len(c) for c in self.captions.values())

    def path(self, photo: str) -> Path:
        return self.images_dir / photo

    def references(self, photos: list[str]) -> list[list[list[str]]]:
        return [[tokenize(c) for c in self.captions[p]] for p in photos]

    def summary(self, sample: int = 5) -> dict:
        """A JSON-ready report: counts, every bad row, the split and a sample of photos with their captions."""
        words = Counter(w for caps in self.captions.values() for c in caps for w in tokenize(c))
        return {"file": str(self.captions_file), "images_dir": str(self.images_dir), "format": self.format,
                "format_label": FORMATS[self.format], "sha256": self.sha256, "rows": self.rows,
                "captions": self.caption_count, "photos": len(self.captions),
                "words": len(words), "running_words": sum(words.values()),
                "bad_rows": [vars(b) for b in self.bad],
                "bad_by_kind": dict(Counter(b.kind for b in self.bad)),
                "splits": {k: len(v) for k, v in self.splits.items()}, "split_source": self.split_source,
                "sample": [{"image": p, "captions": self.captions[p]} for p in list(self.captions)[:sample]]}

    def describe(self, max_bad: int = 20) -> str:
        """The summary for a terminal: counts, bad rows (the first ``max_bad``), the split, a sample."""
        s = self.summary(sample=3)
        lines = [f"import: {s['file']} ({s['format_label']}): {s['rows']} rows -> {s['captions']} captions of "
                 f"{s['photos']} photos, {s['words']} distinct words; {len(self.bad)} bad rows skipped"]
        for bad in self.bad[:max_bad]:
            lines.append(f"  {bad.describe()}")
        if len(self.bad) > max_bad:
            lines.append(f"  ... and {len(self.bad) - max_bad} more (--json lists them all)")
        lines.append("split: " + ", ".join(f"{k} {v}" for k, v in s["splits"].items()) + f" ({s['split_source']})")
        for item in s["sample"]:
            lines.append(f"  {item['image']}: {item['captions'][0]!r}"
                         + (f" (+{len(item['captions']) - 1} more)" if len(item["captions"]) > 1 else ""))
        return "\n".join(lines)


# --- reading the rows ----------------------------------------------------------------------------------------
def _read_text(path: Path) -> str:
    if not path.is_file():
        raise DataError(f"captions file {path} not found; pass --captions FILE (CSV image,caption, JSON lines, "
                        f"COCO captions JSON or a Flickr8k token.txt)")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise DataError(f"captions file {path} is {size / 1e6:.0f} MB; the limit is {MAX_FILE_BYTES / 1e6:.0f} MB "
                        f"(split it, or import fewer photos)")
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")                       # a BOM (Windows editors) is not part of the text
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(f"{path} is not UTF-8 text (line {line}, byte 0x{data[exc.start]:02x}); save it as UTF-8, "
                        f"e.g. iconv -f latin1 -t utf-8") from None


def detect_format(text: str) -> str:
    """``csv``, ``jsonl``, ``coco`` or ``token`` from the file's content; DataError when none fits."""
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    if not first:
        raise DataError("the captions file is empty")
    if first.startswith("{") or first.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            return "jsonl"
        if isinstance(data, dict) and "annotations" in data and "images" in data:
            return "coco"
        if isinstance(data, dict) and {"image", "caption"} <= set(data):
            return "jsonl"                                   # a single JSON line
        raise DataError("a JSON captions file must be COCO captions JSON ('images' and 'annotations') or JSON lines "
                        "({\"image\": ..., \"caption\": ...} per line)")
    key, tab, _ = first.partition("\t")
    if tab and _TOKEN_KEY.fullmatch(key.strip()):
        return "token"
    header = next(csv.reader([first]))
    if [h.strip().lower() for h in header[:2]] == ["image", "caption"]:
        return "csv"
    raise DataError(f"cannot tell the captions file's format from its first line {first[:60]!r}: expected a CSV "
                    f"header 'image,caption', JSON lines, COCO captions JSON or Flickr8k 'image.jpg#0<TAB>caption'")


def _csv_rows(text: str):
    reader = csv.reader(io.StringIO(text, newline=""))
    next(reader)
    start = reader.line_num + 1
    for row in reader:
        line, start = start, reader.line_num + 1
        if not any(cell.strip() for cell in row):
            continue
        if len(row) < 2:
            yield line, None, None, "expected 'image,caption'"
        else:                                 # an unquoted comma inside the caption stays part of it
            yield line, row[0].strip(), ",".join(row[1:]).strip(), None


def _jsonl_rows(text: str):
    for line, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError:
            yield line, None, None, "not a JSON object"
            continue
        if not isinstance(obj, dict) or not isinstance(obj.get("image"), str) or "caption" not in obj:
            yield line, None, None, "expected {\"image\": \"...\", \"caption\": \"...\"}"
        elif not isinstance(obj["caption"], str):
            yield line, obj["image"], None, "the caption is not text"
        else:
            yield line, obj["image"].strip(), obj["caption"].strip(), None


def _token_rows(text: str):
    for line, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        key, tab, caption = raw.partition("\t")
        if not tab or not _TOKEN_KEY.fullmatch(key.strip()):
            yield line, None, None, "expected 'image.jpg#n<TAB>caption'"
        else:
            yield line, key.strip().rsplit("#", 1)[0], caption.strip(), None


def _json_items_with_lines(text: str, key: str, expected: list) -> list[int | None]:
    """The 1-based line where each element of the top-level array ``key`` starts (None where unknown)."""
    match = re.search(r'"' + re.escape(key) + r'"\s*:\s*\[', text)
    lines: list[int | None] = [None] * len(expected)
    if not match:
        return lines
    decoder, pos = json.JSONDecoder(), match.end()
    for i, want in enumerate(expected):
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        try:
            obj, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            break
        if obj != want:
            break
        lines[i] = text.count("\n", 0, pos) + 1
        pos = end
    return lines


def _coco_rows(text: str):
    data = json.loads(text)
    images, annotations = data.get("images"), data.get("annotations")
    if not isinstance(images, list) or not isinstance(annotations, list):
        raise DataError("COCO captions JSON needs 'images' and 'annotations' lists")
    image_lines = _json_items_with_lines(text, "images", images)
    ann_lines = _json_items_with_lines(text, "annotations", annotations)
    names: dict = {}
    for img, line in zip(images, image_lines):
        if isinstance(img, dict) and isinstance(img.get("file_name"), str) and "id" in img:
            names[img["id"]] = (img["file_name"].strip(), line)
        else:
            yield line, None, None, "an 'images' entry needs 'id' and 'file_name'"
    used = set()
    for ann, line in zip(annotations, ann_lines):
        if not isinstance(ann, dict) or ann.get("image_id") not in names or not isinstance(ann.get("caption"), str):
            yield line, None, None, "an annotation needs an 'image_id' listed in 'images' and a 'caption'"
            continue
        used.add(ann["image_id"])
        yield line, names[ann["image_id"]][0], ann["caption"].strip(), None
    for image_id, (name, line) in names.items():
        if image_id not in used:
            yield line, name, None, "no_caption"


# --- checking photos -----------------------------------------------------------------------------------------
def _photo_problem(images_dir: Path, name: str) -> tuple[str, str] | tuple[None, str]:
    """(bad kind, reason) for a photo path that cannot be used, else (None, its content id)."""
    from .images import InvalidImageError, load_image

    rel = PurePosixPath(name.replace("\\", "/"))
    if not name or rel.is_absolute() or ".." in rel.parts or re.match(r"^[A-Za-z]:", name):
        return "bad_path", f"image path {name!r} must be relative to the image folder, without '..'"
    path = images_dir / rel
    try:
        inside = path.resolve().is_relative_to(images_dir.resolve())
    except OSError:
        inside = False
    if not inside:
        return "bad_path", f"image path {name!r} leads outside the image folder (a symbolic link?)"
    if not path.is_file():
        return "missing_photo", f"photo {name} not found in {images_dir}"
    try:
        data = path.read_bytes()
        load_image(data)
    except (InvalidImageError, OSError) as exc:
        return "unreadable_photo", f"photo {name} cannot be read: {exc}"
    return None, "user-" + hashlib.sha256(data).hexdigest()[:24]


def load_user_data(captions_file: str | Path, images_dir: str | Path, strict: bool = False,
                   split_file: str | Path | None = None, seed: int = 42, check_photos: bool = True) -> UserDataset:
    """Read, check and split a user's captioned photos; DataError when the file cannot be used at all
    (unknown format, too big, mostly bad rows, any bad row with ``strict``)."""
    captions_file, images_dir = Path(captions_file).expanduser(), Path(images_dir).expanduser()
    if not images_dir.is_dir():
        raise DataError(f"image folder {images_dir} not found; pass --images DIR (the folder the captions file's "
                        f"image paths are relative to)")
    text = _read_text(captions_file)
    fmt = detect_format(text)
    reader = {"csv": _csv_rows, "jsonl": _jsonl_rows, "coco": _coco_rows, "token": _token_rows}[fmt]
    bad: list[BadRow] = []
    captions: dict[str, list[str]] = {}
    first_line: dict[str, int | None] = {}
    seen: dict[tuple[str, tuple[str, ...]], int | None] = {}
    photo_state: dict[str, tuple[str | None, str]] = {}
    parsed = list(reader(text))
    named = {image.replace("\\", "/") for _, image, _, problem in parsed if image and not problem}
    if len(named) > MAX_PHOTOS:                  # before reading a single photo
        raise DataError(f"{captions_file} names {len(named):,} photos; import at most {MAX_PHOTOS:,} at a time")
    rows = 0
    for line, image, caption, problem in parsed:
        rows += 1
        if problem == "no_caption":
            bad.append(BadRow(line, "no_caption", f"photo {image} has no caption", image))
            continue
        if problem:
            bad.append(BadRow(line, "malformed", problem, image))
            continue
        image = image.replace("\\", "/")
        if image not in photo_state:
            photo_state[image] = _photo_problem(images_dir, image) if check_photos else (None, image)
            first_line[image] = line
        kind, detail = photo_state[image]
        if kind:
            bad.append(BadRow(line, kind, detail, image))
            continue
        words = tuple(tokenize(caption))
        if not words:
            bad.append(BadRow(line, "empty_caption", "empty or punctuation-only caption", image))
            continue
        if (image, words) in seen:
            bad.append(BadRow(line, "duplicate", f"the same caption as line {seen[image, words]}", image))
            continue
        seen[image, words] = line
        captions.setdefault(image, []).append(caption)
    for image, (kind, _) in photo_state.items():
        if kind is None and image not in captions:
            bad.append(BadRow(first_line[image], "no_caption", f"photo {image} has no usable caption", image))
    bad.sort(key=lambda b: (b.line is None, b.line or 0))
    ids = {p: photo_state[p][1] for p in captions}
    ds = UserDataset(captions_file, images_dir, fmt, hashlib.sha256(text.encode("utf-8")).hexdigest(), rows,
                     captions, ids, bad)
    if strict and bad:
        raise DataError(f"{captions_file}: {len(bad)} bad rows and --strict is set; first: {bad[0].describe()} "
                        f"(fix them, or drop --strict to skip them)")
    if rows == 0 or len(bad) > MAX_BAD_SHARE * rows or not captions:
        kinds = ", ".join(f"{n} {BAD_KINDS[k]}" for k, n in Counter(b.kind for b in bad).most_common())
        first = f"; first: {bad[0].describe()}" if bad else ""
        raise DataError(f"{captions_file}: {len(bad)} of {rows} rows are bad ({kinds or 'no rows'}){first}; is "
                        f"--images the folder the image paths are relative to?")
    ds.splits, ds.split_source = (_read_split_file(Path(split_file).expanduser(), ds) if split_file
                                  else _seeded_split(list(captions), seed))
    return ds


def _seeded_split(photos: list[str], seed: int) -> tuple[dict[str, list[str]], str]:
    if len(photos) < 3:
        raise DataError(f"only {len(photos)} usable photos; fine-tuning needs at least 3 (train, dev and test)")
    order = sorted(photos)
    random.Random(seed).shuffle(order)
    n_dev = max(1, round(DEV_SHARE * len(order)))
    n_test = max(1, round(TEST_SHARE * len(order)))
    splits = {"train": sorted(order[n_dev + n_test:]), "dev": sorted(order[:n_dev]),
              "test": sorted(order[n_dev:n_dev + n_test])}
    return splits, f"seeded by photo (seed {seed}): {DEV_SHARE:.0%} dev, {TEST_SHARE:.0%} test"


def _read_split_file(path: Path, ds: UserDataset) -> tuple[dict[str, list[str]], str]:
    if not path.is_file():
        raise DataError(f"split file {path} not found; give lines 'image,split' (split: train, dev or test)")
    splits: dict[str, list[str]] = {"train": [], "dev": [], "test": []}
    unknown = []
    for line, raw in enumerate(_read_text(path).splitlines(), 1):
        if not raw.strip():
            continue
        cells = [c.strip() for c in re.split(r"[,\t]", raw)]
        if len(cells) != 2 or cells[1].lower() not in splits:
            if line == 1 and [c.lower() for c in cells] == ["image", "split"]:
                continue
            raise DataError(f"{path}:{line}: expected 'image,split' with split train, dev or test, got {raw[:80]!r}")
        image = cells[0].replace("\\", "/")
        if image in ds.captions:
            splits[cells[1].lower()].append(image)
        else:
            unknown.append((line, image))
    if unknown:
        line, image = unknown[0]
        print(f"split file: {len(unknown)} photos have no usable captions and are left out (first: line {line}, "
              f"{image})")
    if not splits["train"] or not splits["dev"]:
        raise DataError(f"split file {path} must name at least one usable photo for train and one for dev")
    unused = len(ds.captions) - sum(len(v) for v in splits.values())
    return splits, f"split file {path.name}" + (f" ({unused} photos it does not name are not used)" if unused else "")
