"""``caption --memory FILE --memory-images DIR``: captioned photos remembered for this run (no training).

The file is read and every photo checked before the model loads (bad rows are listed with their line numbers and
skipped; a file that cannot be used stops the run with what to fix); the photos' features are computed with the
bundle's encoder once the model is loaded (cached), and each caption then carries ``memory_hits`` and
``copied_words`` (captioning.service.memory.use)."""
from __future__ import annotations

import argparse
import hashlib
import sys

from captioning.service.memory.store import K


def add_memory_options(cap: argparse.ArgumentParser) -> None:
    g = cap.add_argument_group("memory: captioned photos that change captions now, without training")
    g.add_argument("--memory", default=None, metavar="FILE", help="captions of your photos (CSV image,caption, "
                   "JSON lines, COCO captions JSON or a Flickr8k token file); photos like them are described "
                   "with their words")
    g.add_argument("--memory-images", default=None, metavar="DIR", help="the folder --memory's image paths are "
                   "relative to (default: the captions file's folder)")
    g.add_argument("--memory-k", type=int, default=K, metavar="K", help=f"remembered captions read per photo "
                   f"(default {K})")


def read_memory_file(args):
    """The checked UserDataset of --memory (None without it), before the model loads; ValueError on misuse."""
    if args.memory is None:
        if args.memory_images is not None:
            raise ValueError("--memory-images goes with --memory FILE (the captions of the photos to remember)")
        return None
    if not 1 <= args.memory_k <= 50:
        raise ValueError(f"--memory-k must be 1-50, got {args.memory_k}")
    from pathlib import Path

    from captioning.data.flickr8k import DataError
    from captioning.data.user_data import load_user_data
    from captioning.service.memory.user import describe_import

    images = args.memory_images or str(Path(args.memory).expanduser().parent)
    try:
        data = load_user_data(args.memory, images, split=False)
    except DataError as exc:
        raise ValueError(f"--memory: {exc}") from None
    print(describe_import(data), file=sys.stderr)
    return data


def memory_tag(data) -> str:
    """What a result file records beside the decoding, so a rerun with another memory is not mixed in."""
    return f"memory {hashlib.sha256(data.sha256.encode()).hexdigest()[:8]}"


def build_memory(data, captioner, k: int):
    """The run's CaptionMemory: the bundle's training photos (when it has a trust index) + the user's photos."""
    from captioning.service.memory.store import empty_datastore, training_datastore, user_floor_of
    from captioning.service.memory.use import CaptionMemory
    from captioning.service.memory.user import memory_from_dataset

    user = memory_from_dataset(data, captioner)
    if captioner.can_assess:
        store = training_datastore(captioner).extended(user)
    else:
        store = empty_datastore(user.encoder, user.dim, user_floor_of(captioner)).extended(user)
    return CaptionMemory(store, k)


def memory_lines(name: str, result) -> list[str]:
    """The terminal lines of a caption's memory use: the remembered captions used, the words copied."""
    use = getattr(result, "memory", None)
    if use is None or not use.hits:
        return []
    lines = [f"{name}\tremembered {h.entry.image} ({h.similarity:.3f}, {h.entry.source}): {h.entry.caption}"
             for h in use.hits if h.entry.source == "user"]
    if use.copied_words:
        lines.append(f"{name}\tcopied: {' '.join(use.copied_words)}")
    return lines
