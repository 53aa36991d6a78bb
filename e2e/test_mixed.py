"""Scenario 2, mixed: a libvirt control plane with Ironic workers, from the shipped libvirt
ClusterClass and its `bare-metal-worker` MachineDeployment class (e2e/mixed_cluster.py):
1 server VM on the private libvirtd, 2 workers on fake-hardware nodes enrolled in a real
standalone Ironic. Ironic boots nothing; the k3s stand-in joins a node once it is `active`
from exactly the config drive Ironic holds for it (capi_c3os.dev.k3s_ironic).

Create, then delete (file order, as in test_libvirt_cluster): nothing is left behind.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client as kc

from capi_c3os.capi import conditions as cond
from capi_c3os.dev.ironic import IronicServer
from capi_c3os.dev.mgmt import api_client, apply
from capi_c3os.dev.processes import free_port
from e2e.conftest import E2eEnv
from e2e.mixed_cluster import check_metal_worker, is_metal, mixed_cluster
from e2e.test_libvirt_cluster import CAPI, CLUSTER_LABEL, INFRA, NAME, Cluster
from tests.integration.ironic.lab import IronicLab, new_resource_class
from tests.integration.libvirt.conftest import UPLOADED_VOLUMES
from tests.integration.test_templates import await_class_accepted
from tests.support import eventually

# pytest-timeout counts fixture setup too: a VM under TCG on a shared machine.
pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ironic_logs"), pytest.mark.timeout(1800)]

NAMESPACE = "e2e-mixed"
CREATE_TIMEOUT = 900  # one VM under TCG on a shared machine, Ironic's fake deploys: a safety net


class Mixed(Cluster):
    def __init__(self, env: E2eEnv, port: int, lab: IronicLab, rc: str) -> None:
        super().__init__(env, NAMESPACE, port)
        self.lab, self.rc = lab, rc
        self.domains: set[str] = set()
        """The server VMs' domains, recorded at create."""

    def summary(self) -> str:
        nodes = [
            f"{n['name']}: {n['provision_state']} {n['last_error'] or ''}"
            for n in self.lab.nodes_of_class(self.rc)
        ]
        return "\n".join([super().summary(), *nodes])


@pytest.fixture(scope="module")
def mixed(e2e: E2eEnv, e2e_ironic: IronicServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mixed]:
    core = kc.CoreV1Api(e2e.k8s)
    core.create_namespace(kc.V1Namespace(metadata=kc.V1ObjectMeta(name=NAMESPACE)))
    lab = IronicLab(e2e_ironic)
    rc = new_resource_class()
    lab.enroll(2, rc)  # what the operator of rack-1 did
    port = free_port()
    docs = mixed_cluster(e2e, e2e.mgmt.kubeconfig, NAMESPACE, tmp_path_factory.mktemp("clusterctl"), port,
                         e2e_ironic.url, rc, servers=1, vm_workers=0, metal_workers=2)  # fmt: skip
    e2e.k3s.add_endpoint("127.0.0.1", port)
    made = Mixed(e2e, port, lab, rc)
    apply(e2e.mgmt.kubeconfig, [d for d in docs if d["kind"] != "Cluster"])
    await_class_accepted(made.api, NAMESPACE, "c3os-libvirt")
    apply(e2e.mgmt.kubeconfig, [d for d in docs if d["kind"] == "Cluster"])
    yield made
    core.delete_namespace(NAMESPACE)


