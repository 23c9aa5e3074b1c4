"""Result files of `python -m captioning caption --out` as the user's data: any file name (bytes that are not
UTF-8, newlines) is kept and reads back to the same file; columns and keys the user added survive every rerun;
no NaN or infinity is ever written; resume knows what made each caption and which spellings are one photo;
symlinks follow one rule; an output that cannot be written is refused before any work. No model here: a stub
captioner where one is needed (the CLI with a real bundle is in test_batch.py)."""
import csv
import io
import json
import math
import os
import sys

import numpy as np
import pytest

from captioning.decoding.captions import Caption
from captioning.decoding.config import DecodeConfig
from captioning.service.batch import BatchResult
from captioning.service.folders import caption_files, gather_images
from captioning.service.records import (
    ResumeConflict,
    check_output,
    path_from_text,
    path_text,
    plan_resume,
    read_result_file,
    records_csv,
    records_text,
    to_record,
)

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="file names are bytes only on Linux")

ODD_NAMES = [b"caf\xe9.jpg", b"new\nline.jpg", b"tab\tand\rcr.jpg", b"back\\slash.jpg", b"bell\x07.jpg",
             "line\u2028sep.jpg".encode(), "café.jpg".encode(), b"plain.jpg"]


@pytest.fixture()
def odd_folder(tmp_path):
    """photos/ holding one (fake) photo per name of ODD_NAMES, made as real files from their bytes."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for raw in ODD_NAMES:
        with open(os.path.join(os.fsencode(folder), raw), "wb") as fh:
            fh.write(b"jpeg?")
    return folder


@linux_only
def test_any_file_name_is_written_as_one_line_of_utf8_that_reads_back_to_the_same_file(odd_folder):
    names = gather_images([odd_folder])
    assert len(names) == len(ODD_NAMES)
    for name in names:
        text = path_text(name)
        text.encode("utf-8")                                           # no lone surrogate left
        assert "\n" not in text and "\t" not in text and "\r" not in text and len(text.splitlines()) == 1
        assert path_from_text(text) == name and os.path.isfile(path_from_text(text))
    shown = {os.path.basename(path_text(n)) for n in names}
    assert {"caf\\xe9.jpg", "new\\nline.jpg", "tab\\tand\\rcr.jpg", "back\\\\slash.jpg", "bell\\x07.jpg",
            "line\\xe2\\x80\\xa8sep.jpg", "café.jpg", "plain.jpg"} == shown      # readable; clean names unchanged
    assert path_from_text("old\\style.jpg") == "old\\style.jpg"      # a backslash that starts no escape stays


def stub_captioner(captions_of):
    """A captioner without a model: `captions_of(i)` is the n-best list of the i-th photo it decodes."""
    class Stub:
        can_assess = False
        decoded = 0

        def encode(self, arrays):                       # uint8 (N, 224, 224, 3) -> (N, 1)
            return np.zeros((len(arrays), 1), np.float32)

        def decode(self, features, config):
            out = [captions_of(self.decoded + i) for i in range(len(features))]
            self.decoded += len(features)
            return out
    return Stub()


def a_caption(words="a dog runs", log_prob=-3.0):
    words = words.split()
    return [Caption(words, log_prob, log_prob / (len(words) + 1), [0.5] * (len(words) + 1))]


@pytest.fixture()
def real_photos(tmp_path):
    """A few small real JPEGs (the loader opens them) under names that are not UTF-8 or hold a newline."""
    from PIL import Image

    folder = tmp_path / "real"
    folder.mkdir()
    for i, raw in enumerate([b"caf\xe9.jpg", b"new\nline.jpg", b"ok.jpg"]):
        Image.fromarray(np.full((40, 60, 3), 60 * i, np.uint8)).save(os.path.join(os.fsencode(folder), raw), "JPEG")
    return folder


@linux_only
@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".json"])
def test_a_batch_with_odd_names_writes_every_row_and_resumes(real_photos, tmp_path, suffix):
    paths = gather_images([real_photos])
    out = tmp_path / f"captions{suffix}"
    summary = caption_files(stub_captioner(lambda i: a_caption()), paths, DecodeConfig(), out)
    assert (summary.captioned, summary.failed) == (3, 0)
    records, _ = read_result_file(out)
    assert [path_from_text(r["path"]) for r in records] == paths and all(r["caption"] == "a dog runs" for r in records)
    again = caption_files(stub_captioner(lambda i: pytest.fail("nothing left to caption")), paths, DecodeConfig(), out)
    assert (again.captioned, again.skipped) == (0, 3)


def refuse(constant):
    pytest.fail(f"{constant} is not JSON")


def test_non_finite_numbers_are_never_written_and_an_empty_caption_is_not_done(tmp_path):
    from captioning.service.records import judged

    empty = [Caption([], -math.inf, -math.inf, [0.0])]
    odd = [Caption(["a", "dog"], -math.inf, -math.inf, [0.5, 0.0, 0.0]), *a_caption()]
    record = to_record(BatchResult(0, "x.jpg", odd), n_best=2)
    assert record["caption"] == "a dog" and record["log_prob"] is None and record["n_best"][0]["score"] is None
    json.dumps(record, allow_nan=False)
    assert "inf" not in records_csv([record]).lower()
    failed = judged(BatchResult(1, "y.jpg", empty))
    assert not failed.ok and failed.error.startswith("No caption came out")

    photos = tmp_path / "p"
    photos.mkdir()
    from PIL import Image
    for name in ("a.jpg", "b.jpg"):
        Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(photos / name)
    paths = [str(photos / "a.jpg"), str(photos / "b.jpg")]
    for suffix in (".csv", ".jsonl", ".json"):
        out = tmp_path / f"o{suffix}"
        summary = caption_files(stub_captioner(lambda i: empty if i == 0 else odd), paths, DecodeConfig(), out)
        assert (summary.captioned, summary.failed) == (1, 1)
        text = out.read_text()
        assert "inf" not in text.lower() and "nan" not in text.lower()
        if suffix != ".csv":
            json.loads(text.splitlines()[0] if suffix == ".jsonl" else text, parse_constant=refuse)
        again = caption_files(stub_captioner(lambda i: a_caption("a cat")), paths, DecodeConfig(), out)
        assert (again.captioned, again.skipped) == (1, 1)            # the empty one is tried again
        records, _ = read_result_file(out)
        assert [r["caption"] for r in records] == ["a cat", "a dog"] and not records[0]["error"]


def test_columns_the_user_added_to_a_csv_survive_a_rerun_and_a_recaption(tmp_path):
    from PIL import Image

    for name in ("a.jpg", "b.jpg", "c.jpg"):
        Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / name)
    a, b, c = (str(tmp_path / n) for n in ("a.jpg", "b.jpg", "c.jpg"))
    out = tmp_path / "captions.csv"
    run = {"model": "tiny sha256:0123456789abcdef", "decoding": "greedy: max_length=30"}
    caption_files(stub_captioner(lambda i: a_caption()), [a, b], DecodeConfig(), out, run=run)
    rows = list(csv.DictReader(out.open()))
    rows[0]["reviewed_by"], rows[0]["note"], rows[1]["reviewed_by"], rows[1]["note"] = "ann", "fine, \"ok\"", "", ""
    header = ["reviewed_by", *rows[0].keys() - {"reviewed_by", "note"}, "note"]          # their own order
    with out.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, header)
        writer.writeheader()
        writer.writerows(rows)

    caption_files(stub_captioner(lambda i: a_caption()), [a, b, c], DecodeConfig(), out, run=run)
    again = list(csv.DictReader(out.open()))
    assert list(again[0])[: len(header)] == header                     # the user's column order kept
    assert [(r["path"], r["reviewed_by"], r["note"]) for r in again] == [(a, "ann", 'fine, "ok"'), (b, "", ""),
                                                                         (c, "", "")]
    other = {**run, "decoding": "beam: beam_width=5"}
    caption_files(stub_captioner(lambda i: a_caption("a cat")), [a], DecodeConfig(), out, run=other, recaption=True)
    last = list(csv.DictReader(out.open()))
    assert (last[0]["caption"], last[0]["decoding"], last[0]["reviewed_by"], last[0]["note"]) == \
        ("a cat", "beam: beam_width=5", "ann", 'fine, "ok"')
    assert [r["caption"] for r in last[1:]] == ["a dog runs", "a dog runs"]   # photos not given stay as they were


def test_keys_the_user_added_to_json_records_survive(tmp_path):
    from PIL import Image

    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "a.jpg")
    paths = [str(tmp_path / "a.jpg"), str(tmp_path / "missing.jpg")]
    for suffix in (".jsonl", ".json"):
        out = tmp_path / f"o{suffix}"
        caption_files(stub_captioner(lambda i: a_caption()), paths, DecodeConfig(), out)
        records, _ = read_result_file(out)
        for r in records:
            r["tags"], r["starred"] = ["beach"], True
        out.write_text(records_text(records, suffix))
        (tmp_path / "missing.jpg").write_bytes((tmp_path / "a.jpg").read_bytes())   # now it can be captioned
        caption_files(stub_captioner(lambda i: a_caption()), paths, DecodeConfig(), out)
        again, _ = read_result_file(out)
        assert [(r["tags"], r["starred"], bool(r["caption"])) for r in again] == [(["beach"], True, True)] * 2
        (tmp_path / "missing.jpg").unlink()


def test_a_csv_row_with_more_values_than_columns_is_refused_not_cut(tmp_path):
    out = tmp_path / "o.csv"
    out.write_text("path,caption,error\na.jpg,a dog,,surprise\n")
    with pytest.raises(ValueError, match="row 2 has more values than the header"):
        read_result_file(out)


def test_resume_refuses_another_model_or_decoding_in_one_line_and_knows_one_photo_by_any_spelling(tmp_path,
                                                                                                   monkeypatch):
    (tmp_path / "b3").mkdir()
    (tmp_path / "work").mkdir()
    photo = tmp_path / "b3" / "x.jpg"
    from PIL import Image
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(photo)
    out = tmp_path / "o.csv"
    run = {"model": "tiny sha256:0123456789abcdef", "decoding": "greedy: max_length=30, num_return_sequences=1"}
    monkeypatch.chdir(tmp_path / "work")
    caption_files(stub_captioner(lambda i: a_caption()), ["../b3/x.jpg"], DecodeConfig(), out, run=run)

    plan = plan_resume(out, [str(photo), "../b3/../b3/x.jpg"], run)
    assert plan.todo == [] and plan.skipped == 1                    # one photo, whatever the spelling
    renamed = {**run, "model": "copy-of-tiny sha256:0123456789abcdef"}
    assert plan_resume(out, [str(photo)], renamed).skipped == 1    # the same files under another folder name
    sample = {**run, "decoding": "sample: max_length=30, temperature=1.0, top_p=0.9"}
    with pytest.raises(ResumeConflict) as refused:
        plan_resume(out, [str(photo)], sample)
    message = str(refused.value)
    assert "\n" not in message and "--recaption" in message and "decoding 'greedy: " in message
    assert "-> 'sample: max_length=30, temperature=1.0, top_p=0.9'" in message and "model" not in message.split("(")[1]
    other = {**run, "model": "big sha256:fedcba9876543210"}
    with pytest.raises(ResumeConflict, match=r"model tiny sha256:0123456789abcdef -> big sha256:fedcba9876543210"):
        plan_resume(out, [str(photo)], other)
    assert plan_resume(out, [str(photo)], sample, recaption=True).todo == [str(photo)]

    caption_files(stub_captioner(lambda i: a_caption("a cat")), [str(photo)], DecodeConfig(), out, run=sample,
                  recaption=True)
    rows = list(csv.DictReader(out.open()))
    assert [(r["path"], r["caption"]) for r in rows] == [("../b3/x.jpg", "a cat")]   # replaced, not duplicated


def test_a_file_from_before_models_were_recorded_is_not_taken_as_made_by_this_run(tmp_path):
    (tmp_path / "x.jpg").write_bytes(b"x")
    out = tmp_path / "o.csv"
    out.write_text(f"path,caption,log_prob,mean_log_prob,error\n{tmp_path / 'x.jpg'},a dog,-3,-1,\n")
    with pytest.raises(ResumeConflict, match="model not recorded -> tiny"):
        plan_resume(out, [str(tmp_path / "x.jpg")], {"model": "tiny sha256:01", "decoding": "greedy"})
    assert plan_resume(out, [str(tmp_path / "x.jpg")]).skipped == 1      # no run given: the library's old way


def test_symlinked_files_and_folders_follow_one_rule(tmp_path):
    """Both are followed, wherever they point; each real folder is walked once (a loop ends) and each photo is
    listed once."""
    outside, folder = tmp_path / "outside", tmp_path / "photos"
    (outside / "sub").mkdir(parents=True)
    folder.mkdir()
    for p in (outside / "o.jpg", outside / "sub" / "s.jpg", folder / "real.jpg"):
        p.write_bytes(b"x")
    (folder / "link.jpg").symlink_to(outside / "o.jpg")
    (folder / "linkdir").symlink_to(outside / "sub", target_is_directory=True)
    (folder / "loop").symlink_to(folder, target_is_directory=True)
    (folder / "alias.jpg").symlink_to(folder / "real.jpg")
    (folder / "dangling.jpg").symlink_to(tmp_path / "gone.jpg")
    found = gather_images([folder])
    # alias.jpg and real.jpg are one photo (listed under the name met first); loop/ is photos/ again
    assert found == [str(folder / n) for n in ("alias.jpg", "dangling.jpg", "link.jpg", "linkdir/s.jpg")]
    assert gather_images([folder, outside]) == found                     # the outside photos are met already


def test_an_output_that_cannot_be_written_is_refused_before_any_work_and_nothing_is_created(tmp_path):
    (tmp_path / "folder.csv").mkdir()
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(ValueError, match=r"--out .*folder\.csv is a folder; name a file inside it"):
        check_output(tmp_path / "folder.csv")
    with pytest.raises(ValueError, match=r"a-file is a file, not a folder"):
        check_output(tmp_path / "a-file" / "deeper" / "o.csv")
    if sys.platform == "linux":
        with pytest.raises(ValueError, match=r"--out /proc/nope/o\.csv cannot be written"):
            check_output("/proc/nope/o.csv")
    check_output(tmp_path / "new" / "deeper" / "o.jsonl")              # fine, and not created yet
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "folder.csv"]


def test_a_bom_from_a_spreadsheet_program_is_not_a_column(tmp_path):
    out = tmp_path / "o.csv"
    out.write_bytes("\ufeffpath,caption,error,note\nx.jpg,a dog,,mine\n".encode())
    records, header = read_result_file(out)
    assert header == ["path", "caption", "error", "note"] and records[0]["note"] == "mine"
    assert records_csv(records, header).startswith("path,caption,error,note,")
    rows = list(csv.DictReader(io.StringIO(records_csv(records, header))))
    assert rows[0]["note"] == "mine" and rows[0]["caption"] == "a dog"
