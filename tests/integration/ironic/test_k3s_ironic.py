"""The k3s stand-in's bare-metal machines (capi_c3os.dev.k3s_ironic): a node deployed by the
backend is up, with what Ironic holds as its config drive (and what yip leaves when it runs
Kairos's boot stages over it), until it is undeployed."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from capi_c3os.api.bootstrap import C3osConfigSpec
from capi_c3os.api.infrastructure import IronicMachine
from capi_c3os.backends.base import Phase
from capi_c3os.backends.ironic import IronicBackend
from capi_c3os.bootstrap import tokens
from capi_c3os.bootstrap.certificates import new_ca
from capi_c3os.bootstrap.cloudconfig import ClusterCAs, RenderInput, Role, render_cloud_config
from capi_c3os.dev.k3s import OEM_USERDATA, K3sStandIn, shipped_k3s_version
from capi_c3os.dev.k3s_ironic import IronicMachines, upgrade_image
from capi_c3os.dev.nodeupgrade import REGISTRY
from capi_c3os.dev.processes import free_port
from capi_c3os.dev.workload import STANDIN_K3S_VERSION
from capi_c3os.workload.client import WorkloadClient
from capi_c3os.workload.upgrade import UpgradeProgress, advance_upgrade
from tests.integration.ironic.lab import IronicLab, drive, new_resource_class
from tests.support import eventually

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not any(shutil.which(t) for t in ("genisoimage", "mkisofs", "xorrisofs")),
        reason="Ironic masters config drives with genisoimage, mkisofs or xorrisofs (apt: xorriso)",
    ),
]


def test_a_deployed_node_is_up_with_its_config_drive_until_undeployed(
    lab: IronicLab, backend: IronicBackend
) -> None:
    rc = new_resource_class()
    (node_uuid,) = lab.enroll(1, rc)
    node_name = lab.node(node_uuid)["name"]
    source = IronicMachines(lab.server)
    assert not [n for n in source.running() if n.startswith(f"ironic/{node_name}/")], "enrolled, not deployed"

    intent = lab.intent("metal-1", IronicMachine(resource_class=rc))
    drive(lambda: backend.provision(intent), {Phase.RUNNING})
    name = f"ironic/{node_name}/{intent.identity.uuid}"
    assert source.running()[name] is True
    received = source.received(name)
    assert received is not None
    assert received["USER-DATA"] == intent.user_data
    meta = json.loads(received["META-DATA"])
    assert (meta["provider-id"], meta["local-hostname"]) == (intent.identity.provider_id, "metal-1")
    # The k3s its image ships: the image URL's name carries none, so the stand-in's default.
    assert shipped_k3s_version(received["KAIROS-RELEASE"].decode()) == STANDIN_K3S_VERSION
    # What k3s starts from: what yip's datasource step and stages left on the machine.
    booted = source.booted(name)
    assert booted is not None and booted.k3s_version == STANDIN_K3S_VERSION
    assert booted.files[OEM_USERDATA] == intent.user_data

    drive(lambda: backend.deprovision(intent.identity, intent.site, intent.credentials), {Phase.DELETED})
    assert name not in source.running()


def test_an_upgrade_job_on_a_bare_metal_node_changes_its_slots_and_nothing_in_ironic(
    lab: IronicLab, backend: IronicBackend, tmp_path: Path
) -> None:
    """The providers' own advance_upgrade against a bare-metal k3s server: done on the new
    slot, the broken image's fallback reported; the Ironic node, its instance and its
    allocation stay the same (no redeploy)."""
    port = free_port()
    cas = ClusterCAs(new_ca("server-ca"), new_ca("client-ca"), new_ca("etcd-ca"))
    token = tokens.pinned_token(cas.server.cert_pem, tokens.new_secret())
    rendered = render_cloud_config(
        RenderInput(Role.INIT_SERVER, C3osConfigSpec(), "metal-1", "127.0.0.1", port, token, cas)
    )
    rc = new_resource_class()
    (node_uuid,) = lab.enroll(1, rc)
    intent = replace(lab.intent("metal-1", IronicMachine(resource_class=rc)), user_data=rendered.encode())
    images = tmp_path / "images" / "oci"
    upgrade_image(images / "k3sv1.34.1-k3s1", "v1.34.1+k3s1")
    upgrade_image(images / "broken-k3sv1.34.2-k3s1", "v1.34.2+k3s1", broken=True)
    k3s = K3sStandIn(None, tmp_path / "k3s", endpoints=[("127.0.0.1", port)], images=tmp_path / "images")
    k3s.sources.append(IronicMachines(lab.server))
    k3s.start()
    try:
        drive(lambda: backend.provision(intent), {Phase.RUNNING})
        ironic_before = {
            k: lab.node(node_uuid)[k] for k in ("instance_uuid", "allocation_uuid", "provision_state")
        }
        machine = f"ironic/{lab.node(node_uuid)['name']}/{intent.identity.uuid}"
        eventually(
            lambda: k3s.node_of(machine) is not None,
            "metal-1 joined",
            60,
            explain=lambda: "\n".join(k3s.events),
        )
        workload = k3s.cluster("127.0.0.1", port)
        assert workload is not None
        client = WorkloadClient(workload.kubeconfig.read_text())

        def upgraded(ref: str, version: str) -> UpgradeProgress:
            def finished() -> UpgradeProgress | None:
                progress = advance_upgrade(client, "metal-1", ref, version)
                return progress if progress.done or progress.failed else None

            return eventually(finished, f"the upgrade to {ref}", 60, explain=lambda: "\n".join(k3s.events))

        before = client.node("metal-1")
        assert before is not None and before.kubelet_version == STANDIN_K3S_VERSION
        assert before.labels["kairos.io/boot-state"] == "active"
        progress = upgraded(f"{REGISTRY}:k3sv1.34.1-k3s1", "v1.34.1+k3s1")
        assert progress.done, progress.message
        after = client.node("metal-1")
        assert (
            after is not None and after.boot_id != before.boot_id and after.kubelet_version == "v1.34.1+k3s1"
        )

        broken = f"{REGISTRY}:broken-k3sv1.34.2-k3s1"
        progress = upgraded(broken, "v1.34.2+k3s1")
        assert (
            progress.message
            == f"node metal-1 fell back to the previous image (boot-state passive): {broken} did not boot"
        )
        fallen = client.node("metal-1")
        assert fallen is not None and fallen.kubelet_version == "v1.34.1+k3s1"
        client.close()
        assert {k: lab.node(node_uuid)[k] for k in ironic_before} == ironic_before
    finally:
        k3s.stop()
        drive(lambda: backend.deprovision(intent.identity, intent.site, intent.credentials), {Phase.DELETED})
