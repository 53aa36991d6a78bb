"""Scenario 7, `clusterctl move`: a provisioned cluster (1 server VM, 1 worker VM, 1 worker
on an Ironic node; the shipped libvirt ClusterClass with its bare-metal-worker class) moves
from one management plane to another. Both planes are `clusterctl init`-ed and run their
CAPI core and our manager throughout, as they would in a real hand-over (e2e/planes.py);
the VMs, the Ironic node and the workload cluster (k3s stand-in) stay where they are.

Afterwards the target's manager has adopted everything (Ready, observedGeneration current)
with the same providerIDs, domains (same UUIDs and libvirt ids: never restarted, the
consoles show no second boot) and Ironic allocation; nothing was reprovisioned; the source
holds nothing of the cluster; deleting it on the target removes the VMs and frees the node.
Scenarios run in file order and build on each other.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as kc

from capi_c3os.capi import conditions as cond
from capi_c3os.dev.ironic import IronicServer
from capi_c3os.dev.k3s import BOOTED, serial_log
from capi_c3os.dev.mgmt import api_client, apply
from capi_c3os.dev.processes import free_port
from e2e.conftest import _FAILED, E2eEnv
from e2e.mixed_cluster import check_metal_worker, is_metal, mixed_cluster
from e2e.planes import Plane, keep_logs, planes
from e2e.test_libvirt_cluster import CAPI, CLUSTER_LABEL, INFRA, NAME, Cluster
from tests.integration.ironic.lab import IronicLab, new_resource_class
from tests.integration.libvirt.conftest import UPLOADED_VOLUMES
from tests.integration.test_clusterctl_move import clusterctl
from tests.integration.test_templates import await_class_accepted
from tests.support import eventually

# pytest-timeout counts fixture setup too: two planes to initialise, then VMs under TCG on a shared machine.
pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ironic_logs"), pytest.mark.timeout(2400)]

NAMESPACE = "e2e-move"
CP = ("controlplane.cluster.x-k8s.io", "v1alpha1")
TIMEOUT = 900  # two VMs under TCG on a shared machine: a safety net only


class OnPlane(Cluster):
    """The cluster as one management plane holds it."""

    def __init__(self, env: E2eEnv, client: Any, port: int, lab: IronicLab, rc: str) -> None:
        super().__init__(env, NAMESPACE, port)
        self.api, self.core = kc.CustomObjectsApi(client), kc.CoreV1Api(client)
        self.lab, self.rc = lab, rc

    def summary(self) -> str:
        lines = [super().summary()]
        for infra in self.items(INFRA, "c3osmachines"):
            conditions = (infra.get("status") or {}).get("conditions", [])
            lines.append(
                f"C3osMachine {infra['metadata']['name']}: "
                + "; ".join(f"{c['type']}={c['status']} {c.get('message', '')}" for c in conditions)
            )
        lines += [f"node {n['name']}: {n['provision_state']}" for n in self.lab.nodes_of_class(self.rc)]
        return "\n".join(lines)


@dataclass
class Move:
    source: OnPlane
    target: OnPlane
    planes: list[Plane]
    before: dict[str, Any] = field(default_factory=dict)
    domains: set[str] = field(default_factory=set)


@pytest.fixture(scope="module")
def move(e2e: E2eEnv, e2e_ironic: IronicServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Move]:
    root = tmp_path_factory.mktemp("move")
    lab = IronicLab(e2e_ironic)
    rc = new_resource_class()
    lab.enroll(1, rc)
    port = free_port()
    started = time.monotonic()
    with planes(root, "source", "target", image_dir=e2e.standin_image) as (source, target):
        print(f"\nmove: two planes initialised with clusterctl in {time.monotonic() - started:.0f}s")
        with api_client(source.mgmt.kubeconfig) as s, api_client(target.mgmt.kubeconfig) as t:
            scenario = Move(OnPlane(e2e, s, port, lab, rc), OnPlane(e2e, t, port, lab, rc), [source, target])
            scenario.source.core.create_namespace(kc.V1Namespace(metadata=kc.V1ObjectMeta(name=NAMESPACE)))
            docs = mixed_cluster(e2e, source.mgmt.kubeconfig, NAMESPACE, root, port, e2e_ironic.url, rc,
                                 servers=1, vm_workers=1, metal_workers=1)  # fmt: skip
            e2e.k3s.add_endpoint("127.0.0.1", port)
            apply(source.mgmt.kubeconfig, [d for d in docs if d["kind"] != "Cluster"])
            await_class_accepted(scenario.source.api, NAMESPACE, "c3os-libvirt")
            apply(source.mgmt.kubeconfig, [d for d in docs if d["kind"] == "Cluster"])
            yield scenario


@pytest.fixture(autouse=True)
def plane_logs(request: pytest.FixtureRequest, move: Move) -> Iterator[None]:
    yield
    if request.node.stash.get(_FAILED, False):
        keep_logs(move.planes, request.node.name)


def running_cluster(c: OnPlane, machines: int) -> bool:
    obj = c.get(CAPI, "clusters", NAME)
    ms = c.machines()
    return (
        obj is not None
        and cond.is_true(obj, "Available")
        and len(ms) == machines
        and all((m.get("status") or {}).get("phase") == "Running" for m in ms)
        and all((m.get("status") or {}).get("nodeRef") for m in ms)
    )


def snapshot(c: OnPlane) -> dict[str, Any]:
    """What must survive the move unchanged, read from the plane, libvirt and Ironic."""
    machines = sorted(
        (m["metadata"]["name"], m["spec"].get("providerID"), m["spec"].get("failureDomain"),
         m["spec"]["bootstrap"].get("dataSecretName"), (m.get("status") or {}).get("nodeRef", {}).get("name"))
        for m in c.machines()
    )  # fmt: skip
    infra = {
        o["metadata"]["name"]: (o["spec"]["providerID"], (o.get("status") or {}).get("backend"))
        for o in c.items(INFRA, "c3osmachines")
    }
    secrets = c.core.list_namespaced_secret(NAMESPACE, label_selector=f"{CLUSTER_LABEL}={NAME}").items
    vms = {}
    with c.env.libvirtd.connect() as conn:
        for _, status in infra.values():
            name = ((status or {}).get("libvirt") or {}).get("domainName")
            if name:
                dom = conn.lookupByName(name)
                # A restart changes the id; a second boot prints BOOTED again on the console.
                vms[name] = (dom.UUIDString(), dom.ID(), serial_log(c.env.libvirtd, name).count(BOOTED))
    nodes = {
        n["uuid"]: (n["instance_uuid"], n["allocation_uuid"], n["provision_state"], n["provision_updated_at"])
        for n in c.lab.nodes_of_class(c.rc)
    }
    return {
        "machines": machines,
        "infra": infra,
        "secrets": {s.metadata.name: s.data for s in secrets},
        "vms": vms,
        "nodes": nodes,
        "allocations": sorted((a["uuid"], a["node_uuid"]) for a in c.lab.allocations_for_class(c.rc)),
    }


def test_a_provisioned_cluster_on_the_source(move: Move) -> None:
    c = move.source
    started = time.monotonic()
    eventually(lambda: running_cluster(c, 3), "Cluster Available, 3 Running Machines with Nodes", TIMEOUT, 2,
               explain=c.summary)  # fmt: skip
    print(f"\nmove: {time.monotonic() - started:.0f}s until the source's cluster is Available")
    (metal,) = [m for m in c.workers() if is_metal(m)]
    check_metal_worker(c, c.lab, metal, c.rc)
    move.before = snapshot(c)
    move.domains = set(move.before["vms"])
    assert len(move.domains) == 2 and all(boots == 1 for _, _, boots in move.before["vms"].values())
    assert len(move.before["allocations"]) == 1


def test_clusterctl_move_keeps_everything_and_the_target_adopts(move: Move, tmp_path: Path) -> None:
    assert move.before, "the source never had a provisioned cluster"
    source, target = move.planes
    started = time.monotonic()
    clusterctl(tmp_path, "move", "--kubeconfig", str(source.mgmt.kubeconfig), "-n", NAMESPACE,
               "--to-kubeconfig", str(target.mgmt.kubeconfig))  # fmt: skip
    moved = time.monotonic()
    print(f"\nmove: clusterctl move took {moved - started:.0f}s")

    # The source holds nothing of the cluster any more.
    s = move.source
    assert s.get(CAPI, "clusters", NAME) is None
    assert s.machines() == []
    assert s.items(INFRA, "c3osmachines") == [] and s.items(INFRA, "c3osclusters") == []
    assert s.items(CP, "c3oscontrolplanes") == []
    assert s.core.list_namespaced_secret(NAMESPACE, label_selector=f"{CLUSTER_LABEL}={NAME}").items == []

    # The target's manager adopts: every object of ours Ready for its current generation.
    t = move.target

    def adopted() -> bool:
        ours = [
            *t.items(INFRA, "c3osmachines"),
            *t.items(INFRA, "c3osclusters"),
            *t.items(CP, "c3oscontrolplanes"),
        ]
        return (
            running_cluster(t, 3)
            and len(ours) == 5
            and all(
                cond.is_true(o, "Ready")
                and (o.get("status") or {}).get("observedGeneration") == o["metadata"]["generation"]
                for o in ours
            )
        )

    eventually(adopted, "the target's manager to adopt the cluster", TIMEOUT, 2.0, explain=t.summary)
    print(
        f"move: {time.monotonic() - moved:.0f}s from the move until the target's manager adopted everything"
    )
    control_plane = t.items(CP, "c3oscontrolplanes")[0]
    assert control_plane["status"].get("readyReplicas") == 1

    # Same Machines, providerIDs, bootstrap secrets, domains (never restarted, no second
    # boot), Ironic node and allocation: nothing was reprovisioned.
    after = snapshot(t)
    for what in ("machines", "infra", "secrets", "vms", "nodes", "allocations"):
        assert after[what] == move.before[what], what
    (metal,) = [m for m in t.workers() if is_metal(m)]
    check_metal_worker(t, t.lab, metal, t.rc)


def test_delete_on_the_target_removes_the_machines(move: Move) -> None:
    t = move.target
    assert move.domains, "the source never had a provisioned cluster"
    started = time.monotonic()
    t.api.delete_namespaced_custom_object(*CAPI, NAMESPACE, "clusters", NAME)
    eventually(lambda: t.get(CAPI, "clusters", NAME) is None, "the Cluster gone", TIMEOUT, 2.0,
               explain=t.summary)  # fmt: skip
    print(f"\nmove: {time.monotonic() - started:.0f}s until the target deleted the cluster")
    with t.env.libvirtd.connect() as conn:
        domains = {d.name() for d in conn.listAllDomains(0)}
        pool = conn.storagePoolLookupByName(t.env.libvirtd.pool_name)
        pool.refresh(0)
        volumes = set(pool.listVolumes()) - UPLOADED_VOLUMES
    assert domains & move.domains == set()
    assert {v for v in volumes if v.startswith(f"{NAMESPACE}-")} == set()

    def freed() -> bool:
        return t.lab.allocations_for_class(t.rc) == [] and all(
            n["provision_state"] == "available" and not n["instance_uuid"] for n in t.lab.nodes_of_class(t.rc)
        )

    eventually(freed, "no allocation, the Ironic node available again", 120, 1.0, explain=t.summary)
    assert t.core.list_namespaced_secret(NAMESPACE, label_selector=f"{CLUSTER_LABEL}={NAME}").items == []
