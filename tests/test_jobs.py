"""The job runner through real processes: start, progress, cancel, one at a time, duplicates, restart recovery,
commands registered from the command line. The job is tests/fake_finetune.py (train.py's run-directory files in
a fraction of a second per epoch) unless a test says otherwise: the runner must not care which command it runs."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import ROOT

from captioning.service import jobs
from captioning.service.jobs import DuplicateJob, JobError, JobQueue
from captioning.service.processes import alive
from captioning.service.progress import read_progress

FAKE = str(ROOT / "tests" / "fake_finetune.py")


def fake(tmp_path, name="ft", epochs=3, seconds=0.3, extra=()):
    """(argv, out, run_dir) of a fake fine-tune writing ``name``."""
    out, run = tmp_path / "artifacts" / name, tmp_path / "runs" / name
    argv = [sys.executable, FAKE, "finetune", "--out", str(out), "--run-dir", str(run), "--epochs", str(epochs),
            "--epoch-seconds", str(seconds), *extra]
    return argv, out, run


def gone(queue, job, within=5.0) -> bool:
    """Whether the job's supervisor has exited (it records the end first, then leaves) within ``within`` s."""
    deadline = time.monotonic() + within
    while alive(job.pid, job.pid_start) and time.monotonic() < deadline:
        queue.tick()                               # reaps the supervisors this process started
        time.sleep(0.05)
    return not alive(job.pid, job.pid_start)


@pytest.fixture()
def queue(tmp_path):
    return JobQueue(tmp_path / "jobs", grace=1.5)


def test_a_job_runs_in_its_own_process_and_its_progress_is_read_from_the_run_dir(queue, tmp_path):
    argv, out, run = fake(tmp_path, epochs=3, seconds=0.3)
    job = queue.submit(argv, "fine-tune ft", out=str(out), run_dir=run, cwd=ROOT)
    assert job.status == "running" and alive(job.pid, job.pid_start)
    assert os.getpgid(job.pid) == job.pid != os.getpgid(0)          # its own session: reloads do not touch it
    seen = set()
    while queue.get(job.id).active:
        seen.add(read_progress(run, 3).done)
        queue.tick()
        time.sleep(0.05)
    job = queue.get(job.id)
    assert job.status == "succeeded" and job.exit_code == 0
    assert (out / "manifest.json").is_file()
    progress = read_progress(run, 3, job.job_dir / "steps.jsonl")
    assert [e["epoch"] for e in progress.epochs] == [1, 2, 3] and progress.fraction == 1.0
    assert progress.best_epoch == 3 and progress.seconds_left() == 0.0 and progress.phase == "done"
    # The supervisor sampled the running loss of progress.json into steps.jsonl (a point per change it saw).
    assert len(progress.steps) >= 4 and all(s["decoder"] == 1 and s["steps"] == 3 for s in progress.steps)
    assert all(s["loss"] == pytest.approx(3.0 / (s["epoch"] + s["step"])) for s in progress.steps)
    assert len(seen - {0, 3}) >= 1                                  # an epoch in the middle was seen live
    assert "epoch 3: loss" in job.log_tail() and "succeeded (exit code 0)" in job.log_tail()


def test_a_failing_command_is_failed_with_its_exit_code_and_its_output_in_the_log(queue, tmp_path):
    job = queue.submit([sys.executable, "-c", "import sys; print('bad data on line 3'); sys.exit(2)"], "bad",
                       cwd=tmp_path)
    job = queue.wait(job.id, 30)
    assert (job.status, job.exit_code) == ("failed", 2)
    assert "bad data on line 3" in job.log_tail()


def test_only_one_job_runs_at_a_time_and_the_next_starts_when_it_ends(queue, tmp_path):
    argv_a, out_a, run_a = fake(tmp_path, "a", epochs=50, seconds=0.3)
    argv_b, out_b, run_b = fake(tmp_path, "b", epochs=1, seconds=0.1)
    a = queue.submit(argv_a, "a", out=str(out_a), run_dir=run_a, cwd=ROOT)
    b = queue.submit(argv_b, "b", out=str(out_b), run_dir=run_b, cwd=ROOT)
    assert (a.status, b.status) == ("running", "queued")
    # Another "server process" polling the same folder does not start it either.
    other = JobQueue(queue.root)
    for _ in range(3):
        assert other.tick() is None
        time.sleep(0.2)
    assert queue.get(b.id).status == "queued" and [j.id for j in queue.active()] == [a.id, b.id]
    queue.cancel(a.id)
    assert queue.wait(a.id, 20).status == "cancelled"
    assert queue.wait(b.id, 30).status == "succeeded"
    assert (out_b / "manifest.json").is_file() and not out_a.exists()


