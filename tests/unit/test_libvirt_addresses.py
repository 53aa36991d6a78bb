"""Address discovery merges its sources per NIC (by MAC): static addresses and DHCP
leases first, the guest agent for NICs that have neither. The data is shaped as
libvirt's `interfaceAddresses` returns it (the test driver answers every source with
the same made-up lease, so it cannot tell them apart; the real sources together:
tests/integration/libvirt/test_libvirt_guest_agent.py)."""

from __future__ import annotations

from typing import Any

from capi_c3os.api.common import MachineAddress
from capi_c3os.api.infrastructure import LibvirtMachine, LibvirtNetworkInterface
from capi_c3os.backends.base import Phase
from capi_c3os.backends.libvirt import LibvirtBackend
from capi_c3os.backends.libvirt.backend import ADDRESS_RETRY, _Look, merge_addresses
from tests.unit.test_libvirt_backend import domains_named, intent

LEASED, BRIDGED, SILENT = "02:00:00:00:00:01", "02:00:00:00:00:02", "02:00:00:00:00:03"


def ip(address: str) -> MachineAddress:
    return MachineAddress(type="InternalIP", address=address)


def nic(mac: str, *addresses: str) -> dict[str, Any]:
    return {"hwaddr": mac, "addrs": [{"addr": a, "prefix": 24, "type": 0} for a in addresses]}


# What the network's dnsmasq knows: host-side tap names, only NICs on a DHCP network.
LEASES = {"vnet0": nic(LEASED, "192.168.150.10"), "vnet1": nic(BRIDGED)}
# What the guest agent reports: guest names, every interface of the guest.
AGENT = {
    "lo": nic("00:00:00:00:00:00", "127.0.0.1", "::1"),
    "eth0": nic(LEASED, "192.168.150.10", "fe80::1"),
    "eth1": nic(BRIDGED.upper(), "10.1.0.7", "fe80::2", "2001:db8::7"),
    "cni0": nic("ee:ee:ee:ee:ee:ee", "10.42.0.1"),
    "flannel.1": nic("ee:ee:ee:ee:ee:ef", "10.42.0.0"),
}


def test_a_leased_nic_and_one_known_only_to_the_agent_are_both_reported_once() -> None:
    found = merge_addresses([LEASED, BRIDGED], {}, LEASES, AGENT)
    assert found == {LEASED: [ip("192.168.150.10")], BRIDGED: [ip("10.1.0.7"), ip("2001:db8::7")]}


def test_the_lease_wins_over_the_agent_for_the_same_nic() -> None:
    agent = {"eth0": nic(LEASED, "192.168.150.99")}  # e.g. an address the guest added itself
    assert merge_addresses([LEASED], {}, LEASES, agent) == {LEASED: [ip("192.168.150.10")]}


def test_a_nic_no_source_knows_stays_empty_and_the_order_is_the_domains() -> None:
    found = merge_addresses([SILENT, LEASED], {}, LEASES, AGENT)
    assert list(found) == [SILENT, LEASED]
    assert found[SILENT] == [] and found[LEASED] == [ip("192.168.150.10")]
    assert merge_addresses([LEASED, BRIDGED], {}, {}, {}) == {LEASED: [], BRIDGED: []}


def test_static_addresses_count_for_their_nic_and_merge_with_its_lease() -> None:
    static = {BRIDGED: [ip("10.1.0.7")], LEASED: [ip("192.168.150.10")]}
    found = merge_addresses([LEASED, BRIDGED], static, LEASES, AGENT)
    # The bridged NIC's static address is enough: the agent's extra IPv6 is not asked for.
    assert found == {LEASED: [ip("192.168.150.10")], BRIDGED: [ip("10.1.0.7")]}


def test_guest_interfaces_of_no_nic_of_ours_and_loopback_are_never_addresses() -> None:
    found = merge_addresses([BRIDGED], {}, {}, AGENT)
    everything = [a.address for nics in found.values() for a in nics]
    assert not {"10.42.0.1", "10.42.0.0", "127.0.0.1", "::1", "fe80::2"} & set(everything)


def test_a_nic_still_without_address_next_to_one_with_is_looked_for_quietly(
    conn: Any, backend: LibvirtBackend, base: str
) -> None:
    """Looks for the missing NIC back off as for a machine without any address, but Ready
    stays plain (a NIC may be unaddressed on purpose; CAPI copies Ready's message)."""
    nic = LibvirtNetworkInterface(network="default")
    two = LibvirtMachine(network_interfaces=[nic, nic])
    wanted = intent(base, libvirt=two)
    try:
        running = backend.provision(wanted)
        assert running.phase is Phase.RUNNING and running.requeue_after is None  # the driver leases both
        (dom,) = domains_named(conn, wanted.identity)
        some = LibvirtBackend._without_address(dom, _Look.of(dom), [ip("10.0.0.1")], {}, none=False)
        assert (some.phase, some.reason) == (Phase.RUNNING, "DomainRunning")
        assert some.message == f"domain {dom.name()} is running"
        assert some.requeue_after == ADDRESS_RETRY
        nothing = LibvirtBackend._without_address(dom, _Look.of(dom), [], {}, none=True)
        assert nothing.reason == "DomainRunning" and "waiting for its address" in nothing.message
    finally:
        backend.deprovision(wanted.identity, wanted.site, wanted.credentials)
