"""Small helpers for tests against real servers."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar

import yaml

T = TypeVar("T")


class Service(Protocol):
    """A server a dev module runs for tests (Ironic, Keystone, ...), all its files in `root`."""

    root: Path

    def start(self) -> object: ...

    def stop(self) -> None: ...


S = TypeVar("S", bound=Service)


def keep_directory(directory: Path, name: str) -> None:
    """Copy a server's directory (logs, configuration) to $CAPI_C3OS_TEST_LOGS[/<worker>]/<name>
    when that is set (CI keeps it)."""
    keep = os.environ.get("CAPI_C3OS_TEST_LOGS")
    if keep:
        # Parallel workers each have their own servers of the same names.
        worker = os.environ.get("PYTEST_XDIST_WORKER", "")
        # Not MariaDB's InnoDB storage (a production-shaped Ironic's, ~200 MB; its log is kept)
        # nor a socket a killed server left behind (copytree cannot copy one).
        skip = shutil.ignore_patterns("ibdata*", "ib_logfile*", "ibtmp*", "undo0*", "*.sock")
        shutil.copytree(directory, Path(keep) / worker / name, dirs_exist_ok=True, ignore=skip)


@contextlib.contextmanager
def serving(service: S, keep_as: str) -> Iterator[S]:
    """`service` started, and stopped afterwards with its directory kept as `keep_as`."""
    service.start()
    try:
        yield service
    finally:
        service.stop()
        keep_directory(service.root, keep_as)


def eventually(
    probe: Callable[[], T | None],
    what: str,
    timeout: float = 60.0,
    every: float = 0.25,
    explain: Callable[[], str] | None = None,
) -> T:
    """Poll `probe` until it returns something truthy; fail with `what` (and what `explain`
    says at that moment) after `timeout` seconds. The timeout is a safety net against
    hangs, not a performance assertion."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            detail = f": {explain()}" if explain else ""
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
        time.sleep(every)


def condition(type_: str, status: str, reason: str, message: str = "") -> dict[str, Any]:
    """A condition as a provider writes it (CAPI's metav1.Condition shape)."""
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }


def with_unloadable_stage(document: str) -> str:
    """`document` (a rendered #cloud-config) with a user stage yip cannot load: a file's
    `permissions: "0644"` is a string, yip's is a uint32. Rendering refuses such a stage;
    bootstrap data from elsewhere (a hand-made Secret) can still carry one. yip then keeps
    the document but runs none of its stages."""
    body = yaml.safe_load(document)
    body.setdefault("stages", {}).setdefault("boot", []).append(
        {"name": "mine", "files": [{"path": "/etc/x", "permissions": "0644"}]}
    )
    return "#cloud-config\n" + yaml.safe_dump(body, sort_keys=False)
