"""Static spec.network and guest-agent address discovery for real: the stand-in guest
applies the static IPv4 address its config drive gives its NIC (by MAC) on a libvirt
network without DHCP, and the backend learns that address from the QEMU guest agent
in the stand-in (libvirt's own parser of the agent's answer), not from a lease: the
network has no DHCP, so no lease exists. Everything runs in the private libvirtd
inside the test run's network namespace.

With a second NIC on the DHCP network, both sources are needed: the lease for that NIC,
the agent for the static one; the backend reports both."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import closing
from dataclasses import replace
from pathlib import Path
from typing import Any

import libvirt  # type: ignore[import-untyped]
import libvirt_qemu  # type: ignore[import-untyped]
import pytest

from capi_c3os.api.common import MachineAddress
from capi_c3os.api.infrastructure import LibvirtNetworkInterface, MachineImage, MachineNetwork
from capi_c3os.backends.base import Phase
from capi_c3os.backends.libvirt import LibvirtBackend
from capi_c3os.backends.libvirt import domain as dx
from capi_c3os.backends.libvirt.backend import _addresses
from capi_c3os.dev.libvirtd import NETWORK_NAME, PrivateLibvirtd
from tests.integration.libvirt.conftest import BASE_VOLUME, serial_log
from tests.integration.libvirt.test_libvirt_backend_daemon import intent
from tests.support import eventually

pytestmark = pytest.mark.integration

BOOT_TIMEOUT = 240.0  # TCG on a loaded 2-core machine; a safety net, not a measurement
STATIC = "c3os-static"
STATIC_XML = f"""<network>
  <name>{STATIC}</name>
  <bridge name='c3osbr8' stp='off'/>
  <ip address='192.168.158.1' netmask='255.255.255.0'/>
</network>"""
ADDRESS, GATEWAY = "192.168.158.20", "192.168.158.1"


@pytest.fixture
def static_network(libvirtd: PrivateLibvirtd) -> Iterator[str]:
    """An isolated network without DHCP (so no lease can exist) in the daemon's netns."""
    with closing(libvirtd.connect()) as conn:
        net = conn.networkCreateXML(STATIC_XML)  # transient: gone when destroyed
        try:
            yield STATIC
        finally:
            net.destroy()


def agent_interfaces(dom: libvirt.virDomain) -> dict[str, Any] | None:
    """What libvirt parsed from the agent's guest-network-get-interfaces, once it answers."""
    try:
        return dom.interfaceAddresses(libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT, 0) or None
    except libvirt.libvirtError:  # agent not connected yet
        return None


@pytest.mark.parametrize("layout", ["nocloud", "configdrive"])
def test_static_address_is_applied_and_reported_by_the_guest_agent(
    libvirtd: PrivateLibvirtd, standin_image: Path, static_network: str, layout: str
) -> None:
    base = intent(libvirtd, standin_image, f"agent-{layout}", MachineImage(volume=BASE_VOLUME))
    assert base.libvirt is not None
    machine = replace(
        base,
        network=MachineNetwork.model_validate(
            {"interfaces": [{"addresses": [f"{ADDRESS}/24"], "gateway4": GATEWAY}]}
        ),
        libvirt=base.libvirt.model_copy(
            update={
                "network_interfaces": [LibvirtNetworkInterface(network=static_network)],
                "config_drive_format": layout,
            }
        ),
    )
    domain = dx.domain_name(machine.identity)
    mac = dx.mac_address(machine.identity, 0)
    backend = LibvirtBackend()
    try:
        assert backend.provision(machine).phase is Phase.RUNNING

        def ready() -> str | None:
            text = serial_log(libvirtd, domain)
            return text if "C3OS-STANDIN READY" in text else None

        log = eventually(
            ready,
            "the stand-in to apply its network settings",
            BOOT_TIMEOUT,
            explain=lambda: serial_log(libvirtd, domain)[-2000:],
        )
        assert "----- BEGIN NETWORK-CONFIG -----" in log
        assert f"C3OS-STANDIN STATIC eth0 {ADDRESS}/24 GATEWAY {GATEWAY}" in log
        assert "udhcpc" not in log and "C3OS-STANDIN ADDRESS" not in log  # no DHCP asked

        with closing(libvirtd.connect()) as conn:
            dom = conn.lookupByName(domain)
            parsed = eventually(
                lambda: agent_interfaces(dom),
                "the guest agent to answer",
                BOOT_TIMEOUT,
                explain=lambda: serial_log(libvirtd, domain)[-2000:],
            )
            nic = next(info for info in parsed.values() if info["hwaddr"] == mac)
            assert {"type": libvirt.VIR_IP_ADDR_TYPE_IPV4, "addr": ADDRESS, "prefix": 24} in nic["addrs"]
            assert "lo" in parsed  # real data from the guest, not an echo of our settings

            # The raw answer, through libvirt's agent pass-through: the same data.
            raw = json.loads(
                libvirt_qemu.qemuAgentCommand(dom, '{"execute":"guest-network-get-interfaces"}', 30, 0)
            )
            by_name = {entry["name"]: entry for entry in raw["return"]}
            assert set(by_name) == set(parsed)
            name = next(n for n, info in parsed.items() if info["hwaddr"] == mac)
            assert by_name[name]["hardware-address"] == mac
            v4 = {"ip-address-type": "ipv4", "ip-address": ADDRESS, "prefix": 24}
            assert v4 in by_name[name]["ip-addresses"]
            with pytest.raises(libvirt.libvirtError, match="has not been found"):
                libvirt_qemu.qemuAgentCommand(dom, '{"execute":"guest-shutdown"}', 30, 0)

            # No lease exists for the MAC (the network has no DHCP): the backend's address
            # discovery found it through the agent.
            leases = dom.interfaceAddresses(libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE, 0)
            assert not any(info["addrs"] for info in leases.values())
            assert _addresses(dom) == {mac: [MachineAddress(type="InternalIP", address=ADDRESS)]}

        progress = backend.provision(machine)
        assert progress.phase is Phase.RUNNING and progress.reason == "DomainRunning"
        assert MachineAddress(type="InternalIP", address=ADDRESS) in progress.addresses
    finally:
        backend.deprovision(machine.identity, machine.site, machine.credentials)
        backend.connections.close()


