"""Issue 36's bad input and safety list, the cases other test files do not cover: a zip bomb and a full disk while
a dataset zip unpacks, a full disk during a fine-tune (one-line error, no bundle, base untouched), a 100,000-photo
import, and image paths that try to leave --images. (Covered elsewhere: the zip's own traversal and links,
tests/test_train_page.py; a 2 GB captions file, tests/test_user_data.py; a job started twice and a killed worker,
tests/test_jobs.py and tests/test_train_page.py.)"""
import errno
import io
import time
import zipfile
from pathlib import Path

import pytest

from captioning.batch import dataset_from_zip
from captioning.data import DataError
from captioning.user_data import MAX_PHOTOS, load_user_data


def png(color=(10, 120, 200)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (40, 30), color).save(buf, "PNG")
    return buf.getvalue()


def zip_of(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buf.getvalue()


def test_a_dataset_zip_bomb_is_refused_before_anything_is_inflated(tmp_path):
    bomb = zip_of({"captions.csv": b"image,caption\na.png,a cup\n", "a.png": png(),
                   **{f"zeros{i}.png": bytes(4 * 2**20) for i in range(3)}})     # 12 MB of zeros in ~12 KB
    assert len(bomb) < 100_000
    with pytest.raises(ValueError, match="the zip unpacks to more than 8 MB; use a folder on the server"):
        dataset_from_zip(bomb, tmp_path / "data", max_total=8 * 2**20)
    assert not (tmp_path / "data").exists()


def test_a_full_disk_while_unpacking_leaves_nothing_behind(tmp_path, monkeypatch):
    real = Path.write_bytes
    written = []

    def fill_up(self, data):
        if written:
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        written.append(self)
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", fill_up)
    data = zip_of({"mine/captions.csv": b"image,caption\na.png,a cup\nb.png,a mug\n", "mine/a.png": png(),
                   "mine/b.png": png((200, 0, 0))})
    with pytest.raises(ValueError, match=r"the zip cannot be unpacked \(\[Errno 28\] No space left on device"):
        dataset_from_zip(data, tmp_path / "data")
    assert written and list((tmp_path / "data").iterdir()) == []         # no half-unpacked folder, no staging
    monkeypatch.setattr(Path, "write_bytes", real)
    captions, images = dataset_from_zip(data, tmp_path / "data")          # space again: the same zip unpacks
    assert captions.read_text().startswith("image,caption") and (images / "b.png").is_file()


def test_a_full_disk_during_a_finetune_is_one_line_and_writes_no_bundle(tmp_path, monkeypatch, capsys):
    import keras

    import train
    from captioning import finetune
    from captioning.bundle import save_bundle
    from captioning.encoders import get_spec
    from captioning.models import build_decoder
    from captioning.text import Vocabulary

    photos = tmp_path / "photos"
    photos.mkdir()
    rows = ["image,caption"]
    for i in range(4):
        (photos / f"{i}.png").write_bytes(png((60 * i, 90, 30)))
        rows.append(f"{i}.png,a cup number {i} on a table")
    (tmp_path / "captions.csv").write_text("\n".join(rows) + "\n")
    spec = get_spec("mobilenetv2", 0.35)
    vocab = Vocabulary.build([["a", "cup", "on", "a", "table"]] * 5, 1)
    keras.utils.set_random_seed(0)
    decoder = build_decoder("merge", vocab_size=len(vocab), feature_dim=spec.feature_dim, embed_dim=8, units=8)
    base = save_bundle(tmp_path / "base", decoder, vocab, {"encoder": {
        "name": spec.name, "alpha": spec.alpha, "key": spec.key, "input_size": spec.input_size,
        "feature_dim": spec.feature_dim}, "max_length": 12, "min_count": 1})
    before = {p.name: p.read_bytes() for p in base.iterdir()}

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "cache" / "runs" / "out"))

    monkeypatch.setattr(finetune, "atomic_write", full)
    monkeypatch.setenv("CAPTIONING_JOBS_DIR", str(tmp_path / "jobs"))
    code = train.main(["finetune", "--from", str(base), "--captions", str(tmp_path / "captions.csv"), "--images",
                       str(photos), "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"),
                       "--replay", "0", "--flickr-test", "0", "--quiet"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert code == 1 and len(err) == 1 and err[0].startswith("error: the disk is full (") and "resumes" in err[0]
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))
    assert {p.name: p.read_bytes() for p in base.iterdir()} == before


def test_a_100000_photo_import_is_refused_quickly_with_what_to_do(tmp_path):
    (tmp_path / "photos").mkdir()
    rows = "image,caption\n" + "".join(f"p{i:06d}.jpg,a photo number {i}\n" for i in range(100_000))
    (tmp_path / "captions.csv").write_text(rows)
    started = time.perf_counter()
    with pytest.raises(DataError, match=f"names 100,000 photos; import at most {MAX_PHOTOS:,} at a time"):
        load_user_data(tmp_path / "captions.csv", tmp_path / "photos")
    assert time.perf_counter() - started < 10                  # refused before a single photo is looked at


def test_image_paths_that_leave_the_image_folder_are_bad_rows_with_their_lines(tmp_path):
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    for name in ("a.png", "b.png", "c.png", "d.png", "e.png"):
        (photos / name).write_bytes(png())
    (tmp_path / "secret.png").write_bytes(png((255, 0, 0)))
    rows = ["image,caption", "a.png,a blue cup", "b.png,a blue mug", "c.png,a blue bowl", "d.png,a cup",
            "e.png,a mug",
            f"{tmp_path / 'secret.png'},an absolute path",          # line 7
            "sub/../../secret.png,climbs out through a subfolder",   # line 8
            "C:\\secret.png,a Windows drive",                       # line 9
            "..\\secret.png,a Windows parent"]                       # line 10
    (tmp_path / "c.csv").write_text("\n".join(rows) + "\n")
    ds = load_user_data(tmp_path / "c.csv", photos)
    assert [(b.line, b.kind) for b in ds.bad] == [(7, "bad_path"), (8, "bad_path"), (9, "bad_path"), (10, "bad_path")]
    assert sorted(ds.captions) == ["a.png", "b.png", "c.png", "d.png", "e.png"]
