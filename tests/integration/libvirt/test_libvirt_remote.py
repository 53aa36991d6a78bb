"""Remote libvirt hosts for real: a private libvirtd that listens for `qemu+tls` on
loopback and sits behind a private sshd for `qemu+ssh` (both started by this test run,
with keys and certificates it makes). The backend connects with the credentials a
Secret would hold; the remote side dies and comes back while the backend holds a
connection, and the next reconcile reconnects and converges."""

from __future__ import annotations

import base64
import json
import os
import signal
from pathlib import Path
from typing import Any

import libvirt  # type: ignore[import-untyped]
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from kubernetes import client as kc

from capi_c3os.api.infrastructure import DirectKernelBoot, LibvirtMachine, LibvirtSite, MachineImage, Site
from capi_c3os.backends.base import BackendError, MachineIdentity, MachineIntent, Phase, SiteCredentials
from capi_c3os.backends.libvirt import LibvirtBackend
from capi_c3os.backends.libvirt import domain as dx
from capi_c3os.backends.libvirt.connection import KEEPALIVE_COUNT, KEEPALIVE_INTERVAL
from tests.integration.libvirt.conftest import BASE_VOLUME, CAPI, INFRA, Capi, console_blocks, serial_log
from tests.integration.libvirt.remote import RemoteHost, secret_lines
from tests.integration.libvirt.test_libvirt_machine import (
    BOOT_TIMEOUT,
    USER_DATA,
    domain_names,
    machine_spec,
    pool_volumes,
)
from tests.support import eventually

pytestmark = pytest.mark.integration


def intent(uri: str, credentials: dict[str, bytes], standin: Path, name: str) -> MachineIntent:
    identity = MachineIdentity("remote", name, f"c3os://remote/{name}")
    return MachineIntent(
        identity=identity,
        site=Site(name="edge", libvirt=LibvirtSite(uri=uri)),
        credentials=SiteCredentials(credentials),
        image=MachineImage(volume=BASE_VOLUME),
        cpus=1,
        memory_mib=256,
        disk_gib=1,
        hostname=name,
        user_data=b"#cloud-config\n",
        meta_data={"instance-id": identity.uuid},
        libvirt=LibvirtMachine(
            direct_kernel_boot=DirectKernelBoot(
                kernel=str(standin / "vmlinuz"),
                initrd=str(standin / "initrd.img"),
                cmdline="console=ttyS0 quiet",
            )
        ),
    )


def domains(remote: RemoteHost) -> dict[str, int]:
    """Domain name → state, read over the daemon's own unix socket."""
    with remote.daemon.connect() as conn:
        return {d.name(): d.state()[0] for d in conn.listAllDomains(0)}


def assert_no_secret(remote: RemoteHost, text: str) -> None:
    for material in remote.secrets():
        for line in secret_lines(material):
            assert line not in text


def credential_dirs() -> list[str]:
    return [n for n in os.listdir(os.environ.get("TMPDIR", "/tmp")) if n.startswith("capi-c3os-libvirt-")]


def test_ssh_host_that_dies_and_comes_back_is_reconnected_and_the_machine_converges(
    remote: RemoteHost, standin_image: Path
) -> None:
    backend = LibvirtBackend(serial_log_dir="/var/log/libvirt/qemu")
    machine = intent(remote.sshd.uri, remote.ssh_credentials(), standin_image, "ssh-0")
    name = dx.domain_name(machine.identity)
    site, creds = machine.site.libvirt, machine.credentials
    assert site is not None
    dirs_before = credential_dirs()
    try:
        assert backend.provision(machine).phase is Phase.RUNNING
        # Calls after the domain's lifecycle events arrived on the connection (libvirt's
        # libssh client crashed the process right here; OpenSSH's does not).
        eventually(lambda: domains(remote)[name] == libvirt.VIR_DOMAIN_RUNNING, "the domain running")
        for _ in range(3):
            assert backend.provision(machine).phase is Phase.RUNNING
        assert backend.connections.holds_live(site, creds)
        # The key and known_hosts were on disk only while the connection opened.
        assert credential_dirs() == dirs_before

        remote.sshd.kill()
        # The ssh session's end closes the connection; libvirt's event loop notices.
        eventually(lambda: not backend.connections.holds_live(site, creds), "the dead connection noticed", 60)
        with pytest.raises(BackendError) as down:
            backend.provision(machine)
        assert down.value.reason == "HostUnreachable" and down.value.retry_after is not None
        assert_no_secret(remote, down.value.message)

        remote.sshd.start()
        assert backend.provision(machine).phase is Phase.RUNNING
        assert backend.connections.holds_live(site, creds)
        # Reconnected to the same domain: nothing created twice.
        assert [n for n in domains(remote) if n == name] == [name]
        assert domains(remote)[name] == libvirt.VIR_DOMAIN_RUNNING
    finally:
        backend.deprovision(machine.identity, machine.site, machine.credentials)
        backend.connections.close()
    assert name not in domains(remote)
    assert credential_dirs() == dirs_before


