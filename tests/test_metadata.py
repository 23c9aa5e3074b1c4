"""Captions written into photos, losslessly: every field read back by an independent reader (exiv2, through
pyexiv2), scan / image data byte-identical, other metadata kept, sidecars merged, and bad input refused per file.

The test photos are made here with PIL (pixels, ICC profile, EXIF orientation, PNG text chunks) and ExifTool
(GPS and an existing XMP field), as a camera or a photo library would leave them.
"""
import io
import json
import os
import shutil
import stat
import subprocess
import zipfile
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import missing
from PIL import Image, ImageCms
from PIL.PngImagePlugin import PngInfo

from captioning.publish.alttext import alt_text, html_snippets, is_unfamiliar, keywords, markdown_list
from captioning.publish.exports import captions_zip
from captioning.publish.metadata import MetadataWriter, embed_bytes, image_data, sidecar_path, xmp_packet
from captioning.service.uploads import Upload

if not shutil.which("exiftool"):
    missing("needs ExifTool (bash scripts/setup.sh test installs it)")
pyexiv2 = pytest.importorskip("pyexiv2", reason="needs pyexiv2, the independent reader (requirements-dev.txt)")

CAPTION = "a dog <unk> runs through the grass"
ALT = "A dog runs through the grass."


def exiftool_json(path, *tags) -> dict:
    out = subprocess.run(["exiftool", "-j", "-n", *tags, os.fsencode(path)], capture_output=True, check=True).stdout
    return json.loads(out)[0]


def exiv2_read(path) -> dict:
    """Every field we write, as exiv2 reads it (an implementation independent of ExifTool)."""
    with pyexiv2.Image(os.fsdecode(path)) as img:
        xmp, iptc = img.read_xmp(), (img.read_iptc() if str(path).endswith((".jpg", ".tif")) else {})
        exif = img.read_exif() if str(path).endswith((".jpg", ".tif")) else {}
    return {"description": xmp.get("Xmp.dc.description", {}).get('lang="x-default"'),
            "alt": xmp.get("Xmp.iptcExt.AltTextAccessibility", {}).get('lang="x-default"'),
            "subject": xmp.get("Xmp.dc.subject"), "caption": iptc.get("Iptc.Application2.Caption"),
            "exif": exif.get("Exif.Image.ImageDescription"), "creator": xmp.get("Xmp.dc.creator")}


def make_photo(folder, kind: str, name: str | None = None):
    """A 64x48 photo with an ICC profile, EXIF orientation 6 (JPEG, WebP, TIFF), PNG text chunks (PNG), and GPS
    plus an XMP creator written by ExifTool as a camera app would."""
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = Image.Exif()
    exif[0x0112] = 6                                                    # orientation: rotate 90 CW
    ext = {"jpeg": ".jpg", "png": ".png", "webp": ".webp", "tiff": ".tif"}[kind]
    path = folder / (name or f"photo{ext}")
    if kind == "png":
        info = PngInfo()
        info.add_text("Comment", "shot on a test bench")
        info.add_itxt("Author", "Zoë", lang="en")
        image.save(path, "PNG", pnginfo=info, icc_profile=icc)
    else:
        image.save(path, {"jpeg": "JPEG", "webp": "WEBP", "tiff": "TIFF"}[kind], icc_profile=icc, exif=exif.tobytes(),
                   **({"quality": 90} if kind == "jpeg" else {}))
    subprocess.run(["exiftool", "-q", "-overwrite_original", "-GPSLatitude=51.5", "-GPSLatitudeRef=N",
                    "-GPSLongitude=0.12", "-GPSLongitudeRef=W", "-XMP-dc:Creator=Ada", os.fsencode(path)], check=True)
    return path


@pytest.fixture(scope="module")
def writer():
    w = MetadataWriter("in-place", tag_keywords=True)
    yield w
    w.close()


def test_alt_text_is_a_sentence_without_unknown_words_and_keywords_are_nouns():
    assert alt_text(CAPTION) == ALT
    assert alt_text("a man 's hat .") == "A man's hat."
    assert alt_text("<unk> <unk>") is None and alt_text("") is None and alt_text(None) is None
    assert keywords("a black dog is running through the tall grass with a ball") == ["dog", "grass", "ball"]
    assert is_unfamiliar(SimpleNamespace(level="unfamiliar")) and is_unfamiliar({"confidence": "unfamiliar"})
    assert not is_unfamiliar(None) and not is_unfamiliar({"confidence": "familiar"})
    records = [{"path": "x/a <b>.jpg", "caption": 'a "dog" & cat', "error": None},
               {"path": "c.jpg", "caption": None, "error": "The file is empty."}]
    assert html_snippets(records) == '<img src="a &lt;b&gt;.jpg" alt="A &quot;dog&quot; &amp; cat.">\n'
    assert markdown_list(records) == '- **a \\<b\\>.jpg**: A "dog" & cat.\n'


