"""The Train page under AppTest: a zip of captioned photos in, the import preview, Start runs a real job process,
live progress from its run directory, Cancel, and the new bundle in the sidebar when it ends. The command is
tests/fake_finetune.py ($CAPTIONING_TRAIN_SCRIPT): the page and the runner treat it as train.py finetune."""
import io
import re
import shutil
import time
import zipfile

import pytest
from conftest import ROOT
from test_app import navigation_like_the_server, start, texts  # noqa: F401  (the fixture applies here too)

from captioning.service.jobs import JobQueue
from captioning.service.progress import read_progress
from captioning.service.uploads import dataset_from_zip

PAGE = "app_pages/train.py"


def jpeg(color) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 48), color).save(buf, "JPEG")
    return buf.getvalue()


def dataset_zip(bad_line=True) -> bytes:
    """Four photos in a folder, a captions.csv (one row naming a photo that is not there: line 6)."""
    rows = ["image,caption", "photos/a.jpg,a red cup on a table", "photos/b.jpg,a green cup",
            "photos/c.jpg,a blue espresso cup", "photos/d.jpg,a grey cup of espresso"]
    if bad_line:
        rows.append("photos/missing.jpg,a cup that is not there")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("mine/captions.csv", "\n".join(rows) + "\n")
        for name, color in zip("abcd", [(200, 30, 30), (30, 200, 30), (30, 30, 200), (120, 120, 120)]):
            z.writestr(f"mine/photos/{name}.jpg", jpeg(color))
    return buf.getvalue()


@pytest.fixture()
def train_env(monkeypatch, tmp_path, tiny_bundle, flickr_dir, mobilenet_weights):
    """A private artifacts folder (a copy of the tiny bundle), jobs folder and cache; the stand-in command."""
    artifacts = tmp_path / "artifacts"
    shutil.copytree(tiny_bundle, artifacts / "tiny")
    monkeypatch.setenv("CAPTIONING_ARTIFACTS", str(artifacts))
    monkeypatch.setenv("FLICKR8K_DIR", str(flickr_dir))
    monkeypatch.setenv("CAPTIONING_WEIGHTS_DIR", str(mobilenet_weights.parent))
    monkeypatch.setenv("CAPTIONING_JOBS_DIR", str(tmp_path / "jobs"))
    monkeypatch.setenv("CAPTIONING_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CAPTIONING_TRAIN_SCRIPT", str(ROOT / "tests" / "fake_finetune.py"))
    monkeypatch.setenv("FAKE_EPOCH_SECONDS", "0.6")
    yield artifacts, JobQueue(tmp_path / "jobs")
    queue = JobQueue(tmp_path / "jobs")
    for job in queue.active():                     # never leave a job behind
        queue.cancel(job.id)
        queue.wait(job.id, 20)


def charts_of(at) -> list[str]:
    """The titles above the page's Altair charts, with the number of charts drawn."""
    return [m.value.strip("*") for m in at.markdown if m.value.startswith("**") and "(lower is better)" in m.value
            or "(higher is better)" in m.value] if at.get("vega_lite_chart") else []


def open_page(at=None):
    at = start(PAGE)
    assert "Teach it your photos" in texts(at)
    return at


def upload(at):
    at.file_uploader(key="train_zip").upload("mine.zip", dataset_zip(), "application/zip").run()
    assert not at.exception, at.exception
    return at


def test_the_zip_is_previewed_with_counts_bad_rows_and_a_sample(train_env):
    at = upload(open_page())
    metrics = {m.label: m.value for m in at.metric}
    assert (metrics["Rows read"], metrics["Captions kept"], metrics["Photos"], metrics["Rows skipped"]) == \
        ("5", "4", "4", "1"), metrics
    assert any("1 row(s) will be skipped" in w.value for w in at.warning)
    bad = at.dataframe[0].value
    assert list(bad["Line"]) == [6] and "not found" in bad["Reason"][0]
    assert "a blue espresso cup" in texts(at)
    name = next(t for t in at.text_input if t.label == "Name of the new bundle")
    assert name.value == "tiny-mine"                   # the base's name and the zip's top folder


