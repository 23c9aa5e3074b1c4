"""A user's captions file: every format told from its content, every bad row with its line number, BOM, splits."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from captioning.data.flickr8k import DataError
from captioning.data.user_data import detect_format, load_user_data

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def photos(tmp_path) -> Path:
    """Six small photos: JPEG, PNG and WebP, some in a subfolder, one large and wide."""
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    for i, (name, fmt) in enumerate([("a.jpg", "JPEG"), ("b.png", "PNG"), ("sub/c.webp", "WEBP"),
                                     ("sub/d.jpg", "JPEG"), ("e.jpg", "JPEG"), ("f.png", "PNG")]):
        size = (3000, 1200) if name == "e.jpg" else (64, 48)
        Image.new("RGB", size, (40 * i, 90, 200 - 30 * i)).save(folder / name, fmt)
    (folder / "broken.jpg").write_bytes(b"not an image at all")
    return folder


def write(tmp_path, name: str, text: str, bom: bool = False) -> Path:
    path = tmp_path / name
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


GOOD = [("a.jpg", "A dog runs on the grass ."), ("a.jpg", "a brown dog running"), ("b.png", "Café in Zürich"),
        ("sub/c.webp", "a tench held by a fisherman"), ("sub/d.jpg", "an espresso cup"),
        ("e.jpg", "a wide photo of a beach"), ("f.png", "a red ball")]


def test_csv_with_every_bad_row_kind_reports_line_numbers(tmp_path, photos):
    rows = ["image,caption", *(f'{i},"{c}"' for i, c in GOOD),
            "missing.jpg,a dog",                    # line 9: missing photo
            "broken.jpg,a cat",                     # line 10: unreadable photo
            "f.png,  ...  !!",                      # line 11: punctuation-only caption
            'a.jpg,"A dog runs on the grass."',     # line 12: duplicate of line 2 (same words)
            "../secret.jpg,a cat",                  # line 13: outside the folder
            "just one column",                      # line 14: malformed
            "b.png,"]                               # line 15: empty caption
    ds = load_user_data(write(tmp_path, "c.csv", "\n".join(rows) + "\n"), photos)
    assert ds.format == "csv"
    found = {(b.line, b.kind) for b in ds.bad}
    assert found == {(9, "missing_photo"), (10, "unreadable_photo"), (11, "empty_caption"), (12, "duplicate"),
                     (13, "bad_path"), (14, "malformed"), (15, "empty_caption")}
    assert "line 2" in next(b.reason for b in ds.bad if b.kind == "duplicate")
    assert ds.rows == 14 and ds.caption_count == 7 and len(ds.captions) == 6
    assert ds.captions["sub/c.webp"] == ["a tench held by a fisherman"]          # WebP in a subfolder
    summary = json.loads(json.dumps(ds.summary()))                              # JSON-ready
    assert summary["bad_by_kind"]["empty_caption"] == 2 and summary["photos"] == 6


def test_photo_with_no_usable_caption_is_reported(tmp_path, photos):
    rows = ["image,caption", *(f"{i},{c}" for i, c in GOOD[:4]), "f.png,???"]
    ds = load_user_data(write(tmp_path, "c.csv", "\n".join(rows)), photos)
    assert {(b.line, b.kind) for b in ds.bad} == {(6, "empty_caption"), (6, "no_caption")}
    assert "f.png" not in ds.captions


@pytest.mark.parametrize("fmt", ["jsonl", "coco", "token", "csv"])
def test_every_format_is_told_from_its_content(tmp_path, photos, fmt):
    if fmt == "jsonl":
        text = "\n".join(json.dumps({"image": i, "caption": c}, ensure_ascii=False) for i, c in GOOD)
        text += "\n{not json\n" + json.dumps({"image": "missing.jpg", "caption": "x"}) + "\n"
        bad = {(8, "malformed"), (9, "missing_photo")}
    elif fmt == "coco":
        names = sorted({i for i, _ in GOOD}) + ["broken.jpg"]
        ids = {n: k for k, n in enumerate(names, 1)}
        data = {"images": [{"id": ids[n], "file_name": n} for n in names],
                "annotations": [{"id": k, "image_id": ids[i], "caption": c} for k, (i, c) in enumerate(GOOD)]
                + [{"id": 99, "image_id": 1, "caption": "  "}]}
        text = json.dumps(data, indent=1, ensure_ascii=False)
        lines = text.splitlines()
        empty_line = next(k for k, ln in enumerate(lines, 1) if '"id": 99' in ln) - 1     # where that object starts
        broken_line = next(k for k, ln in enumerate(lines, 1) if '"broken.jpg"' in ln) - 2
        bad = {(empty_line, "empty_caption"), (broken_line, "no_caption")}
    elif fmt == "token":
        text = "\n".join(f"{i}#{k}\t{c}" for k, (i, c) in enumerate(GOOD)) + "\nno tab here\n"
        bad = {(8, "malformed")}
    else:
        text = "Image , Caption\n" + "\n".join(f'{i},"{c}"' for i, c in GOOD)
        bad = set()
    path = write(tmp_path, "captions.txt", text)
    assert detect_format(path.read_text(encoding="utf-8")) == fmt
    ds = load_user_data(path, photos)
    assert ds.format == fmt
    assert {(b.line, b.kind) for b in ds.bad} == bad
    assert ds.captions["b.png"] == ["Café in Zürich"] and ds.caption_count == 7


def test_bom_is_accepted_and_unicode_words_are_kept(tmp_path, photos):
    text = "image,caption\n" + "\n".join(f'{i},"{c}"' for i, c in GOOD)
    ds = load_user_data(write(tmp_path, "c.csv", text, bom=True), photos)
    assert ds.bad == [] and ds.format == "csv"
    assert ds.references(["b.png"]) == [[["café", "in", "zürich"]]]


def test_strict_makes_any_bad_row_an_error_and_a_mostly_bad_file_is_refused(tmp_path, photos):
    rows = ["image,caption", *(f"{i},{c}" for i, c in GOOD), "missing.jpg,a dog"]
    path = write(tmp_path, "c.csv", "\n".join(rows))
    with pytest.raises(DataError, match=r"1 bad rows and --strict.*line 9"):
        load_user_data(path, photos, strict=True)
    mostly_bad = ["image,caption", "a.jpg,a dog", *(f"gone{i}.jpg,a dog" for i in range(5))]
    with pytest.raises(DataError, match=r"5 of 6 rows are bad \(5 photo not found\).*line 3"):
        load_user_data(write(tmp_path, "bad.csv", "\n".join(mostly_bad)), photos)


def test_unknown_format_and_missing_folder_are_one_line_errors(tmp_path, photos):
    with pytest.raises(DataError, match="cannot tell the captions file's format"):
        load_user_data(write(tmp_path, "c.txt", "photo;caption\na.jpg;a dog\n"), photos)
    with pytest.raises(DataError, match="image folder .* not found"):
        load_user_data(write(tmp_path, "c.csv", "image,caption\n"), tmp_path / "nope")


def test_seeded_split_is_by_photo_and_a_split_file_overrides_it(tmp_path, photos):
    path = write(tmp_path, "c.csv", "image,caption\n" + "\n".join(f'{i},"{c}"' for i, c in GOOD))
    one, two = load_user_data(path, photos, seed=1), load_user_data(path, photos, seed=1)
    assert one.splits == two.splits
    assert sorted(sum(one.splits.values(), [])) == sorted(one.captions)          # each photo in one split
    assert len(one.splits["dev"]) == 1 and len(one.splits["test"]) == 1
    split = write(tmp_path, "split.txt", "image,split\na.jpg,train\nb.png,train\nsub/c.webp,dev\nf.png,test\n"
                  "missing.jpg,train\n", bom=True)
    ds = load_user_data(path, photos, split_file=split)
    assert ds.splits == {"train": ["a.jpg", "b.png"], "dev": ["sub/c.webp"], "test": ["f.png"]}
    assert "2 photos it does not name are not used" in ds.split_source
    with pytest.raises(DataError, match=r"split.txt:2: expected 'image,split'"):
        load_user_data(path, photos, split_file=write(tmp_path, "split.txt", "a.jpg,train\nb.png,validation\n"))


def test_import_check_command_prints_json(tmp_path, photos):
    rows = ["image,caption", *(f'{i},"{c}"' for i, c in GOOD), "missing.jpg,a dog"]
    path = write(tmp_path, "c.csv", "\n".join(rows), bom=True)
    out = subprocess.run([sys.executable, str(ROOT / "train.py"), "import-check", "--captions", str(path),
                          "--images", str(photos), "--json"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["photos"] == 6 and summary["bad_rows"] == [
        {"line": 9, "kind": "missing_photo", "reason": f"photo missing.jpg not found in {photos}",
         "image": "missing.jpg"}]
    out = subprocess.run([sys.executable, str(ROOT / "train.py"), "import-check", "--captions", str(path),
                          "--images", str(photos), "--strict"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stderr.startswith("error: ") and "line 9" in out.stderr


def test_a_symbolic_link_out_of_the_image_folder_is_a_bad_path(tmp_path, photos):
    outside = tmp_path / "elsewhere.jpg"
    outside.write_bytes((photos / "a.jpg").read_bytes())
    (photos / "link.jpg").symlink_to(outside)
    rows = ["image,caption", *(f"{i},{c}" for i, c in GOOD), "link.jpg,a photo from elsewhere", "/etc/hosts,a file"]
    ds = load_user_data(write(tmp_path, "c.csv", "\n".join(rows)), photos)
    assert {(b.line, b.kind) for b in ds.bad} == {(9, "bad_path"), (10, "bad_path")}


@pytest.mark.parametrize("args, message", [
    (["finetune", "--captions", "c.csv", "--images", "p"], "finetune needs --from BUNDLE"),
    (["finetune", "--from", "b", "--captions", "c.csv"], "needs --captions FILE and --images DIR"),
    (["train", "--captions", "c.csv"], "--captions FILE and --images DIR go together"),
    (["finetune", "--from", "b", "--captions", "c.csv", "--images", "p", "--replay", "1"],
     "--replay 1 is out of range"),
    (["scst", "--from", "b", "--captions", "c.csv", "--images", "p"], "--captions does not apply to scst"),
    (["finetune", "--from", "b", "--captions", "c.csv", "--images", "p", "--label-smoothing", "0.1", "--max-words",
      "2000"], "--label-smoothing, --max-words does not apply to finetune"),
    (["finetune", "--from", "b", "--captions", "c.csv", "--images", "p", "--lr-decay", "0.5"],
     "--lr-decay does not apply to finetune"),
])
def test_finetune_options_are_checked_before_any_work(capsys, args, message):
    import train

    with pytest.raises(SystemExit) as exit_info:
        train.parse_args(args)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_a_huge_captions_file_or_too_many_photos_is_refused_before_the_work(tmp_path, photos, monkeypatch):
    from captioning.data import user_data

    huge = tmp_path / "huge.csv"
    with open(huge, "wb") as fh:                   # sparse: 2 GB on paper, no disk used
        fh.truncate(2 * 1024 ** 3)
    with pytest.raises(DataError, match=r"huge.csv is 2147 MB; the limit is 105 MB"):
        load_user_data(huge, photos)
    monkeypatch.setattr(user_data, "MAX_PHOTOS", 3)
    path = write(tmp_path, "c.csv", "image,caption\n" + "\n".join(f'{i},"{c}"' for i, c in GOOD))
    with pytest.raises(DataError, match="names 6 photos; import at most 3 at a time"):
        load_user_data(path, photos)
