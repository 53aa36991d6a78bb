"""Fixtures of the integration tests of more than one backend."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client as kc

from capi_c3os.dev.mgmt import ManagementPlane
from capi_c3os.dev.processes import free_port
from tests.conftest import RunManager
from tests.support import eventually

RUNTIME = ("runtime.cluster.x-k8s.io", "v1beta2", "extensionconfigs")


@pytest.fixture
def extension_manager(
    mgmt: ManagementPlane, run_manager: RunManager, namespace: str, k8s: Any
) -> Iterator[None]:
    """`capi-c3os run`, all three providers, serving the extension for this namespace;
    its ExtensionConfig removed afterwards (no other test's MachineDeployment calls it)."""
    port = free_port()
    flags = ("--extension-addr", f"127.0.0.1:{port}", "--extension-url", f"https://127.0.0.1:{port}")
    run_manager("manager", mgmt.kubeconfig, *flags, namespace=namespace, log_level="debug",
                env={"POD_NAMESPACE": namespace}).wait_ready(60)  # fmt: skip
    api = kc.CustomObjectsApi(k8s)

    def discovered() -> bool:
        config = api.get_cluster_custom_object(*RUNTIME, "c3os")
        return any(c["type"] == "Discovered" and c["status"] == "True"
                   for c in (config.get("status") or {}).get("conditions") or [])  # fmt: skip

    eventually(discovered, "ExtensionConfig c3os discovered", 120)
    yield
    api.delete_cluster_custom_object(*RUNTIME, "c3os")
