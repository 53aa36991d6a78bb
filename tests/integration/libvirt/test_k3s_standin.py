"""The k3s stand-in acts on what the VMs really received: machines made by our libvirt
backend boot the self-booting stand-in image from their disk (no directKernelBoot, as a
real c3os qcow2 would), read their config drive, and only what their console shows
drives k3s: yip (Kairos's executor, in the image) pulls the user-data and runs its stages,
and k3s starts from the files it left: the first server's CAs become the cluster's, a
joiner with a token pinned to another CA never joins, a joiner whose document yip will
not apply never starts k3s, each Node reports the k3s version its image ships, a
destroyed VM's Node goes NotReady."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as kc

from capi_c3os.api.bootstrap import C3osConfigSpec
from capi_c3os.api.infrastructure import LibvirtMachine, LibvirtSite, MachineImage, Site
from capi_c3os.backends.base import MachineIdentity, MachineIntent, Phase, SiteCredentials
from capi_c3os.backends.libvirt import LibvirtBackend
from capi_c3os.backends.libvirt import domain as dx
from capi_c3os.bootstrap import tokens
from capi_c3os.bootstrap.certificates import new_ca
from capi_c3os.bootstrap.cloudconfig import ClusterCAs, RenderInput, Role, render_cloud_config
from capi_c3os.dev.k3s import K3sStandIn
from capi_c3os.dev.libvirtd import NETWORK_NAME, PrivateLibvirtd
from capi_c3os.dev.mgmt import api_client
from capi_c3os.dev.processes import free_port
from capi_c3os.dev.workload import CONTROL_PLANE_ROLE
from tests.integration.libvirt.conftest import BOOT_VOLUME, NEXT_BOOT_VOLUME, NEXT_K3S, STANDIN_K3S
from tests.integration.test_workload_standin import admin_kubeconfig
from tests.support import eventually, with_unloadable_stage

pytestmark = pytest.mark.integration

BOOT_TIMEOUT = 300  # TCG on a loaded 2-core machine; a safety net, not a measurement


@pytest.fixture
def backend() -> Iterator[LibvirtBackend]:
    made = LibvirtBackend(serial_log_dir="/var/log/libvirt/qemu")
    yield made
    made.connections.close()


def machine(daemon: PrivateLibvirtd, name: str, user_data: bytes, volume: str = BOOT_VOLUME) -> MachineIntent:
    identity = MachineIdentity("k3s", name, f"c3os://k3s/{name}")
    return MachineIntent(
        identity=identity,
        site=Site(name="lab", libvirt=LibvirtSite(uri=daemon.uri, network=NETWORK_NAME)),
        credentials=SiteCredentials(),
        image=MachineImage(volume=volume),  # boots from its own disk
        cpus=1,
        memory_mib=256,
        disk_gib=1,
        hostname=name,
        user_data=user_data,
        meta_data={"instance-id": identity.uuid, "local-hostname": name, "provider-id": identity.provider_id},
        libvirt=LibvirtMachine(),
    )


def test_k3s_standin_joins_what_the_vms_received(
    libvirtd: PrivateLibvirtd, backend: LibvirtBackend, tmp_path: Path
) -> None:
    port = free_port()
    cas = ClusterCAs(new_ca("server-ca"), new_ca("client-ca"), new_ca("etcd-ca"))
    token = tokens.pinned_token(cas.server.cert_pem, tokens.new_secret())
    rogue = tokens.pinned_token(new_ca("other-ca").cert_pem, tokens.new_secret())

    def user_data(role: Role, name: str, join_token: str) -> bytes:
        inputs = RenderInput(role, C3osConfigSpec(), name, "127.0.0.1", port, join_token, cas)
        return render_cloud_config(inputs).encode()

    # Bootstrap data with a stage yip cannot load (rendering refuses it; a hand-made
    # Secret can carry it): yip keeps the document but runs none of its stages, so no
    # token file is written.
    unapplied = with_unloadable_stage(user_data(Role.AGENT, "unapplied-0", token).decode()).encode()

    machines = [
        machine(libvirtd, "server-0", user_data(Role.INIT_SERVER, "server-0", token)),
        machine(libvirtd, "agent-0", user_data(Role.AGENT, "agent-0", token), NEXT_BOOT_VOLUME),
        machine(libvirtd, "rogue-0", user_data(Role.AGENT, "rogue-0", rogue)),
        machine(libvirtd, "unapplied-0", unapplied),
    ]
    domains = {m.hostname: dx.domain_name(m.identity) for m in machines}
    k3s = K3sStandIn(libvirtd, tmp_path / "k3s", endpoints=[("127.0.0.1", port)]).start()
    try:
        for m in machines:

            def running(m: MachineIntent = m) -> bool:
                return backend.provision(m).phase is Phase.RUNNING

            eventually(running, f"{m.hostname} running")

        def joined() -> bool:
            return all(k3s.node_of(domains[n]) for n in ("server-0", "agent-0"))

        eventually(joined, "server and agent to join", BOOT_TIMEOUT, explain=lambda: "\n".join(k3s.events))
        workload = k3s.cluster("127.0.0.1", port)
        assert workload is not None

        # The cluster serves with the CAs from server-0's user-data: a kubeconfig made
        # from them (as the control-plane provider makes it) works.
        kubeconfig = tmp_path / "admin.kubeconfig"
        kubeconfig.write_text(yaml.safe_dump(admin_kubeconfig(port, cas.server, cas.client)))
        with api_client(kubeconfig) as client:
            core = kc.CoreV1Api(client)
            nodes = {n.metadata.name: n for n in core.list_node().items}
            assert set(nodes) == {"server-0", "agent-0"}
            assert nodes["server-0"].spec.provider_id == "c3os://k3s/server-0"
            assert nodes["agent-0"].spec.provider_id == "c3os://k3s/agent-0"
            assert CONTROL_PLANE_ROLE in nodes["server-0"].metadata.labels
            assert CONTROL_PLANE_ROLE not in nodes["agent-0"].metadata.labels
            assert _ready(nodes["agent-0"]) == "True"
            # k3s comes with the image: each Node runs the version its image ships.
            assert nodes["server-0"].status.node_info.kubelet_version == STANDIN_K3S
            assert nodes["agent-0"].status.node_info.kubelet_version == NEXT_K3S
            core.read_namespaced_secret("k3s-serving", "kube-system")

        # The rogue agent booted and read its drive, but its token pins another CA.
        eventually(
            lambda: any(domains["rogue-0"] in e and "CA hash does not match" in e for e in k3s.events),
            "the refusal of the rogue agent logged", BOOT_TIMEOUT, explain=lambda: "\n".join(k3s.events),
        )  # fmt: skip
        assert k3s.node_of(domains["rogue-0"]) is None
        # Right token, right server, but yip applied none of its stages: k3s has no token file.
        eventually(
            lambda: any(domains["unapplied-0"] in e and "no token file" in e for e in k3s.events),
            "the refusal of the unapplied agent", BOOT_TIMEOUT, explain=lambda: "\n".join(k3s.events),
        )  # fmt: skip
        assert k3s.node_of(domains["unapplied-0"]) is None
        assert "token" in k3s.log_file.read_text()
        assert token not in k3s.log_file.read_text() and rogue not in k3s.log_file.read_text()

        # A destroyed VM stops heartbeating: its Node goes NotReady.
        with libvirtd.connect() as conn:
            conn.lookupByName(domains["agent-0"]).destroy()

        def agent_ready() -> str:
            with api_client(kubeconfig) as client:
                return _ready(kc.CoreV1Api(client).read_node("agent-0"))

        eventually(lambda: agent_ready() == "False", "agent-0 NotReady", explain=agent_ready)
    finally:
        k3s.stop()
        for m in machines:
            backend.deprovision(m.identity, m.site, m.credentials)


def _ready(node: Any) -> str:
    return next((c.status for c in node.status.conditions or [] if c.type == "Ready"), "Unknown")
