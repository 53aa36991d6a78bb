"""A C3osMachine becomes a real VM: our manager (infrastructure provider, under its
generated RBAC) with the real CAPI core manager, a private libvirtd + QEMU in a network
namespace, and the stand-in image. Each test boots one small VM (1 vCPU, TCG); every
wait polls the real servers or the serial log, none relies on timing."""

from __future__ import annotations

import base64
import signal
import uuid
from typing import Any

import libvirt  # type: ignore[import-untyped]
import pytest
import yaml

from capi_c3os.api.infrastructure import C3osMachineSpec, Site
from capi_c3os.backends.base import MachineIdentity, MachineIntent, SiteCredentials
from capi_c3os.backends.libvirt import LibvirtBackend
from capi_c3os.backends.libvirt import domain as dx
from capi_c3os.dev.libvirtd import NETWORK_NAME, PrivateLibvirtd
from tests.integration.bootstrap.conftest import (  # noqa: F401 - fixtures used by the C3osConfig test
    bootstrap_kubeconfig,
    start_bootstrap_manager,
)
from tests.integration.libvirt.conftest import (
    BASE_VOLUME,
    BOOTSTRAP,
    CAPI,
    CLUSTER_NAME,
    CONTROL_PLANE,
    CONTROL_PLANE_LABEL,
    INFRA,
    Capi,
    console_blocks,
    serial_log,
)
from tests.support import eventually

pytestmark = pytest.mark.integration

BOOT_TIMEOUT = 240.0
"""Safety net for one TCG boot on a loaded 2-core CI machine (typically 10-20 s)."""

# Bytes a YAML round trip or a text mode would change: a comment, CRLF, trailing spaces,
# non-ASCII, no final newline.
USER_DATA = (
    b"#cloud-config\n# bootstrap data, byte for byte \r\nk3s:\n  enabled: true  \nname: \xc3\xa9t\xc3\xa9"
)


def machine_spec(daemon: PrivateLibvirtd, standin: Any, firmware: str = "bios") -> dict[str, Any]:
    return {
        "backend": {
            "libvirt": {
                "firmware": firmware,
                "directKernelBoot": {
                    "kernel": str(standin / "vmlinuz"),
                    "initrd": str(standin / "initrd.img"),
                    "cmdline": "console=ttyS0 quiet",
                },
            }
        },
        "image": {"volume": BASE_VOLUME},
        "cpus": 1,
        "memoryMiB": 256,
        "diskGiB": 2,
    }


def pool_volumes(daemon: PrivateLibvirtd) -> set[str]:
    with daemon.connect() as conn:
        return set(conn.storagePoolLookupByName("default").listVolumes())


def domain_names(daemon: PrivateLibvirtd) -> list[str]:
    with daemon.connect() as conn:
        return [d.name() for d in conn.listAllDomains(0)]


def delete_cluster_and_wait(capi: Capi, cluster: str, machines: list[str]) -> None:
    capi.delete(CAPI, "clusters", cluster)
    for name in machines:
        eventually(lambda n=name: capi.get(INFRA, "c3osmachines", n) is None, f"C3osMachine {name} gone", 120)  # type: ignore[misc]
    eventually(lambda: capi.get(INFRA, "c3osclusters", cluster) is None, "C3osCluster gone", 120)
    eventually(lambda: capi.get(CAPI, "clusters", cluster) is None, "Cluster gone", 120)


