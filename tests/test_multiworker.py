"""`train.py --strategy multiworker` across two real processes (MultiWorkerMirroredStrategy over gRPC on
loopback, CPU), each with its own TF_CONFIG, reading one feature cache that two processes filled.

One run tells the whole story: the workers train epoch 1, worker 1 is killed, the chief fails with a one-line
error within a bounded time (the coordination heartbeat / collective timeout, --peer-timeout) instead of hanging,
both workers are restarted with the same command, resume from the chief's epoch-1 checkpoint and finish; the
chief alone writes the bundle, and the losses match a single-process run with the same global batch.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from conftest import ROOT

PEER_TIMEOUT = 60          # seconds; above the longest a healthy worker waits for (or goes unscheduled) on 2 busy cores
# 60 images -> 42 training images x 5 captions = 210 = 5 global batches of 42 (21 per worker), none dropped.
COMMON = ["--encoder", "mobilenetv2", "--alpha", "0.35", "--limit", "60", "--epochs", "2", "--units", "32",
          "--embed-dim", "32", "--dropout", "0", "--batch-size", "42", "--min-count", "1", "--seed", "42", "--quiet"]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """A train.py process whose output lines are collected as they come."""

    def __init__(self, args, env):
        self.p = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.p.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for_line(self, prefix: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not any(ln.startswith(prefix) for ln in self.lines):
            assert self.p.poll() is None, "\n".join(self.lines[-30:])
            assert time.monotonic() < deadline, f"no {prefix!r} within {timeout}s:\n" + "\n".join(self.lines[-30:])
            time.sleep(0.2)

    def finish(self, timeout: float = 1800) -> int:
        code = self.p.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return code

    def log(self) -> str:
        return "\n".join(self.lines)


def kill_after_epoch_1(chief: Proc, victim: Proc, survivor: Proc, who: str) -> None:
    """Once the chief has logged epoch 1, kill ``victim``: ``survivor`` must exit 3 with the one-line error that
    says to restart every worker, within a bounded time (no hang on the dead peer) and without a traceback."""
    chief.wait_for_line("epoch 1:", timeout=1500)
    victim.p.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    code = survivor.finish(timeout=PEER_TIMEOUT + 300)
    failed_after = time.monotonic() - killed_at
    victim.finish()
    errors = [ln for ln in survivor.lines if ln.startswith("error:")]
    print(f"\n--- {who} was killed (exit {code}, {failed_after:.0f}s after the kill) ---\n"
          + "\n".join(survivor.lines[-4:]))
    assert code == 3, survivor.log()[-3000:]
    assert failed_after < PEER_TIMEOUT + 90                       # bounded: no hang on the dead peer
    assert len(errors) == 1 and "restart every worker with the same command to resume" in errors[0]
    assert "Traceback" not in survivor.log()


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory, flickr_dir, mobilenet_weights):
    """Features of the 60 images, extracted once by two processes (2 slices) into the cache both workers read."""
    cache = tmp_path_factory.mktemp("multiworker") / "cache"
    procs = [Proc(["features", "--data-dir", str(flickr_dir), "--weights", str(mobilenet_weights),
                   "--cache-dir", str(cache), "--num-shards", "2", "--shard-index", str(i), *COMMON], ENV)
             for i in range(2)]
    for p in procs:
        assert p.finish() == 0, p.log()
    return cache


def start_workers(args, tmp_path):
    ports = [free_port(), free_port()]
    workers = []
    for i in range(2):
        tf_config = {"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]}, "task": {"type": "worker", "index": i}}
        workers.append(Proc(args, {**ENV, "TF_CONFIG": json.dumps(tf_config)}))
    return workers


def test_two_workers_train_survive_a_killed_peer_resume_and_match_one_process(
        shared_cache, flickr_dir, mobilenet_weights, tmp_path):
    from captioning.artifacts.bundle import load_bundle
    from captioning.decoding.config import DecodeConfig
    from captioning.decoding.search import decode
    from captioning.vision.features import FeatureCache

    t_start = time.monotonic()
    base = ["train", "--data-dir", str(flickr_dir), "--weights", str(mobilenet_weights),
            "--cache-dir", str(shared_cache), *COMMON]
    out = tmp_path / "multi" / "mw"          # bundle names also name the run folders under <cache>/runs
    mw_args = [*base, "--strategy", "multiworker", "--peer-timeout", str(PEER_TIMEOUT), "--out", str(out)]
    ref_out = tmp_path / "single" / "ref"
    ref_args = [*base, "--out", str(ref_out)]

    # The single-process reference goes through the same interruption after epoch 1 (so both runs see the same
    # data order: a resumed run starts its shuffle afresh), concurrently with the workers.
    ref = Proc(ref_args, ENV)
    chief, worker = start_workers(mw_args, tmp_path)
    ref.wait_for_line("epoch 1:", timeout=1500)
    ref.p.kill()
    ref.finish()
    ref = Proc(ref_args, ENV)

    # 1. Train epoch 1 on two workers, then kill worker 1.
    kill_after_epoch_1(chief, victim=worker, survivor=chief, who="chief after worker 1")
    assert not out.exists()                                       # nothing half-written

    # 2. Restart both with the same command: they resume after epoch 1 and finish. The error tells a user to
    # restart every worker; under heavy CPU contention a restart has itself lost a collective (once in four runs
    # on 2 cores at load ~30: "Collective instance ... expected"), so the test, like a user, may restart once more.
    for attempt in (1, 2):
        chief, worker = start_workers(mw_args, tmp_path)
        codes = chief.finish(), worker.finish()
        if codes == (0, 0) or attempt == 2:
            break
        print(f"--- restart {attempt} failed {codes}; restarting again, as the error says ---\n"
              + "\n".join(chief.lines[-3:] + worker.lines[-3:]))
    print("--- worker 0 (chief), resumed ---\n" + chief.log()
          + "\n--- worker 1, resumed ---\n" + worker.log())
    assert codes == (0, 0), chief.log()[-3000:] + worker.log()[-3000:]
    assert not any(ln.startswith("epoch 1:") for ln in chief.lines + worker.lines)    # resumed, not restarted
    assert any(ln.startswith("epoch 2:") for ln in chief.lines)
    assert ref.finish() == 0, ref.log()[-3000:]

    # 3. The chief wrote one valid bundle that captions; worker 1 wrote only its scratch checkpoints.
    assert sorted(p.name for p in out.parent.iterdir()) == ["mw"]
    assert "the chief writes the bundle" in worker.log()
    scratch = shared_cache / "runs" / "mw.worker-1"
    assert (scratch / "state.json").is_file()
    bundle = load_bundle(out)
    training = bundle.manifest["training"]
    assert training["strategy"] == "multiworker" and training["replicas"] == 2 and training["epochs_run"] == 2
    cache = FeatureCache(shared_cache / "features", bundle.encoder["key"])
    feats = cache.load(sorted(cache.index())[:3])
    captions = decode(bundle.step_decoder(), feats, bundle.vocab, DecodeConfig(max_length=bundle.max_length))
    assert len(captions) == 3 and all(c[0].words for c in captions)

    # 4. Loss against one process with the same global batch of 42.
    # Same seed -> same initial weights (MWMS also broadcasts the chief's); same shuffle seed -> the same global
    # batches in the same order, each split 21/21 between the workers; dropout 0 -> no per-replica random masks.
    # What remains: each worker averages the loss over its own half's tokens and the gradient is the mean of the
    # two halves, where one process weights every token of the 42 captions alike. The halves' token counts differ
    # by a few percent (caption lengths vary), which moves each step's loss and update by a fraction of that, so
    # after 10 small steps the epoch losses agree to well under 1%; float summation order adds ~1e-6. A wrong
    # data split (each worker seeing all data, or the other half of another batch) or a lost optimizer state on
    # resume moves them by more.
    ref_epochs = load_bundle(ref_out).manifest["training"]["epochs"]
    mw_epochs = training["epochs"]
    for e, (a, b) in enumerate(zip(mw_epochs, ref_epochs), start=1):
        print(f"epoch {e}: loss two workers {a['loss']:.4f}  one process {b['loss']:.4f}  "
              f"({abs(a['loss'] - b['loss']) / b['loss']:.2%})")
    np.testing.assert_allclose([e["loss"] for e in mw_epochs], [e["loss"] for e in ref_epochs], rtol=0.01)
    print(f"multi-worker test wall time {time.monotonic() - t_start:.0f}s")


def test_killing_the_chief_makes_the_other_worker_fail_fast_with_one_line_and_no_bundle(
        shared_cache, flickr_dir, mobilenet_weights, tmp_path):
    """The other direction: the chief (worker 0, which writes the bundle) dies after epoch 1. Worker 1 must not
    hang on it: it exits 3 with the one-line error within a bounded time, and no bundle appears at --out."""
    # its own run folder under <cache>/runs: sharing the other test's "mw" made both workers race to find it
    # stale ("settings changed ... starting afresh"), and one CI run's chief then died in a collective op
    out = tmp_path / "chiefless" / "mw-chiefless"
    args = ["train", "--data-dir", str(flickr_dir), "--weights", str(mobilenet_weights),
            "--cache-dir", str(shared_cache), *COMMON, "--epochs", "3", "--strategy", "multiworker",
            "--peer-timeout", str(PEER_TIMEOUT), "--out", str(out)]
    chief, worker = start_workers(args, tmp_path)
    kill_after_epoch_1(chief, victim=chief, survivor=worker, who="worker 1 after the chief")
    assert not out.exists()