def leased(dom: libvirt.virDomain, mac: str) -> str | None:
    """The address the DHCP network leased to the NIC with `mac`, once it did."""
    leases = dom.interfaceAddresses(libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE, 0)
    for info in leases.values():
        if info["hwaddr"] == mac and info["addrs"]:
            return str(info["addrs"][0]["addr"])
    return None


def test_a_leased_nic_and_a_static_nic_known_only_to_the_agent_are_both_reported(
    libvirtd: PrivateLibvirtd, standin_image: Path, static_network: str
) -> None:
    base = intent(libvirtd, standin_image, "agent-lease", MachineImage(volume=BASE_VOLUME))
    assert base.libvirt is not None
    machine = replace(
        base,
        network=MachineNetwork.model_validate(
            {"interfaces": [{"addresses": [f"{ADDRESS}/24"]}, {"dhcp4": True}]}
        ),
        libvirt=base.libvirt.model_copy(
            update={
                "network_interfaces": [
                    LibvirtNetworkInterface(network=static_network),
                    LibvirtNetworkInterface(network=NETWORK_NAME),
                ]
            }
        ),
    )
    domain = dx.domain_name(machine.identity)
    static_mac, dhcp_mac = dx.mac_address(machine.identity, 0), dx.mac_address(machine.identity, 1)
    backend = LibvirtBackend()
    try:
        assert backend.provision(machine).phase is Phase.RUNNING
        with closing(libvirtd.connect()) as conn:
            dom = conn.lookupByName(domain)
            lease = eventually(
                lambda: leased(dom, dhcp_mac),
                "a DHCP lease for the second NIC",
                BOOT_TIMEOUT,
                explain=lambda: serial_log(libvirtd, domain)[-2000:],
            )
            parsed = eventually(
                lambda: agent_interfaces(dom),
                "the guest agent to answer",
                BOOT_TIMEOUT,
                explain=lambda: serial_log(libvirtd, domain)[-2000:],
            )
            assert leased(dom, static_mac) is None  # no DHCP on the static NIC's network
            assert any(info["hwaddr"] == static_mac for info in parsed.values())
            # The lease source alone answers (for the second NIC); the first NIC's
            # address is only the agent's.
            assert _addresses(dom) == {
                static_mac: [MachineAddress(type="InternalIP", address=ADDRESS)],
                dhcp_mac: [MachineAddress(type="InternalIP", address=lease)],
            }
        progress = backend.provision(machine)
        assert progress.phase is Phase.RUNNING and progress.reason == "DomainRunning"
        assert progress.requeue_after is None  # every NIC has its address: nothing to look for
        assert [a.address for a in progress.addresses] == [machine.hostname, ADDRESS, lease]
    finally:
        backend.deprovision(machine.identity, machine.site, machine.credentials)
        backend.connections.close()