def test_machine_boots_with_its_bootstrap_data_and_capi_links_it(
    capi: Capi, libvirtd: PrivateLibvirtd, standin_image: Any, start_manager: Any
) -> None:
    manager = start_manager()
    manager.wait_ready()
    volumes_before = pool_volumes(libvirtd)
    capi.create_cluster("c1", {"libvirt": {"uri": libvirtd.uri, "network": NETWORK_NAME}})
    capi.create_machine("c1", "worker-0", machine_spec(libvirtd, standin_image), USER_DATA)

    obj = eventually(
        lambda: capi.provisioned("worker-0"),
        "C3osMachine provisioned",
        BOOT_TIMEOUT,
        explain=lambda: capi.ready_message("worker-0"),
    )
    provider_id = f"c3os://{capi.namespace}/worker-0"
    assert obj["spec"]["providerID"] == provider_id
    assert obj["status"]["failureDomain"] == "lab"
    identity = MachineIdentity(capi.namespace, "worker-0", provider_id)
    domain = dx.domain_name(identity)
    status = obj["status"]["backend"]["libvirt"]
    assert {k: status.pop(k) for k in ("domainName", "domainUUID")} == {
        "domainName": domain,
        "domainUUID": identity.uuid,
    }
    # The site's domainType auto: the verdict is here, not in the Ready message CAPI copies.
    assert status.pop("domainType") in ("kvm", "qemu")
    assert status.pop("domainTypeReason").startswith("domainType auto: ")
    assert status == {}
    message = capi.ready_message("worker-0")
    assert message.startswith(f"DomainRunning: domain {domain} is running") and "(" not in message

    # The guest read its config drive: the bootstrap data byte for byte, our meta-data.
    def booted() -> str | None:
        text = serial_log(libvirtd, domain)
        return text if "C3OS-STANDIN READY" in text else None

    log = eventually(
        booted,
        "the stand-in to print its config drive",
        BOOT_TIMEOUT,
        explain=lambda: serial_log(libvirtd, domain)[-2000:],
    )
    blocks = console_blocks(log)
    assert blocks["USER-DATA"] == USER_DATA
    assert yaml.safe_load(blocks["META-DATA"]) == {
        "instance-id": identity.uuid,
        "local-hostname": "worker-0",
        "provider-id": provider_id,
    }
    # The copy-on-write overlay on the 64 MiB base, grown to diskGiB: the guest sees the
    # base's first bytes on a 2 GiB disk.
    assert f"DISK vda SECTORS {2 * 1024**3 // 512} HEAD C3OS-STANDIN-BASE" in log

    # The DHCP lease inside the test's network namespace becomes an address, and CAPI
    # copies providerID and addresses to the Machine.
    guest_ip = next(line.split()[-1] for line in log.splitlines() if "C3OS-STANDIN ADDRESS" in line)

    def machine_linked() -> dict[str, Any] | None:
        machine = capi.get(CAPI, "machines", "worker-0") or {}
        addresses = (machine.get("status") or {}).get("addresses") or []
        ok = (machine.get("spec") or {}).get("providerID") == provider_id and {
            "type": "InternalIP",
            "address": guest_ip,
        } in addresses
        return machine if ok else None

    machine = eventually(machine_linked, "CAPI to copy providerID and addresses to the Machine", 120)
    assert {"type": "Hostname", "address": "worker-0"} in machine["status"]["addresses"]
    assert {"lab"} == {
        d["name"] for d in capi.must_get(INFRA, "c3osclusters", "c1")["status"]["failureDomains"]
    }

    # A domain stopped behind our back is reported (libvirt's lifecycle event wakes the
    # reconcile; the resync is 10 minutes away), and not restarted.
    with libvirtd.connect() as conn:
        conn.lookupByName(domain).destroy()
    eventually(
        lambda: capi.ready_message("worker-0").startswith("DomainStopped: "),
        "Ready=False DomainStopped",
        60,
        explain=lambda: capi.ready_message("worker-0"),
    )
    ready = next(
        c
        for c in capi.must_get(INFRA, "c3osmachines", "worker-0")["status"]["conditions"]
        if c["type"] == "Ready"
    )
    assert ready["status"] == "False" and "destroyed" in ready["message"]

    delete_cluster_and_wait(capi, "c1", ["worker-0"])
    assert domain not in domain_names(libvirtd)
    assert pool_volumes(libvirtd) == volumes_before


def test_manager_killed_while_the_machine_is_created_finishes_it_once_and_deletes_everything(
    capi: Capi, libvirtd: PrivateLibvirtd, standin_image: Any, start_manager: Any
) -> None:
    """kill -9 of the manager as soon as the backend has started work; a new manager
    adopts it: exactly one domain, no orphan volume; UEFI, so deletion must also remove
    the NVRAM file."""
    manager = start_manager("first")
    manager.wait_ready()
    volumes_before = pool_volumes(libvirtd)
    name = f"m-{uuid.uuid4().hex[:4]}"
    capi.create_cluster("c2", {"libvirt": {"uri": libvirtd.uri}})
    capi.create_machine("c2", name, machine_spec(libvirtd, standin_image, firmware="uefi"), USER_DATA)
    identity = MachineIdentity(capi.namespace, name, f"c3os://{capi.namespace}/{name}")
    ours = {dx.disk_volume_name(identity), dx.config_drive_volume_name(identity)}
    eventually(
        lambda: ours & pool_volumes(libvirtd),
        "the backend to start creating volumes",
        BOOT_TIMEOUT,
        every=0.05,
    )
    manager.process.stop(sig=signal.SIGKILL)

    start_manager("second").wait_ready()
    eventually(
        lambda: capi.provisioned(name),
        "provisioned after restart",
        BOOT_TIMEOUT,
        explain=lambda: capi.ready_message(name),
    )
    assert domain_names(libvirtd).count(dx.domain_name(identity)) == 1
    assert pool_volumes(libvirtd) - volumes_before == ours
    nvram = list((libvirtd.root / "lib" / "qemu" / "nvram").glob(f"{dx.domain_name(identity)}*"))
    assert nvram, "a UEFI domain has its NVRAM file"

    delete_cluster_and_wait(capi, "c2", [name])
    assert dx.domain_name(identity) not in domain_names(libvirtd)
    assert pool_volumes(libvirtd) == volumes_before
    assert not any(p.exists() for p in nvram)


