"""Local server processes for tests and demos: started, health-checked, stopped, logs kept."""

from __future__ import annotations

import itertools
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

_PORT_BASE = 20000
"""Parallel test workers take ports from here up: below Linux's ephemeral range (32768 on),
so no outgoing connection holds one, and a block per worker, so two workers never pick
the same port between picking it and binding it."""
_PORT_BLOCK = 1000
_port_offset = itertools.count(random.randrange(_PORT_BLOCK))


def free_port() -> int:
    """A loopback TCP port nobody listens on now. Under pytest-xdist (PYTEST_XDIST_WORKER
    is `gwN`) it comes from worker N's own block, walked from a random start (a child
    process inherits the variable); otherwise the kernel picks one."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    index = int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else -1
    if not 0 <= index < (32768 - _PORT_BASE) // _PORT_BLOCK:
        return _bind_free(0)
    base = _PORT_BASE + index * _PORT_BLOCK
    for _ in range(_PORT_BLOCK):
        port = base + next(_port_offset) % _PORT_BLOCK
        try:
            return _bind_free(port)
        except OSError:
            continue
    raise RuntimeError(f"no free port in {base}-{base + _PORT_BLOCK - 1} (worker {worker})")


def _bind_free(port: int) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port))
        bound: int = sock.getsockname()[1]
        return bound


# util-linux's setpriv sets PR_SET_PDEATHSIG and execs the server: it gets SIGKILL when
# the process that started it dies, so a test run killed half-way leaves no servers
# behind. (A preexec_fn could do the same, but is unsafe in a threaded parent.)
_SETPRIV = shutil.which("setpriv")


class ProcessError(RuntimeError):
    """A managed process exited or never became healthy; carries the tail of its log."""


class ManagedProcess:
    """One server process with its own log file and process group."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        die_with_parent: bool = True,
    ) -> None:
        self.name = name
        self.die_with_parent = die_with_parent
        self.argv = list(argv)
        self.log_path = log_path
        self.env = env
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        argv = self.argv
        if self.die_with_parent and _SETPRIV:
            argv = [_SETPRIV, "--pdeathsig", "KILL", "--", *argv]
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(self.env or {})},
                start_new_session=True,  # its own group: stop() reaches any children too
            )

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def wait_until(self, check: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise ProcessError(f"{self.name} exited while waiting for {what}:\n{self.tail()}")
            if check():
                return
            time.sleep(0.2)
        raise ProcessError(f"{self.name}: {what} not reached in {timeout:.0f}s:\n{self.tail()}")

    def stop(self, timeout: float = 15.0, sig: int = signal.SIGTERM) -> int | None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return proc.returncode if proc else None
        try:
            os.killpg(proc.pid, sig)
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            return proc.wait()
        except ProcessLookupError:
            return proc.wait()


@dataclass(frozen=True)
class ProcessInfo:
    """What /proc/<pid>/stat says of a process."""

    pid: int
    comm: str
    """The command name, cut to 15 characters by the kernel."""
    state: str
    ppid: int
    start_time: int
    """Clock ticks after boot: with the PID, it names one process (PIDs are reused)."""

    @property
    def zombie(self) -> bool:
        return self.state == "Z"


def process_info(pid: int) -> ProcessInfo | None:
    """None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: it ends at the last ')'.
    comm, _, rest = stat.partition(" (")[2].rpartition(")")
    fields = rest.split()
    return ProcessInfo(pid, comm, fields[0], int(fields[1]), int(fields[19]))


def all_processes() -> list[ProcessInfo]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (info := process_info(int(entry.name))) is not None:
            found.append(info)
    return found


def http_ok(url: str, context: ssl.SSLContext | None = None, timeout: float = 2.0) -> bool:
    """True when `url` answers 200; connection errors and other statuses are False."""
    try:
        with urllib.request.urlopen(url, context=context, timeout=timeout) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError, ssl.SSLError):
        return False
