"""The safe image loader's parts, one by one and in this process: exact messages, limits at their boundary, every
mode conversion with its expected pixels, the JPEG draft request, shrinking and its arithmetic.

The end-to-end memory bounds are measured in a fresh process (tests/test_images.py); mutation testing (mutmut)
cannot see tests that run the code in a subprocess, so what those pin down in bulk is pinned here in detail."""
import io

import numpy as np
import pytest
from PIL import Image, JpegImagePlugin, PngImagePlugin

from captioning.vision import images as im
from captioning.vision.images import InvalidImageError


def encoded(image: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def message(call, *args, **kwargs) -> str:
    with pytest.raises(InvalidImageError) as info:
        call(*args, **kwargs)
    return str(info.value)


# ---- reading the bytes ----------------------------------------------------------------------------------------

def test_too_big_message_names_the_limit_in_mb_and_the_size_in_bytes():
    assert im._too_big(2**20 + 1, 2**20) == ("The file is larger than the 1 MB limit (1,048,577 bytes). "
                                               "Use a smaller image.")
    assert im._too_big(3_000_000, int(2.5 * 2**20)) == ("The file is larger than the 2.5 MB limit (3,000,000 "
                                                         "bytes). Use a smaller image.")


def test_read_bytes_takes_bytes_bytearray_paths_and_files_up_to_the_limit_exactly(tmp_path):
    data = encoded(Image.new("RGB", (4, 3), (1, 2, 3)))
    n = len(data)
    assert im._read_bytes(data, n) == data and im._read_bytes(bytearray(data), n) == data
    path = tmp_path / "a.png"
    path.write_bytes(data)
    assert im._read_bytes(path, n) == data and im._read_bytes(str(path), n) == data     # exactly at the limit
    f = io.BytesIO(data)
    assert im._read_bytes(f, n) == data
    assert f.tell() == 0                              # rewound for whoever reads the file next


def test_read_bytes_refuses_with_exact_messages(tmp_path):
    data = encoded(Image.new("RGB", (4, 3)))
    n = len(data)
    assert message(im._read_bytes, data + b"xy", n) == im._too_big(n + 2, n)
    path = tmp_path / "big.png"
    path.write_bytes(data + b"x")
    assert message(im._read_bytes, path, n) == im._too_big(n + 1, n)
    assert message(im._read_bytes, tmp_path / "none.png", n) == f"No image file at {tmp_path / 'none.png'}."
    assert message(im._read_bytes, tmp_path, n) == f"No image file at {tmp_path}."
    # a file object is read to one byte past the limit: the message counts what was read, not the whole file
    assert message(im._read_bytes, io.BytesIO(data + b"xyz"), n) == im._too_big(n + 1, n)
    assert message(im._read_bytes, 42, n) == "Cannot read an image from a int."
    assert message(im._read_bytes, b"", n) == "The file is empty."
    assert message(im._read_bytes, io.BytesIO(b""), n) == "The file is empty."


def test_a_file_object_is_rewound_after_a_caption_load():
    f = io.BytesIO(encoded(Image.new("RGB", (8, 8), (9, 9, 9))))
    assert im.load_image(f).getpixel((0, 0)) == (9, 9, 9)
    assert f.tell() == 0


# ---- declared size and decoding budget -------------------------------------------------------------------------

def test_check_size_boundaries_and_messages():
    im._check_size((1, 1))
    im._check_size((10_000, 5_000))                   # exactly MAX_PIXELS (50,000,000) is accepted
    assert message(im._check_size, (10_001, 5_000)) == ("The image is too large to process (10001x5000 pixels; "
                                                         "the limit is 50,000,000 pixels).")
    for size in ((0, 5), (5, 0), (0, 0)):
        assert message(im._check_size, size) == "The image has no pixels."


@pytest.mark.parametrize("mode, fmt, info, per_pixel", [
    ("L", "PNG", {}, 1), ("1", "PNG", {}, 1), ("RGB", "PNG", {}, 4), ("RGBA", "PNG", {}, 8), ("LA", "PNG", {}, 8),
    ("I;16", "PNG", {}, 3), ("P", "PNG", {}, 5), ("P", "PNG", {"transparency": 0}, 9), ("RGB", "WEBP", {}, 16),
    ("RGB", "JPEG", {}, 4), ("CMYK", "JPEG", {}, 4),
])
def test_decode_bytes_per_mode_and_format(mode, fmt, info, per_pixel):
    opened = Image.open(io.BytesIO(encoded(Image.new(mode, (7, 5)), fmt, **info)))
    assert opened.mode == mode and opened.format == fmt
    assert im.decode_bytes(opened) == 7 * 5 * per_pixel


def test_the_decoding_budget_is_inclusive_and_its_message_exact(monkeypatch):
    opened = Image.open(io.BytesIO(encoded(Image.new("RGB", (700, 500)))))     # 1,400,000 bytes to decode
    monkeypatch.setattr(im, "MAX_DECODE_BYTES", 1_400_000)
    im._check_decode_bytes(opened)                                               # exactly the budget: accepted
    monkeypatch.setattr(im, "MAX_DECODE_BYTES", 2**20)
    assert message(im._check_decode_bytes, opened) == (
        "The image is too large to decode within the memory limit (700x500 pixels, mode RGB: decoding needs 1 MB; "
        "the limit is 1 MB). Use a smaller image (for example at most 4000x4000 pixels).")
    monkeypatch.setattr(im, "MAX_DECODE_BYTES", 2**19)
    assert "decoding needs 1 MB; the limit is 0 MB" in message(im._check_decode_bytes, opened)
    big = Image.open(io.BytesIO(encoded(Image.new("RGB", (2000, 1500)))))        # 12,000,000 bytes: 11.44 MB
    assert "decoding needs 11 MB; the limit is 0 MB" in message(im._check_decode_bytes, big)


# ---- decoding ---------------------------------------------------------------------------------------------------

def spy_draft(monkeypatch) -> list:
    calls = []
    original = JpegImagePlugin.JpegImageFile.draft

    def draft(self, mode, size):
        calls.append((mode, size))
        return original(self, mode, size)

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", draft)
    return calls


@pytest.mark.parametrize("mode, requested", [("RGB", "RGB"), ("L", "L"), ("CMYK", "CMYK")])
def test_jpegs_ask_for_a_reduced_decode_in_their_own_mode(monkeypatch, mode, requested):
    calls = spy_draft(monkeypatch)
    im._decode(encoded(Image.new(mode, (64, 48)), "JPEG"))
    assert calls == [(requested, (im.MAX_SIDE, im.MAX_SIDE))]


def test_multi_picture_jpegs_ask_for_a_reduced_decode_too(monkeypatch):
    data = encoded(Image.new("RGB", (64, 48), (200, 10, 10)), "MPO", save_all=True,
                   append_images=[Image.new("RGB", (64, 48))])
    assert Image.open(io.BytesIO(data)).format == "MPO"
    calls = spy_draft(monkeypatch)
    image = im._decode(data)
    assert calls == [("RGB", (im.MAX_SIDE, im.MAX_SIDE))] and image.size == (64, 48)


def test_other_formats_ask_for_no_draft(monkeypatch):
    calls = spy_draft(monkeypatch)
    for fmt in ("PNG", "WEBP", "BMP", "GIF"):
        im._decode(encoded(Image.new("RGB", (16, 8)), fmt))
    assert calls == []


def test_a_large_jpeg_is_decoded_at_reduced_scale_before_shrinking():
    # 6000 x 3000 asks for 2048: 6000 // 2048 = 2 and 3000 // 2048 = 1, so the draft keeps full scale; 4200 x 4200
    # is decoded at 1/2 (2100 x 2100) and then shrunk to 2048.
    image = Image.open(io.BytesIO(encoded(Image.new("RGB", (4200, 4200), (30, 60, 90)), "JPEG", quality=95)))
    image.draft("RGB", (im.MAX_SIDE, im.MAX_SIDE))
    assert image.size == (2100, 2100)
    decoded = im._decode(encoded(Image.new("RGB", (4200, 4200), (30, 60, 90)), "JPEG", quality=95))
    assert decoded.size == (2048, 2048)


def test_decode_errors_have_exact_messages(monkeypatch):
    assert message(im._decode, b"not an image at all") == ("The file is not an image we can read. Use a JPEG, "
                                                            "PNG, WebP, BMP or GIF file.")
    png = encoded(Image.new("RGB", (64, 64), (1, 2, 3)))
    truncated = message(im._decode, png[:60])
    assert truncated.startswith("The image file is damaged or truncated (") and truncated.endswith(").")
    # declared beyond Pillow's own bomb limit (89.5 M pixels): its warning is turned into our message
    bomb = encoded(Image.new("1", (10_000, 10_000)))
    assert message(im._decode, bomb) == ("The image is too large to process (declared size exceeds 50,000,000 "
                                         "pixels).")

    def no_memory(self):
        raise MemoryError

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", no_memory)
    assert message(im._decode, png) == "The image is too large to decode on this machine. Use a smaller image."


# ---- shrinking ----------------------------------------------------------------------------------------------------

def test_fit_keeps_the_aspect_ratio_and_at_least_one_pixel():
    assert im._fit((5000, 100)) == (2048, 41)          # 100 * 2048 / 5000 = 40.96
    assert im._fit((100, 5000)) == (41, 2048)
    assert im._fit((10_000, 1)) == (2048, 1)           # 0.2 rounds to 0: kept at 1
    assert im._fit((1, 10_000)) == (1, 2048)
    assert im._fit((2048, 2048)) == (2048, 2048)


def test_shrink_leaves_images_up_to_max_side_alone_in_their_mode():
    for mode in ("P", "RGB", "I;16", "RGBA"):
        image = Image.new(mode, (im.MAX_SIDE, 16))
        assert im._shrink(image) is image


def test_shrink_converts_palettes_before_averaging():
    plain = Image.new("P", (4096, 16), 3)
    assert (out := im._shrink(plain)).mode == "RGB" and out.size == (2048, 8)
    clear = Image.new("P", (4096, 16), 3)
    clear.info["transparency"] = 3
    out = im._shrink(clear)
    assert out.mode == "RGBA" and out.size == (2048, 8) and out.getpixel((0, 0))[3] == 0


@pytest.mark.parametrize("mode", ["I;16", "I;16L", "I;16B"])
def test_shrink_16_bit_with_a_box_filter_in_its_own_mode(mode):
    image = Image.new(mode, (5000, 10), 40_000)
    out = im._shrink(image)
    assert out.mode == mode and out.size == (2048, 4) and set(np.asarray(out).ravel()) == {40_000}
    rng = np.random.default_rng(1)
    noise = rng.integers(0, 65_536, (10, 5000)).astype(">u2" if mode == "I;16B" else "<u2")
    image = Image.frombytes(mode, (5000, 10), noise.tobytes())
    assert np.array_equal(np.asarray(im._shrink(image)), np.asarray(image.resize((2048, 4), Image.Resampling.BOX)))


def test_16_bit_images_four_times_max_side_or_more_are_shrunk_not_refused():
    # Pillow cannot reduce() 16-bit images: a resize with a reducing gap used to fail on these ("image has wrong
    # mode"), which the loader reported as a damaged file
    image = Image.new("I;16", (8200, 10), 30_000)
    assert im._shrink(image).size == (2048, 2)
    out = im.load_image(encoded(image))
    assert out.mode == "RGB" and out.size == (2048, 2) and out.getpixel((0, 0)) == (255, 255, 255)   # its own max


def test_shrink_reduces_by_the_largest_whole_factor_then_resizes():
    stripes = np.zeros((8, 4100, 3), np.uint8)
    stripes[:, 1::2] = 200                               # alternate columns: a factor-2 box gives 100 everywhere
    out = im._shrink(Image.fromarray(stripes, "RGB"))
    assert out.mode == "RGB" and out.size == (2048, 4)
    assert np.abs(np.asarray(out, np.int16) - 100).max() <= 1
    exact = Image.new("RGB", (4096, 8), (10, 20, 30))
    assert im._shrink(exact).size == (2048, 4)          # reduce(2) lands on MAX_SIDE: no resize after it
    one = Image.new("L", (3000, 9), 77)                  # 3000 // 2048 = 1: no reduce, one resize
    assert (out := im._shrink(one)).size == (2048, 6) and set(np.asarray(out).ravel()) == {77}
    lines = Image.fromarray(np.tile(np.array([0, 255, 90], np.uint8), (9, 1000)), "L")     # 3000 x 9, varied
    assert np.array_equal(np.asarray(im._shrink(lines)), np.asarray(lines.resize((2048, 6), Image.Resampling.BOX)))
    assert not np.array_equal(np.asarray(im._shrink(lines)), np.asarray(lines.resize((2048, 6))))   # not bicubic


# ---- to RGB -------------------------------------------------------------------------------------------------------

def rgb(image: Image.Image) -> np.ndarray:
    out = im._to_rgb(image)
    assert out.mode == "RGB" and out.size == image.size
    return np.asarray(out)


def grey(values) -> np.ndarray:
    return np.repeat(np.asarray(values, np.uint8)[..., None], 3, axis=2)


def test_plain_rgb_is_returned_as_it_is():
    image = Image.new("RGB", (3, 2), (1, 2, 3))
    assert im._to_rgb(image) is image


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I;16L"])
def test_16_bit_grey_is_scaled_by_its_maximum(mode):
    values = np.array([[0, 1000], [30_000, 65_535]], np.uint16)
    image = Image.frombytes(mode, (2, 2), values.astype(">u2" if mode == "I;16B" else "<u2").tobytes())
    expected = (values / 65_535 * 255).astype(np.uint8)
    assert np.array_equal(rgb(image), grey(expected))
    dim = np.array([[0, 100], [200, 50]], np.uint16)      # nothing above 255: kept as it is, not stretched
    image = Image.frombytes(mode, (2, 2), dim.astype(">u2" if mode == "I;16B" else "<u2").tobytes())
    assert np.array_equal(rgb(image), grey(dim))
    just_over = np.array([[0, 255], [256, 128]], np.uint16)   # a maximum of 256 is scaled by 256, not by 255
    image = Image.frombytes(mode, (2, 2), just_over.astype(">u2" if mode == "I;16B" else "<u2").tobytes())
    assert np.array_equal(rgb(image), grey([[0, 254], [255, 127]]))


def test_32_bit_integer_and_float_grey():
    ints = Image.fromarray(np.array([[0, 500], [1000, 2000]], np.int32), "I")
    assert np.array_equal(rgb(ints), grey(np.array([[0, 500], [1000, 2000]]) / 2000 * 255))
    floats = Image.fromarray(np.array([[-1.0, 0.0], [1.0, 3.0]], np.float32), "F")
    assert np.array_equal(rgb(floats), grey([[0, 63], [127, 255]]))      # (x - min) / span, truncated
    flat = Image.fromarray(np.full((2, 2), 5.0, np.float32), "F")
    assert np.array_equal(rgb(flat), grey(np.zeros((2, 2))))


def test_palettes_with_and_without_a_transparent_index():
    image = Image.new("P", (2, 1))
    image.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    image.putpixel((1, 0), 1)
    assert rgb(image).tolist() == [[[10, 20, 30], [200, 100, 50]]]
    image.info["transparency"] = 0
    assert rgb(image).tolist() == [[[255, 255, 255], [200, 100, 50]]]


def test_alpha_is_composited_on_white():
    rgba = Image.new("RGBA", (3, 1))
    rgba.putdata([(255, 0, 0, 0), (255, 0, 0, 255), (0, 0, 0, 128)])
    out = rgb(rgba).astype(int)
    assert out[0, 0].tolist() == [255, 255, 255] and out[0, 1].tolist() == [255, 0, 0]
    assert np.abs(out[0, 2] - round(255 * (1 - 128 / 255))).max() <= 1        # half black on white: mid grey
    la = Image.new("LA", (2, 1))
    la.putdata([(0, 0), (100, 255)])
    assert rgb(la).tolist() == [[[255, 255, 255], [100, 100, 100]]]
    pa = Image.new("PA", (2, 1))
    pa.putpalette([10, 20, 30] * 256)
    pa.putdata([(0, 0), (0, 255)])
    assert rgb(pa).tolist() == [[[255, 255, 255], [10, 20, 30]]]


def test_a_transparent_colour_in_rgb_and_grey_becomes_white():
    image = Image.new("RGB", (2, 1), (10, 20, 30))
    image.putpixel((1, 0), (1, 2, 3))
    image.info["transparency"] = (10, 20, 30)
    assert rgb(image).tolist() == [[[255, 255, 255], [1, 2, 3]]]
    grey_image = Image.new("L", (2, 1), 0)
    grey_image.putpixel((1, 0), 80)
    grey_image.info["transparency"] = 0
    assert rgb(grey_image).tolist() == [[[255, 255, 255], [80, 80, 80]]]
    # a 1-bit PNG with a transparent colour opens as mode "1"; its transparent pixels are white too (were black)
    bits = Image.new("1", (2, 1))
    bits.putpixel((1, 0), 1)
    opened = Image.open(io.BytesIO(encoded(bits, transparency=1)))
    assert opened.mode == "1" and "transparency" in opened.info
    assert rgb(opened).tolist() == [[[0, 0, 0], [255, 255, 255]]]
    opened = Image.open(io.BytesIO(encoded(bits, transparency=0)))
    assert rgb(opened).tolist() == [[[255, 255, 255], [255, 255, 255]]]
    opaque = Image.open(io.BytesIO(encoded(bits)))
    assert rgb(opaque).tolist() == [[[0, 0, 0], [255, 255, 255]]]


def test_other_modes_are_converted_by_pillow():
    cmyk = Image.new("CMYK", (2, 2), (0, 255, 255, 0))
    assert rgb(cmyk).tolist() == np.asarray(cmyk.convert("RGB")).tolist()
    assert rgb(Image.new("L", (1, 1), 42)).tolist() == [[[42, 42, 42]]]


# ---- the canonical square ------------------------------------------------------------------------------------------

def test_to_canonical_keeps_a_square_of_the_right_size_and_resizes_others_with_lanczos():
    rng = np.random.default_rng(0)
    square = Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8), "RGB")
    out = im.to_canonical(square)
    assert out.dtype == np.uint8 and np.array_equal(out, np.asarray(square))
    other = Image.fromarray(rng.integers(0, 256, (100, 300, 3), dtype=np.uint8), "RGB")
    out = im.to_canonical(other)
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    assert np.array_equal(out, np.asarray(other.resize((224, 224), Image.Resampling.LANCZOS)))
    assert not np.array_equal(out, np.asarray(other.resize((224, 224), Image.Resampling.BILINEAR)))
