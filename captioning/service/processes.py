"""The processes behind jobs: is a process still the one we started (pid + start time), stop a job's process group.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from captioning.service.jobs import Job


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
