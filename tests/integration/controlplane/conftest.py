"""Fixtures of the control-plane integration tests."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from capi_c3os.dev.mgmt import ManagementPlane
from capi_c3os.dev.processes import ManagedProcess, free_port, http_ok


def start_manager(mgmt: ManagementPlane, log: Path) -> ManagedProcess:
    """Our bootstrap + control-plane manager (`capi-c3os run`), ready."""
    health = free_port()
    process = ManagedProcess("manager", [
        sys.executable, "-m", "capi_c3os", "run", "--kubeconfig", str(mgmt.kubeconfig),
        "--providers=bootstrap,control-plane", f"--health-addr=127.0.0.1:{health}", "--metrics-addr=0",
    ], log)  # fmt: skip
    process.start()
    process.wait_until(lambda: http_ok(f"http://127.0.0.1:{health}/readyz"), "manager ready")
    return process


@pytest.fixture
def manager(mgmt: ManagementPlane, tmp_path: Path) -> Iterator[ManagedProcess]:
    process = start_manager(mgmt, tmp_path / "manager.log")
    yield process
    assert process.stop() == 0, process.tail()
