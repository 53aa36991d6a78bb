"""Issue 17, phase 2: enrolled hosts are VMs that boot the stand-in registration image
(hack/standin-image.sh register.iso) with the real agent (hack/c3os-agent) in it, in the
private libvirtd's network namespace; they reach the manager's enrollment endpoint (on
the host's loopback) only through a relay at the namespace's bridge address, and pin the
endpoint's CA. Real CAPI core, our manager as a process.

Three hosts enroll (one with the previous token of a rotation); two worker machines
race for one host (exactly one wins) while a third takes another; the claimed hosts
install the stand-in onto their disk, reboot into it and report booted (the machines are
provisioned); a deleted machine's host wipes its disk, boots registration again, enrolls
and is claimed by a new machine (nothing of the old bootstrap data is left on the disk);
once the previous token is revoked, the host that holds it is refused when it registers
again."""

from __future__ import annotations

import base64
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from capi_c3os.dev.enroll_hosts import RELAY_HOST, HostVM, HostVMs, settings_iso
from capi_c3os.dev.k3s import serial_log
from capi_c3os.dev.libvirtd import PrivateLibvirtd
from tests.integration.enrolled.conftest import (
    POOL,
    StartEndpoint,
    enrolled_site,
    host_of,
    host_phase,
    machine_spec,
    new_token,
)
from tests.integration.libvirt.conftest import CAPI, INFRA, Capi, libvirtd, standin_image  # noqa: F401
from tests.support import eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

BOOT = 480  # TCG on a loaded 2-core machine (load 20+ seen): a safety net, not a measurement


def user_data(machine: str) -> bytes:
    """A worker's bootstrap data with a marker that must not outlive its machine."""
    return f"#cloud-config\nhostname: {machine}\n# marker {machine}-{secrets.token_hex(8)}\n".encode()


@pytest.fixture
def hosts(libvirtd: PrivateLibvirtd, standin_image: Path, tmp_path: Path) -> Iterator[HostVMs]:  # noqa: F811
    vms = HostVMs(libvirtd, tmp_path, standin_image / "register.iso")
    try:
        yield vms
    finally:
        vms.stop()


def slot(capi: Capi, vm: HostVM, value: str) -> None:
    """A label of our own on the host (kept by the endpoint), for machines to select."""
    capi.custom.patch_namespaced_custom_object(
        *INFRA, capi.namespace, "c3oshosts", vm.host, {"metadata": {"labels": {"test.c3os.io/slot": value}}}
    )


def select(value: str) -> dict[str, Any]:
    """A machine for the host labelled `value`, installing onto its virtio disk."""
    return machine_spec(
        hostSelector={"matchLabels": {"test.c3os.io/slot": value}}, installDisk={"deviceName": "/dev/vda"}
    )


def claim(capi: Capi, vm: HostVM) -> dict[str, Any]:
    return ((host_of(capi, vm.host) or {}).get("status") or {}).get("claim") or {}


def console(daemon: PrivateLibvirtd, vm: HostVM) -> str:
    return serial_log(daemon, vm.name)


def enrolled(capi: Capi, vm: HostVM, daemon: PrivateLibvirtd) -> None:
    eventually(
        lambda: host_phase(capi, vm.host) == "Available",
        f"{vm.name} enrolled",
        BOOT,
        explain=lambda: console(daemon, vm)[-3000:],
    )


