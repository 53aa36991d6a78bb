"""Issue 17, phase 2: the real host agent (hack/c3os-agent, the built static binary)
against our manager's real enrollment endpoint, the real API server and CAPI core. Its
/proc and /sys are a fake tree (agent.host_tree); its installer and reset commands are
scripts that record what they were given.

A host registers its facts, is claimed by a machine's selector, installs, "reboots"
(the agent exits; started again it is the installed system), boots, and the machine is
Provisioned; deleting the machine resets the host and it is idle again. A revoked token
and an endpoint not signed by the pinned CA get nothing."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from capi_c3os.bootstrap.certificates import new_ca
from capi_c3os.dev import binaries
from capi_c3os.dev.processes import ManagedProcess, free_port
from capi_c3os.dev.relay import Relay
from tests.integration.enrolled.agent import host_tree
from tests.integration.enrolled.conftest import (
    POOL,
    Endpoint,
    StartEndpoint,
    host_of,
    host_phase,
    machine_spec,
    make_site,
)
from tests.integration.enrolled.test_enrolled_machines import wait_reason
from tests.integration.libvirt.conftest import CAPI, INFRA, Capi
from tests.support import eventually

pytestmark = pytest.mark.integration

UUID = "4C4C4544-0031-4A10-8044-B4C04F4A3100"
HOST = "host-" + UUID.lower()
USER_DATA = b"#cloud-config\nhostname: worker\nk3s:\n  args: []\n"

# What the installer and reset command were given, recorded as the test reads them.
RECORDER = """#!/bin/sh
set -e
out="{out}"
mkdir -p "$out"
printf '%s\\n' "$@" > "$out/args"
echo run >> "$out/runs"
env | grep '^C3OS_' | sort > "$out/env"
[ -z "$C3OS_CLOUD_CONFIG" ] || cp "$C3OS_CLOUD_CONFIG" "$out/cloud-config"
[ -z "$C3OS_META_DATA" ] || cp "$C3OS_META_DATA" "$out/meta-data"
stat -c %a "${{C3OS_CLOUD_CONFIG:-/}}" > "$out/mode" 2>/dev/null || true
"""


@dataclass
class Host:
    """One host's world: its fake /proc and /sys, the agent's state directory, the
    registration token and CA files, and the recording installer and reset."""

    root: Path
    token: str
    started: list[ManagedProcess] = field(default_factory=list)
    """Every agent started, stopped when the test ends (a test that fails, or does not
    stop its agent, leaves none polling)."""

    @property
    def state(self) -> Path:
        return self.root / "state"

    def record(self, what: str) -> Path:
        return self.root / "recorded" / what

    def agent(
        self,
        endpoint: Endpoint,
        namespace: str,
        ca_pem: bytes | None = None,
        n: int = 0,
        url: str | None = None,
        prefix: tuple[str, ...] = (),
    ) -> ManagedProcess:
        """The agent, started (after `prefix`); `ca_pem` replaces the endpoint's CA, `url`
        its address."""
        (self.root / "token").write_text(self.token + "\n")
        (self.root / "ca.crt").write_bytes(ca_pem or endpoint.ca_pem)
        for what in ("install", "reset"):
            script = self.root / f"{what}.sh"
            script.write_text(RECORDER.format(out=self.record(what)))
            script.chmod(0o755)
        proc = ManagedProcess(
            f"c3os-agent-{n}",
            [
                *prefix, str(binaries.locate("c3os-agent")), f"--url={url or endpoint.url}",
                f"--namespace={namespace}",
                f"--pool={POOL}", f"--token-file={self.root / 'token'}", f"--ca-file={self.root / 'ca.crt'}",
                f"--state-dir={self.state}", f"--root={self.root / 'tree'}", "--poll-seconds=1",
                f"--install-command={self.root / 'install.sh'} --device {{disk}} {{config}}",
                f"--reset-command={self.root / 'reset.sh'} {{id}}", "--reboot-command=",
            ],
            self.root / f"agent-{n}.log",
        )  # fmt: skip
        self.started.append(proc)
        proc.start()
        return proc

    def log(self) -> str:
        return "".join(p.read_text() for p in sorted(self.root.glob("agent-*.log")))


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    host_tree(tmp_path / "tree", UUID)
    world = Host(tmp_path, "")
    yield world
    for proc in world.started:
        proc.stop()


def registered_agent(
    capi: Capi, start_endpoint: StartEndpoint, host: Host
) -> tuple[Endpoint, ManagedProcess]:
    """A site, the manager's endpoint, and the host's agent once it registered."""
    host.token = make_site(capi)
    endpoint = start_endpoint()
    agent = host.agent(endpoint, capi.namespace)
    eventually(lambda: host_phase(capi, HOST) == "Available", "the host registered", 60, explain=agent.tail)
    return endpoint, agent


def kept_credential(host: Host, claim: str) -> str:
    """The credential the agent kept for the installed system: 0600 in a 0700 directory,
    with the installed claim and without the token."""
    state_file = host.state / "state.json"
    assert stat.S_IMODE(state_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(host.state.stat().st_mode) == 0o700
    state: dict[str, Any] = json.loads(state_file.read_text())
    assert state["installed"] == claim and host.token not in state_file.read_text()
    return str(state["credential"])


def exited(proc: ManagedProcess) -> int | None:
    eventually(lambda: not proc.alive(), f"{proc.name} to exit", 60, explain=proc.tail)
    return proc.stop()


def test_the_agent_registers_its_facts_installs_boots_and_resets_its_host_when_released(
    capi: Capi, start_endpoint: StartEndpoint, host: Host
) -> None:
    endpoint, live = registered_agent(capi, start_endpoint, host)
    registered = host_of(capi, HOST) or {}
    hardware = registered["status"]["hardware"]
    assert hardware["system"]["uuid"] == UUID.lower()
    assert [(d["name"], d.get("removable")) for d in hardware["disks"]] == [
        ("/dev/nvme0n1", False), ("/dev/sda", True),
    ]  # fmt: skip
    assert [n["name"] for n in hardware["nics"]] == ["eno1"]
    labels = registered["metadata"]["labels"]
    assert (labels["host.c3os.io/memory-gib"], labels["host.c3os.io/tpm"]) == ("16", "true")

    selector = {"matchLabels": {"host.c3os.io/memory-gib": "16", "host.c3os.io/tpm": "true"}}
    capi.create_machine("c", "m1", machine_spec(hostSelector=selector), USER_DATA)
    # Installed: the agent reported it and, with no reboot command, exited ("rebooted").
    assert exited(live) == 0
    assert host_phase(capi, HOST) == "Installed"
    claim = (host_of(capi, HOST) or {})["status"]["claim"]["id"]
    assert host.record("install/args").read_text().split("\n")[:2] == ["--device", "/dev/nvme0n1"]
    assert host.record("install/cloud-config").read_bytes() == USER_DATA
    assert host.record("install/mode").read_text().strip() == "600"
    meta = json.loads(host.record("install/meta-data").read_text())
    assert meta["provider-id"] == f"c3os://{capi.namespace}/{HOST}/m1"
    env = host.record("install/env").read_text()
    assert f"C3OS_CLAIM_ID={claim}\n" in env and "C3OS_IMAGE_URL=https://images.example/c3os.iso\n" in env
    # The bootstrap data was only on the host while the installer ran.
    assert not list(host.state.glob("install-*"))

    credential = kept_credential(host, claim)

    # The firmware boots the registration image again (USB first): no booted report, no
    # second install of the claim.
    cmdline = host.root / "tree/proc/cmdline"
    cmdline.write_text("BOOT_IMAGE=/boot/kernel root=live:CDLABEL=COS_LIVE rd.live.dir=/ console=tty1\n")
    again = host.agent(endpoint, capi.namespace, n=1)
    again.wait_until(lambda: f"assignment: install {claim}" in again.tail(), "the live agent polling", 30)
    assert "this is the registration image again" in again.tail()
    assert again.stop() == 0
    assert host_phase(capi, HOST) == "Installed" and host.record("install/runs").read_text() == "run\n"

    cmdline.write_text("BOOT_IMAGE=/boot/vmlinuz console=tty1 root=LABEL=COS_ACTIVE panic=5\n")
    booted = host.agent(endpoint, capi.namespace, n=2)  # the installed system's first boot
    provisioned = eventually(
        lambda: capi.provisioned("m1"), "the machine provisioned", 60, explain=booted.tail
    )
    assert provisioned["spec"]["providerID"] == f"c3os://{capi.namespace}/{HOST}/m1"
    assert capi.ready("m1")["reason"] == "HostBooted"
    assert host_phase(capi, HOST) == "Provisioned"
    assert (host_of(capi, HOST) or {})["status"]["registrations"] == 1  # no second registration

    capi.delete(CAPI, "machines", "m1")
    eventually(
        lambda: capi.get(INFRA, "c3osmachines", "m1") is None, "the machine gone", 60, explain=booted.tail
    )
    assert host.record("reset/args").read_text() == f"{claim}\n"
    assert "C3OS_CLOUD_CONFIG" not in host.record("reset/env").read_text()
    eventually(lambda: host_phase(capi, HOST) == "Available", "the host idle again", 30)
    eventually(lambda: "assignment: wait Idle" in booted.tail(3), "the agent waiting for the next claim", 30)
    assert booted.alive()
    assert json.loads((host.state / "state.json").read_text()).get("installed") is None
    assert booted.stop() == 0  # SIGTERM: a clean exit

    log = host.log()
    assert host.token not in log and credential not in log and "hostname: worker" not in log


def test_a_revoked_token_registers_nothing(capi: Capi, start_endpoint: StartEndpoint, host: Host) -> None:
    make_site(capi)  # the Secret holds only the new token: the host's old one is revoked
    host.token = "the-old-token-rotated-out-0123456789"
    endpoint = start_endpoint()
    agent = host.agent(endpoint, capi.namespace)
    agent.wait_until(lambda: "refused" in agent.tail(), "the registration refused", 60)
    assert "the token is not valid there" in agent.tail()
    assert capi.custom.list_namespaced_custom_object(*INFRA, capi.namespace, "c3oshosts")["items"] == []
    assert not (host.state / "state.json").exists()  # no credential
    assert agent.alive()  # it keeps asking: a token may be valid again (rotated back)
    agent.stop()
    assert host.token not in host.log()


def test_an_endpoint_not_signed_by_the_pinned_ca_gets_no_token(
    capi: Capi, start_endpoint: StartEndpoint, host: Host
) -> None:
    host.token = make_site(capi)
    endpoint = start_endpoint()
    # Pinning: another CA, as if someone else answered at the manager's address.
    agent = host.agent(endpoint, capi.namespace, ca_pem=new_ca("someone else").cert_pem)
    agent.wait_until(lambda: "certificate signed by unknown authority" in agent.tail(), "the TLS refusal", 60)
    assert capi.custom.list_namespaced_custom_object(*INFRA, capi.namespace, "c3oshosts")["items"] == []
    agent.stop()
    assert host.token not in host.log()


FAILING_INSTALLER = """#!/bin/sh
echo "partitioning $C3OS_INSTALL_DISK" >&2
echo "k3s token K10secretvalue rejected" >&2
exit 3
"""


def test_a_missing_disk_and_a_failed_installer_reach_the_machine_without_secrets(
    capi: Capi, start_endpoint: StartEndpoint, host: Host
) -> None:
    _, agent = registered_agent(capi, start_endpoint, host)
    nvme = host.root / "tree/sys/block/nvme0n1"
    target = nvme.readlink()
    nvme.unlink()  # gone since it registered (the endpoint still knows it)
    capi.create_machine("c", "m1", machine_spec(), USER_DATA)
    wait_reason(capi, "m1", "NoMatchingDisk")
    assert "install disk /dev/nvme0n1 not found on this host" in capi.ready_message("m1")
    assert not host.record("install").exists()

    capi.delete(CAPI, "machines", "m1")
    eventually(lambda: capi.get(INFRA, "c3osmachines", "m1") is None, "m1 released", 60, explain=agent.tail)
    nvme.symlink_to(target)
    (host.root / "install.sh").write_text(FAILING_INSTALLER)
    capi.create_machine("c", "m2", machine_spec(), USER_DATA)
    wait_reason(capi, "m2", "InstallFailed")
    message = capi.ready_message("m2")
    assert "install.sh: exit status 3" in message
    assert "K10secretvalue" not in json.dumps(host_of(capi, HOST)) and "K10secretvalue" not in message
    # The host waits (no second try unasked) until its machine is deleted.
    agent.wait_until(lambda: "assignment: wait InstallFailed" in agent.tail(), "the host waiting", 30)


def test_a_host_whose_object_was_deleted_registers_again_with_its_token(
    capi: Capi, start_endpoint: StartEndpoint, host: Host
) -> None:
    _, agent = registered_agent(capi, start_endpoint, host)
    first = json.loads((host.state / "state.json").read_text())["credential"]
    uid = (host_of(capi, HOST) or {})["metadata"]["uid"]
    capi.delete(INFRA, "c3oshosts", HOST)
    eventually(
        lambda: (
            (host_of(capi, HOST) or {}).get("metadata", {}).get("uid") not in (None, uid)
            and host_phase(capi, HOST) == "Available"
        ),
        "the host registered again",
        60,
        explain=agent.tail,
    )
    assert "was refused; registering again" in agent.tail()
    assert json.loads((host.state / "state.json").read_text())["credential"] != first


BRIDGE = "192.168.150.1"
"""The private libvirtd network's bridge address (capi_c3os/dev/libvirtd.py NETWORK_XML)."""


