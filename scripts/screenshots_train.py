#!/usr/bin/env python
"""Screenshots of issue 36's pages on a REAL `train.py finetune` job (headless Chromium, 1400 px): the Train page
during the job, after it, and after a server restart mid-job; the Dataset page on the imported photos; the
Evaluation page of the fine-tuned bundle. (tests/test_browser_train.py runs the same flow with a stand-in command.)

    .venv/bin/python scripts/screenshots_train.py [--base BUNDLE] [--work DIR] [--out docs/screenshots]

The data: 30 Flickr8k training photos of dogs whose captions say "pupper" instead of "dog" (a word the base
lacks), zipped with a captions.csv and one row naming a photo the zip lacks. Without --base a small MobileNetV2
bundle is trained first (train.py --limit 120, a few minutes), so the captions are a small model's.
Needs FLICKR8K_DIR (default ../shared/flickr8k), the MobileNetV2 weights ($CAPTIONING_WEIGHTS_DIR, default
../shared/weights) and Chromium (`bash scripts/setup.sh test`).
"""
from __future__ import annotations

import argparse
import atexit
import csv
import io
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def dog_zip(flickr: Path, photos: int = 30) -> bytes:
    rows, chosen = [], []
    with open(flickr / "captions.txt", encoding="utf-8-sig", newline="") as fh:
        by_photo: dict[str, list[str]] = {}
        for row in csv.DictReader(fh):
            by_photo.setdefault(row["image"], []).append(row["caption"])
    train = (flickr / "Flickr_8k.trainImages.txt").read_text().split()
    for name in train:
        caps = [c for c in by_photo.get(name, []) if " dog " in f" {c.lower()} "]
        if len(caps) >= 3:
            chosen.append(name)
            rows += [(f"photos/{name}", c.replace(" dog ", " pupper ").replace("A dog ", "A pupper ")) for c in caps]
        if len(chosen) == photos:
            break
    buf = io.BytesIO()
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["image", "caption"])
    writer.writerows(rows + [("photos/not-in-the-zip.jpg", "a pupper that is missing")])
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("pupper-photos/captions.csv", text.getvalue())
        for name in chosen:
            z.write(flickr / "Images" / name, f"pupper-photos/photos/{name}")
    return buf.getvalue()


def serve(env: dict, log: Path):
    from ui.browser import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.headless=true",
                             f"--server.port={port}", "--server.address=127.0.0.1",
                             "--browser.gatherUsageStats=false"], cwd=ROOT, env=env, stdout=open(log, "w"),
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(180):
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"streamlit did not start; see {log}")


def stop(proc) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()