def race(capi: Capi, racers: list[str], spec: dict[str, Any]) -> None:
    """Create the racers' machines at once, one thread each."""
    data = {m: user_data(m) for m in racers}
    gate = threading.Barrier(len(racers))

    def create(name: str) -> None:
        gate.wait()
        capi.create_machine("c", name, spec, data[name])

    threads = [threading.Thread(target=create, args=(m,)) for m in racers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def provisioned(capi: Capi, machine: str, vm: HostVM, daemon: PrivateLibvirtd) -> dict[str, Any]:
    return eventually(
        lambda: capi.provisioned(machine),
        f"{machine} provisioned on {vm.name}",
        BOOT,
        explain=lambda: capi.ready_message(machine) + "\n" + console(daemon, vm)[-3000:],
    )


def test_vm_hosts_enroll_install_reset_and_are_reused(
    capi: Capi,
    start_endpoint: StartEndpoint,
    hosts: HostVMs,
    libvirtd: PrivateLibvirtd,  # noqa: F811
) -> None:
    started = time.monotonic()
    token, previous = new_token(), new_token()
    capi.create_secret("shop-token", {"token": token.encode(), "previous-token": previous.encode()})
    capi.create_cluster("c", enrolled_site("Token"))
    endpoint = start_endpoint(f"--enrollment-name={RELAY_HOST}", "--enrollment-rate=50")
    port = int(endpoint.url.rsplit(":", 1)[1])
    hosts.start_relay(("127.0.0.1", port))

    def settings(secret: str) -> bytes:
        return settings_iso(hosts.url, capi.namespace, POOL, secret, endpoint.ca_pem, poll_seconds=2)

    a = hosts.add("host-a", settings(token))
    b = hosts.add("host-b", settings(token))
    c = hosts.add("host-c", settings(previous))  # the rotation's previous token
    for vm in (a, b, c):
        enrolled(capi, vm, libvirtd)
    facts = host_of(capi, a.host)["status"]["hardware"]  # type: ignore[index]
    assert facts["system"]["uuid"].lower() == a.uuid
    assert [d["name"] for d in facts["disks"] if not d.get("removable")] == ["/dev/vda"]
    for vm, value in ((a, "a"), (b, "b"), (c, "c")):
        slot(capi, vm, value)
    all_enrolled = time.monotonic()

    # Two machines race for host b: exactly one wins; m1 takes host a.
    capi.create_machine("c", "m1", select("a"), user_data("m1"))
    racers = ["m2", "m2x"]
    race(capi, racers, select("b"))
    winner = eventually(lambda: claim(capi, b).get("machine"), "a racer claims host b", 60)
    loser = next(m for m in racers if m != winner)
    eventually(
        lambda: capi.ready(loser).get("reason") == "WaitingForHost", f"{loser} waits for a host", 60,
        explain=lambda: capi.ready_message(loser),
    )  # fmt: skip

    first = provisioned(capi, "m1", a, libvirtd)
    assert first["spec"]["providerID"] == f"c3os://{capi.namespace}/{a.host}/m1"
    provisioned(capi, winner, b, libvirtd)
    assert capi.ready(loser).get("reason") == "WaitingForHost"  # still: the one host went to the winner
    assert claim(capi, b)["machine"] == winner
    # The installed system's own boot reported it (its console: the installed slot).
    assert "root=LABEL=COS_ACTIVE" in console(libvirtd, a)
    marker = user_data_marker(capi, "m1")
    assert marker in a.disk_bytes()  # the check below can fail: the data was on the disk
    installed = time.monotonic()

    # m1 deleted: host a wipes its disk, boots registration, enrolls, serves m3.
    capi.delete(CAPI, "machines", "m1")
    eventually(
        lambda: capi.get(INFRA, "c3osmachines", "m1") is None, "m1 gone after host a's reset", BOOT,
        explain=lambda: console(libvirtd, a)[-3000:],
    )  # fmt: skip
    eventually(lambda: host_phase(capi, a.host) == "Available", "host a back in the pool", BOOT)
    assert marker not in a.disk_bytes()
    capi.create_machine("c", "m3", select("a"), user_data("m3"))
    again = provisioned(capi, "m3", a, libvirtd)
    assert again["spec"]["providerID"] == f"c3os://{capi.namespace}/{a.host}/m3"
    assert marker not in a.disk_bytes()
    reused = time.monotonic()

    # The previous token revoked: host c, registering again (a reboot into registration:
    # its credential was in RAM), is refused and stays as it was.
    before = host_of(capi, c.host)["status"]["credential"]  # type: ignore[index]
    capi.core.patch_namespaced_secret("shop-token", capi.namespace, {"data": {"previous-token": None}})
    hosts.reboot(c)
    eventually(
        lambda: console(libvirtd, c).count("registration into") >= 1, "host c refused", BOOT,
        explain=lambda: console(libvirtd, c)[-3000:],
    )  # fmt: skip
    assert host_of(capi, c.host)["status"]["credential"] == before  # type: ignore[index]
    print(
        f"\nenrolled in {all_enrolled - started:.0f}s, installed+booted in {installed - all_enrolled:.0f}s, "
        f"reset+reused in {reused - installed:.0f}s, total {time.monotonic() - started:.0f}s"
    )


def user_data_marker(capi: Capi, machine: str) -> bytes:
    secret = capi.core.read_namespaced_secret(f"{machine}-bootstrap", capi.namespace)
    value = base64.b64decode(secret.data["value"])
    return value[value.index(b"# marker ") :].strip()
