"""A real standalone Ironic for the session (installed once into its own cached virtualenv
by capi_c3os.dev.ironic), and a lab to enroll nodes in it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from capi_c3os.backends.ironic import IronicBackend
from capi_c3os.dev.ironic import FAST_FAILURES, IronicServer
from tests.integration.ironic.lab import IronicLab

# The manager fixtures (our manager as a process under the infrastructure provider's
# generated RBAC) are the infrastructure provider's, shared with the libvirt tests.
from tests.integration.libvirt.conftest import (  # noqa: F401
    capi,
    infrastructure_kubeconfig,
    start_manager,
    tenant_b,
)
from tests.support import serving


@pytest.fixture(scope="session")
def ironic_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IronicServer]:
    # The shape CAPI_C3OS_IRONIC_SHAPE names (single by default); the failure tests need
    # agents that never call back to fail in seconds in any shape.
    server = IronicServer(tmp_path_factory.mktemp("ironic"), conductor=FAST_FAILURES)
    with serving(server, "ironic") as started:
        yield started


@pytest.fixture
def lab(ironic_server: IronicServer) -> IronicLab:
    return IronicLab(ironic_server)


@pytest.fixture
def backend() -> IronicBackend:
    # An allocation Ironic never finishes is dropped and asked again after this long (a
    # plain Ironic 39 on SQLite loses some; the test Ironic retries those writes).
    return IronicBackend(allocation_timeout=15)
