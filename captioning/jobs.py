"""Background jobs (fine-tunes started from the app or the command line): queued, run one at a time per server,
cancelled, recovered after a restart. No Streamlit in here; the Train page and ``python -m captioning jobs`` use it.

State lives in one SQLite database (standard library, WAL mode) in the jobs folder, ``$CAPTIONING_JOBS_DIR`` or
``<artifacts>/.jobs/`` (hidden, so the bundle list skips it)::

    jobs.db           one row per job: its command, status, process id, times, settings
    <id>/log.txt      the command's stdout and stderr
    data/<sha>/       photos + captions file taken out of an uploaded zip (read-only input of a job)

The files a job writes (checkpoints, ``state.json``, the bundle) are the source of truth for its progress: the
database only says which command runs where. A job runs in its own session (process group) under a small
supervisor, ``python -m captioning.jobs exec DIR ID``, which waits for the command and records how it ended, so
it outlives page reloads, closed tabs and the web server itself. At most one job runs at a time: the others
wait as ``queued`` and whoever polls next (:meth:`JobQueue.tick`, every page refresh) starts the oldest.

Statuses: ``queued`` -> ``running`` -> ``succeeded`` | ``failed`` | ``cancelled``; a running job whose process
is gone without a word (machine restarted, killed with SIGKILL) becomes ``interrupted``, and
:meth:`JobQueue.resume` queues the same command again (training resumes from its last finished epoch).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

JOBS_ENV = "CAPTIONING_JOBS_DIR"
JOB_ID_ENV = "CAPTIONING_JOB_ID"          # set in a job's environment: the command is already registered
ACTIVE = ("queued", "running")
FINISHED = ("succeeded", "failed", "cancelled", "interrupted")
GRACE_SECONDS = 10.0                      # between SIGTERM and SIGKILL on Cancel

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    title TEXT NOT NULL,
    argv TEXT NOT NULL,              -- JSON list: the command
    cwd TEXT NOT NULL,
    key TEXT NOT NULL,               -- same key while one is queued or running: refused as a duplicate
    out TEXT,                        -- the bundle folder the command writes, if any
    run_dir TEXT,                    -- where its progress (state.json) is read from
    status TEXT NOT NULL,
    origin TEXT NOT NULL,            -- app | cli
    pid INTEGER,                     -- the supervisor (app jobs) or the command itself (cli), a group leader
    pid_start TEXT,                  -- that process's start time, so a reused pid is not mistaken for it
    cancel_requested REAL,
    exit_code INTEGER,
    created REAL NOT NULL,
    started REAL,
    ended REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    meta TEXT NOT NULL DEFAULT '{}'  -- JSON: base bundle, data, settings (for people, not for the runner)
);
"""


class JobError(RuntimeError):
    """A job cannot be submitted, cancelled or resumed; the message says why and what to do."""


class DuplicateJob(JobError):
    """The same job (same key) is already queued or running."""


@dataclass
class Job:
    id: int
    title: str
    argv: list[str]
    cwd: str
    key: str
    out: str | None
    run_dir: str | None
    status: str
    origin: str
    pid: int | None
    pid_start: str | None
    cancel_requested: float | None
    exit_code: int | None
    created: float
    started: float | None
    ended: float | None
    attempts: int
    meta: dict = field(default_factory=dict)
    job_dir: Path = Path()

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    @property
    def log_path(self) -> Path:
        return self.job_dir / "log.txt"

    def log_tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines of the command's output (progress bars' carriage returns folded)."""
        try:
            with self.log_path.open("rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - 64 * 1024))
                text = fh.read().decode("utf-8", "replace")
        except OSError:
            return ""
        rows = [row.rsplit("\r", 1)[-1] for row in text.splitlines()]
        return "\n".join(rows[-lines:])


def jobs_dir() -> Path:
    """The jobs folder: ``$CAPTIONING_JOBS_DIR`` or ``<artifacts>/.jobs``."""
    if os.environ.get(JOBS_ENV):
        return Path(os.environ[JOBS_ENV])
    from .bundle import artifacts_dir

    return artifacts_dir() / ".jobs"


def job_key(*parts) -> str:
    """A stable key of JSON-serialisable parts (what makes two jobs the same)."""
    return hashlib.sha256(json.dumps(list(parts), sort_keys=True, default=str).encode()).hexdigest()[:20]


# ---- processes ---------------------------------------------------------------------------------------------

def process_start(pid: int) -> str | None:
    """The process's start time (clock ticks since boot, from /proc), or None where there is no /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]         # field 22; the name in brackets may hold spaces


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def alive(pid: int | None, start: str | None = None) -> bool:
    """Whether ``pid`` runs and is the same process (same start time) as when it was recorded; zombies are dead."""
    if not pid or not _pid_exists(pid):
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True                                    # no /proc (macOS): the signal check is all there is
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return False
    return start is None or fields[19] == start


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _stop(job: Job, sig: int) -> None:
    """Signal a job: an app job's whole process group (its supervisor leads it), a CLI command its process."""
    if job.origin == "app":
        _signal_group(job.pid, sig)
    else:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(job.pid, sig)


