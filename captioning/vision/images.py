"""The one safe image loader every entry point uses (app, CLI, training, API), with bounded memory.

Memory bound: decoding one accepted image takes at most ``MAX_DECODE_BYTES`` (256 MB) above what the
process already holds, plus the file itself (at most ``MAX_BYTES``, 20 MB): tests/test_images.py measures
the peak of the worst accepted files of every format in a fresh process and holds it under 300 MB
(before: a 95 KB 16-bit 7000x7000 PNG took 1.2 GB). How:

* only JPEG, PNG, WebP, BMP and GIF are opened (a float TIFF renamed ``.png`` is refused);
* JPEGs are decoded at reduced scale (draft mode: 1/2, 1/4 or 1/8) straight to at most ``MAX_SIDE``;
* before any pixel is decoded, the declared size is checked against ``MAX_PIXELS`` and the peak the
  decode would take (bytes per pixel of its mode and format, see ``_BYTES_PER_PIXEL``) against
  ``MAX_DECODE_BYTES``: what would not fit is refused with a message naming the limit;
* the raster is shrunk to ``MAX_SIDE`` on its longer side in its own mode (``Image.reduce``, box
  filter) before any conversion, so rotation, 16-bit/float scaling and alpha compositing run on a
  small image.

Concurrency: at most ``DECODE_CONCURRENCY`` images (default 2, ``$CAPTIONING_DECODE_CONCURRENCY``)
decode at once in a process; further callers wait their turn. The app, the CLI and any API get this
through :func:`load_image`, so N simultaneous uploads cost at most 2 x the bound, not N x.
"""
from __future__ import annotations

import io
import os
import threading
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

# Training images are Flickr8k copies resized to this square; every other image is brought through
# the same step first, so the encoder sees the world it was trained on (measured: +.006 BLEU-4 on
# full-size photos against resizing straight to the encoder's input size).
CANONICAL_SIZE = 224
MAX_BYTES = 20 * 1024 * 1024          # matches .streamlit/config.toml's maxUploadSize
MAX_PIXELS = 50_000_000               # ~7000x7000; larger declared sizes are refused before decoding
MAX_DECODE_BYTES = 256 * 1024 * 1024  # decoding budget per image (e.g. 50 M RGB, 33 M RGBA, 16 M WebP pixels)
MAX_SIDE = 2048                       # longer side of the returned image (the model sees 224x224)
DECODE_CONCURRENCY = max(1, int(os.environ.get("CAPTIONING_DECODE_CONCURRENCY") or 2))
SUPPORTED_TYPES = ("jpg", "jpeg", "png", "webp", "bmp", "gif")
PIL_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF")       # JPEG includes MPO (multi-picture phone photos)

# Peak bytes per pixel of decoding and shrinking each mode (measured with tests/test_images.py's probe):
# Pillow stores 1 byte for grey and palette, 2 for 16-bit grey, 4 for RGB/CMYK/32-bit; shrinking RGBA and
# LA goes through a premultiplied copy (x2), a palette image through an RGB(A) copy, and Pillow's WebP
# decoder holds libwebp's RGBA buffer beside its own (~16 bytes per pixel in all).
_BYTES_PER_PIXEL = {"1": 1, "L": 1, "I;16": 3, "I;16L": 3, "I;16B": 3, "I;16N": 3,
                    "LA": 8, "La": 8, "PA": 8, "RGBA": 8, "RGBa": 8}
_WEBP_BYTES_PER_PIXEL = 16
_DECODE_SLOTS = threading.BoundedSemaphore(DECODE_CONCURRENCY)
Image.init()                                                    # registers the WebP opener

ImageSource = str | os.PathLike | bytes | bytearray | BinaryIO | Image.Image


class InvalidImageError(ValueError):
    """The input is not an image we can caption; the message is meant for a person."""


def load_image(source: ImageSource, max_bytes: int = MAX_BYTES) -> Image.Image:
    """Open ``source`` (path, bytes, file object or PIL image) as an upright RGB image.

    Handles EXIF rotation, alpha and palette images (composited on white), grayscale, 16-bit,
    CMYK and animated images (first frame). Images larger than ``MAX_SIDE`` come back shrunk to it
    (aspect ratio kept). Raises :class:`InvalidImageError` for anything else: empty or oversized files,
    non-images and other formats, truncated files, decompression bombs and images whose decoded
    pixels would exceed ``MAX_DECODE_BYTES``. At most ``DECODE_CONCURRENCY`` calls decode at once.
    """
    if isinstance(source, Image.Image):
        image = source
        _check_size(image.size)
        with _DECODE_SLOTS:
            return _finish(_shrink(image))
    data = _read_bytes(source, max_bytes)
    with _DECODE_SLOTS:
        return _finish(_decode(data))


