"""The node side of an in-place A/B upgrade, on a real stand-in VM, driven by the providers'
own `advance_upgrade` (capi_c3os/workload/upgrade.py): the k3s stand-in runs its upgrade
Job on the VM the Node runs on, the guest's `kairos-agent upgrade` writes the new OS into the
active slot (the old one into passive) and the node reboots into it; a broken image fails
boot assessment and the node falls back to passive, still running the old version; an
unknown image fails the Job; a Job for a node that is not there is never run. The VM, its
disk volume and its libvirt domain are the same objects throughout."""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as kc

from capi_c3os.api.bootstrap import C3osConfigSpec
from capi_c3os.backends.base import MachineIntent, Phase
from capi_c3os.backends.libvirt import LibvirtBackend
from capi_c3os.backends.libvirt import domain as dx
from capi_c3os.bootstrap import tokens
from capi_c3os.bootstrap.certificates import new_ca
from capi_c3os.bootstrap.cloudconfig import ClusterCAs, RenderInput, Role, render_cloud_config
from capi_c3os.dev.k3s import K3sStandIn
from capi_c3os.dev.libvirtd import PrivateLibvirtd
from capi_c3os.dev.nodeupgrade import REGISTRY
from capi_c3os.dev.processes import free_port
from capi_c3os.workload.client import WorkloadClient
from capi_c3os.workload.upgrade import UpgradeProgress, advance_upgrade, upgrade_job
from tests.integration.libvirt.conftest import STANDIN_K3S
from tests.integration.libvirt.test_k3s_standin import backend, machine  # noqa: F401  (fixture)
from tests.support import eventually

pytestmark = pytest.mark.integration

BOOT_TIMEOUT = 400  # TCG on a loaded 2-core machine, a reboot or two: a safety net only


def first_server(libvirtd: PrivateLibvirtd, port: int) -> MachineIntent:
    """A machine whose bootstrap data makes it the first k3s server of a new cluster."""
    cas = ClusterCAs(new_ca("server-ca"), new_ca("client-ca"), new_ca("etcd-ca"))
    token = tokens.pinned_token(cas.server.cert_pem, tokens.new_secret())
    rendered = render_cloud_config(
        RenderInput(Role.INIT_SERVER, C3osConfigSpec(), "server-0", "127.0.0.1", port, token, cas)
    )
    return machine(libvirtd, "server-0", rendered.encode())


def upgraded(client: WorkloadClient, image: str, version: str, explain: Callable[[], str]) -> UpgradeProgress:
    """What the providers do (capi_c3os/workload/upgrade.py advance_upgrade, called again
    and again as a reconcile would) until the upgrade of server-0 is done or failed."""

    def finished() -> UpgradeProgress | None:
        progress = advance_upgrade(client, "server-0", image, version)
        return progress if progress.done or progress.failed else None

    return eventually(finished, f"the upgrade to {image}", BOOT_TIMEOUT, explain=explain)


