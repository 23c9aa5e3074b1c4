"""Datasets beside Flickr8k, read into the same records (:class:`captioning.data.flickr8k.Flickr8k`).

* Flickr30k: ``results_20130124.token`` (``image.jpg#n<TAB>caption``) and ``flickr30k-images/``; splits from
  Karpathy's ``dataset_flickr30k.json`` when present, else a fixed hash split (1000 test, 1000 dev).
* COCO-format annotation JSON: ``annotations/captions_<part>.json`` ({"images": [{id, file_name}],
  "annotations": [{image_id, caption}]}), images in ``<part>/`` beside ``annotations/``; ``train*`` parts
  train, ``val*`` parts are halved into dev and test by a fixed hash unless a Karpathy ``dataset_coco.json``
  gives the splits.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from captioning.data.flickr8k import DataError, Flickr8k, resolve_data_dir

DATASETS = ("flickr8k", "flickr30k", "coco")


def _bucket(name: str) -> int:
    return int(hashlib.sha1(name.encode()).hexdigest()[:8], 16)


def _karpathy_splits(path: Path) -> dict[str, list[str]] | None:
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8-sig"))
    splits = {"train": [], "dev": [], "test": []}
    for img in data.get("images", []):
        split = {"train": "train", "restval": "train", "val": "dev", "test": "test"}.get(img.get("split"))
        if split:
            splits[split].append(img["filename"])
    return splits


def load_flickr30k(data_dir: str | os.PathLike, check_images: bool = True) -> Flickr8k:
    root = Path(data_dir)
    token = root / "results_20130124.token"
    if not token.is_file():
        raise DataError(f"No Flickr30k captions in {root}: expected results_20130124.token.")
    from captioning.data.flickr8k import read_token_file

    captions, skipped = read_token_file(token)
    images = next((root / d for d in ("flickr30k-images", "Images") if (root / d).is_dir()), None)
    if images is None:
        raise DataError(f"No Flickr30k image folder in {root}: expected flickr30k-images/ or Images/.")
    splits = _karpathy_splits(root / "dataset_flickr30k.json")
    if splits is None:
        names = sorted(captions, key=_bucket)
        splits = {"test": sorted(names[:1000]), "dev": sorted(names[1000:2000]), "train": sorted(names[2000:])}
    ds = Flickr8k(root, images, captions, splits, skipped, name="flickr30k")
    ds.validate(check_images)
    return ds


def load_coco(data_dir: str | os.PathLike, check_images: bool = True) -> Flickr8k:
    root = Path(data_dir)
    files = sorted((root / "annotations").glob("captions_*.json"))
    if not files:
        raise DataError(f"No COCO caption annotations in {root / 'annotations'} (captions_<part>.json).")
    captions: dict[str, list[str]] = {}
    image_dirs: dict[str, Path] = {}
    parts: dict[str, list[str]] = {}
    for path in files:
        part = path.stem.removeprefix("captions_")
        try:
            data = json.loads(path.read_text(encoding="utf-8-sig"))
            names = {img["id"]: img["file_name"] for img in data["images"]}
            for ann in data["annotations"]:
                captions.setdefault(names[ann["image_id"]], []).append(str(ann["caption"]).strip())
        except (KeyError, TypeError, json.JSONDecodeError) as exc:
            raise DataError(f"{path} is not COCO caption JSON ({exc}).") from exc
        for name in names.values():
            image_dirs[name] = root / part
        parts[part] = sorted(names.values())
    splits = _karpathy_splits(root / "dataset_coco.json")
    if splits is None:
        splits = {"train": [], "dev": [], "test": []}
        for part, names in parts.items():
            if part.startswith("train"):
                splits["train"] += names
            else:
                for name in names:
                    splits["dev" if _bucket(name) % 2 else "test"].append(name)
    ds = Flickr8k(root, root, captions, splits, image_dirs=image_dirs, name="coco")
    ds.validate(check_images)
    return ds


def load_dataset(kind: str = "flickr8k", data_dir: str | os.PathLike | None = None,
                 check_images: bool = True) -> Flickr8k:
    """Records of any supported dataset; Flickr8k also reads $FLICKR8K_DIR."""
    if kind == "flickr8k":
        return Flickr8k.load(data_dir, check_images)
    if kind not in DATASETS:
        raise ValueError(f"unknown dataset {kind!r}; choose one of {', '.join(DATASETS)}")
    if not data_dir:
        raise DataError(f"--data-dir is required for {kind}")
    root = resolve_data_dir(data_dir)
    return load_flickr30k(root, check_images) if kind == "flickr30k" else load_coco(root, check_images)
