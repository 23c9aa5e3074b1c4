"""The user's remembered photos ("Your photos"), kept on disk and shared by the app and the API.

One folder per encoder (a memory only serves bundles of the encoder that made its features)::

    <artifacts>/.memory/<encoder key>/memory.npy, memory.json     the user Datastore (captioning.service.memory.store)
    <artifacts>/.memory/<encoder key>/photos/<id>.jpg              a copy of each photo (at most THUMB_SIDE px)

A photo is known by its name (a zip member's path, an upload's file name); adding a name again replaces its
captions and photo. Every write is atomic (photo copies first, then the vectors, then the JSON holding their
checksum), so a crash leaves the previous memory or a refused pair (MemoryFileError: add the photos again), never a
silently mixed one. One lock per folder serialises the app's sessions and the API's requests in a process.
"""
from __future__ import annotations

import hashlib
import io
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from captioning.data.text import tokenize
from captioning.service.memory.store import Datastore, MemoryEntry, empty_datastore

FOLDER = ".memory"
MAX_PHOTOS = 5000               # remembered photos per encoder (search stays exact and fast below this)
THUMB_SIDE = 512                # the stored copy's longest side (for the lists; features come from the original)
MAX_CAPTIONS = 10               # captions kept per photo
MAX_CAPTION_CHARS = 500
_LOCKS: dict[Path, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def default_root() -> Path:
    from captioning.artifacts.bundle import artifacts_dir

    return artifacts_dir() / FOLDER


def clean_captions(text_or_list: str | Sequence[str]) -> list[str]:
    """Captions from a list or from text with one caption per line: trimmed, with words, each once, at most
    MAX_CAPTIONS; ValueError when none is left or one is too long."""
    items = text_or_list.splitlines() if isinstance(text_or_list, str) else list(text_or_list)
    out: list[str] = []
    for item in items:
        item = str(item).strip()
        if len(item) > MAX_CAPTION_CHARS:
            raise ValueError(f"a caption is {len(item)} characters long; keep each under {MAX_CAPTION_CHARS}")
        if tokenize(item) and item not in out:
            out.append(item)
    if not out:
        raise ValueError("give each photo at least one caption with words in it")
    return out[:MAX_CAPTIONS]


class MemoryBank:
    """The remembered photos of one encoder, on disk under ``root`` (default ``<artifacts>/.memory``)."""

    def __init__(self, encoder: str, dim: int, user_floor: float, root: str | Path | None = None):
        self.encoder, self.dim, self.user_floor = encoder, int(dim), float(user_floor)
        self.folder = Path(root or default_root()) / encoder
        with _LOCKS_GUARD:
            self.lock = _LOCKS.setdefault(self.folder.resolve(), threading.Lock())

    @classmethod
    def for_captioner(cls, captioner, root=None) -> MemoryBank:
        from captioning.service.memory.store import user_floor_of

        index = captioner.bundle.index
        dim = index.dim if index is not None else captioner.encoders[captioner.spec.key].feature_dim
        return cls(captioner.spec.key, dim, user_floor_of(captioner), root)

    def store(self) -> Datastore:
        """The remembered photos (an empty store when none); MemoryFileError when the files are damaged."""
        if not (self.folder / "memory.json").is_file():
            return empty_datastore(self.encoder, self.dim, self.user_floor)
        store = Datastore.load(self.folder, self.encoder, self.dim)
        store.user_floor = self.user_floor                   # the bundle's floor, whatever it was at saving
        return store

    def photo_file(self, image: str) -> Path:
        return self.folder / "photos" / (hashlib.sha256(image.encode("utf-8")).hexdigest()[:20] + ".jpg")

    def listing(self) -> list[dict]:
        """[{image, captions, photo (path of the stored copy)}] in the order added."""
        store = self.store()
        return [{"image": img, "captions": caps, "photo": self.photo_file(img)}
                for (img, _), caps in zip(store.photos, store.captions)]

    def add(self, captioner, items: Sequence[tuple[str, object, Sequence[str]]],
            on_batch: Callable[[int, int], None] | None = None) -> Datastore:
        """Remember ``items`` (name, photo as a path or bytes, captions); returns the new store. Features come from
        ``captioner``'s own encoder (cached by content). ValueError (with what to do) refuses the whole batch."""
        from captioning.files import atomic_write
        from captioning.service.memory.user import photo_features
        from captioning.vision.images import load_image

        items = [(str(name).replace("\\", "/"), photo, clean_captions(caps)) for name, photo, caps in items]
        if not items:
            raise ValueError("no photos to remember")
        if captioner.spec.key != self.encoder:
            raise ValueError(f"this memory holds {self.encoder} features; the model uses {captioner.spec.key}")
        datas = [photo if isinstance(photo, (bytes, bytearray)) else Path(photo).read_bytes()
                 for _, photo, _ in items]
        ids = ["user-" + hashlib.sha256(d).hexdigest()[:24] for d in datas]
        thumbs = [_thumbnail(load_image(bytes(d))) for d in datas]              # InvalidImageError: not a photo
        feats = photo_features(captioner, dict(zip(ids, map(bytes, datas))), on_batch=on_batch)
        rows, entries = [], []
        for i, (name, _, caps) in enumerate(items):
            for caption in caps:
                rows.append(i)
                entries.append(MemoryEntry(name, caption, "user"))
        new = Datastore.from_arrays(feats[rows], entries, self.encoder, self.user_floor)
        with self.lock:
            old = self.store()
            kept = old.without({name for name, _, _ in items})
            if kept.photo_count + new.photo_count > MAX_PHOTOS:
                raise ValueError(f"the memory would hold {kept.photo_count + new.photo_count:,} photos; the limit is "
                                 f"{MAX_PHOTOS:,}. Remove some first")
            for (name, _, _), thumb in zip(items, thumbs):
                atomic_write(self.photo_file(name), thumb)
            store = kept.extended(new)
            store.save(self.folder)
        return store

    def add_dataset(self, captioner, data, on_batch=None) -> Datastore:
        """Remember every usable photo of a :class:`~captioning.data.user_data.UserDataset` (e.g. the Train page's
        import), named by their paths in it."""
        return self.add(captioner, [(p, data.path(p), data.captions[p]) for p in data.captions], on_batch)

    def remove(self, images: set[str]) -> Datastore:
        """Forget ``images`` (their vectors, captions and stored copies); KeyError for a name not remembered."""
        with self.lock:
            store = self.store()
            known = {img for img, _ in store.photos}
            unknown = sorted(set(images) - known)
            if unknown:
                raise KeyError(f"{unknown[0]} is not a remembered photo")
            store = store.without(set(images))
            store.save(self.folder)
            for image in images:
                self.photo_file(image).unlink(missing_ok=True)
        return store


def _thumbnail(image) -> bytes:
    image = image.copy()
    image.thumbnail((THUMB_SIDE, THUMB_SIDE))
    out = io.BytesIO()
    image.convert("RGB").save(out, "JPEG", quality=85)
    return out.getvalue()
