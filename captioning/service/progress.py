"""A job's progress, read from the files its run writes (checkpoints, ``state.json``, the bundle): the run
directory is the source of truth; and the step sampler the supervisor runs beside the command.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path


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
            scores = _read_json(state_path.parent / "dev_scores.json")   # a fine-tune's dev CIDEr-D per epoch
            for e in epochs:                                            # (captioning/training/dev_score.py)
                extra = scores.get(str(e["epoch"]))
                e.update(extra if isinstance(extra, dict) else {})
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
