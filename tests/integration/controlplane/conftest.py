"""Fixtures of the control-plane integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from capi_c3os.dev import manager as our_manager
from capi_c3os.dev.manager import Manager
from capi_c3os.dev.mgmt import ManagementPlane


def start_manager(mgmt: ManagementPlane, log: Path) -> Manager:
    """Our bootstrap + control-plane manager (`capi-c3os run`), ready."""
    process = our_manager.start_manager(
        mgmt.kubeconfig, log, providers="bootstrap,control-plane", metrics=False, name="manager"
    )
    return process.wait_ready(60)


@pytest.fixture
def manager(mgmt: ManagementPlane, tmp_path: Path) -> Iterator[Manager]:
    process = start_manager(mgmt, tmp_path / "manager.log")
    yield process
    assert process.stop() == 0, process.tail()
