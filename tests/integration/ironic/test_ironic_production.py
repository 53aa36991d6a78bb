"""A C3osMachine deployed and released through our manager against a production-shaped
Ironic: MariaDB, the API under gunicorn, a separate conductor reached over json-rpc, and
Ironic's own intervals (no test overrides)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from capi_c3os.backends.base import MachineIdentity
from capi_c3os.dev.ironic import IronicServer, Shape, read_configdrive
from tests.integration.ironic.lab import CHECKSUM, USER_DATA, IronicLab, new_resource_class
from tests.integration.libvirt.conftest import CAPI, INFRA, Capi
from tests.support import eventually, serving

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def production_ironic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IronicServer]:
    server = IronicServer(tmp_path_factory.mktemp("ironic-production"), shape=Shape.PRODUCTION)
    with serving(server, "ironic-production") as started:
        yield started


def test_machine_is_deployed_and_released_by_a_production_shaped_ironic(
    capi: Capi, production_ironic: IronicServer, start_manager: Any
) -> None:
    server = production_ironic
    assert server.conductor_process is not None and server.conductor_process.alive()
    # The conductor is its own process, registered under its json-rpc address.
    conductors = server.request("GET", "/v1/conductors")["conductors"]
    assert [c["hostname"] for c in conductors] == [f"127.0.0.1:{server.json_rpc_port}"], conductors
    assert "sync_power_state_interval" not in server.conductor_options, "Ironic's own intervals"
    lab = IronicLab(server)
    rc = new_resource_class()
    lab.enroll(1, rc)
    start_manager().wait_ready()
    capi.create_cluster("bm", {"ironic": {"endpoint": server.url}})
    spec = {
        "backend": {"ironic": {"resourceClass": rc}},
        "image": {"url": "http://images.example/c3os.qcow2", "checksum": CHECKSUM},
    }
    capi.create_machine("bm", "metal-0", spec, USER_DATA)
    provider_id = f"c3os://{capi.namespace}/metal-0"
    identity = MachineIdentity(capi.namespace, "metal-0", provider_id)

    obj = eventually(
        lambda: capi.provisioned("metal-0"),
        "C3osMachine provisioned",
        180,
        explain=lambda: capi.ready_message("metal-0"),
    )
    node_uuid = obj["status"]["backend"]["ironic"]["nodeUUID"]
    node = lab.node(node_uuid)
    assert node["provision_state"] == "active" and node["instance_uuid"] == identity.uuid
    # The config drive the conductor stored, read back from MariaDB.
    user_data, meta_data = read_configdrive(server, node_uuid)
    assert user_data == USER_DATA and meta_data["uuid"] == identity.uuid

    capi.delete(CAPI, "clusters", "bm")
    eventually(lambda: capi.get(INFRA, "c3osmachines", "metal-0") is None, "C3osMachine gone", 180)
    node = lab.node(node_uuid)
    assert node["provision_state"] == "available" and node["instance_uuid"] is None
    assert not any(key.startswith("c3os_") for key in node["extra"]), node["extra"]
    assert lab.allocations_for_class(rc) == []