def test_bad_input_is_a_readable_condition_and_leaves_nothing(
    capi: Capi, libvirtd: PrivateLibvirtd, standin_image: Any, start_manager: Any
) -> None:
    """An unknown pool and a disk smaller than the image: the reason says what is wrong,
    nothing is created, and deleting the machine still works."""
    start_manager().wait_ready()
    volumes_before = pool_volumes(libvirtd)
    capi.create_cluster("c3", {"libvirt": {"uri": libvirtd.uri, "pool": "no-such-pool"}})
    capi.create_machine("c3", "m-0", machine_spec(libvirtd, standin_image), USER_DATA)

    def reason(name: str) -> str:
        return capi.ready_message(name).split(":")[0]

    eventually(
        lambda: reason("m-0") == "StoragePoolNotFound",
        "StoragePoolNotFound",
        120,
        explain=lambda: capi.ready_message("m-0"),
    )
    assert "no-such-pool" in capi.ready_message("m-0")
    assert pool_volumes(libvirtd) == volumes_before
    delete_cluster_and_wait(capi, "c3", ["m-0"])
    assert pool_volumes(libvirtd) == volumes_before
    with libvirtd.connect() as conn, pytest.raises(libvirt.libvirtError):
        conn.lookupByName(
            dx.domain_name(MachineIdentity(capi.namespace, "m-0", f"c3os://{capi.namespace}/m-0"))
        )


def test_machine_template_reports_capacity_and_tolerates_server_side_apply_dry_run(
    capi: Capi, libvirtd: PrivateLibvirtd, standin_image: Any, start_manager: Any
) -> None:
    """What the autoscaler reads to scale from zero, and what the ClusterClass topology
    controller does to templates (server-side apply, dry run)."""
    start_manager().wait_ready()
    spec = machine_spec(libvirtd, standin_image)
    body = {
        "apiVersion": "/".join(INFRA),
        "kind": "C3osMachineTemplate",
        "metadata": {"name": "workers", "namespace": capi.namespace},
        "spec": {"template": {"spec": spec}},
    }
    capi.create(INFRA, "c3osmachinetemplates", body)

    def status() -> dict[str, Any] | None:
        obj = capi.get(INFRA, "c3osmachinetemplates", "workers") or {}
        return obj.get("status") or None

    assert eventually(status, "template status") == {
        "capacity": {"cpu": "1", "memory": "256Mi"},
        "nodeInfo": {"architecture": "amd64", "operatingSystem": "linux"},
    }
    applied = capi.custom.patch_namespaced_custom_object(
        *INFRA, capi.namespace, "c3osmachinetemplates", "workers", body,
        dry_run="All", field_manager="capi-topology", force=True,
        _content_type="application/apply-patch+yaml",
    )  # fmt: skip
    assert (
        applied["spec"]["template"]["spec"]
        == capi.must_get(INFRA, "c3osmachinetemplates", "workers")["spec"]["template"]["spec"]
    )


def test_cluster_removes_domains_left_by_machines_that_no_longer_exist(
    capi: Capi, libvirtd: PrivateLibvirtd, standin_image: Any, start_manager: Any
) -> None:
    """A C3osMachine whose finalizer was removed by hand leaves its VM behind; the
    cluster's reconcile finds the domain by its tag and removes it with its volumes."""
    volumes_before = pool_volumes(libvirtd)
    site = {"libvirt": {"uri": libvirtd.uri}}
    ghost = MachineIdentity(capi.namespace, "ghost", f"c3os://{capi.namespace}/ghost")
    spec = C3osMachineSpec.model_validate(machine_spec(libvirtd, standin_image))
    backend = LibvirtBackend()
    backend.provision(
        MachineIntent(
            identity=ghost,
            site=Site.model_validate({"name": "lab", **site}),
            credentials=SiteCredentials(),
            image=spec.image,
            cpus=1,
            memory_mib=256,
            disk_gib=2,
            hostname="ghost",
            user_data=b"#cloud-config\n",
            meta_data={"instance-id": ghost.uuid},
            libvirt=spec.backend.libvirt,
            cluster=f"{capi.namespace}/c4",
        )
    )
    backend.connections.close()
    assert dx.domain_name(ghost) in domain_names(libvirtd)

    start_manager().wait_ready()
    capi.create_cluster("c4", site)
    eventually(lambda: dx.domain_name(ghost) not in domain_names(libvirtd), "the orphan domain removed", 120)
    assert pool_volumes(libvirtd) == volumes_before
    delete_cluster_and_wait(capi, "c4", [])