def test_cancel_stops_the_process_group_cleanly_and_leaves_no_bundle(queue, tmp_path):
    argv, out, run = fake(tmp_path, epochs=100, seconds=0.3)
    job = queue.submit(argv, "long", out=str(out), run_dir=run, cwd=ROOT)
    while read_progress(run).done < 1:
        time.sleep(0.1)
    started = time.monotonic()
    queue.cancel(job.id)
    job = queue.wait(job.id, 20)
    assert job.status == "cancelled" and time.monotonic() - started < 5       # SIGTERM was enough
    assert gone(queue, job) and not out.exists()
    with pytest.raises(JobError, match="cancelled already"):
        queue.cancel(job.id)


def test_a_command_that_ignores_sigterm_is_killed_after_the_grace_period(queue, tmp_path):
    argv, out, run = fake(tmp_path, epochs=100, seconds=0.3, extra=["--ignore-term"])
    job = queue.submit(argv, "stubborn", out=str(out), run_dir=run, cwd=ROOT)
    while read_progress(run).done < 1:
        time.sleep(0.1)
    started = time.monotonic()
    queue.cancel(job.id)
    job = queue.wait(job.id, 20)
    assert job.status == "cancelled" and queue.grace <= time.monotonic() - started < queue.grace + 5
    assert gone(queue, job) and not out.exists()


def test_a_queued_job_is_cancelled_at_once(queue, tmp_path):
    argv_a, out_a, _ = fake(tmp_path, "a", epochs=50)
    argv_b, out_b, _ = fake(tmp_path, "b", epochs=1)
    a = queue.submit(argv_a, "a", out=str(out_a), cwd=ROOT)
    b = queue.submit(argv_b, "b", out=str(out_b), cwd=ROOT)
    assert queue.cancel(b.id).status == "cancelled"
    queue.cancel(a.id)
    queue.wait(a.id, 20)
    assert queue.tick() is None and queue.get(b.id).status == "cancelled"


def test_the_same_job_twice_is_refused_while_one_is_queued_or_running(queue, tmp_path):
    argv, out, run = fake(tmp_path, epochs=50)
    job = queue.submit(argv, "one", key="base+data+settings", out=str(out), run_dir=run, cwd=ROOT)
    with pytest.raises(DuplicateJob, match=f"already running \\(job {job.id}\\)"):
        queue.submit(argv, "again", key="base+data+settings", out=str(out) + "-2", cwd=ROOT)
    with pytest.raises(DuplicateJob, match="already writes"):           # another job, the same bundle folder
        queue.submit([sys.executable, "-c", "pass"], "other", out=str(out), cwd=ROOT)
    plain = [sys.executable, "-c", "import time; time.sleep(30)"]
    queue.submit(plain, "queued behind")
    with pytest.raises(DuplicateJob, match="already queued"):            # no key: the same command is the same job
        queue.submit(plain, "again")
    queue.cancel(job.id)
    queue.wait(job.id, 20)
    again = queue.submit(argv, "after", key="base+data+settings", out=str(out), run_dir=run, cwd=ROOT)
    assert again.status == "queued"                 # accepted, behind the plain one that started meanwhile
    for j in queue.active()[::-1]:
        queue.cancel(j.id)


def test_a_job_outlives_the_process_that_started_it(tmp_path):
    """A page session (here: a whole Python process) starts a job and exits; the job runs on and records its end."""
    root = tmp_path / "jobs"
    argv, out, run = fake(tmp_path, epochs=3, seconds=0.3)
    script = (f"from captioning.service.jobs import JobQueue; q = JobQueue({str(root)!r}); "
              f"print(q.submit({argv!r}, 'ft', out={str(out)!r}, run_dir={str(run)!r}).id)")
    job_id = int(subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                                check=True, timeout=60).stdout)
    queue = JobQueue(root)
    assert queue.get(job_id).status == "running"
    assert queue.wait(job_id, 30).status == "succeeded" and (out / "manifest.json").is_file()


def test_a_killed_job_is_found_interrupted_and_resumes_from_its_last_epoch(queue, tmp_path):
    argv, out, run = fake(tmp_path, epochs=4, seconds=0.6)
    job = queue.submit(argv, "ft", out=str(out), run_dir=run, cwd=ROOT)
    while read_progress(run).done < 1:
        time.sleep(0.05)
    os.killpg(job.pid, signal.SIGKILL)            # the machine went down: supervisor and command at once
    jobs._children.clear()                        # ... and with it the server (a fresh process knows no children)
    time.sleep(0.3)
    restarted = JobQueue(queue.root)
    restarted.tick()
    job = restarted.get(job.id)
    assert job.status == "interrupted" and not out.exists()
    done_before = read_progress(run).done
    resumed = restarted.resume(job.id)
    assert resumed.status == "running" and resumed.attempts == 2
    job = restarted.wait(job.id, 30)
    assert job.status == "succeeded" and (out / "manifest.json").is_file()
    assert f"resuming after epoch {done_before}" in job.log_path.read_text()
    assert [e["epoch"] for e in read_progress(run).epochs] == [1, 2, 3, 4]
    with pytest.raises(JobError, match="only a finished job"):
        restarted.resume(restarted.submit(fake(tmp_path, "z", epochs=30)[0], "z", cwd=ROOT).id)


