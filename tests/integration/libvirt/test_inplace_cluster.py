"""In-place A/B upgrades of a whole cluster on real stand-in VMs (issue 18, item 5): the
real CAPI core (RuntimeSDK + InPlaceUpdates gates on), our manager (all three providers,
serving the Runtime SDK extension) and the k3s stand-in running each upgrade Job on the VM
its Node runs on (`kairos-agent upgrade` into the other slot, reboot, boot assessment).

- a C3osControlPlane with `rollout.strategy.type: InPlace` moves to a template whose
  image carries `oci` of the next stand-in release: every server ends on the new version
  on the same libvirt domain and volume, no Machine made or deleted, status.versions new;
- a MachineDeployment worker is upgraded in place through CAPI's CanUpdateMachineSet /
  UpdateMachine: same domain, the Node's kubeletVersion new, the Machine UpToDate;
- a `broken-` release for the worker and the servers: the VMs that install it fall back
  to their previous slot (boot-state passive, the version before); the worker's Machine
  says InPlaceUpdateFailed, with an Event, the control plane's Ready says the rollout
  stopped and why, after one server;
- deleting the cluster leaves no domain and no volume of its own.

Three servers, as issue 18 asks: measured on the shared 2-core machine (TCG), the module
takes about 365 s with three (create ~110 s, the servers in place ~77 s: one at a time,
never two seen at once; the fallback, a failed boot and a second reboot, ~125 s) against
200 s with one server (and no server fallback); every upgrade is a real reboot of the VM."""

from __future__ import annotations

import json
import time
import xml.etree.ElementTree as ET
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as kc

from capi_c3os.capi.versions import image_tag
from capi_c3os.dev.k3s import K3sStandIn
from capi_c3os.dev.libvirtd import NETWORK_NAME, PrivateLibvirtd
from capi_c3os.dev.mgmt import api_client
from capi_c3os.dev.nodeupgrade import REGISTRY
from capi_c3os.dev.processes import free_port
from capi_c3os.dev.workload import WorkloadStandIn
from capi_c3os.reconcilers.controlplane_context import IN_PLACE_ANNOTATION
from tests.integration.inplace import (
    CP,
    IN_PROGRESS,
    Machines,
    condition,
    control_plane_spec,
    in_place_update_failures,
    roll_worker,
)
from tests.integration.inplace import create_cluster as create_inplace_cluster
from tests.integration.libvirt.conftest import (
    BOOT_VOLUME,
    NEXT_BOOT_VOLUME,
    NEXT_K3S,
    STANDIN_K3S,
    Capi,
)
from tests.support import eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(2400)]

CAPI = ("cluster.x-k8s.io", "v1beta2")
INFRA = ("infrastructure.cluster.x-k8s.io", "v1alpha1")
NAME = "shop"
SERVERS = 3
WORKER_NEXT = "v1.33.6+k3s1"  # the worker's own upgrade: another release than the server's
WORKER_NEXT_VOLUME = f"standin-boot-{image_tag(WORKER_NEXT)}.qcow2"
BROKEN_OCI = f"{REGISTRY}:broken-{image_tag(NEXT_K3S)}"
TIMEOUT = 900  # TCG on a loaded 2-core machine, VM boots and reboots: a safety net only


def oci(version: str) -> str:
    return f"{REGISTRY}:{image_tag(version)}"


def template(capi: Capi, name: str, volume: str, oci_ref: str) -> None:
    """A machine template of a release: the self-booting stand-in volume and the same
    release as an OCI image (what an in-place upgrade installs)."""
    capi.create(INFRA, "c3osmachinetemplates", {
        "apiVersion": "/".join(INFRA), "kind": "C3osMachineTemplate", "metadata": {"name": name},
        "spec": {"template": {"spec": {"backend": {"libvirt": {}}, "cpus": 1, "memoryMiB": 256,
                                       "diskGiB": 1, "image": {"volume": volume, "oci": oci_ref}}}},
    })  # fmt: skip