@pytest.mark.parametrize("kind", ["jpeg", "png", "webp", "tiff"])
def test_every_field_reads_back_and_the_image_data_and_other_metadata_are_untouched(tmp_path, writer, kind):
    path = make_photo(tmp_path, kind)
    before, info_before = path.read_bytes(), exiftool_json(path, "-Orientation", "-GPSLatitude", "-ICC_Profile:all")
    with Image.open(path) as im:
        pixels, icc = im.tobytes(), im.info.get("icc_profile")
        text = {k: v for k, v in getattr(im, "text", {}).items() if k != "XML:com.adobe.xmp"}   # the XMP grows

    outcome = writer.write(str(path), CAPTION)
    assert outcome.status == "written" and outcome.where == str(path), outcome

    read = exiv2_read(path)
    assert read["description"] == ALT and read["alt"] == ALT
    assert read["subject"] == ["dog", "grass"] and read["creator"] == ["Ada"]     # the existing XMP is kept
    if kind in ("jpeg", "tiff"):                       # IPTC IIM and EXIF only where those blocks belong
        assert read["caption"] == ALT and read["exif"] == ALT
        digest = exiftool_json(path, "-IPTCDigest", "-CurrentIPTCDigest")      # IIM and XMP marked in step
        assert digest["IPTCDigest"] == digest["CurrentIPTCDigest"]
    after = path.read_bytes()
    if kind == "jpeg":                                 # the entropy-coded scan data, byte for byte
        assert after[after.index(b"\xff\xda"):] == before[before.index(b"\xff\xda"):]
    if kind != "tiff":
        assert image_data(after, kind) == image_data(before, kind) and len(image_data(before, kind)) > 1000
    with Image.open(path) as im:
        assert im.tobytes() == pixels and im.info.get("icc_profile") == icc and icc
        if kind == "png":
            assert {k: im.text[k] for k in text} == text == {"Comment": "shot on a test bench", "Author": "Zoë"}
    info_after = exiftool_json(path, "-Orientation", "-GPSLatitude", "-ICC_Profile:all")
    assert info_after == info_before and info_before["GPSLatitude"] == 51.5
    if kind != "png":
        assert info_before["Orientation"] == 6
    assert not list(tmp_path.glob(".captioning-*"))    # no temporary file left behind


def test_an_existing_description_is_kept_unless_overwrite(tmp_path):
    path = make_photo(tmp_path, "jpeg")
    subprocess.run(["exiftool", "-q", "-overwrite_original", "-IPTC:Caption-Abstract=My own words",
                    os.fsencode(path)], check=True)
    before = path.read_bytes()
    keep = MetadataWriter("in-place")
    assert keep.write(str(path), CAPTION).status == "kept" and path.read_bytes() == before
    assert "kept 1" in keep.line()
    again = MetadataWriter("in-place", overwrite=True)
    assert again.write(str(path), CAPTION).status == "written"
    assert exiv2_read(path)["caption"] == ALT
    keep.close()
    again.close()


@pytest.mark.parametrize("naming, name", [("photo.jpg.xmp", "photo.jpg.xmp"), ("photo.xmp", "photo.xmp")])
def test_sidecars_are_named_as_chosen_and_merged_into_one_that_exists(tmp_path, naming, name):
    photo = make_photo(tmp_path, "jpeg")
    before = photo.read_bytes()
    sidecar = tmp_path / name
    assert sidecar_path(photo, naming) == sidecar
    subprocess.run(["exiftool", "-q", "-XMP-xmp:Rating=4", "-XMP-dc:Title=Holiday", os.fsencode(sidecar)], check=True)
    w = MetadataWriter("sidecar", sidecar_name=naming, tag_keywords=True)
    assert w.write(str(photo), CAPTION).status == "written"
    read = exiftool_json(sidecar, "-XMP:all")
    assert read["Description"] == ALT and read["Rating"] == 4 and read["Title"] == "Holiday"   # merged, not clobbered
    assert photo.read_bytes() == before                       # the photo itself is untouched
    fresh = make_photo(tmp_path, "png", "other.png")          # no sidecar yet: a new one, read by exiv2 too
    assert w.write(str(fresh), CAPTION).status == "written"
    assert exiv2_read(sidecar_path(fresh, naming))["alt"] == ALT
    w.close()


