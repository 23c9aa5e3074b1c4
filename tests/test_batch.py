"""Captioning many photos at once: the batched core call, folder walking, and `python -m captioning caption`
on folders with --out (CSV, JSONL, JSON), resume and exit codes."""
import csv
import json
import os
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from captioning.__main__ import main
from captioning.artifacts.bundle import load_bundle
from captioning.decoding.captions import Caption
from captioning.service.batch import BatchResult, caption_stream
from captioning.service.captioner import Captioner
from captioning.service.folders import gather_images
from captioning.service.records import read_records, records_csv, to_record
from ui.labels import sentence


@pytest.fixture(scope="module")
def captioner(tiny_bundle, mobilenet_weights):
    return Captioner(load_bundle(tiny_bundle), mobilenet_weights)


@pytest.fixture()
def cli_env(monkeypatch, mobilenet_weights):
    monkeypatch.setenv("CAPTIONING_WEIGHTS_DIR", str(mobilenet_weights.parent))


def first_test_images(flickr_dir, n):
    return (flickr_dir / "Flickr_8k.testImages.txt").read_text().split()[:n]


@pytest.fixture()
def photo_folder(tmp_path, flickr_dir):
    """photos/ with two good photos (one in a subfolder, one a PNG), a broken .jpg, a text file and a hidden
    folder; returns (folder, {relative name: path})."""
    names = first_test_images(flickr_dir, 3)
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    (folder / ".thumbs").mkdir()
    shutil.copy(flickr_dir / "Images" / names[0], folder / "a.jpg")
    Image.open(flickr_dir / "Images" / names[1]).save(folder / "sub" / "b.PNG")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    (folder / "notes.txt").write_text("not a photo")
    shutil.copy(flickr_dir / "Images" / names[2], folder / ".thumbs" / "c.jpg")
    return folder


def test_folders_are_walked_recursively_for_image_files_only(photo_folder, tmp_path):
    lone = tmp_path / "lone.txt"
    lone.write_text("x")
    found = gather_images([photo_folder, lone, tmp_path / "missing.jpg", photo_folder / "a.jpg"])
    assert found == [str(photo_folder / "a.jpg"), str(photo_folder / "broken.jpg"), str(photo_folder / "sub" / "b.PNG"),
                     str(lone), str(tmp_path / "missing.jpg")]   # explicit files kept (the loader judges), no repeats


def test_many_images_go_through_the_encoder_in_batches_and_match_one_at_a_time(captioner, flickr_dir):
    names = first_test_images(flickr_dir, 5)
    sources = [flickr_dir / "Images" / n for n in names]
    sources.insert(2, b"definitely not an image")                    # a bad one in the middle of a batch
    sources.append(Image.open(flickr_dir / "Images" / names[0]))      # a PIL image too
    encode = captioner._forward()
    batch_sizes = []

    def counting(images):
        batch_sizes.append(len(images))
        return encode(images)

    original = captioner._forward
    captioner._forward = lambda: counting
    try:
        results = list(captioner.caption_many(sources, batch_size=3, beam_width=2, num_return_sequences=2))
    finally:
        captioner._forward = original
    assert batch_sizes == [2, 3, 1]                    # batches of 3 sources (the bad one skipped), then the last
    assert [r.index for r in results] == list(range(7))
    assert [r.ok for r in results] == [True, True, False, True, True, True, True]
    assert "not an image" in results[2].error and results[2].captions is None
    assert results[0].name == str(sources[0]) and results[2].name == "image 3"
    for result, source in zip(results, sources):
        if result.ok:
            single = captioner.caption(source, beam_width=2, num_return_sequences=2)
            assert [c.text for c in result.captions] == [c.text for c in single]
            assert np.allclose([c.log_prob for c in result.captions], [c.log_prob for c in single], atol=1e-3)
    assert results[-1].best.text == results[0].best.text              # the same photo as a PIL image


def test_results_stream_out_batch_by_batch(captioner, flickr_dir):
    """The first batch's results arrive before the last batch is read (a generator, not a list at the end)."""
    names = first_test_images(flickr_dir, 4)
    read = []

    def sources():
        for n in names:
            read.append(n)
            yield flickr_dir / "Images" / n

    stream = caption_stream(captioner, sources(), captioner.config(), batch_size=1)
    first = next(stream)
    assert first.ok and len(read) == 2                  # one batch read ahead of the one being decoded
    assert len([first, *stream]) == 4