def create_cluster(
    capi: Capi, libvirtd: PrivateLibvirtd, port: int, strategy: str = "InPlace", workers: int = 1
) -> None:
    """SERVERS servers rolled out by `strategy`, `workers` workers (bench/inplace.py makes
    the same cluster with RollingUpdate and two workers)."""
    template(capi, "cp-old", BOOT_VOLUME, oci(STANDIN_K3S))
    template(capi, "md-old", BOOT_VOLUME, oci(STANDIN_K3S))
    site = {"name": "lab", "libvirt": {"uri": libvirtd.uri, "network": NETWORK_NAME}}
    rollout = {"rollout": {"strategy": {"type": strategy}}}
    control_plane = control_plane_spec(STANDIN_K3S, SERVERS, "cp-old", **rollout)
    create_inplace_cluster(capi, NAME, port, site, control_plane, STANDIN_K3S, workers)


def vms(libvirtd: PrivateLibvirtd) -> dict[str, tuple[str, str]]:
    """Every domain: name -> (UUID, its disk volume's key): the same VMs and disks, or new ones."""
    found = {}
    with libvirtd.connect() as conn:
        for dom in conn.listAllDomains(0):
            source = ET.fromstring(dom.XMLDesc(0)).find("./devices/disk[@device='disk']/source")
            assert source is not None
            found[dom.name()] = (dom.UUIDString(), str(conn.storageVolLookupByPath(source.get("file")).key()))
    return found


def pool_volumes(libvirtd: PrivateLibvirtd) -> set[str]:
    with libvirtd.connect() as conn:
        return set(conn.storagePoolLookupByName("default").listVolumes())


class Shop(Machines):
    """The cluster's objects in the management plane, its Nodes in the stand-in, its VMs."""

    def __init__(self, capi: Capi, k3s: K3sStandIn, port: int, libvirtd: PrivateLibvirtd) -> None:
        super().__init__(capi)
        self.k3s, self.port, self.libvirtd = k3s, port, libvirtd
        self.others = set(vms(libvirtd))
        """Domains of another test, if any: not this cluster's."""
        self.first_vms: dict[str, tuple[str, str]] = {}

    def own_vms(self) -> dict[str, tuple[str, str]]:
        return {k: v for k, v in vms(self.libvirtd).items() if k not in self.others}

    def remember(self) -> None:
        """The Machines and VMs as first made: every upgrade keeps exactly these."""
        self.first_vms, self.first_machines = self.own_vms(), self.machine_uids()
        assert len(self.first_vms) == len(self.first_machines) == SERVERS + 1

    def assert_same_machines_and_vms(self) -> None:
        assert self.machine_uids() == self.first_machines, "a Machine was made or deleted"
        assert self.own_vms() == self.first_vms, "a domain or its volume was made or replaced"

    def control_plane(self) -> dict[str, Any]:
        return self.capi.must_get(CP, "c3oscontrolplanes", NAME)

    def workload(self) -> WorkloadStandIn:
        standin = self.k3s.cluster("127.0.0.1", self.port)
        assert standin is not None
        return standin

    def node(self, name: str) -> Any:
        with api_client(self.workload().kubeconfig) as client:
            return kc.CoreV1Api(client).read_node(name)

    def summary(self) -> str:
        machines = self.update_conditions()
        cp = self.capi.get(CP, "c3oscontrolplanes", NAME) or {}
        status = {k: v for k, v in (cp.get("status") or {}).items() if k != "conditions"}
        ready = condition(cp, "Ready")
        return (
            json.dumps({"machines": machines, "cp": status, "cpReady": ready}, indent=1)
            + "\n"
            + "\n".join(self.k3s.events[-20:])
        )


def booted(node: Any) -> tuple[str, str, str]:
    """What the node reports: kubeletVersion, Kairos boot-state, bootID."""
    labels = node.metadata.labels or {}
    info = node.status.node_info
    return info.kubelet_version, labels.get("kairos.io/boot-state", ""), info.boot_id