def test_a_command_line_run_registers_itself_and_can_be_cancelled_from_the_queue(queue, tmp_path):
    script = textwrap.dedent(f"""
        import sys, time
        from captioning.service.jobs import JobQueue
        try:
            with JobQueue({str(queue.root)!r}).track(sys.argv, "fine-tune from the terminal", out="x") as job:
                print(job.id, flush=True)
                time.sleep(60)
        except KeyboardInterrupt:
            print("cleaned up", flush=True)
            sys.exit(130)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    job_id = int(proc.stdout.readline())
    job = queue.get(job_id)
    assert (job.status, job.origin, job.pid) == ("running", "cli", proc.pid)
    argv, out, _ = fake(tmp_path, epochs=1)
    queued = queue.submit(argv, "waits for the terminal's run", out=str(out), cwd=ROOT)
    assert queued.status == "queued"                # a CLI run counts: one job per server
    queue.cancel(job_id)
    assert proc.wait(10) == 130 and "cleaned up" in proc.stdout.read()
    assert queue.get(job_id).status == "cancelled"
    assert queue.wait(queued.id, 30).status == "succeeded"


def test_jobs_list_on_the_command_line(queue, tmp_path):
    argv, out, run = fake(tmp_path, epochs=1, seconds=0.1)
    job = queue.wait(queue.submit(argv, "fine-tune ft", out=str(out), run_dir=run, cwd=ROOT).id, 30)
    env = {**os.environ, jobs.JOBS_ENV: str(queue.root)}
    shown = subprocess.run([sys.executable, "-m", "captioning", "jobs", "list"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert f"{job.id}" in shown.stdout and "succeeded" in shown.stdout and "fine-tune ft" in shown.stdout
    as_json = subprocess.run([sys.executable, "-m", "captioning", "jobs", "list", "--json"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=60)
    assert json.loads(as_json.stdout)[0]["status"] == "succeeded"
    refused = subprocess.run([sys.executable, "-m", "captioning", "jobs", "cancel", str(job.id)], cwd=ROOT,
                             env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and refused.stderr.startswith("error: job") and "nothing to cancel" in refused.stderr


def test_progress_time_left_from_the_epochs_so_far(tmp_path):
    assert read_progress(tmp_path / "nothing yet", 5).seconds_left() is None
    (tmp_path / "state.json").write_text(json.dumps({"epochs": {"1": {"loss": 2.0, "seconds": 10.0},
                                                                "2": {"loss": 1.5, "seconds": 20.0}},
                                                     "best_epoch": 2}))
    progress = read_progress(tmp_path, 5)
    assert progress.fraction == pytest.approx(0.4)
    now = progress.updated
    assert progress.seconds_left(now) == pytest.approx(45.0)          # 3 epochs x 15 s
    assert progress.seconds_left(now + 5) == pytest.approx(40.0)      # 5 s into the third epoch
    (tmp_path / "state.json").write_text("{torn")                      # never half-read: empty instead
    assert read_progress(tmp_path, 5).epochs == []


def test_progress_of_a_finetune_reads_the_decoder_runs_and_the_live_step(tmp_path):
    """train.py finetune's layout: progress.json (phase, decoder k of n, step, running loss), decoder-N/state.json."""
    (tmp_path / "progress.json").write_text(json.dumps({"phase": "features", "photos_done": 10, "photos_todo": 40,
                                                        "epochs": 4, "decoders": 2}))
    progress = read_progress(tmp_path)
    assert (progress.phase, progress.fraction, progress.total_epochs, progress.seconds_left()) == \
        ("features", 0.0, 4, None)
    (tmp_path / "decoder-1").mkdir()
    (tmp_path / "decoder-1" / "state.json").write_text(json.dumps({"epochs": {"1": {"loss": 2.0, "seconds": 10.0}},
                                                                   "best_epoch": 1}))
    (tmp_path / "progress.json").write_text(json.dumps({"phase": "training", "decoder": 1, "decoders": 2,
                                                        "epochs": 4, "epoch": 2, "step": 5, "steps": 10,
                                                        "loss": 1.7}))
    progress = read_progress(tmp_path)
    assert progress.done == 1 and progress.fraction == pytest.approx((1 + 0.5) / 4 / 2)
    assert progress.seconds_left(progress.updated) == pytest.approx(10.0 * (3 + 4))   # this decoder's 3, then 4
