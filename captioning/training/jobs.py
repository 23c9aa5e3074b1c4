"""Fine-tunes as background jobs: the command line the Train page queues, its import check, where progress is read.

The page never trains in its own process: it queues ``python train.py finetune --from BUNDLE --captions FILE
--images DIR --out DIR ...`` on the :class:`~captioning.service.jobs.JobQueue` and reads the run directory
(``<cache>/runs/<bundle name>/``, as ``train.py train`` keeps it) for progress. ``$CAPTIONING_TRAIN_SCRIPT``
replaces ``train.py`` (the tests' stand-in), ``$CAPTIONING_CACHE_DIR`` the cache folder (default ``.cache``).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from captioning.files import CACHE_ENV, cache_dir
from captioning.service.jobs import Job, JobQueue, job_key
from captioning.training.options import OPTION

PROJECT_ROOT = Path(__file__).resolve().parents[2]       # captioning/<folder>/<module>.py -> the checkout
TRAIN_SCRIPT_ENV = "CAPTIONING_TRAIN_SCRIPT"
IMPORT_CHECK_SECONDS = 300.0


class ImportCheckError(ValueError):
    """The captions file and photos could not be checked; the message is the command's own one-line error."""


def _finetune_default(name: str):
    return OPTION[name].value_for("finetune")


@dataclass
class FinetuneSettings:
    """The settings that matter on the Train page (the command line has more), defaulting to ``train.py
    finetune``'s own defaults (captioning.training.settings), so the page and the terminal train alike."""

    epochs: int = _finetune_default("epochs")                # most epochs; early stopping usually ends sooner
    learning_rate: float = _finetune_default("learning_rate")
    replay: float = _finetune_default("replay")              # share of each batch from Flickr8k (0 = yours)
    min_count: int = _finetune_default("min_count")          # a new word joins after this many occurrences
    patience: int = _finetune_default("patience")
    seed: int = _finetune_default("seed")

    def problems(self) -> list[str]:
        found = []
        if not 1 <= self.epochs <= 200:
            found.append(f"epochs must be 1-200, got {self.epochs}")
        if not 0 < self.learning_rate < 1:
            found.append(f"the learning rate must be between 0 and 1, got {self.learning_rate:g}")
        if not 0 <= self.replay < 1:
            found.append(f"the replay share must be at least 0 and below 1, got {self.replay:g}")
        if self.min_count < 1:
            found.append(f"the minimum word count must be 1 or more, got {self.min_count}")
        return found

    def flags(self) -> list[str]:
        return ["--epochs", str(self.epochs), "--learning-rate", f"{self.learning_rate:g}",
                "--replay", f"{self.replay:g}", "--min-count", str(self.min_count),
                "--patience", str(self.patience), "--seed", str(self.seed)]


def train_script() -> Path:
    return Path(os.environ.get(TRAIN_SCRIPT_ENV) or PROJECT_ROOT / "train.py")


def run_dir_for(out: str | os.PathLike) -> Path:
    """Where the fine-tune writing bundle ``out`` keeps its checkpoints and ``state.json``."""
    return cache_dir() / "runs" / Path(out).name


def data_digest(captions: str | os.PathLike, images: str | os.PathLike) -> str:
    """A digest of the dataset: the captions file's bytes and the photos folder's listing (names, sizes, times)."""
    h = hashlib.sha256(Path(captions).read_bytes())
    for folder, dirs, files in os.walk(images):
        dirs.sort()
        for name in sorted(files):
            try:
                st = (Path(folder) / name).stat()
            except OSError:
                continue
            h.update(f"{os.path.relpath(Path(folder) / name, images)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def bundle_digest(bundle: str | os.PathLike) -> str:
    """The base bundle's identity: its manifest (which holds every other file's SHA-256)."""
    return hashlib.sha256((Path(bundle) / "manifest.json").read_bytes()).hexdigest()[:20]


def import_check(captions: str | os.PathLike, images: str | os.PathLike,
                 timeout: float = IMPORT_CHECK_SECONDS) -> dict:
    """``train.py import-check --captions FILE --images DIR --json``: counts, bad rows (line numbers, reasons) and
    a sample of photos with their captions. Raises :class:`ImportCheckError` with the command's error line."""
    argv = [sys.executable, str(train_script()), "import-check", "--captions", str(captions), "--images",
            str(images), "--json"]
    try:
        done = subprocess.run(argv, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    except subprocess.TimeoutExpired:
        raise ImportCheckError(f"checking the import took more than {timeout:.0f} s; use a smaller dataset") from None
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    if done.returncode != 0:
        errors = [ln for ln in lines if ln.startswith("error:")]
        raise ImportCheckError((errors or lines or [f"the import check failed (exit code {done.returncode})"])[-1]
                               .removeprefix("error: "))
    try:
        report = json.loads(done.stdout[done.stdout.index("{"):])
    except ValueError:
        raise ImportCheckError("the import check printed no JSON summary; is train.py up to date?") from None
    if not isinstance(report, dict):
        raise ImportCheckError("the import check printed something else than a JSON summary")
    return report


def default_name(base: str | os.PathLike, captions: str | os.PathLike) -> str:
    """A name for the new bundle: ``<base>-<captions file's folder or stem>``, safe as a folder name."""
    data = Path(captions).parent.name if Path(captions).stem in ("captions", "token", "annotations") else \
        Path(captions).stem
    name = f"{Path(base).name}-{data}" if data else f"{Path(base).name}-finetuned"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")[:80] or "finetuned"


def check_name(name: str) -> str | None:
    """Why ``name`` is no good for a new bundle folder under artifacts/, or None."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}", name or ""):
        return "use 1-80 letters, digits, dots, dashes or underscores, starting with a letter or digit"
    return None


def start_finetune(queue: JobQueue, base: str | os.PathLike, captions: str | os.PathLike,
                   images: str | os.PathLike, out: str | os.PathLike, settings: FinetuneSettings,
                   title: str | None = None) -> Job:
    """Queue the fine-tune of ``base`` on (``captions``, ``images``) into bundle ``out``. Refused
    (:class:`~captioning.service.jobs.DuplicateJob`) while the same base + data + settings, or the same ``out``, is
    queued or running; ValueError on bad settings."""
    problems = settings.problems()
    if problems:
        raise ValueError(problems[0])
    base, out = Path(base), Path(out)
    argv = [sys.executable, str(train_script()), "finetune", "--from", str(base), "--captions", str(captions),
            "--images", str(images), "--out", str(out), *settings.flags()]
    if os.environ.get(CACHE_ENV):
        argv += ["--cache-dir", str(cache_dir())]
    digest = data_digest(captions, images)
    key = job_key("finetune", bundle_digest(base), digest, asdict(settings))
    meta = {"kind": "finetune", "base": str(base), "captions": str(captions), "images": str(images),
            "data_digest": digest, "settings": asdict(settings)}
    return queue.submit(argv, title or f"Fine-tune {base.name} → {out.name}", key=key, out=str(out),
                        run_dir=run_dir_for(out), meta=meta, cwd=PROJECT_ROOT)
