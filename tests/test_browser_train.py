"""The Train page in headless Chromium against a real `streamlit run`: upload a zip of captioned photos, Start,
watch the job's live progress, see the new bundle and the side-by-side when it ends, and find an interrupted job
(with its Resume button) after a server restart; the Dataset page on the photos the job imported. The job's command
is tests/fake_finetune.py ($CAPTIONING_TRAIN_SCRIPT). Screenshots: test-output/screenshots/train-*.png and
dataset-imported.png."""
import io
import os
import shutil
import signal
import time
import zipfile

import pytest
from test_browser import OUT, assert_no_error_shown, running_app, settle

from captioning import jobs
from captioning.batch import dataset_from_zip
from captioning.jobs import JobQueue, read_progress
from captioning.train_jobs import FinetuneSettings, start_finetune
from ui.browser import choose_option, new_driver, wait_for_text

PHOTOS = ["1000268201_693b08cb0e.jpg", "1001773457_577c3a7d70.jpg", "1002674143_1b742ab4b8.jpg",
          "1003163366_44323f5815.jpg", "1007129816_e794419615.jpg", "1007320043_627395c3d8.jpg"]


def flickr_zip(flickr_dir) -> bytes:
    """Six real photos re-captioned in a user's words, and one row naming a photo the zip lacks (line 8)."""
    captions = ["a girl climbing into a wooden playhouse", "two dogs on the pavement",
                "a little girl covered in paint", "a man in a hat in front of a painting",
                "a man in an orange hat starring at something", "a child playing on a rope net"]
    rows = ["image,caption"] + [f"photos/{p},{c}" for p, c in zip(PHOTOS, captions)]
    rows.append("photos/not-in-the-zip.jpg,a photo that is missing")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("my-photos/captions.csv", "\n".join(rows) + "\n")
        for p in PHOTOS:
            z.write(flickr_dir / "Images" / p, f"my-photos/photos/{p}")
    return buf.getvalue()


@pytest.fixture()
def train_server_env(monkeypatch, tmp_path, tiny_bundle):
    artifacts = tmp_path / "artifacts"
    shutil.copytree(tiny_bundle, artifacts / "tiny")
    monkeypatch.setenv("CAPTIONING_JOBS_DIR", str(tmp_path / "jobs"))
    monkeypatch.setenv("CAPTIONING_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CAPTIONING_TRAIN_SCRIPT", str(os.path.join(os.path.dirname(__file__), "fake_finetune.py")))
    monkeypatch.setenv("FAKE_EPOCH_SECONDS", "2.0")
    yield artifacts, JobQueue(tmp_path / "jobs")
    queue = JobQueue(tmp_path / "jobs")
    for job in queue.active():
        queue.cancel(job.id)
        queue.wait(job.id, 20)


def sidebar_bundles(driver) -> list[str]:
    """The names in the sidebar's bundle list (the select box opened, read, closed)."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element(By.CSS_SELECTOR, '[data-testid="stSidebar"] input[role="combobox"]')
    ActionChains(driver).move_to_element(box).click().perform()
    time.sleep(1)
    names = [o.text for o in driver.find_elements(By.CSS_SELECTOR, '[role="option"]')]
    ActionChains(driver).send_keys(Keys.ESCAPE).perform()
    time.sleep(0.5)
    return names


def shoot(driver, name: str) -> None:
    settle(3)
    driver.save_screenshot(str(OUT / f"{name}.png"))


def test_train_page_in_a_browser_during_and_after_a_job_and_after_a_restart(train_server_env, flickr_dir,
                                                                            mobilenet_weights, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    artifacts, queue = train_server_env
    OUT.mkdir(parents=True, exist_ok=True)
    upload = tmp_path / "my-photos.zip"
    upload.write_bytes(flickr_zip(flickr_dir))
    driver = new_driver(1400, 2000)
    try:
        with running_app(artifacts, flickr_dir, mobilenet_weights.parent, "streamlit-train.log") as url:
            driver.get(f"{url}/train")
            wait_for_text(driver, "Teach it your photos")
            WebDriverWait(driver, 60).until(EC.presence_of_element_located(
                (By.CSS_SELECTOR, 'input[type="file"]'))).send_keys(str(upload))
            wait_for_text(driver, "Captions kept")
            wait_for_text(driver, "1 row(s) will be skipped")
            shoot(driver, "train-preview")
            driver.find_element(By.XPATH, "//button[.//p[text()='Start fine-tuning']]").click()
            job = None
            deadline = time.time() + 60
            while (job is None or job.status == "queued") and time.time() < deadline:   # queued, then started
                job = next(iter(queue.list()), None)
                time.sleep(0.2)
            assert job is not None and job.status == "running"
            while read_progress(job.run_dir).done < 2:
                time.sleep(0.2)
            wait_for_text(driver, "left", timeout=30)              # "Epoch k of 10 (step ...) · about N s left"
            body = driver.find_element(By.TAG_NAME, "body").text
            assert "of 10" in body and "Running" in body
            assert_no_error_shown(driver)
            shoot(driver, "train-during")
            assert queue.wait(job.id, 90).status == "succeeded"
            wait_for_text(driver, "is ready", timeout=60)           # the fragment's refresh sees the end
            wait_for_text(driver, "Base vs fine-tuned", timeout=30)
            assert_no_error_shown(driver)
            shoot(driver, "train-after")
            assert "tiny-my-photos" in sidebar_bundles(driver)

            # The Dataset page browses the photos the job imported (issue 36.4).
            driver.get(f"{url}/dataset")
            wait_for_text(driver, "Caption statistics")
            choose_option(driver, "Dataset", "my-photos/captions.csv")
            wait_for_text(driver, "Your photos from my-photos/captions.csv (csv format): 6 photos with 6 captions")
            wait_for_text(driver, "Caption statistics")
            assert_no_error_shown(driver)
            shoot(driver, "dataset-imported")

            # A second job (queued from another session), then the machine goes down mid-job: server, supervisor and
            # command all at once.
            captions, images = dataset_from_zip(upload.read_bytes(), queue.root / "data")
            second = start_finetune(queue, artifacts / "tiny", captions, images, artifacts / "tiny-second",
                                    FinetuneSettings(epochs=10))
            assert second.status == "running"
            while read_progress(second.run_dir).done < 1:
                time.sleep(0.2)
            os.killpg(second.pid, signal.SIGKILL)
        jobs._children.clear()
        with running_app(artifacts, flickr_dir, mobilenet_weights.parent, "streamlit-train-restart.log") as url:
            driver.get(f"{url}/train")
            wait_for_text(driver, "Interrupted")
            wait_for_text(driver, "stopped without finishing")
            wait_for_text(driver, "Resume")                       # the button on the interrupted job's card
            wait_for_text(driver, "Captions with a new word")     # the finished job's card below it
            wait_for_text(driver, "Start fine-tuning")
            settle(3)
            assert_no_error_shown(driver)
            shoot(driver, "train-after-restart")
            assert queue.get(second.id).status == "interrupted"
    finally:
        driver.quit()