def test_batch_size_is_validated(captioner):
    with pytest.raises(ValueError, match="batch size"):
        list(caption_stream(captioner, [b"x"], captioner.config(), batch_size=0))


def test_records_flatten_the_n_best_into_csv_columns():
    caps = [Caption(["a", "dog"], -1.5, -0.5, [0.5, 0.4, 0.9]), Caption(["a", "cat"], -2.0, -0.7, [0.5, 0.2, 0.9])]
    good = to_record(BatchResult(0, "x/a.jpg", caps), n_best=2)
    bad = to_record(BatchResult(1, "x/b.jpg", None, "The file is empty."), n_best=2)
    assert good["n_best"][1] == {"caption": "a cat", "log_prob": -2.0, "score": -0.7}
    assert good["mean_log_prob"] == -0.5 and bad["caption"] is None
    rows = list(csv.DictReader(records_csv([good, bad]).splitlines()))
    assert list(rows[0]) == ["path", "caption", "log_prob", "mean_log_prob", "caption_2", "log_prob_2", "error"]
    assert rows[0]["caption_2"] == "a cat" and rows[1]["error"] == "The file is empty." and rows[1]["caption"] == ""


def run_cli(capsys, *args):
    code = main(["caption", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_captions_a_folder_into_csv_and_a_rerun_skips_what_is_done(captioner, tiny_bundle, photo_folder,
                                                                       flickr_dir, tmp_path, capsys, cli_env):
    out = tmp_path / "results" / "captions.csv"
    code, stdout, stderr = run_cli(capsys, photo_folder, "--bundle", tiny_bundle, "--out", out, "--batch-size", "2")
    assert code == 1                                                  # one file failed
    assert stderr.strip().splitlines()[-1].startswith("captioned 2, failed 1")
    assert f"{photo_folder / 'broken.jpg'}\terror: " in stderr and "Traceback" not in stderr
    rows = list(csv.DictReader(out.open()))
    assert [r["path"] for r in rows] == [str(photo_folder / p) for p in ("a.jpg", "broken.jpg", "sub/b.PNG")]
    good = {r["path"]: r for r in rows if not r["error"]}
    for path, row in good.items():
        assert row["caption"] == captioner.caption(path)[0].text
        assert float(row["log_prob"]) < 0 and float(row["mean_log_prob"]) < 0
    assert rows[1]["caption"] == "" and rows[1]["error"].startswith("The image file is damaged")

    code, _, stderr = run_cli(capsys, photo_folder, "--bundle", tiny_bundle, "--out", out)
    assert code == 1 and "captioned 0, failed 1, skipped 2 already in" in stderr    # only the bad file again

    Image.open(flickr_dir / "Images" / first_test_images(flickr_dir, 4)[3]).save(photo_folder / "broken.jpg")
    code, _, stderr = run_cli(capsys, photo_folder, "--bundle", tiny_bundle, "--out", out)
    assert code == 0 and "captioned 1, failed 0, skipped 2" in stderr
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 3 and not any(r["error"] for r in rows) and all(r["caption"] for r in rows)


def test_cli_writes_jsonl_with_the_n_best_and_resumes_after_a_torn_line(tiny_bundle, photo_folder, tmp_path,
                                                                          capsys, cli_env):
    out = tmp_path / "captions.jsonl"
    code, stdout, _ = run_cli(capsys, photo_folder, "--bundle", tiny_bundle, "--out", out, "--beam-width", "3",
                              "--n-best", "2")
    assert code == 1 and stdout == ""                                 # results go to the file, not the screen
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["path"].rsplit("/", 1)[-1] for r in records] == ["a.jpg", "broken.jpg", "b.PNG"]
    for r in (records[0], records[2]):
        assert r["error"] is None and r["caption"] == r["n_best"][0]["caption"] and len(r["n_best"]) == 2
        assert r["n_best"][0]["score"] >= r["n_best"][1]["score"]
    assert records[1]["caption"] is None and records[1]["error"]

    lines = out.read_text().splitlines()                              # an interrupted run: the last line torn
    out.write_text(lines[0] + "\n" + lines[2][: len(lines[2]) // 2])
    code, _, stderr = run_cli(capsys, photo_folder, "--bundle", tiny_bundle, "--out", out, "--beam-width", "3",
                              "--n-best", "2")
    assert "captioned 1, failed 1, skipped 1" in stderr
    assert sorted(r["path"] for r in read_records(out)) == sorted(r["path"] for r in records)


def test_cli_writes_json_and_prints_lines_without_out(tiny_bundle, photo_folder, tmp_path, capsys, cli_env):
    out = tmp_path / "captions.json"
    code, _, _ = run_cli(capsys, photo_folder / "a.jpg", photo_folder / "sub", "--bundle", tiny_bundle, "--out", out)
    data = json.loads(out.read_text())
    assert code == 0 and [d["path"] for d in data] == [str(photo_folder / "a.jpg"), str(photo_folder / "sub" / "b.PNG")]
    code, stdout, stderr = run_cli(capsys, photo_folder / "a.jpg", "--bundle", tiny_bundle)
    assert code == 0 and stdout.startswith(f"{photo_folder / 'a.jpg'}\t") and "log p" in stdout
    assert data[0]["caption"] in stdout and "captioned 1, failed 0" in stderr


@pytest.mark.parametrize("args, message", [
    (["--out", "captions.txt"], "--out must end in .csv, .jsonl or .json"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
])
def test_cli_refuses_bad_options_in_one_line(tiny_bundle, photo_folder, capsys, cli_env, args, message):
    code, _, stderr = run_cli(capsys, photo_folder, "--bundle", tiny_bundle, *args)
    assert code == 2 and stderr.startswith(f"error: {message}") and len(stderr.strip().splitlines()) == 1


def test_cli_refuses_an_output_file_it_did_not_write(tiny_bundle, photo_folder, tmp_path, capsys, cli_env):
    out = tmp_path / "budget.csv"
    out.write_text("month,amount\njan,3\n")
    code, _, stderr = run_cli(capsys, photo_folder, "--bundle", tiny_bundle, "--out", out)
    assert code == 2 and "not a caption file" in stderr and out.read_text() == "month,amount\njan,3\n"


def test_cli_says_when_a_folder_has_no_photos(tiny_bundle, tmp_path, capsys, cli_env):
    (tmp_path / "empty").mkdir()
    code, _, stderr = run_cli(capsys, tmp_path / "empty", "--bundle", tiny_bundle)
    assert code == 2 and stderr.startswith("error: no image files")


# ---- hardening (issue 34): odd names, the user's columns, what made a caption, Ctrl-C, --out checks ---------

def not_loaded(monkeypatch):
    """Make loading a model fail the test: what is checked here must be refused before it."""
    def refuse(*a, **k):
        pytest.fail("the model was loaded before the refusal")
    monkeypatch.setattr(Captioner, "from_bundle", refuse)


@pytest.mark.skipif(os.name == "nt", reason="file names are bytes only on POSIX")
def test_cli_keeps_photos_whose_names_are_not_utf8_or_hold_a_newline(tiny_bundle, flickr_dir, tmp_path, capsys,
                                                                    cli_env):
    from captioning.service.records import path_from_text

    folder = tmp_path / "odd"
    folder.mkdir()
    photo = (flickr_dir / "Images" / first_test_images(flickr_dir, 1)[0]).read_bytes()
    for raw in (b"caf\xe9.jpg", b"new\nline.jpg", b"ok.jpg"):
        with open(os.path.join(os.fsencode(folder), raw), "wb") as fh:
            fh.write(photo)
    code, stdout, stderr = run_cli(capsys, folder, "--bundle", tiny_bundle)
    assert code == 0 and len(stdout.splitlines()) == 3, stdout                  # one tab-separated line each
    assert f"{folder}/caf\\xe9.jpg\t" in stdout and f"{folder}/new\\nline.jpg\t" in stdout
    for suffix in (".csv",):                                         # JSON files: test_batch_files.py
        out = tmp_path / f"captions{suffix}"
        code, _, stderr = run_cli(capsys, folder, "--bundle", tiny_bundle, "--out", out)
        assert code == 0 and "captioned 3, failed 0" in stderr, stderr
        records = read_records(out)
        assert sorted(os.fsencode(os.path.basename(path_from_text(r["path"]))) for r in records) == \
            [b"caf\xe9.jpg", b"new\nline.jpg", b"ok.jpg"] and all(r["caption"] for r in records)
        code, _, stderr = run_cli(capsys, folder, "--bundle", tiny_bundle, "--out", out)
        assert code == 0 and "captioned 0, failed 0, skipped 3" in stderr


def test_cli_refuses_a_changed_decoding_or_model_before_loading_and_recaptions_when_asked(
        tiny_bundle, tiny_attention_bundle, photo_folder, tmp_path, capsys, cli_env, monkeypatch):
    out = tmp_path / "captions.csv"
    a, b = photo_folder / "a.jpg", photo_folder / "sub" / "b.PNG"
    code, _, _ = run_cli(capsys, a, b, "--bundle", tiny_bundle, "--out", out)
    rows = list(csv.DictReader(out.open()))
    assert code == 0 and rows[0]["model"].startswith("tiny sha256:") and rows[0]["decoding"].startswith("beam:")
    assert "beam_width=5" in rows[0]["decoding"]                       # the one default: beam 5 (issue 39)
    text = out.read_text().splitlines()                              # the user reviews the captions
    out.write_text("\n".join([text[0] + ",note", text[1] + ",checked", text[2] + ","]) + "\n")

    with monkeypatch.context() as m:
        not_loaded(m)
        for other, needle in ((["--beam-width", "3"], "decoding 'beam: "),
                              (["--bundle", tiny_attention_bundle], "model tiny sha256:")):
            code, _, stderr = run_cli(capsys, a, b, "--bundle", tiny_bundle, "--out", out, *other)
            assert code == 2 and stderr.startswith("error: ") and len(stderr.strip().splitlines()) == 1, stderr
            assert needle in stderr and "--recaption" in stderr
    code, _, stderr = run_cli(capsys, a, b, "--bundle", tiny_bundle, "--out", out, "--beam-width", "3",
                              "--recaption")
    assert code == 0 and "captioned 2, failed 0" in stderr
    rows = list(csv.DictReader(out.open()))
    assert [(r["path"], r["note"]) for r in rows] == [(str(a), "checked"), (str(b), "")]      # replaced, kept
    assert all(r["decoding"].startswith("beam: ") and "beam_width=3" in r["decoding"] for r in rows)

    monkeypatch.chdir(photo_folder / "sub")                          # the same photos by other spellings
    code, _, stderr = run_cli(capsys, "../a.jpg", "b.PNG", photo_folder, "--bundle", tiny_bundle, "--out", out,
                              "--beam-width", "3")
    assert "skipped 2" in stderr and len(list(csv.DictReader(out.open()))) == 3     # + broken.jpg, no duplicate


def test_cli_ctrl_c_saves_what_is_done_exits_130_and_a_rerun_goes_on(tiny_bundle, photo_folder, tmp_path, capsys,
                                                                     cli_env, monkeypatch):
    from captioning.service import folders

    real = folders.caption_stream

    def interrupted_after_one(*args, **kwargs):
        for i, result in enumerate(real(*args, **kwargs)):
            if i == 1:
                raise KeyboardInterrupt
            yield result
    monkeypatch.setattr(folders, "caption_stream", interrupted_after_one)
    out = tmp_path / "captions.jsonl"
    code, _, stderr = run_cli(capsys, photo_folder / "a.jpg", photo_folder / "sub", "--bundle", tiny_bundle,
                              "--out", out, "--batch-size", "1")
    assert code == 130 and "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == f"interrupted: captioned 1, failed 0; saved in {out}: rerun the same " \
                                              f"command to go on"
    assert [r["path"] for r in read_records(out)] == [str(photo_folder / "a.jpg")]
    monkeypatch.setattr(folders, "caption_stream", real)
    code, _, stderr = run_cli(capsys, photo_folder / "a.jpg", photo_folder / "sub", "--bundle", tiny_bundle,
                              "--out", out)
    assert code == 0 and "captioned 1, failed 0, skipped 1" in stderr


@pytest.mark.parametrize("where", ["a folder", "under a file"])
def test_cli_refuses_an_output_it_cannot_write_before_loading(where, tiny_bundle, photo_folder, tmp_path, capsys,
                                                              cli_env, monkeypatch):
    (tmp_path / "taken.csv").mkdir()
    (tmp_path / "notes").write_text("x")
    out = {"a folder": tmp_path / "taken.csv", "under a file": tmp_path / "notes" / "o.csv"}[where]
    not_loaded(monkeypatch)
    code, _, stderr = run_cli(capsys, photo_folder, "--bundle", tiny_bundle, "--out", out)
    assert code == 2 and len(stderr.strip().splitlines()) == 1 and stderr.startswith(f"error: --out {out}")


def test_cli_names_the_artifacts_folder_it_looked_in(tmp_path, photo_folder, capsys, cli_env, monkeypatch):
    monkeypatch.setenv("CAPTIONING_ARTIFACTS", str(tmp_path / "elsewhere"))
    code, _, stderr = run_cli(capsys, photo_folder)
    assert code == 2 and f"No bundle at {tmp_path / 'elsewhere' / 'default'}." in stderr


# ---- zips of photos --------------------------------------------------------------------------------------

def zip_bytes(members: dict) -> bytes:
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def test_a_zip_gives_its_photos_and_refuses_unsafe_or_oversized_members(flickr_dir):
    from captioning.service.uploads import expand_uploads, photos_from_zip
    from captioning.vision.images import MAX_BYTES

    photo = (flickr_dir / "Images" / first_test_images(flickr_dir, 1)[0]).read_bytes()
    archive = zip_bytes({"trip/a.jpg": photo, "trip/readme.txt": "hi", "../escape.jpg": photo,
                         "/etc/abs.png": photo, "__MACOSX/trip/._a.jpg": b"junk", "trip/.hidden.jpg": photo,
                         "trip/huge.png": bytes(MAX_BYTES + 1), "b.JPG": photo})
    uploads, skipped = expand_uploads([("loose.png", b"png?"), ("holiday.zip", archive)])
    by_name = {u.name: u for u in uploads}
    assert list(by_name) == ["loose.png", "holiday.zip/trip/a.jpg", "holiday.zip/../escape.jpg",
                             "holiday.zip//etc/abs.png", "holiday.zip/trip/huge.png", "holiday.zip/b.JPG"]
    assert by_name["holiday.zip/trip/a.jpg"].data == photo and by_name["holiday.zip/b.JPG"].data == photo
    assert by_name["holiday.zip/../escape.jpg"].error.startswith("Unsafe path")
    assert by_name["holiday.zip//etc/abs.png"].error.startswith("Unsafe path")
    huge = by_name["holiday.zip/trip/huge.png"]
    assert "20 MB limit" in huge.error and huge.data is None
    assert sorted(skipped) == ["holiday.zip/__MACOSX/trip/._a.jpg", "holiday.zip/trip/.hidden.jpg",
                               "holiday.zip/trip/readme.txt"]

    [too_many], _ = photos_from_zip("many.zip", zip_bytes({f"{i}.jpg": b"x" for i in range(5)}), max_members=4)
    assert too_many.error.startswith("The zip holds 5 files; the limit is 4")
    [too_big], _ = photos_from_zip("big.zip", zip_bytes({f"{i}.png": bytes(600) for i in range(3)}), max_total=1000)
    assert too_big.error.startswith("The zip unpacks to more than")      # a bomb is refused before inflating it
    [broken], _ = photos_from_zip("broken.zip", b"PK\x03\x04 not really")
    assert broken.error.startswith("The zip file cannot be read")


def test_uploads_with_refused_members_keep_their_order(captioner, flickr_dir):
    from captioning.service.uploads import Upload, caption_uploads

    photo = (flickr_dir / "Images" / first_test_images(flickr_dir, 1)[0]).read_bytes()
    uploads = [Upload("bad-first", None, "refused"), Upload("a", photo), Upload("b", b"nope"),
               Upload("bad-mid", None, "refused too"), Upload("c", photo), Upload("bad-last", None, "no")]
    results = list(caption_uploads(captioner, uploads, captioner.config(), batch_size=2))
    assert [(r.index, r.name, r.ok) for r in results] == [(0, "bad-first", False), (1, "a", True), (2, "b", False),
                                                          (3, "bad-mid", False), (4, "c", True), (5, "bad-last", False)]
    assert results[3].error == "refused too" and results[1].best.text == results[4].best.text


# ---- the Batch page (AppTest) ----------------------------------------------------------------------------

@pytest.fixture()
def batch_page(app_env, monkeypatch):
    from streamlit.testing.v1 import app_test
    from test_app import NavigationPagesManager, start

    monkeypatch.setattr(app_test, "PagesManager", NavigationPagesManager)
    return start("app_pages/batch.py")


def test_batch_page_captions_photos_lists_a_bad_one_and_offers_downloads(batch_page, captioner, flickr_dir):
    at = batch_page
    assert "Caption many photos" in at.title[0].value
    photos = [(n, (flickr_dir / "Images" / n).read_bytes(), "image/jpeg") for n in first_test_images(flickr_dir, 2)]
    at.file_uploader(key="batch_upload").set_value([photos[0], ("notes.jpg", b"not a photo", "image/jpeg"),
                                                    photos[1]]).run()
    assert not at.exception, at.exception
    table = at.dataframe[0].value
    assert list(table.columns) == ["Photo", "File", "Caption", "Mean log p", "Trust", "Status"]   # human labels
    # the in-domain level, worded as on the Caption page, with the score it comes from; none for the bad file
    assert all(re.fullmatch(r"(Familiar|Unusual|Unfamiliar) photo \(-?\d\.\d\d\)", table["Trust"][i]) for i in (0, 2))
    assert table["Trust"][1] == ""
    assert list(table["File"]) == [photos[0][0], "notes.jpg", photos[1][0]]
    # one short status word (never cut); the reason where there is room for it, written as the page writes captions
    assert list(table["Status"]) == ["captioned", "failed", "captioned"]
    assert table["Caption"][1].startswith("Not captioned: The file is not an image")
    assert all(table["Caption"][i][0].isupper() and table["Caption"][i].endswith(".") for i in (0, 2))
    assert table["Caption"][0] and table["Caption"][2] and table["Photo"][0].startswith("data:image/jpeg;base64,")
    assert {m.label: m.value for m in at.metric if m.label in ("Captioned", "Failed")} == {"Captioned": "2",
                                                                                           "Failed": "1"}
    assert any(e.value.startswith("**notes\\.jpg**: The file is not an image") for e in at.error)
    assert len(at.get("download_button")) == 5           # CSV, JSON, alt text HTML and Markdown, captioned photos

    at.segmented_control(key="batch_strategy").set_value("Greedy").run()      # the Caption page's options
    assert not at.exception, at.exception
    assert at.dataframe[0].value["Caption"][0] == sentence(captioner.caption(photos[0][1], beam_width=1)[0].text)


def test_batch_page_takes_a_zip_of_photos(batch_page, flickr_dir):
    at = batch_page
    names = first_test_images(flickr_dir, 2)
    archive = zip_bytes({f"album/{n}": (flickr_dir / "Images" / n).read_bytes() for n in names} | {"album/x.txt": "x"})
    at.file_uploader(key="batch_upload").set_value([("album.zip", archive, "application/zip")]).run()
    assert not at.exception, at.exception
    table = at.dataframe[0].value
    assert list(table["File"]) == [f"album.zip/album/{n}" for n in names] and set(table["Status"]) == {"captioned"}
    assert any("Skipped 1 file" in c.value for c in at.caption)


def test_batches_of_any_size_trace_the_encoder_and_the_decoder_start_once(captioner, flickr_dir):
    """Issue 39: a folder run printed "triggered tf.function retracing" warnings; each batch size traced the
    encoder and the decoder's start again. With fixed signatures each traces once, whatever the batch."""
    photos = [flickr_dir / "Images" / n for n in first_test_images(flickr_dir, 5)]
    for size in (1, 2, 3, 5):
        captioner.decode(captioner.features(photos[:size]), beam_width=2)
    assert captioner._forward().experimental_get_tracing_count() == 1
    starts = [step._start for step in getattr(captioner.steps, "members", [captioner.steps])]
    assert all(start.experimental_get_tracing_count() == 1 for start in starts)
