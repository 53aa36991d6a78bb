"""Volumes left without a domain (a crash between creating a machine's volumes and
defining its domain): decoded back to their machine from their names, and listed for the
cluster's orphan sweep only where no domain exists and the namespace is the cluster's."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from capi_c3os.backends.base import MachineIdentity
from capi_c3os.backends.libvirt import LibvirtBackend
from capi_c3os.backends.libvirt import domain as dx
from tests.unit.conftest import GIB, POOL
from tests.unit.test_libvirt_backend import intent, site


@pytest.mark.parametrize(
    ("namespace", "name"),
    [("ns", "m-0"), ("edge-site-1", "cp-abc.def"), ("a", "b"), ("kube-system", "x-y-z-1")],
)
def test_volume_names_decode_to_their_machine(namespace: str, name: str) -> None:
    identity = MachineIdentity(namespace, name, f"c3os://{namespace}/{name}")
    assert dx.identity_of_volume(dx.disk_volume_name(identity)) == identity
    assert dx.identity_of_volume(dx.config_drive_volume_name(identity)) == identity


@pytest.mark.parametrize(
    "name",
    [
        "ns-m-0-12345678-disk.qcow2",  # the hash does not match
        "standin.qcow2",
        "c3os-base-" + "a" * 32 + ".qcow2",
        "c3os-kvm-probe.img",
        "-disk.qcow2",
        dx.disk_volume_name(MachineIdentity("ns", "x" * 60, "c3os://ns/" + "x" * 60)),  # truncated
        dx.disk_volume_name(MachineIdentity("ns", "m", "custom://id")),  # a providerID of its own
    ],
)
def test_other_volumes_do_not_decode(name: str) -> None:
    assert dx.identity_of_volume(name) is None


def test_volumes_without_a_domain_are_listed_for_their_namespace_only(conn: Any) -> None:
    pool = conn.storagePoolLookupByName(POOL)
    base = f"base-{uuid.uuid4().hex[:8]}.qcow2"
    created = [pool.createXML(dx.volume_xml(base, GIB, "qcow2"), 0)]
    backend = LibvirtBackend()
    namespace = f"ns{uuid.uuid4().hex[:6]}"
    running = intent(base, the_site=site())
    running = type(running)(
        **{**running.__dict__, "identity": MachineIdentity(namespace, "up", f"c3os://{namespace}/up")}
    )
    stranded = MachineIdentity(namespace, "crashed", f"c3os://{namespace}/crashed")
    elsewhere = MachineIdentity("other", "crashed", "c3os://other/crashed")
    try:
        backend.provision(running)  # a domain and its volumes: found by its tag, not here
        for identity in (stranded, elsewhere):
            for name in (dx.disk_volume_name(identity), dx.config_drive_volume_name(identity)):
                created.append(pool.createXML(dx.volume_xml(name, GIB, "qcow2"), 0))
        found = backend.tagged_identities(site(), running.credentials, f"{namespace}/c9")
        assert found == [stranded]
    finally:
        backend.deprovision(running.identity, running.site, running.credentials)
        for vol in created:
            vol.delete(0)
        backend.connections.close()