def test_copies_keep_the_folder_structure_and_refuse_an_out_dir_among_the_photos(tmp_path):
    (tmp_path / "in" / "a").mkdir(parents=True)
    photos = [make_photo(tmp_path / "in" / "a", "jpeg"), make_photo(tmp_path / "in", "png")]
    before = [p.read_bytes() for p in photos]
    w = MetadataWriter("copy", out_dir=tmp_path / "out")
    w.remember([str(p) for p in photos])
    assert [w.write(str(p), CAPTION).where for p in photos] == [str(tmp_path / "out" / "a" / "photo.jpg"),
                                                               str(tmp_path / "out" / "photo.png")]
    assert [p.read_bytes() for p in photos] == before
    assert exiv2_read(tmp_path / "out" / "a" / "photo.jpg")["exif"] == ALT
    assert w.write(str(photos[0]), CAPTION).status == "kept"          # a rerun leaves the copy as it is
    inside = MetadataWriter("copy", out_dir=tmp_path / "in" / "captioned")
    with pytest.raises(ValueError, match="inside the photos' folder"):
        inside.remember([str(p) for p in photos])
    w.close()
    inside.close()


def test_bad_photos_fail_one_by_one_and_are_never_changed(tmp_path, writer):
    good = make_photo(tmp_path, "jpeg", "good.jpg")
    readonly = make_photo(tmp_path, "jpeg", "readonly.jpg")
    readonly.chmod(0o444)
    link = tmp_path / "link.jpg"
    link.symlink_to(good)
    corrupt = tmp_path / "corrupt.jpg"           # an APP1 Exif segment whose TIFF header is garbage
    data = good.read_bytes()
    corrupt.write_bytes(data[:2] + b"\xff\xe1\x00\x10Exif\x00\x00II\x2a\x00\xff\xff\xff\xff" + data[2:])
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(data[: len(data) // 2])
    weird = tmp_path / os.fsdecode(b"caf\xe9.jpg")           # a Latin-1 name, not UTF-8
    weird.write_bytes(data)
    bmp = tmp_path / "photo.bmp"
    Image.new("RGB", (8, 8)).save(bmp)
    before = {p: p.read_bytes() for p in (readonly, corrupt, truncated, bmp)}

    out = {p.name: writer.write(str(p), CAPTION) for p in (readonly, link, corrupt, truncated, weird, bmp, good)}
    assert out["readonly.jpg"].status == "error" and "read-only" in out["readonly.jpg"].detail
    assert out["link.jpg"].status == "error" and "symbolic link" in out["link.jpg"].detail and link.is_symlink()
    assert out["photo.bmp"].status == "error" and "sidecar" in out["photo.bmp"].detail
    for name, why in (("corrupt.jpg", "Bad IFD0"), ("truncated.jpg", "Corrupted JPEG")):   # ExifTool refuses them
        assert out[name].status == "error" and why in out[name].detail and ".captioning-" not in out[name].detail
        assert (tmp_path / name).read_bytes() == before[tmp_path / name]
    assert out[weird.name].status == "written" and exiftool_json(weird, "-Description")["Description"] == ALT
    assert out["good.jpg"].status == "written"
    for p in (readonly, bmp):
        assert p.read_bytes() == before[p]
    assert os.readlink(link) == str(good)            # the link is still a link (its target was captioned itself)
    assert stat.S_IMODE(readonly.stat().st_mode) == 0o444
    assert not list(tmp_path.glob(".captioning-*"))


def test_a_photo_changed_after_captioning_is_not_overwritten(tmp_path):
    path = make_photo(tmp_path, "jpeg")
    w = MetadataWriter("in-place")
    w.remember([str(path)])
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))    # edited meanwhile
    edited = path.read_bytes()
    outcome = w.write(str(path), CAPTION)
    assert outcome.status == "error" and "changed" in outcome.detail and path.read_bytes() == edited
    w.close()


def test_unfamiliar_photos_are_left_undescribed_and_listed(tmp_path):
    path = make_photo(tmp_path, "jpeg")
    before = path.read_bytes()
    w = MetadataWriter("in-place", skip_unfamiliar=True)
    assert w.write(str(path), CAPTION, SimpleNamespace(level="unfamiliar")).status == "skipped"
    assert path.read_bytes() == before and w.unfamiliar == [str(path)] and str(path) in w.line()
    w.close()