def test_upgrade_job_writes_the_other_slot_reboots_and_falls_back_from_a_broken_image(
    libvirtd: PrivateLibvirtd,
    backend: LibvirtBackend,  # noqa: F811  (the fixture imported above)
    standin_image: Path,
    tmp_path: Path,
) -> None:
    port = free_port()
    intent = first_server(libvirtd, port)
    domain = dx.domain_name(intent.identity)
    k3s = K3sStandIn(libvirtd, tmp_path / "k3s", endpoints=[("127.0.0.1", port)], images=standin_image)
    k3s.start()

    def explain() -> str:
        return "\n".join(k3s.events)

    try:
        eventually(lambda: backend.provision(intent).phase is Phase.RUNNING, "server-0 running")
        eventually(lambda: k3s.node_of(domain) is not None, "server-0 joined", BOOT_TIMEOUT, explain=explain)
        workload = k3s.cluster("127.0.0.1", port)
        assert workload is not None
        identity = vm_identity(libvirtd, domain)
        client = WorkloadClient(workload.kubeconfig.read_text())
        core, batch = kc.CoreV1Api(client._api), kc.BatchV1Api(client._api)
        before = core.read_node("server-0")
        assert before.status.node_info.kubelet_version == STANDIN_K3S
        assert kairos_labels(before) == ("active", "v1.33.4-k3s1", "v3.5.3-c3os-standin")

        # A Job pinned to a node this cluster does not have: never run.
        stray = upgrade_job("elsewhere-0", f"{REGISTRY}:k3sv1.34.1-k3s1", "")
        batch.create_namespaced_job("kube-system", stray)

        # The upgrade: the node comes back from the new slot with the new version.
        started = time.monotonic()
        progress = upgraded(client, f"{REGISTRY}:k3sv1.34.1-k3s1", "v1.34.1+k3s1", explain)
        upgrade_seconds = time.monotonic() - started
        assert progress.done, progress.message
        after = core.read_node("server-0")
        assert after.status.node_info.boot_id != before.status.node_info.boot_id
        assert after.status.node_info.kubelet_version == "v1.34.1+k3s1"
        assert kairos_labels(after) == ("active", "v1.34.1-k3s1", "v3.5.3-c3os-standin")

        # A broken image: written and booted once, it does not come up; boot assessment
        # boots passive, which holds what ran before it: v1.34.1.
        image = f"{REGISTRY}:broken-k3sv1.33.6-k3s1"
        progress = upgraded(client, image, "v1.33.6+k3s1", explain)
        assert progress.failed
        assert progress.message == (
            f"node server-0 fell back to the previous image (boot-state passive): {image} did not boot"
        )
        fallen = core.read_node("server-0")
        assert fallen.status.node_info.boot_id != after.status.node_info.boot_id
        assert fallen.status.node_info.kubelet_version == "v1.34.1+k3s1"
        assert kairos_labels(fallen) == ("passive", "v1.34.1-k3s1", "v3.5.3-c3os-standin")
        console = (libvirtd.qemu_log_dir / f"{domain}-serial.log").read_text(errors="replace")
        assert "C3OS-STANDIN BROKEN IMAGE" in console and "upgrade_failure" in console

        # An image the registry does not have: the Job fails, the node is left alone.
        image = f"{REGISTRY}:k3sv9.9.9-k3s1"
        progress = upgraded(client, image, "v9.9.9+k3s1", explain)
        assert progress.failed and f'Failed to pull image "{image}": not found' in progress.message
        assert core.read_node("server-0").status.node_info.boot_id == fallen.status.node_info.boot_id

        assert not batch.read_namespaced_job(stray["metadata"]["name"], "kube-system").status.start_time
        client.close()

        assert vm_identity(libvirtd, domain) == identity  # the same VM and disk throughout
        print(f"\nupgrade started -> node Ready on the new slot (judged done): {upgrade_seconds:.1f}s")
    finally:
        k3s.stop()
        backend.deprovision(intent.identity, intent.site, intent.credentials)


def kairos_labels(node: Any) -> tuple[str, str, str]:
    """What the node labeler reported: boot-state, software-version, version."""
    labels = node.metadata.labels
    version = node.metadata.annotations["kairos.io/version"]
    return labels["kairos.io/boot-state"], labels["kairos.io/software-version"], version


def vm_identity(libvirtd: PrivateLibvirtd, domain: str) -> tuple[str, str]:
    """The domain's UUID and its disk volume's key: the same VM and disk, or a new one."""
    with libvirtd.connect() as conn:
        dom = conn.lookupByName(domain)
        source = ET.fromstring(dom.XMLDesc(0)).find("./devices/disk[@device='disk']/source")
        assert source is not None
        return dom.UUIDString(), str(conn.storageVolLookupByPath(source.get("file")).key())


def _ready(node: Any) -> str:
    return next((c.status for c in node.status.conditions or [] if c.type == "Ready"), "Unknown")
