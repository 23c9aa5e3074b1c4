"""train.py killed mid-run (SIGINT or SIGKILL) resumes without redoing finished work and leaves no corrupt file."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import ROOT

from captioning.artifacts.bundle import load_bundle
from captioning.vision.features import FeatureCache


def train_cmd(flickr_dir, weights, work, *extra):
    return [sys.executable, "-u", "train.py", *extra, "--data-dir", str(flickr_dir), "--encoder", "mobilenetv2",
            "--alpha", "0.35", "--weights", str(weights), "--cache-dir", str(work / "cache"),
            "--out", str(work / "artifacts" / "resumed"), "--quiet"]


def run_until(cmd, ready, sig, timeout=300):
    """Start cmd, send ``sig`` once ``ready(line_or_None)`` says so; return the output so far."""
    # A shell without job control starts background jobs with SIGINT ignored, and children inherit that;
    # give the child Ctrl-C's default so the test means the same wherever the suite runs.
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            bufsize=1, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines, deadline = [], time.time() + timeout
    os.set_blocking(proc.stdout.fileno(), False)
    while time.time() < deadline and proc.poll() is None:
        line = proc.stdout.readline()
        if line:
            lines.append(line)
        if ready(line or None):
            proc.send_signal(sig)
            break
        if not line:
            time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("the run ended before it could be interrupted:\n" + "".join(lines))
    proc.wait(60)
    os.set_blocking(proc.stdout.fileno(), True)
    return "".join(lines) + proc.stdout.read()


def no_temporaries(folder):
    return [p for p in folder.rglob("*") if ".tmp" in p.name or p.name.endswith(".part")]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_feature_extraction_resumes_after_a_kill(tmp_path, flickr_dir, mobilenet_weights, sig):
    cmd = train_cmd(flickr_dir, mobilenet_weights, tmp_path, "features") + ["--limit", "400", "--shard-size", "16"]
    shards = tmp_path / "cache" / "features" / "mobilenetv2-a0.35-224"
    run_until(cmd, lambda _: len(list(shards.glob("shard-*.json"))) >= 2, sig)
    cache = FeatureCache(tmp_path / "cache" / "features", "mobilenetv2-a0.35-224")
    done_before = len(cache.index())
    assert 32 <= done_before < 400
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert f"{400 - done_before} of 400 images to extract" in out.stdout
    index = cache.index()
    assert len(index) == 400
    names = [n for meta in shards.glob("shard-*.json") for n in json.loads(meta.read_text())["names"]]
    assert len(names) == len(set(names)) == 400                    # nothing extracted twice
    assert not no_temporaries(shards)
    assert np.isfinite(cache.load(list(index)).astype(np.float32)).all()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_training_resumes_after_a_kill(tmp_path, flickr_dir, mobilenet_weights, sig):
    base = train_cmd(flickr_dir, mobilenet_weights, tmp_path)
    subprocess.run(base[:3] + ["features"] + base[3:] + ["--limit", "60"], cwd=ROOT, check=True, timeout=300,
                   capture_output=True)
    cmd = base[:3] + ["train"] + base[3:] + ["--limit", "60", "--epochs", "6", "--patience", "6"]
    out = run_until(cmd, lambda line: bool(line) and line.startswith("epoch 2:"), sig)
    if sig == signal.SIGINT:
        assert "run the same command again to resume" in out
    state = json.loads((tmp_path / "cache" / "runs" / "resumed" / "state.json").read_text())
    assert "2" in state["epochs"]
    if sig == signal.SIGINT:                                              # package what we have, then go on
        early = subprocess.run(cmd + ["--finish"], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert early.returncode == 0, early.stderr
        assert "epoch " not in early.stdout.replace("best epoch", "")
        assert load_bundle(tmp_path / "artifacts" / "resumed").manifest["training"]["epochs_run"] >= 2
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "epoch 1:" not in out.stdout and "epoch 6:" in out.stdout     # continued, did not start over
    state = json.loads((tmp_path / "cache" / "runs" / "resumed" / "state.json").read_text())
    assert sorted(map(int, state["epochs"])) == [1, 2, 3, 4, 5, 6]
    bundle = load_bundle(tmp_path / "artifacts" / "resumed")
    assert bundle.manifest["training"]["epochs_run"] == 6
    assert not no_temporaries(tmp_path / "artifacts")
