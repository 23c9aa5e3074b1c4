import time

import pytest
from PIL import Image

from captioning.data import flickr8k as data
from captioning.data.flickr8k import DataError, Flickr8k


def make_dataset(root, layout="csv", n=6, missing_image=None, empty_caption=False):
    (root / "Images").mkdir(parents=True)
    names = [f"{i:04d}_abc.jpg" for i in range(n)]
    for i, name in enumerate(names):
        if name != missing_image:
            Image.new("RGB", (8, 8), (i * 20, 0, 0)).save(root / "Images" / name)
    caps = {name: [f"A dog number {k} runs ." for k in range(5)] for name in names}
    if empty_caption:
        caps[names[0]] = ["..."] * 5
    if layout == "csv":
        lines = ["image,caption"] + [f"{n},{c}" for n, cs in caps.items() for c in cs]
        (root / "captions.txt").write_text("\n".join(lines) + "\n")
    else:
        lines = [f"{n}#{k}\t{c}" for n, cs in caps.items() for k, c in enumerate(cs)]
        lines += [f"9999_stray.jpg.1#{k}\tstray caption" for k in range(5)]
        (root / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n")
    for split, part in (("train", names[:4]), ("dev", names[4:5]), ("test", names[5:])):
        (root / f"Flickr_8k.{split}Images.txt").write_text("\n".join(part) + "\n")
    return names


@pytest.mark.parametrize("layout", ["csv", "token"])
def test_loads_both_layouts(tmp_path, layout):
    names = make_dataset(tmp_path, layout)
    ds = Flickr8k.load(tmp_path)
    assert ds.splits["train"] == names[:4] and len(ds.captions[names[0]]) == 5
    assert ds.references([names[0]])[0][0] == ["a", "dog", "number", "runs"]
    assert ds.skipped_keys == (5 if layout == "token" else 0)     # the stray '.jpg.1' lines


def test_data_dir_from_environment(tmp_path, monkeypatch):
    make_dataset(tmp_path)
    monkeypatch.setenv("FLICKR8K_DIR", str(tmp_path))
    assert Flickr8k.load().root == tmp_path
    monkeypatch.delenv("FLICKR8K_DIR")
    with pytest.raises(DataError, match="--data-dir"):
        Flickr8k.load()


def test_missing_split_file_names_file_and_command(tmp_path):
    make_dataset(tmp_path)
    (tmp_path / "Flickr_8k.devImages.txt").unlink()
    with pytest.raises(DataError, match=r"Flickr_8k\.devImages\.txt.*train.py download"):
        Flickr8k.load(tmp_path)


def test_missing_captions_file(tmp_path):
    make_dataset(tmp_path)
    (tmp_path / "captions.txt").unlink()
    with pytest.raises(DataError, match="captions.txt"):
        Flickr8k.load(tmp_path)


def test_image_listed_but_absent(tmp_path):
    names = make_dataset(tmp_path, missing_image="0002_abc.jpg")
    with pytest.raises(DataError, match="0002_abc.jpg"):
        Flickr8k.load(tmp_path)
    assert Flickr8k.load(tmp_path, check_images=False).splits["train"] == names[:4]


def test_empty_captions_are_an_error(tmp_path):
    make_dataset(tmp_path, empty_caption=True)
    with pytest.raises(DataError, match="empty captions"):
        Flickr8k.load(tmp_path)


def test_download_offline_fails_fast_with_advice(tmp_path, monkeypatch):
    # A closed local port stands in for "no internet": the error must come at once, not hang.
    monkeypatch.setattr(data, "DOWNLOAD_URLS", {"Flickr8k_text.zip": "http://127.0.0.1:9/Flickr8k_text.zip"})
    start = time.monotonic()
    with pytest.raises(DataError, match="Could not download"):
        data.download(tmp_path / "flickr", timeout=5, progress=False)
    assert time.monotonic() - start < 10
    assert not list((tmp_path / "flickr").glob("*.part"))


def test_real_flickr8k_splits(flickr_dir):
    ds = Flickr8k.load(flickr_dir, check_images=False)
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 6000, "dev": 1000, "test": 1000}
    assert all(len(ds.captions[n]) == 5 for n in ds.splits["test"])


@pytest.mark.parametrize("layout", ["csv", "token"])
def test_a_utf8_bom_in_captions_and_split_files_is_accepted(tmp_path, layout):
    """Issue 34 item 12: Windows editors start files with a BOM; before, the header 'image,caption' was refused
    and the first split name did not match ('Re-download with ...')."""
    names = make_dataset(tmp_path, layout)
    for path in [*tmp_path.glob("Flickr_8k.*Images.txt"), *tmp_path.glob("captions.txt"),
                 *tmp_path.glob("Flickr8k.token.txt")]:
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    ds = Flickr8k.load(tmp_path)
    assert ds.splits["train"] == names[:4] and ds.splits["dev"] == names[4:5]
    assert names[0] in ds.captions