def test_start_runs_a_job_whose_progress_shows_and_whose_bundle_joins_the_sidebar(train_env):
    artifacts, queue = train_env
    at = upload(open_page())
    at.number_input(key="train_epochs").set_value(12)     # 7 s: still running when Start is clicked again
    at.button(key="train_start").click().run()
    assert not at.exception, at.exception
    [job] = queue.list()
    assert job.status == "running" and job.origin == "app"
    assert "finetune" in job.argv and "--from" in job.argv and str(artifacts / "tiny-mine") in job.argv
    assert job.argv[job.argv.index("--epochs") + 1] == "12" and "--replay" in job.argv
    # The same job again is refused while it runs.
    at.button(key="train_start").click().run()
    assert any("already running" in e.value for e in at.error), [e.value for e in at.error]
    while read_progress(job.run_dir).done < 1:
        time.sleep(0.1)
    at.run()
    [bar] = at.get("progress")
    assert re.match(r"Epoch \d+ of 12 \(step [1-3] of 3, loss \d\.\d+\) · about \d+ s left", bar.proto.text), \
        bar.proto.text
    assert charts_of(at) == ["Loss (lower is better)", "Dev CIDEr-D (higher is better)"]    # dev score per epoch
    assert queue.wait(job.id, 60).status == "succeeded"
    at.run()
    assert not at.exception, at.exception
    assert any("tiny-mine" in s.value.replace("\\", "") and "ready" in s.value for s in at.success)
    assert "tiny-mine" in at.sidebar.selectbox[0].options
    metrics = {m.label: (m.value, m.proto.delta) for m in at.metric}     # the result: Flickr8k before and after too
    assert metrics["CIDEr-D (Flickr8k)"] == ("0.437", "-0.015"), metrics


def test_cancel_from_the_page_stops_the_job(train_env):
    artifacts, queue = train_env
    at = upload(open_page())
    at.number_input(key="train_epochs").set_value(100)
    at.button(key="train_start").click().run()
    [job] = queue.list()
    at.button(key=f"cancel_{job.id}").click().run()
    assert not at.exception, at.exception
    assert queue.wait(job.id, 20).status == "cancelled"
    assert not (artifacts / "tiny-mine").exists()
    at.run()
    assert at.button(key=f"resume_{job.id}")            # offered again


def test_an_interrupted_job_is_offered_for_resume_and_resumes(train_env):
    import os
    import signal

    from captioning.service import jobs
    from captioning.service.processes import alive

    artifacts, queue = train_env
    at = upload(open_page())
    at.number_input(key="train_epochs").set_value(12)     # enough left after epoch 1 that the kill lands mid-job
    at.button(key="train_start").click().run()
    [job] = queue.list()
    while read_progress(job.run_dir).done < 1:
        time.sleep(0.1)
    os.killpg(job.pid, signal.SIGKILL)             # the machine went down mid-job
    jobs._children.clear()
    deadline = time.monotonic() + 60                # a big process takes a moment to die on a busy machine
    while alive(job.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(job.pid)
    at = open_page()                                # a new session after the restart
    state = queue.get(job.id)
    assert any("stopped without finishing" in w.value for w in at.warning), (
        state.status, read_progress(job.run_dir).done, [w.value[:80] for w in at.warning])
    at.button(key=f"resume_{job.id}").click().run()
    assert not at.exception, at.exception
    assert queue.wait(job.id, 180).status == "succeeded" and (artifacts / "tiny-mine" / "manifest.json").is_file()


def test_a_zip_with_a_path_outside_or_two_captions_files_is_refused_and_nothing_is_unpacked(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("captions.csv", "image,caption\na.jpg,a cup\n")
        z.writestr("../evil.jpg", jpeg((0, 0, 0)))
    with pytest.raises(ValueError, match="unsafe path"):
        dataset_from_zip(buf.getvalue(), tmp_path / "data")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("captions.csv", "image,caption\n")
        z.writestr("more.txt", "x")
    with pytest.raises(ValueError, match="exactly one captions file"):
        dataset_from_zip(buf.getvalue(), tmp_path / "data")
    with pytest.raises(ValueError, match="cannot be read"):
        dataset_from_zip(b"not a zip", tmp_path / "data")
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").iterdir())
    captions, images = dataset_from_zip(dataset_zip(), tmp_path / "data")
    assert captions.name == "captions.csv" and (images / "photos" / "a.jpg").is_file()
    assert dataset_from_zip(dataset_zip(), tmp_path / "data") == (captions, images)   # unpacked once


def test_skipped_rows_name_the_photos_folder_as_the_user_knows_it_not_where_the_zip_was_unpacked(train_env,
                                                                                               monkeypatch, tmp_path):
    monkeypatch.delenv("CAPTIONING_TRAIN_SCRIPT")            # the real train.py import-check and its reasons
    at = upload(open_page())
    bad = at.dataframe[0].value
    assert list(bad["Line"]) == [6]
    assert bad["Reason"][0] == "photo photos/missing.jpg not found in mine.zip/mine", bad["Reason"][0]
    assert not any(str(tmp_path) in str(v) for v in bad.to_dict("records")[0].values())