def _decode(data: bytes) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=PIL_FORMATS)
            _check_size(image.size)
            image.seek(0)
            if image.format in ("JPEG", "MPO"):
                # Decode at 1/2, 1/4 or 1/8 scale where that still leaves at least MAX_SIDE pixels.
                image.draft("RGB" if image.mode in ("RGB", "YCbCr") else image.mode, (MAX_SIDE, MAX_SIDE))
            _check_decode_bytes(image)
            image.load()
            return _shrink(image)
    except InvalidImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidImageError("The image is too large to process (declared size exceeds "
                                f"{MAX_PIXELS:,} pixels).") from exc
    except UnidentifiedImageError as exc:
        raise InvalidImageError("The file is not an image we can read. Use a JPEG, PNG, WebP, BMP "
                                "or GIF file.") from exc
    except MemoryError as exc:
        raise InvalidImageError("The image is too large to decode on this machine. Use a smaller image.") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InvalidImageError(f"The image file is damaged or truncated ({exc}).") from exc


def _finish(image: Image.Image) -> Image.Image:
    try:
        image = ImageOps.exif_transpose(image) or image
    except Exception:  # a broken EXIF block must not stop captioning; keep the stored orientation
        pass
    return _to_rgb(image)


def decode_bytes(image: Image.Image) -> int:
    """Peak bytes that decoding and shrinking ``image`` (opened, not yet loaded) takes."""
    w, h = image.size
    if image.format == "WEBP":
        per_pixel = _WEBP_BYTES_PER_PIXEL
    elif image.mode == "P":
        per_pixel = 1 + (8 if "transparency" in image.info else 4)
    else:
        per_pixel = _BYTES_PER_PIXEL.get(image.mode, 4)
    return w * h * per_pixel


def _check_decode_bytes(image: Image.Image) -> None:
    need = decode_bytes(image)
    if need > MAX_DECODE_BYTES:
        w, h = image.size
        raise InvalidImageError(
            f"The image is too large to decode within the memory limit ({w}x{h} pixels, mode {image.mode}: "
            f"decoding needs {need / 2**20:.0f} MB; the limit is {MAX_DECODE_BYTES / 2**20:.0f} MB). "
            f"Use a smaller image (for example at most 4000x4000 pixels).")


def _shrink(image: Image.Image) -> Image.Image:
    """Bring the longer side down to MAX_SIDE in the image's own mode, before any conversion."""
    longest = max(image.size)
    if longest <= MAX_SIDE:
        return image
    if image.mode == "P":                          # palette indices cannot be averaged
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        # One box resize: Pillow cannot ``reduce`` 16-bit images, so no ``reducing_gap`` (with it, anything 4x or
        # more above MAX_SIDE, e.g. a valid 8200x6000 16-bit PNG, failed with "image has wrong mode")
        return image.resize(_fit(image.size), Image.Resampling.BOX)
    factor = longest // MAX_SIDE                   # the largest whole factor that keeps at least MAX_SIDE
    if factor > 1:
        image = image.reduce(factor)
    return image.resize(_fit(image.size), Image.Resampling.BOX) if max(image.size) > MAX_SIDE else image


def _fit(size: tuple[int, int]) -> tuple[int, int]:
    w, h = size
    scale = MAX_SIDE / max(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def to_canonical(image: Image.Image) -> np.ndarray:
    """RGB image -> uint8 array (CANONICAL_SIZE, CANONICAL_SIZE, 3), antialiased like the training copies."""
    if image.size != (CANONICAL_SIZE, CANONICAL_SIZE):
        image = image.resize((CANONICAL_SIZE, CANONICAL_SIZE), Image.Resampling.LANCZOS)
    return np.asarray(image, dtype=np.uint8)


def _read_bytes(source: ImageSource, max_bytes: int) -> bytes:
    if isinstance(source, (bytes, bytearray)):
        data = bytes(source)
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise InvalidImageError(f"No image file at {path}.")
        if path.stat().st_size > max_bytes:
            raise InvalidImageError(_too_big(path.stat().st_size, max_bytes))
        data = path.read_bytes()
    elif hasattr(source, "read"):
        data = source.read(max_bytes + 1)
        if hasattr(source, "seek"):
            source.seek(0)
    else:
        raise InvalidImageError(f"Cannot read an image from a {type(source).__name__}.")
    if not data:
        raise InvalidImageError("The file is empty.")
    if len(data) > max_bytes:
        raise InvalidImageError(_too_big(len(data), max_bytes))
    return data


def _too_big(n: int, limit: int) -> str:
    return f"The file is larger than the {limit / 2**20:g} MB limit ({n:,} bytes). Use a smaller image."


def _check_size(size: tuple[int, int]) -> None:
    w, h = size
    if w < 1 or h < 1:
        raise InvalidImageError("The image has no pixels.")
    if w * h > MAX_PIXELS:
        raise InvalidImageError(f"The image is too large to process ({w}x{h} pixels; the limit is "
                                f"{MAX_PIXELS:,} pixels).")


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB" and "transparency" not in image.info:     # an RGB PNG's tRNS colour is composited below
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(image, dtype=np.float64)
        hi = arr.max() or 1.0
        image = Image.fromarray((arr / (hi if hi > 255 else 255) * 255).clip(0, 255).astype(np.uint8), "L")
    if image.mode == "F":
        arr = np.asarray(image, dtype=np.float64)
        span = (arr.max() - arr.min()) or 1.0
        image = Image.fromarray(((arr - arr.min()) / span * 255).astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode in ("RGB", "L", "1") and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


ImageFile.LOAD_TRUNCATED_IMAGES = False  # truncated files are errors, not half-grey captions