def test_a_libssh_site_is_served_over_openssh_and_survives_repeated_calls(
    remote: RemoteHost, standin_image: Path
) -> None:
    """libvirt 9.0's built-in libssh client crashed this very process within a few calls
    (segfault in its I/O loop); a `qemu+libssh` site is connected through OpenSSH."""
    backend = LibvirtBackend(serial_log_dir="/var/log/libvirt/qemu")
    uri = remote.sshd.uri.replace("qemu+ssh://", "qemu+libssh://")
    machine = intent(uri, remote.ssh_credentials(), standin_image, "libssh-0")
    name = dx.domain_name(machine.identity)
    try:
        assert backend.provision(machine).phase is Phase.RUNNING
        eventually(lambda: domains(remote)[name] == libvirt.VIR_DOMAIN_RUNNING, "the domain running")
        for _ in range(3):
            assert backend.provision(machine).phase is Phase.RUNNING
    finally:
        backend.deprovision(machine.identity, machine.site, machine.credentials)
        backend.connections.close()
    assert name not in domains(remote)

    stranger = intent(uri, remote.ssh_credentials(known_hosts=b""), standin_image, "libssh-1")
    with pytest.raises(BackendError) as err:
        backend.provision(stranger)
    backend.connections.close()
    assert err.value.reason == "HostKeyVerificationFailed", err.value.message
    assert dx.domain_name(stranger.identity) not in domains(remote)


def test_tls_daemon_that_crashes_and_restarts_is_reconnected_and_keeps_the_machine(
    remote: RemoteHost, standin_image: Path
) -> None:
    backend = LibvirtBackend(serial_log_dir="/var/log/libvirt/qemu")
    machine = intent(remote.tls_uri, remote.tls_credentials(), standin_image, "tls-0")
    name = dx.domain_name(machine.identity)
    site, creds = machine.site.libvirt, machine.credentials
    assert site is not None
    try:
        assert backend.provision(machine).phase is Phase.RUNNING
        qemu_before = remote.daemon.leftover_processes()

        remote.daemon.restart()  # SIGKILL, then a new libvirtd in the same namespaces
        eventually(lambda: not backend.connections.holds_live(site, creds), "the dead connection noticed", 60)
        assert backend.provision(machine).phase is Phase.RUNNING
        assert backend.connections.holds_live(site, creds)
        # The guest lived through the daemon's crash and was taken back, not recreated.
        assert remote.daemon.leftover_processes() == qemu_before
        assert domains(remote)[name] == libvirt.VIR_DOMAIN_RUNNING
    finally:
        backend.deprovision(machine.identity, machine.site, machine.credentials)
        backend.connections.close()
    assert name not in domains(remote)


def test_keepalive_drops_a_connection_to_a_frozen_daemon_and_the_next_call_reconnects(
    remote: RemoteHost, standin_image: Path
) -> None:
    """A frozen libvirtd keeps its TCP connection open but answers nothing: only libvirt's
    keepalive (every KEEPALIVE_INTERVAL s, KEEPALIVE_COUNT misses) can tell."""
    backend = LibvirtBackend(serial_log_dir="/var/log/libvirt/qemu")
    machine = intent(remote.tls_uri, remote.tls_credentials(), standin_image, "tls-1")
    site, creds = machine.site.libvirt, machine.credentials
    assert site is not None
    pid = remote.daemon.pid
    assert pid is not None
    try:
        backend.connections.get(site, creds)
        os.kill(pid, signal.SIGSTOP)
        try:
            eventually(
                lambda: not backend.connections.holds_live(site, creds),
                "keepalive to declare the frozen daemon's connection dead",
                KEEPALIVE_INTERVAL * (KEEPALIVE_COUNT + 1) * 4,
            )
        finally:
            os.kill(pid, signal.SIGCONT)
        assert backend.provision(machine).phase is Phase.RUNNING
        assert backend.connections.holds_live(site, creds)
    finally:
        backend.deprovision(machine.identity, machine.site, machine.credentials)
        backend.connections.close()
    assert dx.domain_name(machine.identity) not in domains(remote)


