"""Captions into photos from the three front doors, on the tiny bundle and real Flickr8k photos: the CLI's
``--write-metadata`` (results file says what went where, per-file errors, a rerun keeps what is written), the
API's ``/v1/captions/photo`` and the Batch page's zip and alt-text downloads."""
import csv
import io
import json
import os
import shutil
import subprocess
import zipfile
from urllib.parse import unquote

import pytest
import requests
from conftest import missing

from captioning.__main__ import main
from captioning.publish.metadata import image_data

if not shutil.which("exiftool"):
    missing("needs ExifTool (bash scripts/setup.sh test installs it)")


def read_description(path) -> str | None:
    out = subprocess.run(["exiftool", "-j", "-XMP-dc:Description", os.fsencode(path)], capture_output=True,
                         check=True).stdout
    return json.loads(out)[0].get("Description")


@pytest.fixture()
def folder(tmp_path, flickr_dir):
    """Three writable copies of Flickr8k test photos (the dataset's own files are read-only), one in a subfolder."""
    names = (flickr_dir / "Flickr_8k.testImages.txt").read_text().split()[:3]
    (tmp_path / "photos" / "day2").mkdir(parents=True)
    paths = [tmp_path / "photos" / names[0], tmp_path / "photos" / names[1], tmp_path / "photos" / "day2" / names[2]]
    for name, path in zip(names, paths):
        path.write_bytes((flickr_dir / "Images" / name).read_bytes())
    return tmp_path / "photos", paths


