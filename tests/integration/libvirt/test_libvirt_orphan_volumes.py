"""The cluster's orphan sweep also removes volumes a crash left without a domain, on the
real private libvirtd with our manager: the backend really created a machine's disk
(overlay) and config drive and died before defining its domain; then the C3osMachine was
deleted by hand (finalizer removed). Volumes of a machine that still exists, and
volumes that are not ours, stay."""

from __future__ import annotations

from contextlib import closing
from typing import Any

import pytest

from capi_c3os.api.infrastructure import C3osMachineSpec, Site
from capi_c3os.backends.base import MachineIdentity, MachineIntent, SiteCredentials
from capi_c3os.backends.libvirt import LibvirtBackend
from capi_c3os.backends.libvirt import domain as dx
from capi_c3os.dev.libvirtd import PrivateLibvirtd
from tests.integration.libvirt.conftest import CAPI, CLUSTER_NAME, INFRA, Capi
from tests.integration.libvirt.test_libvirt_machine import machine_spec, pool_volumes
from tests.support import eventually

pytestmark = pytest.mark.integration


class CrashError(Exception):
    pass


def crash_before_the_domain(
    daemon: PrivateLibvirtd, standin: Any, identity: MachineIdentity, cluster: str
) -> None:
    spec = C3osMachineSpec.model_validate(machine_spec(daemon, standin))
    intent = MachineIntent(
        identity=identity,
        site=Site.model_validate({"name": "lab", "libvirt": {"uri": daemon.uri, "domainType": "qemu"}}),
        credentials=SiteCredentials(),
        image=spec.image,
        cpus=1,
        memory_mib=256,
        disk_gib=2,
        hostname=identity.name,
        user_data=b"#cloud-config\n",
        meta_data={"instance-id": identity.uuid},
        libvirt=spec.backend.libvirt,
        cluster=cluster,
    )
    backend = LibvirtBackend()
    with pytest.MonkeyPatch.context() as patch:

        def crash(*_args: Any) -> str:
            raise CrashError

        patch.setattr(dx, "domain_xml", crash)
        with pytest.raises(CrashError):
            backend.provision(intent)
    backend.connections.close()


def test_cluster_removes_volumes_left_without_a_domain_by_machines_that_no_longer_exist(
    capi: Capi, libvirtd: PrivateLibvirtd, standin_image: Any, start_manager: Any
) -> None:
    volumes_before = pool_volumes(libvirtd)
    cluster = "c-vol"
    ghost, alive = (
        MachineIdentity(capi.namespace, n, f"c3os://{capi.namespace}/{n}") for n in ("ghost", "alive")
    )
    for identity in (ghost, alive):
        crash_before_the_domain(libvirtd, standin_image, identity, f"{capi.namespace}/{cluster}")
    volumes = {i: {dx.disk_volume_name(i), dx.config_drive_volume_name(i)} for i in (ghost, alive)}
    assert volumes[ghost] | volumes[alive] <= pool_volumes(libvirtd)
    # Not ours, though named alike (the UUID prefix does not match): must stay.
    lookalike = f"{capi.namespace}-ghost-0badc0de-disk.qcow2"
    with closing(libvirtd.connect()) as conn:
        conn.storagePoolLookupByName("default").createXML(dx.volume_xml(lookalike, 1 << 20, "raw"), 0)
    # "alive" still exists (it waits for a Machine): its volumes are not orphans.
    capi.create(INFRA, "c3osmachines", {
        "apiVersion": "/".join(INFRA), "kind": "C3osMachine",
        "metadata": {"name": "alive", "labels": {CLUSTER_NAME: cluster}},
        "spec": machine_spec(libvirtd, standin_image),
    })  # fmt: skip

    start_manager().wait_ready()
    capi.create_cluster(cluster, {"libvirt": {"uri": libvirtd.uri}})
    eventually(
        lambda: not volumes[ghost] & pool_volumes(libvirtd), "the stranded volumes removed", 120, every=0.5
    )
    left = pool_volumes(libvirtd) - volumes_before
    assert left == volumes[alive] | {lookalike}

    capi.delete(INFRA, "c3osmachines", "alive")  # never placed: no finalizer of ours
    eventually(lambda: capi.get(INFRA, "c3osmachines", "alive") is None, "alive deleted", 60)
    # Any change of the C3osCluster reconciles it (else the periodic resync would).
    capi.custom.patch_namespaced_custom_object(
        *INFRA, capi.namespace, "c3osclusters", cluster, {"metadata": {"annotations": {"touch": "1"}}}
    )
    eventually(
        lambda: not volumes[alive] & pool_volumes(libvirtd), "alive's volumes swept once it is gone", 120
    )
    with closing(libvirtd.connect()) as conn:
        conn.storagePoolLookupByName("default").storageVolLookupByName(lookalike).delete(0)
    assert pool_volumes(libvirtd) == volumes_before
    capi.delete(CAPI, "clusters", cluster)
