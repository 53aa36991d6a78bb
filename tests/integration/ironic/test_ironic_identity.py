"""Issue 13: one tenant must not touch another tenant's bare-metal node. Our manager (its
generated RBAC, as a process) watching two namespaces, the real CAPI core manager and
the real Ironic: a victim machine is deployed, then another namespace tries to claim it
(a) through a normal Cluster + Machine + C3osMachine whose spec.providerID names the
victim, and (b) through a bare C3osMachine with our finalizer, the victim's providerID
and its site record copied, then deleted. The victim's node stays deployed and its
machine Ready; the attacker's machine says why it is refused and goes away. A record
signed with another key (after `clusterctl move`) is signed again and serves deletion."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as kc

from capi_c3os.backends.base import MachineIdentity
from capi_c3os.dev.ironic import IronicServer
from capi_c3os.dev.manager import Manager
from capi_c3os.manifests import ProviderManifests
from capi_c3os.reconcilers.c3osmachine import FINALIZER
from capi_c3os.reconcilers.site_record import RECORD_KEY_SECRET, SIGNATURE_ANNOTATION, SITE_ANNOTATION
from tests.conftest import RunManager
from tests.integration.ironic.lab import USER_DATA, IronicLab, new_resource_class
from tests.integration.ironic.test_ironic_machine import machine_spec
from tests.integration.libvirt.conftest import CAPI, INFRA, Capi, claim_with_foreign_provider_id
from tests.integration.libvirt.test_libvirt_deletion import remove_c3os_cluster
from tests.support import eventually

pytestmark = pytest.mark.integration


@dataclass
class Victim:
    capi: Capi
    lab: IronicLab
    identity: MachineIdentity
    node_uuid: str
    spec: dict[str, Any]
    manager: Manager

    def untouched(self) -> None:
        node = self.lab.node(self.node_uuid)
        assert node["provision_state"] == "active" and node["instance_uuid"] == self.identity.uuid, node
        assert self.capi.ready("victim")["status"] == "True", self.capi.ready_message("victim")

    def deletes_as_itself(self) -> None:
        self.capi.delete(CAPI, "clusters", "bm")
        eventually(lambda: self.capi.get(INFRA, "c3osmachines", "victim") is None, "victim gone", 180)
        assert self.lab.node(self.node_uuid)["provision_state"] == "available"


@pytest.fixture
def victim(
    capi: Capi,
    tenant_b: Capi,
    ironic_server: IronicServer,
    run_manager: RunManager,
    infrastructure_kubeconfig: Path,
) -> Victim:
    """A deployed machine `victim`, and our manager watching its namespace and tenant-b."""
    lab = IronicLab(ironic_server)
    rc = new_resource_class()
    lab.enroll(2, rc)
    manager = run_manager(
        "infrastructure", infrastructure_kubeconfig, "--namespace", tenant_b.namespace,
        providers="infrastructure", namespace=capi.namespace, log_level="debug",
    ).wait_ready()  # fmt: skip
    capi.create_cluster("bm", {"ironic": {"endpoint": ironic_server.url}})
    capi.create_machine("bm", "victim", machine_spec(rc), USER_DATA)
    obj = eventually(
        lambda: capi.provisioned("victim"),
        "victim provisioned",
        180,
        explain=lambda: capi.ready_message("victim"),
    )
    identity = MachineIdentity(capi.namespace, "victim", f"c3os://{capi.namespace}/victim")
    node_uuid = obj["status"]["backend"]["ironic"]["nodeUUID"]
    return Victim(capi, lab, identity, node_uuid, machine_spec(rc), manager)


def test_a_machine_of_another_namespace_with_the_victims_provider_id_is_refused(
    victim: Victim, tenant_b: Capi, ironic_server: IronicServer
) -> None:
    # (a) A normal machine in another namespace, named like the victim (the API server
    # checks the name part) and with the victim's providerID.
    spec = {**victim.spec, "providerID": victim.identity.provider_id}
    claim_with_foreign_provider_id(tenant_b, {"ironic": {"endpoint": ironic_server.url}}, spec)
    victim.untouched()
    victim.deletes_as_itself()


def test_a_bare_machine_with_the_victims_provider_id_and_site_record_deletes_nothing(
    victim: Victim, tenant_b: Capi
) -> None:
    # (b) A bare C3osMachine with our finalizer, the victim's providerID and its signed
    # site record copied, deleted as soon as the manager has seen it.
    annotations = victim.capi.must_get(INFRA, "c3osmachines", "victim")["metadata"]["annotations"]
    copied = {k: v for k, v in annotations.items() if k in (SITE_ANNOTATION, SIGNATURE_ANNOTATION)}
    assert SITE_ANNOTATION in copied
    tenant_b.create(INFRA, "c3osmachines", {
        "apiVersion": "/".join(INFRA), "kind": "C3osMachine",
        "metadata": {"name": "victim", "finalizers": [FINALIZER], "annotations": copied},
        "spec": {**victim.spec, "providerID": victim.identity.provider_id},
    })  # fmt: skip
    eventually(lambda: tenant_b.ready("victim"), "the manager to see the bare machine", 60)
    tenant_b.delete(INFRA, "c3osmachines", "victim")
    eventually(lambda: tenant_b.get(INFRA, "c3osmachines", "victim") is None, "bare machine released", 120)
    victim.untouched()
    victim.deletes_as_itself()


def test_a_record_signed_with_another_key_is_signed_again_and_serves_the_deletion(
    victim: Victim, k8s: Any, run_manager: RunManager, infrastructure_kubeconfig: Path
) -> None:
    # After `clusterctl move` the target's manager holds another key; played here by a
    # new key Secret under the same manager identity.
    signed = victim.capi.must_get(INFRA, "c3osmachines", "victim")["metadata"]["annotations"]
    assert victim.manager.stop() == 0
    kc.CoreV1Api(k8s).delete_namespaced_secret(
        RECORD_KEY_SECRET, ProviderManifests("infrastructure").namespace
    )
    run_manager(
        "infrastructure-2", infrastructure_kubeconfig, providers="infrastructure",
        namespace=victim.capi.namespace, log_level="debug",
    ).wait_ready()  # fmt: skip

    def signed_again() -> bool:
        now = victim.capi.must_get(INFRA, "c3osmachines", "victim")["metadata"]["annotations"]
        return bool(now[SIGNATURE_ANNOTATION] != signed[SIGNATURE_ANNOTATION])

    eventually(signed_again, "the record signed with the new key", 120)
    victim.untouched()
    # The C3osCluster gone, the machine still finds its node from the record.
    remove_c3os_cluster(victim.capi, "bm")
    victim.deletes_as_itself()
