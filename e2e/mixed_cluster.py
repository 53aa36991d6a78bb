"""A cluster from the shipped libvirt ClusterClass with bare-metal workers, made the way a
user makes it: `clusterctl generate cluster --flavor topology`, then the generated file
edited (sizes, an Ironic site in `sites`, a `bare-metal-worker` MachineDeployment placed
on that site by its failureDomain, `workerHosts` choosing the nodes' resource class).
Shared by the mixed and the move scenarios, with the checks both make."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

from capi_c3os.backends.base import MachineIdentity
from capi_c3os.dev.ironic import read_configdrive
from capi_c3os.dev.k3s_ironic import PREFIX
from capi_c3os.dev.libvirtd import NETWORK_NAME
from e2e.conftest import E2eEnv
from e2e.test_libvirt_cluster import INFRA, SMALL_VM, Cluster
from tests.integration.ironic.lab import IronicLab
from tests.integration.test_templates import render

METAL_SITE = "rack-1"
METAL_CLASS = "bare-metal-worker"


def mixed_cluster(
    env: E2eEnv,
    kubeconfig: Path,
    namespace: str,
    home: Path,
    port: int,
    ironic_url: str,
    resource_class: str,
    *,
    servers: int,
    vm_workers: int,
    metal_workers: int,
) -> list[dict[str, Any]]:
    """The rendered and edited documents (ClusterClass and templates, then the Cluster)."""
    image = env.standin_image / "boot.qcow2"
    rendered = render(
        "topology", namespace, home, kubeconfig,
        C3OS_CONTROL_PLANE_ENDPOINT_HOST="127.0.0.1", C3OS_CONTROL_PLANE_ENDPOINT_PORT=str(port),
        C3OS_LIBVIRT_URI=env.libvirtd.uri, C3OS_LIBVIRT_POOL=env.libvirtd.pool_name,
        C3OS_LIBVIRT_NETWORK=NETWORK_NAME, C3OS_IMAGE_URL=image.as_uri(),
        C3OS_IMAGE_SHA256=hashlib.sha256(image.read_bytes()).hexdigest(),
    )  # fmt: skip
    topology = next(d for d in rendered if d["kind"] == "Cluster")["spec"]["topology"]
    topology["controlPlane"]["replicas"] = servers
    (md,) = topology["workers"]["machineDeployments"]
    md["replicas"] = vm_workers
    topology["workers"]["machineDeployments"] = [md] if vm_workers else []
    topology["workers"]["machineDeployments"].append(
        {"class": METAL_CLASS, "name": "metal", "replicas": metal_workers, "failureDomain": METAL_SITE}
    )
    variables = {v["name"]: v for v in topology["variables"]}
    # The Ironic site takes no control-plane machines (the libvirt site stays the default).
    variables["sites"]["value"].append(
        {"name": METAL_SITE, "controlPlane": False, "ironic": {"endpoint": ironic_url}}
    )
    topology["variables"] += [
        {"name": "controlPlaneMachine", "value": SMALL_VM},
        {"name": "workerMachine", "value": SMALL_VM},
        {"name": "workerHosts", "value": {"resourceClass": resource_class}},
    ]
    return rendered


def is_metal(machine: dict[str, Any]) -> bool:
    return bool(machine["spec"].get("failureDomain") == METAL_SITE)


def machine_name(node: dict[str, Any]) -> str:
    """The k3s stand-in's name of a deployed node (capi_c3os.dev.k3s_ironic)."""
    return f"{PREFIX}{node['name'] or node['uuid']}/{node['instance_uuid']}"


def check_metal_worker(cluster: Cluster, lab: IronicLab, machine: dict[str, Any], rc: str) -> dict[str, Any]:
    """A worker Machine on an Ironic node: its allocation, instance_uuid and providerID,
    the config drive Ironic holds (its bootstrap data, its provider-id) and the Node k3s
    registered from it. Returns the node."""
    name = machine["metadata"]["name"]
    infra = cluster.get(INFRA, "c3osmachines", machine["spec"]["infrastructureRef"]["name"])
    assert infra is not None, name
    provider_id = machine["spec"]["providerID"]
    assert (
        infra["spec"]["providerID"]
        == provider_id
        == f"c3os://{cluster.namespace}/{infra['metadata']['name']}"
    )
    status = infra["status"]["backend"]["ironic"]
    node = lab.node(status["nodeUUID"])
    assert (node["provision_state"], node["resource_class"]) == ("active", rc)
    identity = MachineIdentity(cluster.namespace, infra["metadata"]["name"], provider_id)
    assert node["instance_uuid"] == identity.uuid, name
    allocations = [a for a in lab.allocations_for_class(rc) if a["node_uuid"] == node["uuid"]]
    assert [a["state"] for a in allocations] == ["active"], (name, allocations)
    assert node["allocation_uuid"] == allocations[0]["uuid"]

    user_data, meta_data = read_configdrive(lab.server, node["uuid"])
    secret = cluster.core.read_namespaced_secret(
        machine["spec"]["bootstrap"]["dataSecretName"], cluster.namespace
    )
    assert user_data == base64.b64decode(secret.data["value"]), name
    assert meta_data["provider-id"] == provider_id
    assert cluster.env.k3s.node_of(machine_name(node)) == machine["status"]["nodeRef"]["name"], name
    assert meta_data["local-hostname"] == machine["status"]["nodeRef"]["name"]
    return node
