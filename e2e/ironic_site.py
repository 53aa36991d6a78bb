"""An Ironic site for the e2e scenarios: a real standalone Ironic with fake-hardware nodes,
whose deployed nodes the session's k3s stand-in plays (`capi_c3os.dev.k3s_ironic`), and its
log kept with a failing scenario's."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from capi_c3os.dev.ironic import IronicServer
from capi_c3os.dev.k3s_ironic import IronicMachines
from e2e.conftest import _FAILED, E2eEnv


@pytest.fixture(scope="session")
def e2e_ironic(e2e: E2eEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[IronicServer]:
    if not any(shutil.which(t) for t in ("genisoimage", "mkisofs", "xorrisofs")):
        pytest.fail("Ironic masters config drives with genisoimage, mkisofs or xorrisofs (apt: xorriso)")
    server = IronicServer(tmp_path_factory.mktemp("ironic")).start()
    source = IronicMachines(server)
    e2e.k3s.sources.append(source)
    try:
        yield server
    finally:
        e2e.k3s.sources.remove(source)
        server.stop()


@pytest.fixture
def ironic_logs(request: pytest.FixtureRequest, e2e_ironic: IronicServer) -> Iterator[None]:
    """Ironic's log next to the environment's when the scenario fails."""
    yield
    if not request.node.stash.get(_FAILED, False):
        return
    keep = os.environ.get("CAPI_C3OS_TEST_LOGS")
    if not keep:
        print(f"  ironic: {e2e_ironic.root}")
        return
    target = Path(keep) / "e2e" / request.node.name / "ironic"
    target.mkdir(parents=True, exist_ok=True)
    for name in ("ironic.log", "ironic.out", "ironic.conf"):
        if (e2e_ironic.root / name).exists():
            shutil.copy(e2e_ironic.root / name, target / name)