def test_a_cluster_is_upgraded_in_place_on_its_vms_and_a_broken_release_falls_back(
    capi: Capi,
    libvirtd: PrivateLibvirtd,
    standin_image: Path,
    extension_manager: None,
    tmp_path: Path,
) -> None:
    marks = [("start", time.monotonic())]
    port = free_port()
    volumes_before = pool_volumes(libvirtd)
    k3s = K3sStandIn(libvirtd, tmp_path / "k3s", endpoints=[("127.0.0.1", port)], images=standin_image)
    shop = Shop(capi, k3s, port, libvirtd)
    k3s.start()
    try:
        create_cluster(capi, libvirtd, port)
        eventually(lambda: up(shop), "servers and the worker Ready with Nodes", TIMEOUT, explain=shop.summary)
        shop.remember()
        for machine in shop.machines():
            assert booted(shop.node(machine["status"]["nodeRef"]["name"]))[:2] == (STANDIN_K3S, "active")
        marks.append(("create", time.monotonic()))
        upgrade_servers(shop)
        marks.append(("servers in place", time.monotonic()))
        node, boot_id = upgrade_worker(shop)
        marks.append(("worker in place", time.monotonic()))
        fall_back(shop, node, boot_id)
        marks.append(("fallback", time.monotonic()))

        # Deletion: nothing left behind.
        capi.delete(CAPI, "clusters", NAME)
        eventually(lambda: not shop.machines(), "every Machine gone", TIMEOUT, explain=shop.summary)
        eventually(lambda: capi.get(CAPI, "clusters", NAME) is None, "the Cluster gone", 300)
        assert shop.own_vms() == {}
        assert pool_volumes(libvirtd) == volumes_before
        marks.append(("delete", time.monotonic()))
        print("\n" + ", ".join(f"{what} {t - marks[i][1]:.0f}s" for i, (what, t) in enumerate(marks[1:])))
    finally:
        if capi.get(CAPI, "clusters", NAME) is not None:  # a failed run: no VMs left to later tests
            with suppress(Exception):
                capi.delete(CAPI, "clusters", NAME)
                eventually(lambda: not shop.machines(), "the cluster deleted after a failure", 300)
        k3s.stop()


def up(shop: Shop) -> bool:
    cp = shop.control_plane().get("status") or {}
    machines = shop.machines()
    return (
        cp.get("readyReplicas") == SERVERS
        and len(machines) == SERVERS + 1
        and all((m.get("status") or {}).get("nodeRef") for m in machines)
    )


def upgrade_servers(shop: Shop) -> None:
    """The control plane: a template of the next release, the version with it."""
    capi = shop.capi
    template(capi, "cp-next", NEXT_BOOT_VOLUME, oci(NEXT_K3S))
    spec = {"version": NEXT_K3S, "machineTemplate": {"spec": {"infrastructureRef": {"name": "cp-next"}}}}
    capi.custom.patch_namespaced_custom_object(*CP, capi.namespace, "c3oscontrolplanes", NAME, {"spec": spec})

    upgrading: list[int] = []

    def servers_upgraded() -> bool:
        machines = shop.machines()
        upgrading.append(
            sum(IN_PLACE_ANNOTATION in (m["metadata"].get("annotations") or {}) for m in machines)
        )
        status = shop.control_plane().get("status") or {}
        return status.get("versions") == [{"version": NEXT_K3S, "replicas": SERVERS}] and (
            status.get("upToDateReplicas") == SERVERS and status.get("readyReplicas") == SERVERS
        )

    eventually(servers_upgraded, "every server upgraded in place", TIMEOUT, explain=shop.summary)
    assert max(upgrading) == 1, "more than one server upgraded at once (or none seen)"
    servers = [m for m in shop.machines() if "pool" not in m["metadata"]["labels"]]
    assert len(servers) == SERVERS
    for machine in servers:
        assert machine["spec"]["version"] == NEXT_K3S
        assert booted(shop.node(machine["status"]["nodeRef"]["name"]))[:2] == (NEXT_K3S, "active")
    shop.assert_same_machines_and_vms()


