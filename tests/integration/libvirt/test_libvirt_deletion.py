"""A C3osMachine's deletion when its C3osCluster is gone (finalizer removed by hand, a
half-done move): our manager, the real CAPI core manager, the private libvirtd. The
machine finds its site from what it recorded before anything was created; a machine
without that record (placed by an older version) says what to do in its Ready
condition (a record written by hand is not trusted), and finishes once its C3osCluster
is back."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from capi_c3os.backends.base import MachineIdentity
from capi_c3os.backends.libvirt import domain as dx
from capi_c3os.dev.libvirtd import PrivateLibvirtd
from capi_c3os.reconcilers.c3osmachine import FINALIZER
from capi_c3os.reconcilers.site_record import SIGNATURE_ANNOTATION, SITE_ANNOTATION
from tests.integration.libvirt.conftest import CAPI, INFRA, Capi
from tests.integration.libvirt.test_libvirt_machine import (
    BOOT_TIMEOUT,
    USER_DATA,
    domain_names,
    machine_spec,
    pool_volumes,
)
from tests.support import eventually

pytestmark = pytest.mark.integration


def ready_reason(capi: Capi, name: str) -> str | None:
    obj = capi.get(INFRA, "c3osmachines", name) or {}
    ready = [c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == "Ready"]
    return ready[0]["reason"] if ready else None


def remove_c3os_cluster(capi: Capi, name: str) -> None:
    """The C3osCluster vanishes with machines left: its finalizer removed by hand."""
    capi.custom.patch_namespaced_custom_object(
        *INFRA, capi.namespace, "c3osclusters", name, {"metadata": {"finalizers": None}}
    )
    capi.delete(INFRA, "c3osclusters", name)
    eventually(lambda: capi.get(INFRA, "c3osclusters", name) is None, "C3osCluster gone", 60)


def test_machine_deletion_finishes_without_its_c3os_cluster(
    capi: Capi, libvirtd: PrivateLibvirtd, standin_image: Any, start_manager: Any
) -> None:
    manager = start_manager("first")
    manager.wait_ready()
    volumes_before = pool_volumes(libvirtd)
    cluster, names = "c-del", [f"m-{uuid.uuid4().hex[:4]}", f"m-{uuid.uuid4().hex[:4]}"]
    capi.create_cluster(cluster, {"libvirt": {"uri": libvirtd.uri}})
    for name in names:
        capi.create_machine(cluster, name, machine_spec(libvirtd, standin_image), USER_DATA)
    objs = [
        eventually(
            lambda n=name: capi.provisioned(n),  # type: ignore[misc]
            f"{name} provisioned",
            BOOT_TIMEOUT,
            explain=lambda n=name: capi.ready_message(n),  # type: ignore[misc]
        )
        for name in names
    ]
    recorded = objs[0]["metadata"]["annotations"][SITE_ANNOTATION]
    assert json.loads(recorded) == {"name": "lab", "controlPlane": True, "libvirt": {
        "uri": libvirtd.uri, "pool": "default", "domainType": "auto"}}  # fmt: skip
    assert objs[0]["metadata"]["annotations"][SIGNATURE_ANNOTATION].startswith("v1:")
    identities = [MachineIdentity(capi.namespace, n, f"c3os://{capi.namespace}/{n}") for n in names]
    assert {dx.domain_name(i) for i in identities} <= set(domain_names(libvirtd))

    # The second machine was placed before sites were recorded (an older version).
    manager.stop()
    capi.custom.patch_namespaced_custom_object(
        *INFRA,
        capi.namespace,
        "c3osmachines",
        names[1],
        {"metadata": {"annotations": {SITE_ANNOTATION: None, SIGNATURE_ANNOTATION: None}}},
    )
    remove_c3os_cluster(capi, cluster)
    for name in names:
        capi.delete(INFRA, "c3osmachines", name)
    start_manager("second").wait_ready()

    # The first finds its site from its record and removes everything.
    eventually(lambda: capi.get(INFRA, "c3osmachines", names[0]) is None, f"{names[0]} gone", 120)
    assert dx.domain_name(identities[0]) not in domain_names(libvirtd)
    assert not {
        dx.disk_volume_name(identities[0]),
        dx.config_drive_volume_name(identities[0]),
    } & pool_volumes(libvirtd)

    # The second cannot know where it is and says what to do, keeping its finalizer.
    eventually(lambda: ready_reason(capi, names[1]) == "SiteUnknown", "SiteUnknown", 60)
    message = capi.ready_message(names[1])
    assert SITE_ANNOTATION in message and "Recreate the Cluster and C3osCluster" in message
    assert FINALIZER in message
    assert dx.domain_name(identities[1]) in domain_names(libvirtd)

    # Told where (the remedy the message names: the C3osCluster back), it finishes.
    capi.create(INFRA, "c3osclusters", {
        "apiVersion": "/".join(INFRA), "kind": "C3osCluster", "metadata": {"name": cluster},
        "spec": {"controlPlaneEndpoint": {"host": "cp.example.test", "port": 6443},
                 "sites": [{"name": "lab", **json.loads(recorded)}]},
    })  # fmt: skip
    eventually(lambda: capi.get(INFRA, "c3osmachines", names[1]) is None, f"{names[1]} gone", 120)
    assert not {dx.domain_name(i) for i in identities} & set(domain_names(libvirtd))
    assert pool_volumes(libvirtd) == volumes_before
    capi.delete(CAPI, "clusters", cluster)
