"""ExifTool, kept running: one ``exiftool -stay_open True -@ -`` process answers command after command, so each
photo costs milliseconds instead of a Perl start (about 0.3 s). Commands go in as argument lines (bytes, so file
names that are not UTF-8 pass unchanged); each answer ends with ``{ready}`` on stdout and, through ``-echo4``, on
stderr.
"""
from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import threading
from pathlib import Path

INSTALL_HINT = ("ExifTool is not installed; install it with: sudo apt-get install libimage-exiftool-perl "
                "(or: bash scripts/setup.sh app)")
EXIFTOOL_INSTALL_HINT = INSTALL_HINT            # the facade's name for it
# ExifTool before 12.60 (Debian 12 ships 12.57) does not know IPTC's 2021 alt-text fields: declare them.
CONFIG = Path(__file__).with_name("exiftool_config.pl")
DESCRIPTION_TAGS = ("XMP-dc:Description", "IPTC:Caption-Abstract", "EXIF:ImageDescription")
READ_ARGS = ("-j", *(f"-{t}" for t in DESCRIPTION_TAGS), "-XMP-dc:Subject", "-Error", "-Warning")


class MetadataError(Exception):
    """A photo's caption could not be written (the message says why and what to do)."""


class ExifTool:
    """One ``exiftool -stay_open`` process; :meth:`run` sends one command (thread-safe, one at a time)."""

    def __init__(self, executable: str | None = None):
        exe = executable or shutil.which("exiftool")
        if not exe:
            raise MetadataError(INSTALL_HINT)
        self._args = [exe, "-config", str(CONFIG), "-stay_open", "True", "-@", "-"]
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()

    def run(self, *args: str | bytes | os.PathLike) -> tuple[str, str]:
        """(stdout, stderr) of ``exiftool ARGS...``; file names go through as bytes (non-UTF-8 names work)."""
        return self.run_many(args)[0]

    def run_many(self, *commands) -> list[tuple[str, str]]:
        """(stdout, stderr) of each command, sent together: one round trip (a write and its read-back)."""
        lines = []
        for args in commands:
            for arg in args:
                raw = os.fsencode(arg)             # str (surrogate-escaped names too), bytes or a path
                if b"\n" in raw or b"\r" in raw:
                    raise MetadataError("a file name or value with a line break cannot be passed to ExifTool; "
                                        "rename it")
                lines.append(raw)
            lines += [b"-echo4", b"{ready}", b"-execute"]
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._proc = subprocess.Popen(self._args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                              stderr=subprocess.PIPE)
            proc = self._proc
            proc.stdin.write(b"\n".join([*lines, b""]))
            proc.stdin.flush()
            return [(self._until_ready(proc.stdout), self._until_ready(proc.stderr)) for _ in commands]

    def _until_ready(self, stream) -> str:
        out = []
        while True:
            line = stream.readline()
            if not line:
                self.close()
                raise MetadataError("ExifTool stopped unexpectedly; run again (a photo may be one it cannot read)")
            if line.rstrip(b"\r\n") == b"{ready}":
                return b"".join(out).decode("utf-8", "replace")
            out.append(line)

    def read(self, *paths) -> list[dict]:
        """The description fields (and ExifTool's Error / Warning) of each file, as ExifTool's JSON."""
        return json_answer(self.run(*READ_ARGS, *paths)[0])

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            try:
                proc.stdin.write(b"-stay_open\nFalse\n")
                proc.stdin.flush()
                proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                proc.kill()


def json_answer(out: str) -> list[dict]:
    try:
        return json.loads(out) if out.strip() else []
    except json.JSONDecodeError as exc:
        raise MetadataError(f"ExifTool's answer could not be read ({exc})") from None


_shared: ExifTool | None = None


def shared_exiftool() -> ExifTool:
    """The process-wide ExifTool (the app and the API share one), started on first use."""
    global _shared
    if _shared is None:
        _shared = ExifTool()
        atexit.register(_shared.close)
    return _shared


def exiftool_available() -> bool:
    return bool(shutil.which("exiftool"))