def first_job(driver, url: str, queue, upload: Path, shoot) -> None:
    """Upload the zip, Start, and shoot the Train page during the job and after it."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    from captioning.jobs import read_progress
    from ui.browser import wait_for_text

    driver.get(f"{url}/train")
    wait_for_text(driver, "Teach it your photos")
    WebDriverWait(driver, 120).until(EC.presence_of_element_located(
        (By.CSS_SELECTOR, 'input[type="file"]'))).send_keys(str(upload))
    wait_for_text(driver, "row(s) will be skipped", 600)
    time.sleep(5)                                  # the sample photos settle below the preview
    button = driver.find_element(By.XPATH, "//button[.//p[text()='Start fine-tuning']]")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'}); arguments[0].click();", button)
    deadline = time.time() + 300
    while not queue.list() and time.time() < deadline:
        time.sleep(0.5)
    [job] = queue.list()
    driver.get(f"{url}/train")                     # the jobs panel at the top of the page
    wait_for_text(driver, "Jobs", 120)
    while read_progress(job.run_dir).done < 2 and queue.get(job.id).active:
        time.sleep(1)
    wait_for_text(driver, "left", 120)
    shoot("train-during")
    while queue.get(job.id).active:
        time.sleep(2)
    assert queue.get(job.id).status == "succeeded", queue.get(job.id).log_tail(20)
    wait_for_text(driver, "is ready", 120)
    wait_for_text(driver, "Base vs fine-tuned", 60)
    shoot("train-after")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, help="the bundle to fine-tune (default: train a small one)")
    parser.add_argument("--work", type=Path, default=Path(tempfile.mkdtemp(prefix="train-shots-")))
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    parser.add_argument("--flickr", type=Path, default=Path(os.environ.get("FLICKR8K_DIR") or
                                                             ROOT.parent / "shared" / "flickr8k"))
    args = parser.parse_args()
    from PIL import Image

    from captioning.jobs import JobQueue, read_progress
    from captioning.train_jobs import FinetuneSettings, start_finetune
    from ui.browser import choose_option, new_driver, wait_for_text

    work, flickr = args.work.resolve(), args.flickr.resolve()
    artifacts, cache, jobs = work / "artifacts", work / "cache", work / "jobs"
    weights = Path(os.environ.get("CAPTIONING_WEIGHTS_DIR") or ROOT.parent / "shared" / "weights")
    env = {**os.environ, "CAPTIONING_ARTIFACTS": str(artifacts), "CAPTIONING_JOBS_DIR": str(jobs),
           "CAPTIONING_CACHE_DIR": str(cache), "FLICKR8K_DIR": str(flickr), "CAPTIONING_WEIGHTS_DIR": str(weights)}
    os.environ.update(env)
    if args.base:
        shutil.copytree(args.base, artifacts / args.base.name, dirs_exist_ok=True)
        base = artifacts / args.base.name
    else:
        base = artifacts / "small"
        if not base.is_dir():
            small = weights / "mobilenet_v2_0.35_224_imagenet_notop.weights.h5"
            subprocess.run([sys.executable, "train.py", "--data-dir", str(flickr), "--encoder", "mobilenetv2",
                            "--alpha", "0.35", "--weights", str(small),
                            "--limit", "120", "--epochs", "5", "--out", str(base), "--cache-dir", str(cache),
                            "--quiet", "--beam-widths", "3", "--no-human", "--no-sweep"], cwd=ROOT, env=env,
                           check=True)
    upload = work / "pupper-photos.zip"
    upload.write_bytes(dog_zip(flickr))
    args.out.mkdir(parents=True, exist_ok=True)
    driver = new_driver(1400, 2000)
    atexit.register(driver.quit)                      # also when a step fails: no Chromium left behind
    queue = JobQueue(jobs)

    def shoot(name: str, wait: float = 3) -> None:
        time.sleep(wait)
        png = work / f"{name}.png"
        driver.save_screenshot(str(png))
        Image.open(png).convert("RGB").save(args.out / f"{name}.jpg", quality=80)
        print(f"saved {args.out / name}.jpg")

    proc, url = serve(env, work / "streamlit.log")
    try:
        bundle = artifacts / f"{base.name}-pupper-photos"
        if not bundle.is_dir():                        # else: a run that stopped after the job (--work again)
            first_job(driver, url, queue, upload, shoot)

        driver.get(f"{url}/dataset")
        wait_for_text(driver, "Caption statistics")
        choose_option(driver, "Dataset", "pupper-photos/captions.csv")
        wait_for_text(driver, "Your photos from pupper-photos/captions.csv")
        wait_for_text(driver, "Caption statistics")
        shoot("dataset-imported")

        driver.get(f"{url}/evaluation")
        wait_for_text(driver, "Evaluation")
        choose_option(driver, "Model bundle", bundle.name, sidebar=True)
        wait_for_text(driver, "On your photos: before and after fine-tuning")
        wait_for_text(driver, "Your test photos")                 # the scores table has drawn
        shoot("evaluation-finetuned")

        # A second job, then the machine goes down mid-job: server, supervisor and command at once.
        captions = next((jobs / "data").glob("*/pupper-photos/captions.csv"))
        second = start_finetune(queue, base, captions, captions.parent, artifacts / f"{base.name}-replay0",
                                FinetuneSettings(replay=0.0))
        while read_progress(second.run_dir).done < 1:
            time.sleep(1)
        os.killpg(second.pid, signal.SIGKILL)
    finally:
        stop(proc)
    proc, url = serve(env, work / "streamlit-restart.log")
    try:
        driver.get(f"{url}/train")
        wait_for_text(driver, "stopped without finishing")
        wait_for_text(driver, "Start fine-tuning")
        shoot("train-after-restart")
    finally:
        stop(proc)


if __name__ == "__main__":
    main()
