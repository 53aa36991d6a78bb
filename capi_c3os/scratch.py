"""Private scratch directories on the manager's disk that a SIGKILL does not leak for long.

Each directory holds a lock file, locked (flock) for as long as its owner uses it; a later
`sweep` of the same prefix removes every directory whose lock is free, i.e. whose owner
died. Used for image downloads (one directory per download) and for the files the
kubernetes client writes from a kubeconfig's inline CA, certificate and key (one
directory per process: the client keeps those files for the life of the process and
removes them only at a clean exit).
"""

from __future__ import annotations

import atexit
import fcntl
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress

_LOCK = ".lock"
_LEFTOVER_AGE = 3600.0
"""A scratch directory without its lock file is a leftover once this old (seconds)."""

KUBE_FILES_PREFIX = "capi-c3os-kube-"
"""The kubernetes client's files from kubeconfigs (management and workload clusters)."""

_process_dirs: dict[str, str] = {}
_process_lock = threading.Lock()


def _locked_dir(prefix: str) -> tuple[str, int]:
    tmp = tempfile.mkdtemp(prefix=prefix)  # mode 0700
    fd = os.open(os.path.join(tmp, _LOCK + ".new"), os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    # Locked before it has its name: a sweep never sees an unlocked lock file of ours.
    os.rename(os.path.join(tmp, _LOCK + ".new"), os.path.join(tmp, _LOCK))
    return tmp, fd


def _remove(tmp: str, fd: int) -> None:
    shutil.rmtree(tmp, ignore_errors=True)
    with suppress(OSError):
        os.close(fd)


@contextmanager
def scratch_dir(prefix: str) -> Iterator[str]:
    """A private directory for one piece of work, removed afterwards (and by a later
    sweep of `prefix` when this process dies first)."""
    sweep(prefix)
    tmp, fd = _locked_dir(prefix)
    try:
        yield tmp
    finally:
        _remove(tmp, fd)


def process_dir(prefix: str) -> str:
    """This process's private directory for `prefix`, made (after a sweep of dead
    processes' ones) on first use and removed at a clean exit."""
    with _process_lock:
        found = _process_dirs.get(prefix)
        if found is None or not os.path.isdir(found):
            sweep(prefix)
            found, fd = _locked_dir(prefix)
            _process_dirs[prefix] = found
            atexit.register(_remove, found, fd)
        return found


def sweep(prefix: str, root: str | None = None) -> None:
    """Remove the scratch directories of `prefix` whose owners are dead."""
    root = root or tempfile.gettempdir()
    try:
        names = [n for n in os.listdir(root) if n.startswith(prefix)]
    except OSError:
        return
    for name in names:
        path = os.path.join(root, name)
        try:
            fd = os.open(os.path.join(path, _LOCK), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            with suppress(OSError):
                if time.time() - os.stat(path).st_mtime > _LEFTOVER_AGE:
                    shutil.rmtree(path, ignore_errors=True)  # an older version's, or died at birth
            continue
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # in use
        finally:
            os.close(fd)
        shutil.rmtree(path, ignore_errors=True)