def test_libvirt_servers_and_ironic_workers_join_one_cluster(mixed: Mixed, tmp_path: Path) -> None:
    started = time.monotonic()

    def available() -> bool:
        obj = mixed.get(CAPI, "clusters", NAME)
        ms = mixed.machines()
        return (
            obj is not None
            and cond.is_true(obj, "Available")
            and len(ms) == 3
            and all((m.get("status") or {}).get("phase") == "Running" for m in ms)
            and all((m.get("status") or {}).get("nodeRef") for m in ms)
        )

    eventually(available, "Cluster Available, 3 Machines Running with Nodes", CREATE_TIMEOUT, 2.0,
               explain=mixed.summary)  # fmt: skip
    print(f"\nmixed create: {time.monotonic() - started:.0f}s until Available with 3 Running Machines")

    servers, workers = mixed.servers(), mixed.workers()
    assert len(servers) == 1 and len(workers) == 2
    # The server is a VM on the libvirt site (the default site: its Machine names none).
    (server,) = servers
    assert not is_metal(server) and server["spec"].get("failureDomain") in (None, "site-a")
    domain = mixed.domain_of(server)
    assert domain
    with mixed.env.libvirtd.connect() as conn:
        assert conn.lookupByName(domain).isActive()
    mixed.domains.add(domain)
    assert mixed.env.k3s.node_of(domain) == server["status"]["nodeRef"]["name"]

    # The workers are Ironic nodes of the resource class workerHosts chose.
    assert all(is_metal(m) for m in workers)
    nodes = {check_metal_worker(mixed, mixed.lab, m, mixed.rc)["uuid"] for m in workers}
    assert len(nodes) == 2

    # The workload cluster, through the kubeconfig the control plane wrote: one Node per
    # Machine, each with its Machine's provider-id.
    secret = mixed.core.read_namespaced_secret(f"{NAME}-kubeconfig", NAMESPACE)
    kubeconfig = tmp_path / "workload.kubeconfig"
    kubeconfig.write_bytes(base64.b64decode(secret.data["value"]))
    with api_client(kubeconfig) as client:
        found = {n.metadata.name: n.spec.provider_id for n in kc.CoreV1Api(client).list_node().items}
    assert found == {m["status"]["nodeRef"]["name"]: m["spec"]["providerID"] for m in servers + workers}


def test_delete_leaves_no_domain_volume_allocation_or_secret(mixed: Mixed) -> None:
    env = mixed.env
    assert mixed.domains, "the create scenario did not get as far as a server VM"
    started = time.monotonic()
    mixed.api.delete_namespaced_custom_object(*CAPI, NAMESPACE, "clusters", NAME)
    eventually(lambda: mixed.get(CAPI, "clusters", NAME) is None, "the Cluster gone", 900, 2.0,
               explain=mixed.summary)  # fmt: skip
    print(f"\nmixed delete: {time.monotonic() - started:.0f}s until the Cluster is gone")
    assert mixed.machines() == []
    assert mixed.items(INFRA, "c3osmachines") == []

    with env.libvirtd.connect() as conn:
        domains = {d.name() for d in conn.listAllDomains(0)}
        pool = conn.storagePoolLookupByName(env.libvirtd.pool_name)
        pool.refresh(0)
        volumes = set(pool.listVolumes())
    assert domains & mixed.domains == set()
    assert {d for d in domains if d.startswith(f"{NAMESPACE}-")} == set()
    left = {v for v in volumes if v not in UPLOADED_VOLUMES and not v.startswith("c3os-base-")}
    assert {v for v in left if v.startswith(f"{NAMESPACE}-")} == set()

    # Ironic: no allocation, every node cleaned and `available` again, nothing of ours on it.
    def available() -> bool:
        return mixed.lab.allocations_for_class(mixed.rc) == [] and all(
            n["provision_state"] == "available" and not n["target_provision_state"] and not n["instance_uuid"]
            for n in mixed.lab.nodes_of_class(mixed.rc)
        )

    eventually(available, "no allocation, the Ironic nodes available again", 120, 1.0, explain=mixed.summary)
    for node in mixed.lab.nodes_of_class(mixed.rc):
        assert not any(k.startswith("c3os_") for k in node["extra"]), node["extra"]
        assert not node["instance_info"], node["instance_info"]

    secrets = mixed.core.list_namespaced_secret(NAMESPACE, label_selector=f"{CLUSTER_LABEL}={NAME}")
    assert [s.metadata.name for s in secrets.items] == []
