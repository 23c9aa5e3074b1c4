"""The job supervisor: ``python -m captioning.service.supervisor exec DIR ID`` runs one job's command in its own
session (process group), its output in the job's log, and records how it ended; it outlives page reloads, closed
tabs and the web server itself.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

from captioning.service.jobs import JOB_ID_ENV, JOBS_ENV, JobQueue
from captioning.service.progress import StepSampler


def supervise(root: str | os.PathLike, job_id: int) -> int:
    """Run job ``job_id``'s command (this process leads its process group), its output in the job's log, and
    record how it ended. SIGTERM (Cancel, sent to the whole group) reaches the command too; this process outlives
    it to write the status, killing the command when it outstays the grace period."""
    queue = JobQueue(root)
    job = queue.get(job_id)
    cancelled = False

    def on_term(signum, frame):
        nonlocal cancelled
        cancelled = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    job.job_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, JOB_ID_ENV: str(job_id), JOBS_ENV: str(queue.root), "PYTHONUNBUFFERED": "1"}
    with job.log_path.open("ab") as log:
        log.write(f"$ {' '.join(job.argv)}\n".encode())
        log.flush()
        try:
            proc = subprocess.Popen(job.argv, cwd=job.cwd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT)
        except OSError as exc:
            log.write(f"error: the command could not start ({exc})\n".encode())
            with queue._connect(write=True) as db:
                queue._end(db, job_id, "failed", 127)
            return 127
        term_at = None
        sampler = StepSampler(job.run_dir, job.job_dir / "steps.jsonl")
        while True:
            sampler.sample()
            try:
                code = proc.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                pass
            if cancelled and term_at is None:
                term_at = time.monotonic()             # the group's SIGTERM reached the command too: not again
            if term_at is not None and time.monotonic() - term_at > queue.grace:
                proc.kill()
        with queue._connect() as db:
            asked = db.execute("SELECT cancel_requested FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]
        status = "cancelled" if (cancelled or asked) else ("succeeded" if code == 0 else "failed")
        log.write(f"--- {status} (exit code {code}) ---\n".encode())
    with queue._connect(write=True) as db:
        queue._end(db, job_id, status, code)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) == 3 and args[0] == "exec":
        return supervise(args[1], int(args[2]))
    print("usage: python -m captioning.service.supervisor exec DIR ID (the job supervisor; list jobs with "
          "python -m captioning jobs list)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
