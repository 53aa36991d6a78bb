"""Issue 13 on a libvirt site: a machine of another namespace whose spec.providerID names
a victim never starts, adopts or removes the victim's domain and volumes. Our manager
(its generated RBAC, as a process), the real CAPI core manager and the private libvirtd;
the victim's domain is only defined (nothing boots)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from capi_c3os.backends.base import MachineIdentity
from capi_c3os.backends.libvirt import domain as dx
from capi_c3os.dev.libvirtd import PrivateLibvirtd
from capi_c3os.reconcilers.c3osmachine import FINALIZER
from capi_c3os.reconcilers.site_record import SIGNATURE_ANNOTATION, SITE_ANNOTATION
from tests.conftest import RunManager
from tests.integration.libvirt.conftest import INFRA, Capi, claim_with_foreign_provider_id
from tests.integration.libvirt.test_libvirt_machine import domain_names, machine_spec, pool_volumes
from tests.support import eventually

pytestmark = pytest.mark.integration


@pytest.fixture
def victim(capi: Capi, libvirtd: PrivateLibvirtd) -> Iterator[MachineIdentity]:
    """What a machine `victim` of the test namespace left at the site: its tagged domain
    (defined, not running) and its two volumes."""
    identity = MachineIdentity(capi.namespace, "victim", f"c3os://{capi.namespace}/victim")
    tag = dx.tag_xml(dx.Tag(identity.namespace, identity.name, identity.provider_id, f"{capi.namespace}/c"))
    volumes = (dx.disk_volume_name(identity), dx.config_drive_volume_name(identity))
    with libvirtd.connect() as conn:
        pool = conn.storagePoolLookupByName("default")
        for name in volumes:
            pool.createXML(dx.volume_xml(name, 1024 * 1024, "raw"), 0)
        conn.defineXML(
            f"<domain type='qemu'><name>{dx.domain_name(identity)}</name><uuid>{identity.uuid}</uuid>"
            "<memory unit='MiB'>64</memory><os><type>hvm</type></os>"
            f"<metadata>{tag}</metadata></domain>"
        )
    yield identity
    with libvirtd.connect() as conn:
        dom = conn.lookupByName(dx.domain_name(identity))
        if dom.isActive():
            dom.destroy()
        dom.undefine()
        pool = conn.storagePoolLookupByName("default")
        for name in set(volumes) & set(pool.listVolumes()):
            pool.storageVolLookupByName(name).delete(0)


def untouched(libvirtd: PrivateLibvirtd, identity: MachineIdentity) -> None:
    assert dx.domain_name(identity) in domain_names(libvirtd)
    with libvirtd.connect() as conn:
        assert not conn.lookupByName(dx.domain_name(identity)).isActive(), "the victim's domain was started"
    assert {dx.disk_volume_name(identity), dx.config_drive_volume_name(identity)} <= pool_volumes(libvirtd)


def test_another_namespace_cannot_start_adopt_or_remove_a_domain_through_its_provider_id(
    capi: Capi,
    tenant_b: Capi,
    libvirtd: PrivateLibvirtd,
    standin_image: Path,
    victim: MachineIdentity,
    run_manager: RunManager,
    infrastructure_kubeconfig: Path,
) -> None:
    run_manager(
        "infrastructure", infrastructure_kubeconfig, "--namespace", tenant_b.namespace,
        providers="infrastructure", namespace=capi.namespace, log_level="debug",
    ).wait_ready()  # fmt: skip
    site = {"libvirt": {"uri": libvirtd.uri}}
    spec = {**machine_spec(libvirtd, standin_image), "providerID": victim.provider_id}

    # (a) A normal machine in another namespace, named like the victim.
    claim_with_foreign_provider_id(tenant_b, site, spec)
    untouched(libvirtd, victim)

    # (b) A bare C3osMachine with our finalizer and a site record, deleted once seen.
    record = json.dumps({"name": "lab", **site})
    tenant_b.create(INFRA, "c3osmachines", {
        "apiVersion": "/".join(INFRA), "kind": "C3osMachine",
        "metadata": {"name": "victim", "finalizers": [FINALIZER],
                     "annotations": {SITE_ANNOTATION: record, SIGNATURE_ANNOTATION: "v1:" + "0" * 64}},
        "spec": spec,
    })  # fmt: skip
    eventually(lambda: tenant_b.ready("victim"), "the manager to see the bare machine", 60)
    tenant_b.delete(INFRA, "c3osmachines", "victim")
    eventually(lambda: tenant_b.get(INFRA, "c3osmachines", "victim") is None, "bare machine released", 90)
    untouched(libvirtd, victim)