# ---- the queue ---------------------------------------------------------------------------------------------

_children: dict[int, subprocess.Popen] = {}          # supervisors this process started: reaped in tick()


class JobQueue:
    """The jobs of one server (one jobs folder). Every method opens its own short connection, so a queue is safe
    to use from several threads, sessions and processes at once."""

    def __init__(self, root: str | os.PathLike | None = None, grace: float = GRACE_SECONDS):
        self.root = Path(root) if root is not None else jobs_dir()
        self.grace = float(grace)
        self.root.mkdir(parents=True, exist_ok=True)
        self.db_path = self.root / "jobs.db"
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)

    @contextlib.contextmanager
    def _connect(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
        db.row_factory = sqlite3.Row
        try:
            if write:
                db.execute("BEGIN IMMEDIATE")          # one writer at a time: check-then-act stays atomic
                try:
                    yield db
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
            else:
                yield db
        finally:
            db.close()

    def _job(self, row: sqlite3.Row) -> Job:
        d = dict(row)
        d["argv"], d["meta"] = json.loads(d["argv"]), json.loads(d["meta"] or "{}")
        return Job(**d, job_dir=self.root / str(d["id"]))

    def get(self, job_id: int) -> Job:
        with self._connect() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobError(f"there is no job {job_id}; list them with: python -m captioning jobs list")
        return self._job(row)

    def list(self, limit: int = 50) -> list[Job]:
        """Newest first."""
        with self._connect() as db:
            rows = db.execute("SELECT * FROM jobs ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        return [self._job(r) for r in rows]

    def active(self) -> list[Job]:
        """Queued and running jobs, oldest first (the order they run in)."""
        with self._connect() as db:
            rows = db.execute("SELECT * FROM jobs WHERE status IN ('queued', 'running') ORDER BY id").fetchall()
        return [self._job(r) for r in rows]

    @staticmethod
    def _refuse_duplicate(db: sqlite3.Connection, key: str, out: str | None, but: int | None = None) -> None:
        row = db.execute("SELECT id, status FROM jobs WHERE key = ? AND status IN ('queued', 'running') "
                         "AND id != ?", (key, but or -1)).fetchone()
        if row:
            raise DuplicateJob(f"the same job is already {row['status']} (job {row['id']}); wait for it or "
                               f"cancel it first")
        if out:
            row = db.execute("SELECT id, status FROM jobs WHERE out = ? AND status IN ('queued', 'running') "
                             "AND id != ?", (str(out), but or -1)).fetchone()
            if row:
                raise DuplicateJob(f"job {row['id']} ({row['status']}) already writes {out}; choose another name "
                                   f"or cancel it first")

    def submit(self, argv: Sequence[str], title: str, *, key: str | None = None, out: str | None = None,
               run_dir: str | os.PathLike | None = None, meta: dict | None = None,
               cwd: str | os.PathLike | None = None, start: bool = True) -> Job:
        """Queue a command (started at once when nothing runs and ``start``). Raises :class:`DuplicateJob` when a
        job with the same ``key`` (default: the command itself) or the same ``out`` is queued or running."""
        argv = [str(a) for a in argv]
        key = key or job_key(argv)
        with self._connect(write=True) as db:
            self._refuse_duplicate(db, key, out)
            cur = db.execute(
                "INSERT INTO jobs (title, argv, cwd, key, out, run_dir, status, origin, created, meta) "
                "VALUES (?, ?, ?, ?, ?, ?, 'queued', 'app', ?, ?)",
                (title, json.dumps(argv), str(cwd or os.getcwd()), key, str(out) if out else None,
                 str(run_dir) if run_dir else None, time.time(), json.dumps(meta or {})))
            job_id = cur.lastrowid
        (self.root / str(job_id)).mkdir(parents=True, exist_ok=True)
        if start:
            self.tick()
        return self.get(job_id)

    def tick(self) -> Job | None:
        """Bring the database up to date with the processes, and start the next queued job if none runs.

        Reaps supervisors this process started, marks running jobs whose process is gone (``interrupted``, or
        ``cancelled`` when a cancel was asked), kills a cancelled job still alive after the grace period, and
        returns the job it started (or None).
        """
        for pid, proc in list(_children.items()):
            if proc.poll() is not None:
                del _children[pid]
        now = time.time()
        with self._connect(write=True) as db:
            running = [self._job(r) for r in db.execute("SELECT * FROM jobs WHERE status = 'running'")]
            busy = False
            for job in running:
                if alive(job.pid, job.pid_start):
                    if job.cancel_requested and now - job.cancel_requested > self.grace:
                        _stop(job, signal.SIGKILL)                  # the stubborn case: the group goes at once
                        self._end(db, job.id, "cancelled", None)
                    else:
                        busy = True
                    continue
                # Gone without recording an end: the supervisor was killed (or the machine restarted). A command it
                # left behind in its group is stopped, so a resumed job never runs beside it; only when the pid is
                # free (a reused pid leads some other process's group).
                if job.origin == "app" and job.pid and not _pid_exists(job.pid):
                    _signal_group(job.pid, signal.SIGKILL)
                self._end(db, job.id, "cancelled" if job.cancel_requested else "interrupted", None)
            if busy:
                return None
            row = db.execute("SELECT * FROM jobs WHERE status = 'queued' ORDER BY id LIMIT 1").fetchone()
            if row is None:
                return None
            job = self._job(row)
            job.job_dir.mkdir(parents=True, exist_ok=True)
            proc = subprocess.Popen([sys.executable, "-m", "captioning.jobs", "exec", str(self.root), str(job.id)],
                                    cwd=job.cwd, start_new_session=True, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            _children[proc.pid] = proc
            db.execute("UPDATE jobs SET status = 'running', pid = ?, pid_start = ?, started = ?, ended = NULL, "
                       "exit_code = NULL, cancel_requested = NULL, attempts = attempts + 1 WHERE id = ?",
                       (proc.pid, process_start(proc.pid), time.time(), job.id))
        return self.get(job.id)

    @staticmethod
    def _end(db: sqlite3.Connection, job_id: int, status: str, exit_code: int | None) -> None:
        db.execute("UPDATE jobs SET status = ?, exit_code = ?, ended = ? WHERE id = ? AND status = 'running'",
                   (status, exit_code, time.time(), job_id))

    def cancel(self, job_id: int) -> Job:
        """Cancel a job: a queued one at once; a running one gets SIGTERM (its whole process group), then SIGKILL
        after the grace period (at the next :meth:`tick`). The command swaps its bundle in only when complete,
        so nothing half-written stays behind."""
        with self._connect(write=True) as db:
            job = self._job(db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
                            or _missing(job_id))
            if job.status == "queued":
                db.execute("UPDATE jobs SET status = 'cancelled', ended = ? WHERE id = ?", (time.time(), job_id))
            elif job.status == "running":
                if not job.cancel_requested:
                    db.execute("UPDATE jobs SET cancel_requested = ? WHERE id = ?", (time.time(), job_id))
                if alive(job.pid, job.pid_start):
                    _stop(job, signal.SIGTERM)
            else:
                raise JobError(f"job {job_id} is {job.status} already; nothing to cancel")
        return self.get(job_id)

    def wait(self, job_id: int, timeout: float, poll: float = 0.2) -> Job:
        """Tick until the job has finished (or ``timeout`` seconds); returns it as it then is."""
        deadline = time.monotonic() + timeout
        while True:
            self.tick()
            job = self.get(job_id)
            if not job.active or time.monotonic() > deadline:
                return job
            time.sleep(poll)

    def resume(self, job_id: int) -> Job:
        """Queue an interrupted, failed or cancelled app job again: the same command, which continues from its
        checkpoints where it has them (``train.py`` resumes from the last finished epoch)."""
        with self._connect(write=True) as db:
            job = self._job(db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
                            or _missing(job_id))
            if job.active:
                raise JobError(f"job {job_id} is {job.status}; only a finished job can be resumed")
            if job.origin != "app":
                raise JobError(f"job {job_id} was started from the command line; run the same command there again")
            self._refuse_duplicate(db, job.key, job.out, but=job_id)
            db.execute("UPDATE jobs SET status = 'queued', cancel_requested = NULL, ended = NULL, exit_code = NULL "
                       "WHERE id = ?", (job_id,))
        with job.log_path.open("a") as log:
            log.write(f"\n--- resumed {time.strftime('%Y-%m-%d %H:%M:%S')} ---\n")
        self.tick()
        return self.get(job_id)

    # ---- commands started elsewhere (the command line) --------------------------------------------------

    @contextlib.contextmanager
    def track(self, argv: Sequence[str], title: str, *, out: str | None = None,
              run_dir: str | os.PathLike | None = None, meta: dict | None = None) -> Iterator[Job | None]:
        """Register the running process as a job for as long as the block runs (a CLI command calls this), so the
        Train page lists it and waits for it before starting queued jobs; records how the block ended.

        Inside a job the app started (``$CAPTIONING_JOB_ID`` set) it does nothing: that job is registered already.
        SIGTERM (the page's Cancel) becomes KeyboardInterrupt inside the block, so cleanup code runs.
        """
        if os.environ.get(JOB_ID_ENV):
            with _sigterm_as_interrupt():
                yield None
            return
        argv = [str(a) for a in argv]
        with self._connect(write=True) as db:
            cur = db.execute(
                "INSERT INTO jobs (title, argv, cwd, key, out, run_dir, status, origin, pid, pid_start, created, "
                "started, attempts, meta) VALUES (?, ?, ?, ?, ?, ?, 'running', 'cli', ?, ?, ?, ?, 1, ?)",
                (title, json.dumps(argv), os.getcwd(), job_key(argv), str(out) if out else None,
                 str(run_dir) if run_dir else None, os.getpid(), process_start(os.getpid()), time.time(),
                 time.time(), json.dumps(meta or {})))
            job_id = cur.lastrowid
        status, code = "failed", 1
        try:
            with _sigterm_as_interrupt():
                yield self.get(job_id)
            status, code = "succeeded", 0
        except KeyboardInterrupt:
            status, code = "cancelled", 130
            raise
        finally:
            with self._connect(write=True) as db:
                self._end(db, job_id, status, code)


def _missing(job_id: int):
    raise JobError(f"there is no job {job_id}; list them with: python -m captioning jobs list")


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt in the main thread for the block (the CLI's Ctrl-C path cleans up)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def track(argv: Sequence[str], title: str, **kwargs):
    """:meth:`JobQueue.track` on the default jobs folder: ``with jobs.track(sys.argv, "fine-tune X", out=...)``."""
    return JobQueue().track(argv, title, **kwargs)


# ---- progress, read from the run directory ------------------------------------------------------------------

@dataclass
class Progress:
    """A run's progress as its files tell it.

    ``state.json`` (written after every epoch by ``train.py``'s training, in the run directory or, for a fine-tune,
    in ``decoder-N/`` per decoder) gives the finished epochs; ``progress.json`` (a fine-tune's) the phase, the
    decoder, and the current step and running loss; ``steps.jsonl`` (the job supervisor samples ``progress.json``
    into it) the step losses so far.
    """

    epochs: list[dict]                  # [{"epoch": 1, "loss": .., "val_loss": .., "seconds": .., ...}, ...]
    steps: list[dict]                   # [{"decoder": 1, "epoch": 1, "step": 3, "steps": 9, "loss": ..}, ...]
    best_epoch: int | None
    total_epochs: int | None
    stopped_early: bool
    updated: float | None               # when state.json was last written (the last epoch's end)
    live: dict = field(default_factory=dict)   # progress.json as it is now

    @property
    def done(self) -> int:
        return len(self.epochs)

    @property
    def decoders(self) -> int:
        return int(self.live.get("decoders") or 1)

    @property
    def decoder(self) -> int:
        return int(self.live.get("decoder") or 1)

    @property
    def phase(self) -> str | None:
        return self.live.get("phase")

    def _epoch_fraction(self) -> float:
        """Finished epochs plus the running epoch's share of its steps, over the planned epochs (this decoder)."""
        if self.stopped_early:
            return 1.0
        if not self.total_epochs:
            return 0.0
        done = float(self.done)
        live = self.live
        if live.get("phase") == "training" and live.get("epoch") == self.done + 1 and live.get("steps"):
            done += min(1.0, float(live.get("step") or 0) / float(live["steps"]))
        return min(1.0, done / self.total_epochs)

    @property
    def fraction(self) -> float:
        if self.phase == "done":
            return 1.0
        if self.phase == "features" or (self.phase is None and not self.epochs):
            return 0.0
        return min(1.0, (self.decoder - 1 + self._epoch_fraction()) / self.decoders)

    def seconds_left(self, now: float | None = None) -> float | None:
        """Mean epoch time x epochs left (this decoder's and the next decoders'), less the time the current epoch
        has run; None before the first epoch."""
        times = [e["seconds"] for e in self.epochs if isinstance(e.get("seconds"), (int, float))]
        if not times or not self.total_epochs:
            return None
        per_epoch = sum(times) / len(times)
        left_here = 0 if self.stopped_early else max(0, self.total_epochs - self.done)
        left = per_epoch * (left_here + self.total_epochs * (self.decoders - self.decoder))
        running = max(0.0, (now or time.time()) - self.updated) if self.updated and left_here else 0.0
        return max(0.0, left - min(running, per_epoch))


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_progress(run_dir: str | os.PathLike | None, total_epochs: int | None = None,
                  steps_file: str | os.PathLike | None = None) -> Progress:
    """What ``run_dir`` says so far (empty before its first epoch, or where a file is unreadable)."""
    epochs, steps, best, stopped, updated, live = [], [], None, False, None, {}
    from .dev_score import read_scores

    folder = Path(run_dir) if run_dir else None
    if folder is not None:
        live = _read_json(folder / "progress.json")
        state_path = folder / "state.json"
        if not state_path.is_file():              # a fine-tune: one run per decoder; the one training now
            states = sorted(folder.glob("decoder-*/state.json"), key=lambda p: p.stat().st_mtime)
            state_path = states[-1] if states else state_path
        state = _read_json(state_path)
        with contextlib.suppress(OSError):
            updated = state_path.stat().st_mtime
        raw = state.get("epochs")
        if isinstance(raw, dict):
            for k in sorted((k for k in raw if str(k).isdigit()), key=int):
                if isinstance(raw[k], dict):
                    epochs.append({"epoch": int(k), **raw[k]})
            best = state.get("best_epoch")
            stopped = bool(state.get("stopped_early"))
            scores = read_scores(state_path.parent)        # a fine-tune's dev CIDEr-D per epoch
            for e in epochs:
                e.update(scores.get(str(e["epoch"]), {}))
        for source in (folder / "steps.jsonl", Path(steps_file) if steps_file else None):
            if source is None:
                continue
            try:
                lines = source.read_text().splitlines()
            except OSError:
                continue
            for line in lines:
                with contextlib.suppress(ValueError):
                    row = json.loads(line)
                    if isinstance(row, dict) and isinstance(row.get("loss"), (int, float)):
                        steps.append(row)
    total = total_epochs or (live.get("epochs") if isinstance(live.get("epochs"), int) else None)
    return Progress(epochs, steps, best, total, stopped, updated, live)


class StepSampler:
    """Appends each new (decoder, epoch, step, loss) of ``run_dir/progress.json`` to ``steps.jsonl`` (the job
    supervisor calls it while the command runs), so the loss per step can be drawn after a page reload."""

    def __init__(self, run_dir: str | os.PathLike | None, out: Path):
        self.source = Path(run_dir) / "progress.json" if run_dir else None
        self.out, self.last, self.mtime = out, None, None

    def sample(self) -> None:
        if self.source is None:
            return
        try:
            mtime = self.source.stat().st_mtime
        except OSError:
            return
        if mtime == self.mtime:
            return
        self.mtime = mtime
        live = _read_json(self.source)
        if live.get("phase") != "training" or not isinstance(live.get("loss"), (int, float)):
            return
        row = {k: live.get(k) for k in ("decoder", "epoch", "step", "steps", "loss")}
        point = (row["decoder"], row["epoch"], row["step"])
        if point != self.last:
            self.last = point
            with self.out.open("a") as fh:
                fh.write(json.dumps(row) + "\n")


# ---- the supervisor: python -m captioning.jobs exec DIR ID -------------------------------------------------

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
    print("usage: python -m captioning.jobs exec DIR ID (the job supervisor; list jobs with "
          "python -m captioning jobs list)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
