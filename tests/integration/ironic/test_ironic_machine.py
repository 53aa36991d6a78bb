"""A C3osMachine on an Ironic site, end to end: our manager (infrastructure provider, under
its generated RBAC, as a process) with the real CAPI core manager and the real Ironic.
Killed with SIGKILL while deploying and while cleaning, a new manager resumes from what
Ironic holds."""

from __future__ import annotations

import signal
from typing import Any

import pytest

from capi_c3os.backends.base import MachineIdentity
from capi_c3os.dev.ironic import IronicServer
from tests.integration.ironic.lab import CHECKSUM, USER_DATA, IronicLab, new_resource_class
from tests.integration.libvirt.conftest import CAPI, INFRA, Capi
from tests.support import eventually

pytestmark = pytest.mark.integration


def machine_spec(rc: str) -> dict[str, Any]:
    return {
        "backend": {"ironic": {"resourceClass": rc}},
        "image": {"url": "http://images.example/c3os.qcow2", "checksum": CHECKSUM},
    }


def test_machine_is_deployed_by_ironic_survives_kill_9_and_is_released(
    capi: Capi, ironic_server: IronicServer, start_manager: Any
) -> None:
    lab = IronicLab(ironic_server)
    rc = new_resource_class()
    lab.enroll(2, rc)
    manager = start_manager()
    manager.wait_ready()
    capi.create_cluster("bm", {"ironic": {"endpoint": ironic_server.url}})
    capi.create_machine("bm", "metal-0", machine_spec(rc), USER_DATA)
    provider_id = f"c3os://{capi.namespace}/metal-0"
    identity = MachineIdentity(capi.namespace, "metal-0", provider_id)

    # Kill -9 as soon as Ironic holds anything for the machine (mid-allocation or deploy).
    eventually(lambda: lab.allocations_named(identity.resource_name), "allocation requested", 120, every=0.05)
    manager.process.stop(sig=signal.SIGKILL)
    manager = start_manager("infrastructure-2")

    obj = eventually(
        lambda: capi.provisioned("metal-0"),
        "C3osMachine provisioned",
        180,
        explain=lambda: capi.ready_message("metal-0"),
    )
    assert obj["spec"]["providerID"] == provider_id
    node_uuid = obj["status"]["backend"]["ironic"]["nodeUUID"]
    node = lab.node(node_uuid)
    assert node["instance_uuid"] == identity.uuid and node["provision_state"] == "active"
    assert node["instance_info"]["configdrive"] == "******"
    assert len(lab.allocations_for_class(rc)) == 1, "one allocation across two managers"
    assert {"type": "Hostname", "address": "metal-0"} in obj["status"]["addresses"]
    eventually(
        lambda: (
            (capi.get(CAPI, "machines", "metal-0") or {}).get("spec", {}).get("providerID") == provider_id
        ),
        "CAPI to copy the providerID to the Machine",
        120,
    )

    # Delete, and kill -9 once the undeploy has started.
    capi.delete(CAPI, "clusters", "bm")
    eventually(
        lambda: lab.node(node_uuid)["provision_state"] != "active", "undeploy requested", 120, every=0.05
    )
    manager.process.stop(sig=signal.SIGKILL)
    start_manager("infrastructure-3")

    eventually(lambda: capi.get(INFRA, "c3osmachines", "metal-0") is None, "C3osMachine gone", 180)
    eventually(lambda: capi.get(CAPI, "clusters", "bm") is None, "Cluster gone", 120)
    node = lab.node(node_uuid)
    assert node["provision_state"] == "available" and node["instance_uuid"] is None
    assert not any(key.startswith("c3os_") for key in node["extra"]), node["extra"]
    assert lab.allocations_for_class(rc) == []
