"""spec.network in the libvirt backend, on libvirt's test:///default driver: the NICs'
MACs are deterministic and named in the rendered settings, static addresses are
reported at once, and settings for more NICs than the machine has are bad input that
creates nothing. (The ISO a real daemon stores: tests/integration/libvirt.)"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

import pytest

from capi_c3os.api.infrastructure import LibvirtMachine, LibvirtNetworkInterface, MachineNetwork
from capi_c3os.backends.base import BackendError, MachineIdentity, Phase
from capi_c3os.backends.libvirt import LibvirtBackend
from capi_c3os.backends.libvirt import domain as dx
from tests.unit.test_libvirt_backend import domains_named, intent, site, volume_names

STATIC = MachineNetwork.model_validate(
    {"interfaces": [{"addresses": ["10.20.0.5/24", "2001:db8::5/64"], "gateway4": "10.20.0.1"}]}
)


def test_macs_are_deterministic_per_identity_and_nic_and_locally_administered() -> None:
    a = MachineIdentity("ns", "m-0", "c3os://ns/m-0")
    b = MachineIdentity("ns", "m-1", "c3os://ns/m-1")
    assert dx.mac_address(a, 0) == dx.mac_address(MachineIdentity("x", "y", "c3os://ns/m-0"), 0)
    assert len({dx.mac_address(a, 0), dx.mac_address(a, 1), dx.mac_address(b, 0)}) == 3
    first = int(dx.mac_address(a, 0).split(":")[0], 16)
    assert first & 0b10 and not first & 0b01  # locally administered, unicast


def test_static_addresses_are_reported_at_once_and_the_nic_has_the_rendered_mac(
    conn: Any, backend: LibvirtBackend, base: str
) -> None:
    wanted = intent(base, the_site=site(network="default"), network=STATIC)
    try:
        progress = backend.provision(wanted)
        assert progress.phase is Phase.RUNNING and progress.requeue_after is None
        found = [(a.type, a.address) for a in progress.addresses]
        assert ("InternalIP", "10.20.0.5") in found and ("InternalIP", "2001:db8::5") in found
        (dom,) = domains_named(conn, wanted.identity)
        mac = ET.fromstring(dom.XMLDesc(0)).find("devices/interface/mac")
        assert mac is not None and mac.get("address") == dx.mac_address(wanted.identity, 0)
    finally:
        backend.deprovision(wanted.identity, wanted.site, wanted.credentials)


def test_settings_for_more_nics_than_the_machine_has_create_nothing(
    conn: Any, backend: LibvirtBackend, base: str
) -> None:
    two = MachineNetwork.model_validate({"interfaces": [{"dhcp4": True}, {"dhcp4": True}]})
    one_nic = LibvirtMachine(network_interfaces=[LibvirtNetworkInterface(network="default")])
    wanted = intent(base, libvirt=one_nic, network=two)
    before = volume_names(conn)
    with pytest.raises(BackendError) as err:
        backend.provision(wanted)
    assert err.value.reason == "NetworkConfigMismatch" and err.value.retry_after is None
    assert "configures 2 interface(s) but the machine has 1 NIC(s)" in err.value.message
    assert volume_names(conn) == before and domains_named(conn, wanted.identity) == []
