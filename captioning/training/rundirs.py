"""Run directories: where a resumable training run keeps what a rerun continues from.

``<cache>/runs/<name>/``::

    fingerprint        the settings the checkpoints belong to; other settings start the run afresh
    state.json         the history (epochs, best epoch, ...), written atomically after every epoch
    best.weights.h5    the best weights so far
    last.weights.h5    the last finished epoch's weights (SCST; teacher-forced training resumes from Keras's
                       BackupAndRestore folder ``backup/`` beside them)

Both :mod:`captioning.training.fit` and :mod:`captioning.training.scst` keep their runs here.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from captioning.files import atomic_path, atomic_write


def fingerprint(*parts) -> str:
    """A short stable hash of JSON-serialisable settings (dict key order does not matter)."""
    return hashlib.sha256(json.dumps(list(parts), sort_keys=True).encode()).hexdigest()[:16]


class RunDir:
    """One run's folder: its fingerprint, state and checkpoints."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.fingerprint_path = self.path / "fingerprint"
        self.state_path = self.path / "state.json"
        self.best_path = self.path / "best.weights.h5"
        self.last_path = self.path / "last.weights.h5"

    def changed(self, fingerprint: str) -> bool:
        """Whether checkpoints of other settings are here (a rerun of these settings must not resume them)."""
        return self.fingerprint_path.is_file() and self.fingerprint_path.read_text() != fingerprint

    def claim(self, fingerprint: str) -> bool:
        """Make the folder this run's: emptied first when it holds another fingerprint's checkpoints.

        Returns whether it was emptied.
        """
        stale = self.changed(fingerprint)
        if stale:
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.fingerprint_path.write_text(fingerprint)
        return stale

    def load_state(self, initial: dict) -> dict:
        """The saved state, or ``initial`` when this run has none yet."""
        return json.loads(self.state_path.read_text()) if self.state_path.is_file() else initial

    def save_state(self, state: dict) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write(self.state_path, json.dumps(state, indent=1))

    def save_weights(self, model, path: Path) -> None:
        """``model.save_weights`` to ``path`` (``best_path`` or ``last_path``) atomically."""
        with atomic_path(path, ".weights.h5") as tmp:
            model.save_weights(tmp)
