"""In-place A/B upgrade of a bare-metal worker (issue 18, item 5): the real CAPI core
(RuntimeSDK + InPlaceUpdates gates on), our manager (all three providers, serving the
Runtime SDK extension), the real Ironic with fake-hardware nodes, and the k3s stand-in
playing k3s on them (capi_c3os.dev.k3s_ironic: file-level A/B slots per deployed node).

- a MachineDeployment worker on an Ironic node moves to a template of the next release
  (version + image with its `oci`): CAPI asks CanUpdateMachineSet, then UpdateMachine,
  and the node is upgraded in place: the same Machine, the same Ironic node with the same
  instance, allocation and deploy (its provision state never left `active`), the Node on
  the new version from the active slot;
- a `broken-` release: the node falls back to its previous slot (boot-state passive, the
  version before) and the Machine says InPlaceUpdateFailed, with our reason in an Event;
- the C3osMachine pointed by hand at another image: refused (only an image the MachineSet's
  template names is installed), the node stays where it fell back;
- deleting the cluster leaves nothing in Ironic: no allocation, both nodes `available`
  without an instance or our marks.

The one server runs on Ironic too (no VM boots anywhere). Measured on the shared 2-core
machine under heavy load (load average 17 to 70): the test body 155-332 s, of which creating
the cluster 88-224 s, in place 15-25 s, the fallback 16-22 s, deletion
35-49 s; plus the session's Ironic and management plane when it is the first to need them."""

from __future__ import annotations

import time
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest

from capi_c3os.capi.versions import image_tag
from capi_c3os.dev.ironic import IronicServer
from capi_c3os.dev.k3s import K3sStandIn
from capi_c3os.dev.k3s_ironic import IronicMachines, upgrade_image
from capi_c3os.dev.nodeupgrade import REGISTRY
from capi_c3os.dev.processes import free_port
from capi_c3os.workload.client import NodeState, WorkloadClient
from tests.integration.inplace import (
    IN_PROGRESS,
    Machines,
    condition,
    control_plane_spec,
    in_place_update_failures,
    roll_worker,
)
from tests.integration.inplace import create_cluster as create_inplace_cluster
from tests.integration.ironic.lab import CHECKSUM, IronicLab, new_resource_class
from tests.integration.libvirt.conftest import CAPI, INFRA, Capi
from tests.support import eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

NAME = "metal"
OLD = "v1.33.4+k3s1"
NEW = "v1.34.1+k3s1"
SERVER = "v1.34.2+k3s1"  # the control plane is ahead: the worker catches up (version skew policy)
BROKEN = f"{REGISTRY}:broken-{image_tag(SERVER)}"
TIMEOUT = 300  # a safety net: Ironic's fake deploys take seconds, upgrades a few CAPI requeues


def oci(version: str) -> str:
    return f"{REGISTRY}:{image_tag(version)}"


def template(capi: Capi, name: str, resource_class: str, version: str, oci_ref: str) -> None:
    """A machine template of a release: the disk image Ironic deploys (its name says the k3s
    it ships) and the same release as an OCI image (what an in-place upgrade installs)."""
    url = f"http://images.example/c3os-{image_tag(version)}.qcow2"
    capi.create(INFRA, "c3osmachinetemplates", {
        "apiVersion": "/".join(INFRA), "kind": "C3osMachineTemplate", "metadata": {"name": name},
        "spec": {"template": {"spec": {"backend": {"ironic": {"resourceClass": resource_class}},
                                       "image": {"url": url, "checksum": CHECKSUM, "oci": oci_ref}}}},
    })  # fmt: skip


def create_cluster(capi: Capi, ironic: IronicServer, port: int, servers: str, workers: str) -> None:
    """One server (resource class `servers`) and one worker (`workers`), both on Ironic."""
    template(capi, "cp", servers, SERVER, oci(SERVER))
    template(capi, "md-old", workers, OLD, oci(OLD))
    site = {"name": "rack-1", "ironic": {"endpoint": ironic.url}}
    create_inplace_cluster(capi, NAME, port, site, control_plane_spec(SERVER, 1, "cp"), OLD)


IRONIC_FIELDS = ("uuid", "instance_uuid", "allocation_uuid", "provision_state", "provision_updated_at",
                 "instance_info", "extra")  # fmt: skip
"""What an undeploy or a redeploy would change on the node (provision_updated_at: any
provision state change; extra: our deploy-attempt count)."""


