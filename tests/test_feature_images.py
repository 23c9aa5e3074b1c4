"""Training reads photos through the project's safe loader: a bad photo stops `train.py` with one line naming the
file (or, with --skip-bad-images, is left out and listed), while every ordinary photo keeps exactly the pixels
(and so the features) that extraction always gave it."""
import io
import zlib

import numpy as np
import pytest
from PIL import Image

import train
from captioning.vision.features import BadImageError, _read_canonical, _read_checked, check_image, check_images

PHOTOS = ["1000268201_693b08cb0e.jpg", "1007129816_e794419615.jpg", "1015118661_980735411b.jpg",
          "2609836649_b55831ed41.jpg", "3385593926_d3e9c21170.jpg"]


def todays_pixels(path) -> np.ndarray:
    """What extraction computed before it read photos through the safe loader (the cached features' source)."""
    import tensorflow as tf

    img = tf.io.decode_image(tf.io.read_file(str(path)), channels=3, expand_animations=False)
    if img.shape[:2] != (224, 224):
        img = tf.cast(tf.round(tf.clip_by_value(tf.image.resize(img, (224, 224), antialias=True), 0, 255)), tf.uint8)
    return img.numpy()


def big_png(side: int) -> bytes:
    """A valid grey PNG of side x side pixels that compresses to a few hundred KB (a decompression bomb)."""
    raw = zlib.compress(b"".join(b"\x00" + bytes(side) for _ in range(side)), 9)

    def chunk(kind, data):
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    header = side.to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def bad_photos(folder):
    """The three damaged photos of the issue: empty, text named .jpg, a 12000 x 12000 PNG bomb."""
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.jpg").write_text("not a picture")
    (folder / "bomb.png").write_bytes(big_png(12000))
    return {"empty.jpg": "empty", "notes.jpg": "not an image", "bomb.png": "too large"}


def test_ordinary_photos_keep_todays_pixels_exactly(flickr_dir, tmp_path):
    import tensorflow as tf

    paths = [flickr_dir / "Images" / n for n in PHOTOS]
    full = tmp_path / "full-size.jpg"                    # a 500 x 375 photo: the resizing branch too
    Image.open(paths[0]).resize((500, 375), Image.Resampling.BICUBIC).save(full, quality=90)
    for path in [*paths, full]:
        assert check_image(path) is True, path           # TensorFlow decodes it, as before
        checked = _read_checked(tf.constant(str(path).encode()), tf.constant(True)).numpy()
        np.testing.assert_array_equal(checked, todays_pixels(path))
        np.testing.assert_array_equal(_read_canonical(str(path)).numpy(), todays_pixels(path))


def test_unusual_photos_get_the_loaders_pixels_upright_and_bounded(tmp_path):
    import tensorflow as tf

    from captioning.vision.images import load_image, to_canonical

    photo = np.zeros((60, 100, 3), np.uint8)
    photo[:, :50] = (250, 20, 20)                         # red left half, blue right half
    photo[:, 50:] = (20, 20, 250)
    exif = Image.Exif()
    exif[0x0112] = 6                                      # stored sideways: the camera says "rotate 90"
    Image.fromarray(photo).save(tmp_path / "phone.jpg", exif=exif, quality=95)
    rgba = Image.fromarray(np.dstack([photo, np.full((60, 100), 0, np.uint8)]), "RGBA")
    rgba.save(tmp_path / "clear.png")                     # fully transparent: white in the app
    Image.new("RGB", (3000, 1500), (10, 200, 10)).save(tmp_path / "large.jpg")
    for name in ("phone.jpg", "clear.png", "large.jpg"):
        path = tmp_path / name
        assert check_image(path) is False, name
        got = _read_checked(tf.constant(str(path).encode()), tf.constant(False)).numpy()     # (224, 224, 3)
        want = to_canonical(load_image(path))
        assert got.shape == (224, 224, 3) and np.abs(got.astype(int) - want).mean() < 2, name
    phone = _read_checked(tf.constant(str(tmp_path / "phone.jpg").encode()), tf.constant(False)).numpy()
    assert phone[10, 112, 0] > 200 and phone[-10, 112, 2] > 200      # upright: red on top, blue below
    clear = _read_checked(tf.constant(str(tmp_path / "clear.png").encode()), tf.constant(False)).numpy()
    assert clear.min() > 250                                          # transparency on white, as the app shows it


def test_a_bad_photo_is_named_or_left_out_and_listed(tmp_path):
    reasons = bad_photos(tmp_path)
    Image.new("RGB", (40, 30), (1, 2, 3)).save(tmp_path / "good.jpg")
    for name, reason in reasons.items():
        with pytest.raises(BadImageError) as exc:
            check_image(tmp_path / name)
        message = str(exc.value)
        assert name in message and reason in message and "\n" not in message, message
    paths = {n: tmp_path / n for n in ["good.jpg", *reasons]}
    with pytest.raises(BadImageError, match="empty.jpg"):
        check_images(paths)
    ordinary, skipped = check_images(paths, skip_bad=True)
    assert ordinary == {"good.jpg": True} and [n for n, _ in skipped] == list(reasons)


def test_the_bomb_is_refused_before_decoding():
    data = big_png(12000)
    assert len(data) < 300_000                            # small on disk ...
    with pytest.raises(Exception, match="too large"):     # ... refused from its declared size
        from captioning.vision.images import load_image
        load_image(io.BytesIO(data))


def test_train_py_stops_at_a_bad_photo_in_one_line_or_skips_and_lists_it(tmp_path, mobilenet_weights, capsys):
    from test_datasets import make_flickr30k

    make_flickr30k(tmp_path / "data", n=14, karpathy=True)
    images = tmp_path / "data" / "flickr30k-images"
    (images / "1001.jpg").write_bytes(b"")                                  # a training photo, emptied
    (images / "1003.jpg").write_text("not a picture")
    argv = ["features", "--dataset", "flickr30k", "--data-dir", str(tmp_path / "data"), "--encoder", "mobilenetv2",
            "--weights", str(mobilenet_weights), "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    assert train.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: photo ") and "\n" not in err and "Traceback" not in err, err
    assert "1001.jpg" in err and "The file is empty" in err and "--skip-bad-images" in err
    assert not list((tmp_path / "cache").rglob("shard-*.json"))            # stopped before any extraction

    assert train.main([*argv, "--skip-bad-images"]) == 0
    out = capsys.readouterr().out
    tail = out[out.index("left out 2 photos that cannot be read:"):].splitlines()
    assert "1001.jpg" in tail[1] and "empty" in tail[1] and "1003.jpg" in tail[2] and "not an image" in tail[2]
    from captioning.vision.features import FeatureCache

    cached = FeatureCache(tmp_path / "cache" / "features", "mobilenetv2-a0.35-224").index()
    assert len(cached) == 12 and "1001.jpg" not in cached
