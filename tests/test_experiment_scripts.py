"""The experiment scripts under scripts/, run as real processes on the tiny bundles (real Flickr8k subset, small
real encoder): they score exactly as train.py does, and their options change what they claim to change."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def evaluate_ensemble(tiny_run, flickr_dir, tmp_path, *args) -> subprocess.CompletedProcess:
    artifacts, cache = tiny_run
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "evaluate_ensemble.py"), *args,
                           "--cache-dir", str(cache), "--data-dir", str(flickr_dir)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)


def rows_of(path: Path) -> dict[tuple[str, str], dict]:
    return {(r["model"], r["label"]): r for r in json.loads(path.read_text())["rows"]}


def test_evaluate_ensemble_scores_a_bundle_as_train_py_did(tiny_run, flickr_dir, tmp_path):
    artifacts, _ = tiny_run
    bundle = str(artifacts / "tiny")
    done = evaluate_ensemble(tiny_run, flickr_dir, tmp_path, bundle, "--split", "test", "--limit", "60",
                             "--beam-widths", "1,3", "--json", str(tmp_path / "out.json"))
    assert done.returncode == 0, done.stderr[-2000:]
    rows = rows_of(tmp_path / "out.json")
    saved = {r["label"]: r for r in json.loads((artifacts / "tiny" / "metrics.json").read_text())["results"]}
    for label in ("greedy", "beam 3"):
        row, want = rows[(bundle, label)], saved[label]
        assert row["n_images"] == want["n_images"] == 9
        for metric in ("bleu_1", "rouge_l", "cider", "mean_length"):
            assert row[metric] == pytest.approx(want[metric], abs=1e-6), (label, metric)
    assert f"{bundle:<44} greedy" in done.stdout


def test_evaluate_ensemble_pools_bundles_and_caps_caption_length(tiny_run, flickr_dir, tmp_path):
    artifacts, _ = tiny_run
    merge, attention = str(artifacts / "tiny"), str(artifacts / "tiny-attention")
    common = [merge, attention, "--split", "dev", "--limit", "60", "--beam-widths", "1,2"]
    assert evaluate_ensemble(tiny_run, flickr_dir, tmp_path, *common, "--json", "free.json").returncode == 0
    capped = evaluate_ensemble(tiny_run, flickr_dir, tmp_path, *common, "--max-length", "2", "--no-singles",
                               "--json", "capped.json")
    assert capped.returncode == 0, capped.stderr[-2000:]
    free, short = rows_of(tmp_path / "free.json"), rows_of(tmp_path / "capped.json")
    assert set(free) == {(m, w) for m in (merge, attention, "ensemble of 2") for w in ("greedy", "beam 2")}
    assert set(short) == {("ensemble of 2", "greedy"), ("ensemble of 2", "beam 2")}
    for label in ("greedy", "beam 2"):
        assert short[("ensemble of 2", label)]["mean_length"] <= 2    # a caption cut at the cap has no <end>
    # the tiny models' greedy captions run long when free, so the cap is what shortened them
    assert free[("ensemble of 2", "greedy")]["mean_length"] > 2


def test_evaluate_ensemble_says_how_to_fill_missing_features(tiny_run, flickr_dir, tmp_path):
    artifacts, _ = tiny_run
    done = evaluate_ensemble(tiny_run, flickr_dir, tmp_path, str(artifacts / "tiny"), "--split", "test")
    assert done.returncode != 0
    assert "have no cached" in done.stderr and "python train.py features --encoder mobilenetv2" in done.stderr
    bad = evaluate_ensemble(tiny_run, flickr_dir, tmp_path, str(artifacts / "tiny"), "--limit", "60",
                            "--max-length", "1")
    assert bad.returncode != 0 and "--max-length must be at least 2" in bad.stderr