def upgrade_worker(shop: Shop) -> tuple[str, str]:
    """The worker, through CAPI's CanUpdateMachineSet / UpdateMachine. Returns its Node's
    name and bootID."""
    worker = shop.worker()
    node = worker["status"]["nodeRef"]["name"]
    template(shop.capi, "md-next", WORKER_NEXT_VOLUME, oci(WORKER_NEXT))
    roll_worker(shop.capi, "md-next", WORKER_NEXT)

    def worker_upgraded() -> dict[str, Any] | None:
        found = shop.worker()
        return (
            found
            if found["spec"]["version"] == WORKER_NEXT
            and IN_PROGRESS not in (found["metadata"].get("annotations") or {})
            and condition(found, "UpToDate").get("status") == "True"
            and booted(shop.node(node))[0] == WORKER_NEXT
            else None
        )

    eventually(worker_upgraded, "the worker upgraded in place", TIMEOUT, explain=shop.summary)
    version, state, boot_id = booted(shop.node(node))
    assert (version, state) == (WORKER_NEXT, "active")
    shop.assert_same_machines_and_vms()
    return node, boot_id


def fall_back(shop: Shop, node: str, boot_id: str) -> None:
    """A release that does not boot, for the worker and the servers at once: each VM
    that installs it falls back to the slot it ran before."""
    name = shop.worker()["metadata"]["name"]
    template(shop.capi, "md-broken", NEXT_BOOT_VOLUME, BROKEN_OCI)
    template(shop.capi, "cp-broken", NEXT_BOOT_VOLUME, BROKEN_OCI)
    roll_worker(shop.capi, "md-broken", NEXT_K3S)
    spec = {"machineTemplate": {"spec": {"infrastructureRef": {"name": "cp-broken"}}}}
    shop.capi.custom.patch_namespaced_custom_object(
        *CP, shop.capi.namespace, "c3oscontrolplanes", NAME, {"spec": spec}
    )
    fell_back = "fell back to the previous image (boot-state passive): " + f"{BROKEN_OCI} did not boot"

    def failed() -> bool:
        # CAPI's condition says only that the hook failed; its Event carries our message.
        updating = condition(shop.worker(), "Updating")
        return updating.get("reason") == "InPlaceUpdateFailed" and any(
            f"node {node} {fell_back}" in e for e in in_place_update_failures(shop.capi, name)
        )

    def stopped() -> dict[str, Any] | None:
        ready = condition(shop.control_plane(), "Ready")
        return ready if ready.get("reason") == "InPlaceUpgradeFailed" else None

    eventually(failed, "the worker's in-place update failed, with the reason", TIMEOUT, explain=shop.summary)
    version, state, fallen_boot = booted(shop.node(node))
    assert (version, state) == (WORKER_NEXT, "passive")
    assert fallen_boot != boot_id

    ready = eventually(stopped, "the servers' rollout stopped at the fallback", TIMEOUT, explain=shop.summary)
    assert ready["status"] == "False" and ready["message"].startswith("rollout stopped: "), ready
    assert fell_back in ready["message"], ready
    servers = [m for m in shop.machines() if "pool" not in m["metadata"]["labels"]]
    states = sorted(booted(shop.node(m["status"]["nodeRef"]["name"]))[:2] for m in servers)
    # One server tried it and runs its previous slot; the rollout went no further.
    assert states == [(NEXT_K3S, "active")] * (SERVERS - 1) + [(NEXT_K3S, "passive")], states
    status = shop.control_plane()["status"]
    assert status["versions"] == [{"version": NEXT_K3S, "replicas": SERVERS}]
    shop.assert_same_machines_and_vms()