class Metal(Machines):
    """The cluster's objects in the management plane, its Nodes in the stand-in, its
    Ironic nodes."""

    def __init__(self, capi: Capi, k3s: K3sStandIn, port: int, lab: IronicLab) -> None:
        super().__init__(capi)
        self.k3s, self.port, self.lab = k3s, port, lab
        self.first_ironic: dict[str, dict[str, Any]] = {}
        self.node_name = ""
        """The worker's Node."""
        self.first_boot_id: str | None = None
        self.upgraded_boot_id: str | None = None

    def up(self) -> dict[str, Any] | None:
        """The worker Machine, once it and the server have Nodes."""
        machines = self.machines()
        if len(machines) != 2 or not all((m.get("status") or {}).get("nodeRef") for m in machines):
            return None
        return self.worker()

    def remember(self, worker: dict[str, Any]) -> None:
        """The Machines and Ironic nodes as first deployed: every upgrade keeps exactly these."""
        self.node_name = worker["status"]["nodeRef"]["name"]
        self.first_machines = self.machine_uids()
        self.first_ironic = self.ironic_nodes()
        assert [n["provision_state"] for n in self.first_ironic.values()] == ["active"] * 2, self.first_ironic
        first = self.node()
        assert booted(first) == (OLD, "active")
        self.first_boot_id = first.boot_id

    def assert_same_machines_and_ironic_nodes(self) -> None:
        assert self.machine_uids() == self.first_machines, "a Machine was made or deleted"
        assert self.ironic_nodes() == self.first_ironic, "an Ironic node was undeployed or deployed again"

    def ironic_nodes(self) -> dict[str, dict[str, Any]]:
        """Machine name -> what Ironic holds of the node under it (its C3osMachine's status
        names the node)."""
        found = {}
        for machine in self.machines():
            infra = self.capi.must_get(INFRA, "c3osmachines", machine["spec"]["infrastructureRef"]["name"])
            node = self.lab.node(infra["status"]["backend"]["ironic"]["nodeUUID"])
            found[machine["metadata"]["name"]] = {k: node[k] for k in IRONIC_FIELDS}
        return found

    def node(self) -> NodeState:
        """The worker's Node, from the workload cluster."""
        standin = self.k3s.cluster("127.0.0.1", self.port)
        assert standin is not None
        client = WorkloadClient(standin.kubeconfig.read_text())
        try:
            node = client.node(self.node_name)
        finally:
            client.close()
        assert node is not None, self.node_name
        return node

    def summary(self) -> str:
        machines = self.update_conditions()
        return f"{machines}\n" + "\n".join(self.k3s.events[-20:])


def booted(node: NodeState) -> tuple[str | None, str | None]:
    """What the node reports: kubeletVersion and Kairos boot-state."""
    return node.kubelet_version, node.labels.get("kairos.io/boot-state")


def test_a_bare_metal_worker_is_upgraded_in_place_on_its_ironic_node_and_a_broken_release_falls_back(
    capi: Capi, ironic_server: IronicServer, extension_manager: None, tmp_path: Path
) -> None:
    marks = [("start", time.monotonic())]
    lab = IronicLab(ironic_server)
    servers, workers = new_resource_class(), new_resource_class()
    enrolled = lab.enroll(1, servers) + lab.enroll(1, workers)
    images = tmp_path / "images"  # the stand-in registry: the releases the worker is offered
    upgrade_image(images / "oci" / image_tag(NEW), NEW)
    upgrade_image(images / "oci" / f"broken-{image_tag(SERVER)}", SERVER, broken=True)
    upgrade_image(images / "oci" / image_tag(SERVER), SERVER)
    port = free_port()
    k3s = K3sStandIn(None, tmp_path / "k3s", endpoints=[("127.0.0.1", port)], images=images)
    k3s.sources.append(IronicMachines(ironic_server))
    metal = Metal(capi, k3s, port, lab)
    k3s.start()
    try:
        create_cluster(capi, ironic_server, port, servers, workers)
        worker = eventually(metal.up, "the server and the worker with Nodes", TIMEOUT, explain=metal.summary)
        metal.remember(worker)
        marks.append(("create", time.monotonic()))
        upgrade_worker(metal, workers)
        marks.append(("in place", time.monotonic()))
        fall_back(metal, workers)
        marks.append(("fallback", time.monotonic()))
        a_hand_fix_is_refused(metal)
        marks.append(("hand fix refused", time.monotonic()))

        # Deletion: nothing left in Ironic.
        capi.delete(CAPI, "clusters", NAME)
        eventually(lambda: not metal.machines(), "every Machine gone", TIMEOUT, explain=metal.summary)
        eventually(lambda: capi.get(CAPI, "clusters", NAME) is None, "the Cluster gone", TIMEOUT)
        assert lab.allocations_for_class(servers) == lab.allocations_for_class(workers) == []
        for node_uuid in enrolled:
            left = lab.node(node_uuid)
            assert left["provision_state"] == "available" and left["instance_uuid"] is None, left
            assert not any(key.startswith("c3os_") for key in left["extra"]), left["extra"]
        marks.append(("delete", time.monotonic()))
        print("\n" + ", ".join(f"{what} {t - marks[i][1]:.0f}s" for i, (what, t) in enumerate(marks[1:])))
    finally:
        if capi.get(CAPI, "clusters", NAME) is not None:  # a failed run: no nodes held for later tests
            with suppress(Exception):
                capi.delete(CAPI, "clusters", NAME)
                eventually(lambda: not metal.machines(), "the cluster deleted after a failure", TIMEOUT)
        k3s.stop()