def run(capsys, *args):
    code = main(["caption", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_writes_in_place_records_where_and_a_read_only_photo_fails_alone(folder, tiny_bundle, mobilenet_weights,
                                                                          tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CAPTIONING_WEIGHTS_DIR", str(mobilenet_weights.parent))
    root, paths = folder
    paths[1].chmod(0o444)
    before = [p.read_bytes() for p in paths]
    out = tmp_path / "captions.csv"
    code, stdout, stderr = run(capsys, root, "--bundle", tiny_bundle, "--write-metadata", "in-place", "--out", out)
    assert code == 1, stderr                                        # one photo failed: non-zero, the others done
    assert f"{paths[1]}\tmetadata error: the photo or its folder is read-only" in stderr
    assert "metadata (in-place): wrote 2, kept 0" in stderr and "failed 1" in stderr
    rows = {r["path"]: r for r in csv.DictReader(out.read_text().splitlines())}
    for path, old in zip(paths, before):
        row = rows[str(path)]
        if path == paths[1]:
            assert row["metadata"].startswith("error:") and row["error"].startswith("metadata:")
            assert path.read_bytes() == old
            continue
        assert row["metadata"] == f"in-place: {path}" and row["alt_text"] == read_description(path)
        assert row["alt_text"][0].isupper() and row["alt_text"].endswith(".") and "<unk>" not in row["alt_text"]
        assert image_data(path.read_bytes(), "jpeg") == image_data(old, "jpeg")

    paths[1].chmod(0o644)                          # fixed: the rerun does only that one, the rest stay as written
    code, _, stderr = run(capsys, root, "--bundle", tiny_bundle, "--write-metadata", "in-place", "--out", out)
    assert code == 0, stderr
    assert "skipped 2 already in" in stderr and "wrote 1, kept 0" in stderr
    assert read_description(paths[1])
    code, _, stderr = run(capsys, root, "--bundle", tiny_bundle, "--write-metadata", "in-place")
    assert code == 0 and "wrote 0, kept 3" in stderr                   # described already: kept, and counted


def test_cli_copies_and_sidecars(folder, tiny_bundle, mobilenet_weights, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CAPTIONING_WEIGHTS_DIR", str(mobilenet_weights.parent))
    root, paths = folder
    before = [p.read_bytes() for p in paths]
    code, _, stderr = run(capsys, root, "--bundle", tiny_bundle, "--write-metadata", "copy")
    assert code == 2 and "needs --out-dir" in stderr
    code, _, stderr = run(capsys, root, "--bundle", tiny_bundle, "--write-metadata", "copy", "--out-dir",
                          tmp_path / "out", "--json")
    assert code == 0, stderr
    copy = tmp_path / "out" / "day2" / paths[2].name                     # the folder structure is kept
    assert read_description(copy) and [p.read_bytes() for p in paths] == before
    code, _, stderr = run(capsys, root, "--bundle", tiny_bundle, "--write-metadata", "sidecar", "--sidecar-name",
                          "photo.xmp", "--tag-keywords")
    assert code == 0, stderr
    assert read_description(paths[0].with_suffix(".xmp")) and [p.read_bytes() for p in paths] == before
    code, _, stderr = run(capsys, root, "--bundle", tiny_bundle, "--overwrite")
    assert code == 2 and "go with --write-metadata" in stderr
    out = tmp_path / "run.json"                     # unfamiliar photos: left undescribed, listed, recorded
    code, _, stderr = run(capsys, root, "--bundle", tiny_bundle, "--write-metadata", "sidecar", "--overwrite",
                          "--skip-unfamiliar", "--out", out)
    assert code == 0, stderr
    records = json.loads(out.read_text())
    assert {r["confidence"] for r in records} <= {"familiar", "unusual", "unfamiliar"}
    for r in records:
        assert r["metadata"].startswith("skipped: unfamiliar") == (r["confidence"] == "unfamiliar"), r
        assert (r["alt_text"] is None) == (r["confidence"] == "unfamiliar")
    unfamiliar = [r["path"] for r in records if r["confidence"] == "unfamiliar"]
    assert (f"left undescribed as unfamiliar ({len(unfamiliar)})" in stderr) == bool(unfamiliar)


@pytest.fixture(scope="module")
def api(tiny_bundle, mobilenet_weights):
    from test_serve import running_api

    with running_api(tiny_bundle, mobilenet_weights.parent, "api-photo.log") as (url, _):
        yield url


def test_api_returns_the_captioned_photo_its_xmp_or_json(api, flickr_dir):
    name = (flickr_dir / "Flickr_8k.testImages.txt").read_text().split()[0]
    data = (flickr_dir / "Images" / name).read_bytes()
    r = requests.post(f"{api}/v1/captions/photo", files={"image": (name, data, "image/jpeg")},
                      data={"beam_width": "3"}, timeout=300)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/jpeg" and image_data(r.content, "jpeg") == image_data(data, "jpeg")
    caption = unquote(r.headers["x-caption"])
    assert caption.endswith(".") and caption[0].isupper()
    assert f"<rdf:li xml:lang='x-default'>{caption}</rdf:li>" in r.content.decode("latin-1")
    j = requests.post(f"{api}/v1/captions/photo", files={"image": (name, data, "image/jpeg")},
                      data={"beam_width": "3", "return": "json"}, timeout=300).json()
    assert j["alt_text"] == caption and f">{caption}</rdf:li>" in j["xmp"] and j["caption"].islower()
    bmp = io.BytesIO()
    from PIL import Image

    Image.open(io.BytesIO(data)).save(bmp, "BMP")
    r = requests.post(f"{api}/v1/captions/photo", files={"image": ("p.bmp", bmp.getvalue(), "image/bmp")}, timeout=300)
    assert r.status_code == 415 and "return=xmp" in r.json()["detail"]
    r = requests.post(f"{api}/v1/captions/photo", files={"image": ("p.bmp", bmp.getvalue(), "image/bmp")},
                      data={"return": "xmp"}, timeout=300)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/rdf+xml")
    assert caption in r.text
    r = requests.post(f"{api}/v1/captions/photo", files={"image": ("x.jpg", b"not a photo", "image/jpeg")}, timeout=60)
    assert r.status_code == 415


def test_batch_page_offers_alt_text_and_a_zip_of_captioned_photos(app_env, monkeypatch, flickr_dir):
    from streamlit.testing.v1 import app_test
    from test_app import NavigationPagesManager, start

    monkeypatch.setattr(app_test, "PagesManager", NavigationPagesManager)
    at = start("app_pages/batch.py")
    names = (flickr_dir / "Flickr_8k.testImages.txt").read_text().split()[:2]
    photos = [(n, (flickr_dir / "Images" / n).read_bytes(), "image/jpeg") for n in names]
    at.file_uploader(key="batch_upload").set_value(photos).run()
    assert not at.exception, at.exception
    labels = [b.label for b in at.get("download_button")]
    assert any("Alt text HTML" in b for b in labels) and any("Alt text Markdown" in b for b in labels)
    assert any("Captioned photos (zip)" in b for b in labels)
    at.checkbox(key="batch_meta_skip").set_value(False).run()           # describe every photo, familiar or not
    assert not at.exception, at.exception
    zipped = at.session_state["batch_metadata_zip"]
    assert [s["status"] for s in zipped["statuses"]] == ["written", "written"]
    captions = at.dataframe[0].value["Caption"]
    with zipfile.ZipFile(io.BytesIO(zipped["zip"])) as z:
        assert z.namelist() == names
        assert image_data(z.read(names[0]), "jpeg") == image_data(photos[0][1], "jpeg")
        assert captions[0][1:] in z.read(names[0]).decode("latin-1")
    at.radio(key="batch_meta_kind").set_value("XMP sidecar files").run()
    assert not at.exception, at.exception
    with zipfile.ZipFile(io.BytesIO(at.session_state["batch_metadata_zip"]["zip"])) as z:
        assert z.namelist() == [f"{n}.xmp" for n in names]
    assert any("2 written" in c.value for c in at.caption)
