"""The one image loader: every odd file a user can throw at it gives an upright RGB image or one clear error."""
import io
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from captioning.vision.images import CANONICAL_SIZE, MAX_BYTES, InvalidImageError, load_image, to_canonical


def encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def gradient(w=40, h=30) -> Image.Image:
    x = np.linspace(0, 255, w, dtype=np.uint8)[None, :].repeat(h, 0)
    return Image.fromarray(np.stack([x, x[::-1, ::-1], np.full_like(x, 90)], -1), "RGB")


GOOD = {
    "jpeg": lambda: encode(gradient(), "JPEG"),
    "png with alpha": lambda: encode(gradient().convert("RGBA"), "PNG"),
    "palette png": lambda: encode(gradient().convert("P"), "PNG"),
    "grayscale": lambda: encode(gradient().convert("L"), "PNG"),
    "16-bit png": lambda: encode(Image.fromarray((np.arange(1200).reshape(30, 40) * 50).astype(np.uint16)), "PNG"),
    "cmyk jpeg": lambda: encode(gradient().convert("CMYK"), "JPEG"),
    "webp": lambda: encode(gradient(), "WEBP"),
    "bmp": lambda: encode(gradient(), "BMP"),
    "1x1": lambda: encode(Image.new("RGB", (1, 1), (1, 2, 3)), "PNG"),
    "very wide": lambda: encode(Image.new("RGB", (4000, 3), (9, 9, 9)), "PNG"),
    "very tall": lambda: encode(Image.new("RGB", (2, 3000), (9, 9, 9)), "PNG"),
}


@pytest.mark.parametrize("name", GOOD)
def test_odd_but_valid_images_load_as_rgb(name):
    image = load_image(GOOD[name]())
    assert image.mode == "RGB" and min(image.size) >= 1
    arr = to_canonical(image)
    assert arr.shape == (CANONICAL_SIZE, CANONICAL_SIZE, 3) and arr.dtype == np.uint8


def test_alpha_is_composited_on_white():
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))      # fully transparent red
    assert load_image(encode(rgba, "PNG")).getpixel((0, 0)) == (255, 255, 255)


