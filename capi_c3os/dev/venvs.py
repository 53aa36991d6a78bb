"""Pinned Python tools the tests run as servers (Ironic, Keystone, sushy-tools), each in
its own virtualenv under the cache, installed once per machine: their dependencies would
fight ours and each other's."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from capi_c3os.dev.processes import ProcessError

CACHE = Path(os.environ.get("CAPI_C3OS_CACHE", Path.home() / ".cache" / "capi-c3os"))


@dataclass(frozen=True)
class PinnedVenv:
    title: str
    """What it holds, for messages ("Ironic")."""
    directory: str
    """Its directory name under the cache, with the version ("ironic-39.0.0-venv")."""
    requirements: tuple[str, ...]
    env_var: str
    """Names an existing virtualenv to use instead ("CAPI_C3OS_IRONIC_VENV")."""

    @property
    def path(self) -> Path:
        explicit = os.environ.get(self.env_var)
        return Path(explicit) if explicit else CACHE / self.directory

    def ensure(self, python: str = sys.executable) -> Path:
        """The virtualenv, installed on first use. A stamp written last marks a complete
        install, so an interrupted one is redone; a lock keeps concurrent callers from
        racing. The stamp names the requirements: when they changed (a package added
        beside the pinned main one), the same virtualenv is brought up to them in place."""
        venv = self.path
        stamp = venv / ".capi-c3os-installed"
        wanted = f"{' '.join(self.requirements)}\n"
        if _read(stamp) == wanted:
            return venv
        venv.parent.mkdir(parents=True, exist_ok=True)
        with (venv.parent / f".{venv.name}.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            installed = _read(stamp)
            if installed == wanted:
                return venv
            started = time.monotonic()
            if installed is None:
                shutil.rmtree(venv, ignore_errors=True)
                print(f"installing {' '.join(self.requirements)} into {venv} (once)", file=sys.stderr)
                _run([python, "-m", "venv", str(venv)])
            else:
                # The old stamp stays until the update is complete: an interrupted one is redone.
                print(f"updating {venv} to {' '.join(self.requirements)}", file=sys.stderr)
            pip = str(venv / "bin" / "pip")
            _run([pip, "install", "--quiet", "--disable-pip-version-check", *self.requirements])
            stamp.write_text(wanted)
            print(f"installed {self.title} in {time.monotonic() - started:.0f}s", file=sys.stderr)
        return venv

    def main(self, name: str) -> int:
        """`python -m capi_c3os.dev.<tool>`: install ahead of time, print where."""
        started = time.monotonic()
        venv = self.ensure()
        print(f"{name}={venv} ({time.monotonic() - started:.1f}s)")
        return 0


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


def bcrypt_hash(venv: Path, password: str) -> str:
    """An htpasswd-style bcrypt hash made by the virtualenv's own bcrypt (Ironic's
    http_basic and sushy-emulator check them); cheap rounds, for tests. The password
    goes by stdin, never on a command line."""
    script = "import bcrypt,sys; print(bcrypt.hashpw(sys.stdin.read().encode(), bcrypt.gensalt(4)).decode())"
    proc = subprocess.run(
        [str(venv / "bin" / "python"), "-c", script],
        input=password,
        capture_output=True,
        text=True,
        check=True,
    )
    return proc.stdout.strip()


def _run(argv: list[str]) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ProcessError(f"{' '.join(argv[:3])} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
