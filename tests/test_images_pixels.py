"""What the loader makes of odd images, pixel by pixel (not only mode and shape), and the project's own size limit."""
import io

import numpy as np
import pytest
from PIL import Image

from captioning.vision.images import InvalidImageError, load_image


def png(image: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG", **kw)
    return buf.getvalue()


def pixels(source) -> np.ndarray:
    image = load_image(source)
    assert image.mode == "RGB"
    return np.asarray(image, dtype=int)


def grey(values) -> np.ndarray:
    values = np.asarray(values, dtype=int)
    return np.stack([values] * 3, axis=-1)


def test_16_bit_png_is_scaled_by_its_brightest_pixel():
    raw = np.array([[0, 1000, 2000], [30000, 60000, 65535]], np.uint16)
    got = pixels(png(Image.fromarray(raw)))
    np.testing.assert_array_equal(got, grey((raw / 65535 * 255).astype(np.uint8)))


def test_16_bit_png_that_stays_below_255_keeps_its_values():
    raw = np.array([[0, 7, 100], [128, 200, 255]], np.uint16)
    got = pixels(png(Image.fromarray(raw)))
    np.testing.assert_array_equal(got, grey(raw))


def test_dark_16_bit_png_is_not_stretched_to_white():
    raw = np.array([[0, 300], [600, 1200]], np.uint16)                  # brightest pixel 1200 -> 255
    got = pixels(png(Image.fromarray(raw)))
    np.testing.assert_array_equal(got, grey([[0, 63], [127, 255]]))


def test_cmyk_colours_convert_to_their_rgb_values():
    quadrants = [(0, 255, 255, 0), (255, 0, 255, 0), (0, 0, 0, 0), (0, 0, 0, 255)]   # red, green, white, black
    want = [(255, 0, 0), (0, 255, 0), (255, 255, 255), (0, 0, 0)]
    image = Image.new("CMYK", (32, 32))
    for q, colour in enumerate(quadrants):
        x, y = 16 * (q % 2), 16 * (q // 2)
        image.paste(colour, (x, y, x + 16, y + 16))
    direct = pixels(image)                                               # a PIL image in memory: exact
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=100)
    from_jpeg = pixels(buf.getvalue())                                   # a CMYK JPEG: within JPEG's rounding
    for q, colour in enumerate(want):
        x, y = 16 * (q % 2) + 8, 16 * (q // 2) + 8
        assert tuple(direct[y, x]) == colour
        assert np.abs(from_jpeg[y, x] - colour).max() <= 4, (colour, from_jpeg[y, x])


def test_palette_png_keeps_its_colours_and_a_transparent_entry_becomes_white():
    image = Image.new("P", (3, 1))
    image.putpalette([200, 10, 20, 5, 150, 60, 0, 0, 255] + [0] * (256 * 3 - 9))
    image.putdata([0, 1, 2])
    np.testing.assert_array_equal(pixels(png(image)), [[(200, 10, 20), (5, 150, 60), (0, 0, 255)]])
    np.testing.assert_array_equal(pixels(png(image, transparency=2)), [[(200, 10, 20), (5, 150, 60), (255, 255, 255)]])


def test_rgb_png_with_a_transparent_colour_and_grey_alpha_are_composited_on_white():
    rgb = Image.new("RGB", (2, 1))
    rgb.putdata([(0, 0, 0), (10, 20, 30)])
    np.testing.assert_array_equal(pixels(png(rgb, transparency=(0, 0, 0))), [[(255, 255, 255), (10, 20, 30)]])
    la = Image.new("LA", (2, 1))
    la.putdata([(0, 255), (0, 0)])                                        # opaque black, fully transparent
    np.testing.assert_array_equal(pixels(png(la)), [[(0, 0, 0), (255, 255, 255)]])
    half = Image.new("RGBA", (1, 1), (0, 0, 0, 128))
    assert np.abs(pixels(png(half))[0, 0] - 127).max() <= 1


def test_grayscale_png_becomes_equal_rgb_channels():
    raw = np.array([[0, 17, 254]], np.uint8)
    np.testing.assert_array_equal(pixels(png(Image.fromarray(raw, "L"))), grey(raw))


def test_mid_size_image_is_refused_by_the_projects_own_limit():
    """8000x7000 (56 MP) is below Pillow's decompression-bomb guard, so only the project's check refuses it."""
    assert Image.MAX_IMAGE_PIXELS is None or 8000 * 7000 < Image.MAX_IMAGE_PIXELS
    data = png(Image.new("1", (8000, 7000)), optimize=False)              # a valid PNG of a few KB
    assert len(data) < 200_000
    with pytest.raises(InvalidImageError):
        load_image(data)
    with pytest.raises(InvalidImageError):
        load_image(Image.new("1", (8000, 7000)))                           # and as an image already in memory


def test_images_well_under_the_limit_still_load():
    assert load_image(png(Image.new("1", (3000, 2000)))).size == (2048, 1365)   # reduced to 2048 px, same shape
    assert load_image(png(Image.new("1", (2000, 1500)))).size == (2000, 1500)   # at most 2048 px: as it is