def test_uploads_come_back_as_a_zip_of_captioned_copies_or_sidecars(tmp_path):
    jpeg, png = make_photo(tmp_path, "jpeg"), make_photo(tmp_path, "png")
    bmp = io.BytesIO()
    Image.new("RGB", (8, 8)).save(bmp, "BMP")
    uploads = [Upload("trip.zip/day 1/photo.jpg", jpeg.read_bytes()), Upload("photo.png", png.read_bytes()),
               Upload("odd.bmp", bmp.getvalue()), Upload("x.jpg", b"", "The file is empty.")]
    records = [{"path": u.name, "caption": CAPTION, "error": u.error, "confidence": c}
               for u, c in zip(uploads, ["familiar", "unfamiliar", None, None])]
    data, statuses = captions_zip(uploads, records, "copies", skip_unfamiliar=True)
    assert [s["status"] for s in statuses] == ["written", "skipped", "error", "error"]
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        assert z.namelist() == ["trip.zip/day 1/photo.jpg"]
        (tmp_path / "back.jpg").write_bytes(z.read("trip.zip/day 1/photo.jpg"))
    assert exiv2_read(tmp_path / "back.jpg")["alt"] == ALT
    data, statuses = captions_zip(uploads, records, "sidecars", naming="photo.xmp")
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        assert z.namelist() == ["trip.zip/day 1/photo.xmp", "photo.xmp", "odd.xmp"]     # any photo gets a sidecar
        (tmp_path / "back.xmp").write_bytes(z.read("photo.xmp"))
    assert exiftool_json(tmp_path / "back.xmp", "-XMP:all")["AltTextAccessibility"] == ALT


def test_embedding_bytes_and_the_xmp_packet_agree(tmp_path):
    photo = make_photo(tmp_path, "webp")
    out = embed_bytes(photo.read_bytes(), "p.webp", 'a man \'s "hat" & <coat> café', ["dog"])   # XML-escaped
    (tmp_path / "out.webp").write_bytes(out)
    assert exiv2_read(tmp_path / "out.webp")["description"] == 'A man\'s "hat" & <coat> café.'
    assert embed_bytes(out, "p.webp", "a cat", keep_existing=True) is None
    (tmp_path / "p.xmp").write_text(xmp_packet("Fish & <chips>.", ["fish"]), encoding="utf-8")
    read = exiftool_json(tmp_path / "p.xmp", "-XMP:all")
    assert read["Description"] == read["AltTextAccessibility"] == "Fish & <chips>." and read["Subject"] == "fish"


def test_ctrl_c_or_a_full_disk_mid_write_leaves_the_photo_whole_and_no_temporary_file(tmp_path, monkeypatch):
    import errno

    from captioning.publish import metadata

    path = make_photo(tmp_path, "jpeg")
    before = path.read_bytes()
    w = MetadataWriter("in-place")

    def interrupted(src, dst):
        raise KeyboardInterrupt
    monkeypatch.setattr(metadata.os, "replace", interrupted)           # Ctrl-C just before the rename
    with pytest.raises(KeyboardInterrupt):
        w.write(str(path), CAPTION)
    assert path.read_bytes() == before and not list(tmp_path.glob(".captioning-*"))
    monkeypatch.undo()

    real = metadata.Path.write_bytes

    def full(self, data):
        if self.name.startswith(".captioning-"):
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real(self, data)
    monkeypatch.setattr(metadata.Path, "write_bytes", full)
    outcome = w.write(str(path), CAPTION)
    assert outcome.status == "error" and "No space left on device" in outcome.detail
    assert path.read_bytes() == before and not list(tmp_path.glob(".captioning-*"))
    monkeypatch.undo()
    assert w.write(str(path), CAPTION).status == "written"            # the rerun finishes the job
    w.close()


def test_a_photo_in_a_read_only_folder_fails_alone_in_place(tmp_path, writer):
    """In-place needs to write a temporary copy beside the photo: a read-only folder is a per-file error (checked
    from its mode, since root could write there anyway), the photo and the folder stay as they were."""
    locked = tmp_path / "locked"
    locked.mkdir()
    photo = make_photo(locked, "jpeg", "photo.jpg")
    elsewhere = make_photo(tmp_path, "jpeg", "open.jpg")
    before = photo.read_bytes()
    locked.chmod(0o555)
    try:
        result = writer.write(str(photo), CAPTION)
        assert result.status == "error" and "read-only" in result.detail
        assert photo.read_bytes() == before and sorted(p.name for p in locked.iterdir()) == ["photo.jpg"]
        assert stat.S_IMODE(locked.stat().st_mode) == 0o555
        assert writer.write(str(elsewhere), CAPTION).status == "written"        # the rest of the run goes on
    finally:
        locked.chmod(0o755)
