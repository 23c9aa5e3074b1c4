"""The job runner with the real command: ``train.py finetune`` queued the way the Train page queues it, its progress
read from its run directory, its bundle and side-by-side record at the end; a fine-tune started in a terminal
registers itself in the jobs database."""
import csv
import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT

from captioning.service.jobs import JobQueue
from captioning.service.progress import read_progress
from captioning.training.jobs import FinetuneSettings, import_check, start_finetune


@pytest.fixture()
def user_photos(tmp_path, flickr_dir):
    """Twelve Flickr8k training photos with their captions, each ending in a word no bundle knows ('zorblat')."""
    from captioning.data.flickr8k import Flickr8k

    ds = Flickr8k.load(flickr_dir, check_images=False)
    folder = tmp_path / "mine"
    (folder / "photos").mkdir(parents=True)
    with open(folder / "captions.csv", "w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow(["image", "caption"])
        for name in ds.splits["train"][500:512]:
            shutil.copy(flickr_dir / "Images" / name, folder / "photos" / name)
            for caption in ds.captions[name][:3]:
                out.writerow([f"photos/{name}", f"{caption.rstrip(' .')} zorblat"])
    return folder / "captions.csv", folder


@pytest.fixture()
def env(monkeypatch, tmp_path, tiny_run, flickr_dir, mobilenet_weights):
    monkeypatch.setenv("CAPTIONING_JOBS_DIR", str(tmp_path / "jobs"))
    # a copy of the tiny bundle's feature cache: the job adds its photos' features, which the session's shared
    # cache must not see (test_pipeline counts that cache's rows)
    shutil.copytree(tiny_run[1], tmp_path / "cache")
    monkeypatch.setenv("CAPTIONING_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("FLICKR8K_DIR", str(flickr_dir))
    monkeypatch.setenv("CAPTIONING_WEIGHTS_DIR", str(mobilenet_weights.parent))
    monkeypatch.delenv("CAPTIONING_TRAIN_SCRIPT", raising=False)
    return JobQueue(tmp_path / "jobs")


def test_a_real_finetune_runs_as_a_job_and_the_page_can_read_everything_it_shows(env, tiny_bundle, user_photos,
                                                                                 tmp_path):
    captions, images = user_photos
    summary = import_check(captions, images)
    assert (summary["captions"], summary["photos"], summary["bad_rows"]) == (36, 12, [])
    out = tmp_path / "artifacts" / "tiny-zorblat"
    job = start_finetune(env, tiny_bundle, captions, images, out,
                         FinetuneSettings(epochs=2, replay=0.0, min_count=2, patience=5))
    assert job.status == "running" and job.argv[1].endswith("train.py") and job.argv[2] == "finetune"
    job = env.wait(job.id, 300)
    assert job.status == "succeeded", job.log_tail(30)
    progress = read_progress(job.run_dir, 2, job.job_dir / "steps.jsonl")
    assert [e["epoch"] for e in progress.epochs] == [1, 2] and progress.phase == "done" and progress.fraction == 1.0
    assert progress.steps and all(s["decoder"] == 1 for s in progress.steps)     # sampled from progress.json
    record = json.loads((out / "manifest.json").read_text())["finetune"]
    after = record["metrics"]["after"]
    split = "test" if "test" in after else "dev"
    assert after[split]["captions"] and set(after[split]["captions"]) == set(record["metrics"]["before"][split]
                                                                            ["captions"])
    assert "zorblat" in record["vocabulary"]["added"]


def test_a_finetune_from_the_terminal_registers_itself(env, tiny_bundle, user_photos, tmp_path):
    captions, images = user_photos
    done = subprocess.run([sys.executable, "train.py", "finetune", "--from", str(tiny_bundle), "--captions",
                           str(captions), "--images", str(images), "--out", str(tmp_path / "cli-out"), "--dry-run"],
                          cwd=ROOT, env=os.environ.copy(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    [job] = env.list()
    assert (job.origin, job.status, job.exit_code) == ("cli", "succeeded", 0)
    assert job.title == f"Fine-tune {tiny_bundle.name} → cli-out" and "--dry-run" in job.argv
