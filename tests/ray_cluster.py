"""A real multi-process Ray cluster on loopback for the tests: a head and worker nodes, each started by its own
`ray start --block` in its own process group and temp dir, so that a node can be killed alone (a machine lost)
and everything this module started is stopped by process id, never by name (`ray stop` would stop every Ray on
the machine)."""
from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

RAY = Path(sys.executable).with_name("ray")
# The head declares a lost node dead within ~3 s instead of Ray's default ~30 s (health checks every 0.5 s, 3
# misses), so a test that kills a node waits seconds, not half a minute.
FAST_FAILURE = {"RAY_health_check_period_ms": "500", "RAY_health_check_timeout_ms": "1000",
                "RAY_health_check_failure_threshold": "3", "RAY_health_check_initial_delay_ms": "0"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Node:
    """One `ray start --block` process group; its output lines are collected as they come."""

    def __init__(self, args: list[str], env: dict, temp_dir: Path):
        self.temp_dir = temp_dir
        self.p = subprocess.Popen([str(RAY), "start", *args, "--block", f"--temp-dir={temp_dir}"], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  start_new_session=True)
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.p.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_started(self, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while not any("Ray runtime started" in ln for ln in self.lines):
            assert self.p.poll() is None, "ray start exited:\n" + "\n".join(self.lines[-30:])
            assert time.monotonic() < deadline, "ray start too slow:\n" + "\n".join(self.lines[-30:])
            time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL the whole process group (ray start, its raylet, its workers): the machine is gone."""
        try:
            os.killpg(self.p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.p.wait(timeout=30)
        _kill_leftovers(self.temp_dir)


class Cluster:
    """``Cluster(head_cpus=1)``, :meth:`add_worker` for each worker node, :meth:`wait_started`; :meth:`stop`."""

    def __init__(self, head_cpus: int = 1):
        self.root = Path(tempfile.mkdtemp(prefix="ray40-"))
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        # Token authentication with a secret of this cluster's own (never written to ~/.ray): the driver gets it
        # through ``driver_env``.
        self.env = {**os.environ, **FAST_FAILURE, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
                    "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1",
                    "RAY_worker_niceness": "0"}             # workers at the test's priority, not 9 steps below
        self.nodes: list[Node] = []
        self.head = self._start(["--head", f"--port={self.port}", "--node-ip-address=127.0.0.1",
                                 f"--num-cpus={head_cpus}", "--include-dashboard=false",
                                 f"--dashboard-port={free_port()}", f"--ray-client-server-port={free_port()}",
                                 f"--object-store-memory={256 * 2**20}"], wait=False)

    @property
    def driver_env(self) -> dict:
        return {k: self.env[k] for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}

    def _start(self, args: list[str], wait: bool = True) -> Node:
        temp = self.root / f"node{len(self.nodes)}"   # ray puts a socket path under it: keep it short
        temp.mkdir()
        node = Node(args, self.env, temp)
        self.nodes.append(node)
        if wait:
            node.wait_started()
        return node

    def add_worker(self, cpus: int = 1, wait: bool = True) -> Node:
        """A worker node; with ``wait=False`` it starts beside the head's own start (it waits for the head)."""
        return self._start([f"--address={self.address}", "--node-ip-address=127.0.0.1", f"--num-cpus={cpus}",
                            f"--object-store-memory={256 * 2**20}"], wait)

    def wait_started(self) -> None:
        for node in self.nodes:
            node.wait_started()

    def stop(self) -> None:
        """Every node killed (a test cluster keeps nothing worth a graceful stop), workers first."""
        for node in reversed(self.nodes):
            node.kill()


def _kill_leftovers(temp_dir: Path) -> None:
    """Processes of this node that left its process group (if any) are found by the node's temp dir on their
    command line (/proc: the tests run on Linux), and killed by process id."""
    mark = str(temp_dir).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if mark in (entry / "cmdline").read_bytes():
                os.kill(int(entry.name), signal.SIGKILL)
        except (OSError, ValueError):
            pass