@pytest.mark.parametrize("case", ["unknown-host-key", "changed-host-key", "wrong-ca", "other-pki"])
def test_an_untrusted_remote_host_is_refused_readably_and_nothing_is_created(
    remote: RemoteHost, standin_image: Path, case: str
) -> None:
    if case == "other-pki":
        # Client material from another CA: the daemon's certificate is not trusted.
        creds = remote.tls_credentials(ca=remote.wrong_ca, client=remote.wrong_client)
        uri, credentials, reason = remote.tls_uri, creds, "CertificateVerificationFailed"
    elif case == "wrong-ca":
        uri, credentials, reason = (
            remote.tls_uri,
            remote.tls_credentials(ca=remote.wrong_ca),
            "CertificateVerificationFailed",
        )
    else:
        # An empty known_hosts (host unknown), or one with another key for this host:port.
        other = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH)
        host = remote.sshd.known_hosts.split()[0]
        known_hosts = b"" if case == "unknown-host-key" else host + b" " + other + b"\n"
        uri, credentials, reason = (
            remote.sshd.uri,
            remote.ssh_credentials(known_hosts),
            "HostKeyVerificationFailed",
        )
    backend = LibvirtBackend(serial_log_dir="/var/log/libvirt/qemu")
    machine = intent(uri, credentials, standin_image, f"bad-{case}")
    volumes_before = set(os.listdir(remote.daemon.pool_path))
    dirs_before = credential_dirs()
    try:
        with pytest.raises(BackendError) as err:
            backend.provision(machine)
    finally:
        backend.connections.close()
    assert err.value.reason == reason, err.value.message
    assert err.value.retry_after is not None
    assert uri in err.value.message and "nothing was done" in err.value.message
    assert_no_secret(remote, err.value.message + repr(err.value))
    assert "capi-c3os-libvirt-" not in err.value.message  # no temp paths either
    assert dx.domain_name(machine.identity) not in domains(remote)
    assert set(os.listdir(remote.daemon.pool_path)) == volumes_before
    assert credential_dirs() == dirs_before


def domain_of(capi: Capi, machine: str) -> str:
    return dx.domain_name(MachineIdentity(capi.namespace, machine, f"c3os://{capi.namespace}/{machine}"))


def manager_log(manager: Any) -> str:
    return str(manager.process.log_path.read_text(errors="replace"))


def booted(remote: RemoteHost, domain: str) -> str | None:
    text = serial_log(remote.daemon, domain)
    return text if "C3OS-STANDIN READY" in text else None