def test_exif_rotation_gives_the_upright_image():
    tall = Image.new("RGB", (20, 40), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6                                       # "rotate 90 CW to view"
    image = load_image(encode(tall, "JPEG", exif=exif.tobytes()))
    assert image.size == (40, 20)


def test_animated_gif_uses_first_frame():
    frames = [Image.new("RGB", (10, 10), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    r, g, b = load_image(buf.getvalue()).getpixel((5, 5))
    assert r > 200 and b < 50


def test_paths_and_file_objects(tmp_path):
    path = tmp_path / "x.jpg"
    path.write_bytes(GOOD["jpeg"]())
    assert load_image(path).size == (40, 30)
    assert load_image(str(path)).size == (40, 30)
    with path.open("rb") as fh:
        assert load_image(fh).size == (40, 30)


def bomb_png(width=30000, height=30000) -> bytes:
    """A tiny PNG whose header declares a huge image."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND",
                                                                                                            b"")


BAD = {
    "empty file": (lambda: b"", "empty"),
    "random bytes": (lambda: np.random.default_rng(0).bytes(2000), "not an image"),
    "text named .jpg": (lambda: b"hello, I am a text file\n" * 20, "not an image"),
    "truncated jpeg": (lambda: GOOD["jpeg"]()[:300], "damaged or truncated"),
    "decompression bomb": (bomb_png, "too large"),
    "over the upload limit": (lambda: b"\xff\xd8" + b"\0" * (MAX_BYTES + 10), "limit"),
}


@pytest.mark.parametrize("name", BAD)
def test_bad_inputs_raise_one_clear_error(name):
    make, message = BAD[name]
    with pytest.raises(InvalidImageError, match=message):
        load_image(make())


def test_missing_path_is_an_invalid_image(tmp_path):
    with pytest.raises(InvalidImageError, match="No image file"):
        load_image(tmp_path / "nope.jpg")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_never_escape_as_other_errors(data):
    try:
        image = load_image(data)
    except InvalidImageError:
        return
    assert image.mode == "RGB"


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=1, max_size=400), st.integers(min_value=20, max_value=2000))
def test_corrupted_real_images_never_escape(noise, position):
    data = bytearray(GOOD["jpeg"]())
    data[position % len(data): position % len(data) + len(noise)] = noise
    try:
        load_image(bytes(data))
    except InvalidImageError:
        pass


# --- bounded memory and concurrency ---------------------------------------------------------------------
PEAK_PROBE = r"""
import io, resource, sys
import numpy as np
from PIL import Image
from captioning.vision import images
kind = sys.argv[1]
make = {
    "16-bit png 7000x7000": lambda: Image.fromarray(np.zeros((7000, 7000), np.uint16)),
    "rgb png 7000x7000": lambda: Image.new("RGB", (7000, 7000)),
    "rgba png 5600x5600": lambda: Image.new("RGBA", (5600, 5600)),
    "palette png 7000x7000": lambda: Image.new("P", (7000, 7000)),
    "webp 4000x4000": lambda: Image.new("RGB", (4000, 4000)),
    "jpeg 7000x7000": lambda: Image.new("RGB", (7000, 7000)),
}[kind]()
fmt = "WEBP" if "webp" in kind else "JPEG" if "jpeg" in kind else "PNG"
buf = io.BytesIO(); make.save(buf, fmt); data = buf.getvalue(); del make
rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
base = rss()
image = images.load_image(data)
print(len(data), rss() - base, image.size[0], image.size[1])
"""
PEAK_BOUND_MB = 300        # MAX_DECODE_BYTES (256 MB) + the file and working space, as the module docstring states


@pytest.mark.parametrize("kind", ["16-bit png 7000x7000", "rgb png 7000x7000", "rgba png 5600x5600",
                                  "palette png 7000x7000", "webp 4000x4000", "jpeg 7000x7000"])
def test_decoding_the_largest_accepted_images_stays_under_the_stated_memory_bound(kind):
    import subprocess
    import sys
    from pathlib import Path

    from captioning.vision.images import MAX_DECODE_BYTES, MAX_SIDE

    done = subprocess.run([sys.executable, "-c", PEAK_PROBE, kind], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    size, peak_mb, w, h = done.stdout.split()
    assert float(peak_mb) < PEAK_BOUND_MB, f"{kind} ({int(size):,} bytes) peaked at +{peak_mb} MB"
    assert MAX_DECODE_BYTES / 2**20 < PEAK_BOUND_MB
    assert max(int(w), int(h)) <= MAX_SIDE                     # came back shrunk, aspect ratio kept
    assert int(w) == int(h)


def test_a_float_tiff_renamed_png_is_refused_before_decoding():
    data = encode(Image.fromarray(np.zeros((7000, 7000), np.float32)), "TIFF", compression="tiff_adobe_deflate")
    assert len(data) < 1_000_000
    with pytest.raises(InvalidImageError, match="not an image we can read"):
        load_image(data)


@pytest.mark.parametrize("mode, size", [("RGBA", (7000, 7000)), ("RGB", (6400, 6400)), ("LA", (6400, 6400))])
def test_images_that_cannot_decode_within_the_budget_are_refused_by_the_projects_check(mode, size):
    fmt = "WEBP" if mode == "RGB" else "PNG"
    with pytest.raises(InvalidImageError, match="memory limit .* the limit is 256 MB"):
        load_image(encode(Image.new(mode, size), fmt))


def test_a_valid_image_between_the_projects_pixel_limit_and_pillows_is_refused_by_the_project():
    from captioning.vision.images import MAX_PIXELS

    assert MAX_PIXELS < 8000 * 7000 < Image.MAX_IMAGE_PIXELS
    with pytest.raises(InvalidImageError, match=r"8000x7000 pixels; the limit is 50,000,000"):
        load_image(encode(Image.new("RGB", (8000, 7000)), "PNG"))


def test_large_images_come_back_shrunk_to_max_side_with_their_aspect_ratio():
    from captioning.vision.images import MAX_SIDE

    image = load_image(encode(gradient(4100, 2050), "PNG"))
    assert image.size == (MAX_SIDE, MAX_SIDE // 2)
    image = load_image(encode(gradient(5000, 2500), "JPEG"))      # draft mode, then exact
    assert image.size == (MAX_SIDE, MAX_SIDE // 2)


def test_at_most_decode_concurrency_images_decode_at_once(monkeypatch):
    import threading
    import time

    from captioning.vision import images

    running, peak, lock = [0], [0], threading.Lock()
    real = images._decode

    def slow_decode(data):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.05)
        try:
            return real(data)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(images, "_decode", slow_decode)
    data = GOOD["jpeg"]()
    threads = [threading.Thread(target=load_image, args=(data,)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak[0] == images.DECODE_CONCURRENCY == 2