def upgrade_worker(metal: Metal, workers: str) -> None:
    """The next release's template, the version with it: through CAPI's
    CanUpdateMachineSet / UpdateMachine, on the same node."""
    template(metal.capi, "md-next", workers, NEW, oci(NEW))
    roll_worker(metal.capi, "md-next", NEW)

    def upgraded() -> NodeState | None:
        found = metal.worker()
        if found["spec"]["version"] != NEW or IN_PROGRESS in (found["metadata"].get("annotations") or {}):
            return None
        if condition(found, "UpToDate").get("status") != "True":
            return None
        current = metal.node()
        return current if current.kubelet_version == NEW else None

    after = eventually(upgraded, "the worker upgraded in place", TIMEOUT, explain=metal.summary)
    assert booted(after) == (NEW, "active") and after.boot_id != metal.first_boot_id
    metal.assert_same_machines_and_ironic_nodes()
    infra = metal.capi.must_get(INFRA, "c3osmachines", metal.worker()["spec"]["infrastructureRef"]["name"])
    assert infra["spec"]["image"]["oci"] == oci(NEW)
    metal.upgraded_boot_id = after.boot_id


def fall_back(metal: Metal, workers: str) -> None:
    """A release that does not boot: the node falls back to the slot it ran before."""
    template(metal.capi, "md-broken", workers, SERVER, BROKEN)
    roll_worker(metal.capi, "md-broken", SERVER)
    machine = metal.worker()["metadata"]["name"]
    fell_back = (
        f"node {metal.node_name} fell back to the previous image (boot-state passive): {BROKEN} did not boot"
    )

    def failed() -> bool:
        # CAPI's condition says only that the hook failed; its Event carries our message.
        updating = condition(metal.worker(), "Updating")
        return updating.get("reason") == "InPlaceUpdateFailed" and any(
            fell_back in e for e in in_place_update_failures(metal.capi, machine)
        )

    eventually(failed, "the worker's in-place update failed, with the reason", TIMEOUT, explain=metal.summary)
    fallen = metal.node()
    assert booted(fallen) == (NEW, "passive") and fallen.boot_id != metal.upgraded_boot_id
    metal.assert_same_machines_and_ironic_nodes()


def a_hand_fix_is_refused(metal: Metal) -> None:
    """CAPI (v1.14) keeps asking UpdateMachine for the Machine's own spec once its update
    started. Pointing the C3osMachine by hand at another image does not end it: the
    extension installs only an image the MachineSet's template names (the hand-written
    one would run privileged on the node), says so, and the node stays where it fell back."""
    worker = metal.worker()
    name = worker["metadata"]["name"]
    infra = worker["spec"]["infrastructureRef"]["name"]
    fixed = {"spec": {"image": {"oci": oci(SERVER)}}}
    metal.capi.custom.patch_namespaced_custom_object(
        *INFRA, metal.capi.namespace, "c3osmachines", infra, fixed
    )
    refused = "no template of the machine names"
    eventually(
        lambda: any(refused in e for e in in_place_update_failures(metal.capi, name)),
        "the hand-written image refused", TIMEOUT, explain=metal.summary,
    )  # fmt: skip
    assert booted(metal.node()) == (NEW, "passive"), metal.summary()
    metal.assert_same_machines_and_ironic_nodes()