def test_sites_over_ssh_and_tls_boot_machines_from_secrets_and_untrusted_hosts_are_refused(
    capi: Capi, remote: RemoteHost, standin_image: Path, start_manager: Any, tmp_path: Path
) -> None:
    """Our manager (a process, under the infrastructure provider's RBAC) reads each site's
    credentials Secret: the trusted SSH and TLS sites boot their machine with its exact
    bootstrap data; an unknown host key and a wrong CA become readable conditions and
    nothing is created; no key material shows anywhere, and none stays on disk."""
    manager_tmp = tmp_path / "manager-tmp"
    manager_tmp.mkdir()
    # A crash in libvirt's C code leaves Python's stacks in the manager's log.
    manager = start_manager(env={"TMPDIR": str(manager_tmp), "PYTHONFAULTHANDLER": "1"})
    manager.wait_ready()
    volumes_before = pool_volumes(remote.daemon)
    capi.create_secret("ssh", remote.ssh_credentials())
    capi.create_secret("ssh-unknown-host", remote.ssh_credentials(known_hosts=b""))
    capi.create_secret("tls", remote.tls_credentials())
    capi.create_secret("tls-wrong-ca", remote.tls_credentials(ca=remote.wrong_ca))
    sites = {
        "via-ssh": (remote.sshd.uri, "ssh"),
        "via-tls": (remote.tls_uri, "tls"),
        "ssh-stranger": (remote.sshd.uri, "ssh-unknown-host"),
        "tls-stranger": (remote.tls_uri, "tls-wrong-ca"),
    }
    for cluster, (uri, secret) in sites.items():
        capi.create_cluster(cluster, {"libvirt": {"uri": uri, "credentialsSecretRef": {"name": secret}}})
        capi.create_machine(cluster, f"{cluster}-0", machine_spec(remote.daemon, standin_image), USER_DATA)

    refused = {
        "ssh-stranger-0": "HostKeyVerificationFailed",
        "tls-stranger-0": "CertificateVerificationFailed",
    }
    for name, reason in refused.items():
        eventually(
            lambda n=name, r=reason: capi.ready_message(n).startswith(f"{r}: "),  # type: ignore[misc]
            f"{name}: Ready=False {reason}",
            120,
            explain=lambda n=name: capi.ready_message(n),  # type: ignore[misc]
        )
        assert "nothing was done there" in capi.ready_message(name)
    for name in ("via-ssh-0", "via-tls-0"):
        eventually(
            lambda n=name: capi.provisioned(n),  # type: ignore[misc]
            f"{name} provisioned",
            BOOT_TIMEOUT,
            explain=lambda n=name: capi.ready_message(n),  # type: ignore[misc]
        )
        domain = domain_of(capi, name)
        log = eventually(
            lambda d=domain: booted(remote, d),  # type: ignore[misc]
            f"{name}: the stand-in to print its config drive",
            BOOT_TIMEOUT,
            explain=lambda d=domain: serial_log(remote.daemon, d)[-2000:],  # type: ignore[misc]
        )
        assert console_blocks(log)["USER-DATA"] == USER_DATA

    # Nothing for the refused machines on the host.
    names = domain_names(remote.daemon)
    for name in refused:
        assert (
            dx.domain_name(MachineIdentity(capi.namespace, name, f"c3os://{capi.namespace}/{name}"))
            not in names
        )

    # No key material in the manager's log, our objects' status or the namespace's events;
    # the credential files lived only while a connection opened.
    events = kc.CoreV1Api(capi.core.api_client).list_namespaced_event(capi.namespace)
    texts = [
        manager.process.log_path.read_text(errors="replace"),
        json.dumps([e.to_dict() for e in events.items], default=str),
    ]
    for plural in ("c3osmachines", "c3osclusters"):
        texts.append(json.dumps(capi.custom.list_namespaced_custom_object(*INFRA, capi.namespace, plural)))
    for text in texts:
        assert_no_secret(remote, text)
    assert [p.name for p in manager_tmp.iterdir() if p.name.startswith("capi-c3os-libvirt-")] == []

    # Deleting waits while the host is untrusted (something of the machine might be there
    # from before the Secret changed); with the Secret corrected it finds nothing to remove.
    for cluster in sites:
        capi.delete(CAPI, "clusters", cluster)
    for name, reason in refused.items():
        marker = f"[{capi.namespace}/{name}] Handler 'reconcile-delete' failed temporarily: {reason}: "
        eventually(
            lambda m=marker: m in manager_log(manager),  # type: ignore[misc]
            f"{name}: deletion waits for a trusted host ({reason})",
            120,
        )
        assert capi.must_get(INFRA, "c3osmachines", name)["metadata"].get("deletionTimestamp")
    for name, data in (
        ("ssh-unknown-host", remote.ssh_credentials()),
        ("tls-wrong-ca", remote.tls_credentials()),
    ):
        capi.core.patch_namespaced_secret(
            name, capi.namespace, {"data": {k: base64.b64encode(v).decode() for k, v in data.items()}}
        )
    for cluster in sites:
        for gv, plural, name in (
            (INFRA, "c3osmachines", f"{cluster}-0"),
            (INFRA, "c3osclusters", cluster),
            (CAPI, "clusters", cluster),
        ):
            eventually(lambda g=gv, p=plural, n=name: capi.get(g, p, n) is None, f"{plural}/{name} gone", 180)  # type: ignore[misc]
    assert pool_volumes(remote.daemon) == volumes_before
    assert set(domain_names(remote.daemon)) & {domain_of(capi, f"{c}-0") for c in sites} == set()
    assert [p.name for p in manager_tmp.iterdir() if p.name.startswith("capi-c3os-libvirt-")] == []
