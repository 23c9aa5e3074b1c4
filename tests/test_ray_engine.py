"""`caption --engine ray` (captioning/service/ray_engine.py) on a real multi-process Ray cluster on loopback.

One cluster for the module (a head and a worker node, one CPU each, each its own `ray start` process group and
temp dir; stopped in teardown). One story on it: the single-process command captions 40 Flickr8k photos and a
file that is not a photo; the Ray command on the same folder is killed (the driver, SIGKILL) mid-run, rerun, and
while it resumes the worker node is killed (a machine lost: its raylet, its captioning actor, its blocks) and a
new one joins; the run ends, every photo is in the result file exactly once, and the file is byte for byte the
single-process one (same captions, same log p, same order, the same per-file error). Without Ray the option
says in one line how to install it.
"""
from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
from conftest import ROOT

from captioning.__main__ import main

PHOTOS = 40
BATCH = "2"


@pytest.fixture(scope="module")
def cluster():
    try:
        import ray  # noqa: F401
    except ImportError:
        pytest.skip("needs Ray, the optional extra: pip install '.[ray]' (not in requirements-dev.txt)")
    from ray_cluster import Cluster

    started = Cluster(head_cpus=1)
    try:
        started.add_worker(cpus=1, wait=False)               # starts beside the head, joins when it is up
        started.wait_started()
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="module")
def folder(tmp_path_factory, flickr_dir):
    names = (flickr_dir / "Flickr_8k.testImages.txt").read_text().split()[:PHOTOS]
    root = tmp_path_factory.mktemp("ray-photos")
    for name in names:
        shutil.copy(flickr_dir / "Images" / name, root / name)
    (root / "zz-not-a-photo.jpg").write_text("not a photo")
    return root


def rows(path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def wait_for_rows(path, at_least: int, proc, timeout: float = 900) -> int:
    deadline = time.monotonic() + timeout
    while (count := len(rows(path))) < at_least:
        assert proc.poll() is None, f"the command ended early: {proc.communicate()[1][-3000:]}"
        assert time.monotonic() < deadline, f"fewer than {at_least} rows in {path} after {timeout} s"
        time.sleep(0.1)
    return count


def test_a_killed_driver_and_a_lost_worker_node_resume_to_the_single_process_file(cluster, folder, tiny_bundle,
                                                                                 mobilenet_weights, tmp_path):
    common = ["caption", str(folder), "--bundle", str(tiny_bundle), "--weights", str(mobilenet_weights),
              "--batch-size", BATCH]
    reference = tmp_path / "one-process.csv"
    assert main([*common, "--out", str(reference)]) == 1                   # 1: the file that is not a photo
    expected = reference.read_text(encoding="utf-8")
    assert len(rows(reference)) == PHOTOS + 1

    out = tmp_path / "ray.csv"
    command = [sys.executable, "-m", "captioning", *common, "--out", str(out), "--engine", "ray",
               "--address", cluster.address, "--workers", "2"]
    env = {**os.environ, **cluster.driver_env, "TF_CPP_MIN_LOG_LEVEL": "3"}

    first = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_rows(out, 2, first)
        first.send_signal(signal.SIGKILL)                                   # the driver dies mid-run
        first.wait(timeout=60)
    finally:
        first.kill()
    kept = rows(out)                                                        # a valid file: what was saved
    assert 2 <= len(kept) < PHOTOS, "the driver was to be killed mid-run"
    assert expected.startswith(out.read_text(encoding="utf-8"))            # those rows as one process wrote them

    second = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_rows(out, len(kept) + 2, second)
        cluster.nodes[1].kill()                                            # a machine lost mid-run ...
        cluster.add_worker(cpus=1, wait=False)                             # ... and another one joins
        _, err = second.communicate(timeout=900)
    finally:
        second.kill()
    assert second.returncode == 1, err
    assert f"skipped {len(kept)} already in {out}" in err, err
    assert len(rows(out)) > len(kept) + 2, "the worker node was to be killed mid-run"

    counts = Counter(r["path"] for r in rows(out))
    assert set(counts) == {str(p) for p in folder.iterdir()} and set(counts.values()) == {1}   # each photo once
    assert out.read_text(encoding="utf-8") == expected                     # the same captions, log p, order, error


def test_without_ray_the_engine_option_says_how_to_install_it(monkeypatch, capsys, folder):
    monkeypatch.setitem(sys.modules, "ray", None)                          # `import ray` fails as if not installed
    monkeypatch.setenv("RAY_AUTH_MODE", "token")            # (so that the engine sets nothing of its own here)
    monkeypatch.setenv("RAY_worker_niceness", "0")
    assert main(["caption", str(folder), "--engine", "ray"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "pip install '.[ray]'" in err, err


def test_cluster_options_go_with_the_ray_engine(capsys, folder):
    assert main(["caption", str(folder), "--workers", "2"]) == 2
    assert "--address and --workers go with --engine ray" in capsys.readouterr().err


def test_results_cross_as_json_with_every_number_exact():
    from captioning.decoding.captions import Caption
    from captioning.evaluation.trust import Assessment, Neighbour
    from captioning.service.batch import BatchResult
    from captioning.service.ray_engine import result_from_json, result_json
    from captioning.service.records import to_record

    captions = [Caption(["a", "dog"], -1.2345678901234567, -0.6, [0.3, 0.7, 0.99]),
                Caption([], float("-inf"), float("-inf"), [0.0], finished=False)]
    trust = Assessment(0.8123456789, 0.7, "familiar", [Neighbour("1.jpg", 0.91, ["a dog runs"])], 0.42)
    for result in (BatchResult(3, "x.jpg", captions, None, trust), BatchResult(4, "y.jpg", None, "bad file")):
        back = result_from_json(BatchResult, result.index, result.name, result_json(result))
        assert back == result
        assert to_record(back, 2, 1, {"model": "m", "decoding": "d"}) == to_record(result, 2, 1,
                                                                                   {"model": "m", "decoding": "d"})


def test_a_local_object_store_is_an_eighth_of_the_ram_within_bounds():
    from captioning.service.ray_engine import object_store_bytes

    assert object_store_bytes(24 * 2**30) == 2 * 2**30                   # 24 GB: capped (Ray's own: 7.2 GB)
    assert object_store_bytes(8 * 2**30) == 2**30
    assert object_store_bytes(1 * 2**30) == 256 * 2**20