def test_control_plane_machine_boots_with_the_cloud_config_its_c3osconfig_rendered(
    capi: Capi,
    libvirtd: PrivateLibvirtd,
    standin_image: Any,
    start_manager: Any,
    start_bootstrap_manager: Any,  # noqa: F811 - the fixture imported above
) -> None:
    """Machine + C3osConfig + C3osMachine with the real CAPI core and both our providers
    (each under its own RBAC): the VM reads exactly the bootstrap Secret's value."""
    start_manager().wait_ready()
    start_bootstrap_manager("bootstrap").wait_ready()
    capi.create(INFRA, "c3osclusters", {
        "apiVersion": "/".join(INFRA), "kind": "C3osCluster", "metadata": {"name": "c5"},
        "spec": {"controlPlaneEndpoint": {"host": "cp.example.test", "port": 6443},
                 "sites": [{"name": "lab", "libvirt": {"uri": libvirtd.uri}}]},
    })  # fmt: skip
    capi.create(CONTROL_PLANE, "c3oscontrolplanes", {
        "apiVersion": "/".join(CONTROL_PLANE), "kind": "C3osControlPlane", "metadata": {"name": "c5"},
        "spec": {"version": "v1.33.4+k3s1", "replicas": 1, "machineTemplate": {"spec": {"infrastructureRef": {
            "apiGroup": INFRA[0], "kind": "C3osMachineTemplate", "name": "cp"}}}},
    })  # fmt: skip
    capi.create(CAPI, "clusters", {
        "apiVersion": "/".join(CAPI), "kind": "Cluster", "metadata": {"name": "c5"},
        "spec": {
            "infrastructureRef": {"apiGroup": INFRA[0], "kind": "C3osCluster", "name": "c5"},
            "controlPlaneRef": {"apiGroup": CONTROL_PLANE[0], "kind": "C3osControlPlane", "name": "c5"},
        },
    })  # fmt: skip
    labels = {CLUSTER_NAME: "c5"}
    capi.create(BOOTSTRAP, "c3osconfigs", {
        "apiVersion": "/".join(BOOTSTRAP), "kind": "C3osConfig",
        "metadata": {"name": "cp-0", "labels": labels}, "spec": {},
    })  # fmt: skip
    capi.create(INFRA, "c3osmachines", {
        "apiVersion": "/".join(INFRA), "kind": "C3osMachine", "metadata": {"name": "cp-0", "labels": labels},
        "spec": machine_spec(libvirtd, standin_image),
    })  # fmt: skip
    capi.create(CAPI, "machines", {
        "apiVersion": "/".join(CAPI), "kind": "Machine",
        "metadata": {"name": "cp-0", "labels": {**labels, CONTROL_PLANE_LABEL: ""}},
        "spec": {
            "clusterName": "c5",
            "bootstrap": {"configRef": {"apiGroup": BOOTSTRAP[0], "kind": "C3osConfig", "name": "cp-0"}},
            "infrastructureRef": {"apiGroup": INFRA[0], "kind": "C3osMachine", "name": "cp-0"},
        },
    })  # fmt: skip

    eventually(
        lambda: capi.provisioned("cp-0"),
        "provisioned",
        BOOT_TIMEOUT,
        explain=lambda: capi.ready_message("cp-0"),
    )
    machine = capi.must_get(CAPI, "machines", "cp-0")
    secret_name = machine["spec"]["bootstrap"]["dataSecretName"]
    secret = capi.core.read_namespaced_secret(secret_name, capi.namespace)
    rendered = base64.b64decode(secret.data["value"])
    assert rendered.startswith(b"#cloud-config\n")
    identity = MachineIdentity(capi.namespace, "cp-0", f"c3os://{capi.namespace}/cp-0")
    domain = dx.domain_name(identity)

    def booted() -> str | None:
        text = serial_log(libvirtd, domain)
        return text if "C3OS-STANDIN READY" in text else None

    log = eventually(booted, "the stand-in to print its config drive", BOOT_TIMEOUT)
    assert console_blocks(log)["USER-DATA"] == rendered
    assert yaml.safe_load(console_blocks(log)["META-DATA"])["provider-id"] == identity.provider_id
    # Control-plane Machines are the control-plane provider's to delete (not running here).
    capi.delete(CAPI, "machines", "cp-0")
    delete_cluster_and_wait(capi, "c5", ["cp-0"])
    assert domain not in domain_names(libvirtd)