@pytest.fixture
def netns(tmp_path: Path) -> Iterator[ManagedProcess]:
    """A network namespace of the test's own with a bridge at BRIDGE, as the private
    libvirtd's VMs see it (its loopback is not the host's)."""
    ready = tmp_path / "netns-ready"
    script = (
        f"ip link set lo up && ip link add c3os0 type bridge && ip addr add {BRIDGE}/24 dev c3os0 "
        f"&& ip link set c3os0 up && touch {ready} && exec sleep 3600"
    )
    keeper = ManagedProcess("netns", ["unshare", "--net", "sh", "-c", script], tmp_path / "netns.log")
    keeper.start()
    keeper.wait_until(ready.exists, "the namespace's bridge up", 30)
    yield keeper
    keeper.stop()


def test_an_agent_inside_a_network_namespace_registers_through_a_relay_at_its_bridge(
    capi: Capi, start_endpoint: StartEndpoint, host: Host, netns: ManagedProcess
) -> None:
    host.token = make_site(capi)
    endpoint = start_endpoint(f"--enrollment-name={BRIDGE}")
    port = int(endpoint.url.rsplit(":", 1)[1])
    relay_port = free_port()
    enter = ("nsenter", f"--net=/proc/{netns.pid}/ns/net")
    agent = host.agent(endpoint, capi.namespace, url=f"https://{BRIDGE}:{relay_port}", prefix=enter)
    # Inside the namespace nothing listens there yet: the host's endpoint is out of reach.
    agent.wait_until(lambda: "connection refused" in agent.tail(), "the agent refused a connection", 30)
    assert host_of(capi, HOST) is None
    relay = Relay(Path(f"/proc/{netns.pid}/ns/net"), (BRIDGE, relay_port), ("127.0.0.1", port)).start()
    try:
        eventually(
            lambda: host_phase(capi, HOST) == "Available",
            "registered through the relay",
            60,
            explain=agent.tail,
        )
    finally:
        agent.stop()
        relay.stop()
