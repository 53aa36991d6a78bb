"""spec.network rendered for the guest: NoCloud network-config v2 and OpenStack
network_data.json, and the model's checks (the CRD's CEL twins are tested against the
API server in tests/integration/libvirt/test_libvirt_network_config.py)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from capi_c3os.api.infrastructure import C3osMachineTemplateResource, MachineNetwork
from capi_c3os.backends.configdrive import render_network_config, render_network_data

MACS = ["02:aa:bb:cc:dd:01", "02:aa:bb:cc:dd:02"]
EDGE = MachineNetwork.model_validate(
    {
        "interfaces": [
            {
                "addresses": ["10.20.0.5/24", "2001:db8:20::5/64"],
                "gateway4": "10.20.0.1",
                "gateway6": "2001:db8:20::1",
            },
            {"dhcp4": True},
        ],
        "nameservers": ["10.20.0.53", "2001:db8:20::53"],
        "searchDomains": ["edge.example"],
    }
)


def test_network_config_v2_matches_each_nic_by_mac() -> None:
    assert render_network_config(EDGE, MACS) == {
        "version": 2,
        "ethernets": {
            "eth0": {
                "match": {"macaddress": MACS[0]},
                "set-name": "eth0",
                "dhcp4": False,
                "dhcp6": False,
                "addresses": ["10.20.0.5/24", "2001:db8:20::5/64"],
                "routes": [{"to": "0.0.0.0/0", "via": "10.20.0.1"}, {"to": "::/0", "via": "2001:db8:20::1"}],
                "nameservers": {"addresses": ["10.20.0.53", "2001:db8:20::53"], "search": ["edge.example"]},
            },
            "eth1": {
                "match": {"macaddress": MACS[1]},
                "set-name": "eth1",
                "dhcp4": True,
                "dhcp6": False,
                "nameservers": {"addresses": ["10.20.0.53", "2001:db8:20::53"], "search": ["edge.example"]},
            },
        },
    }


def test_network_data_has_links_by_mac_networks_with_netmasks_and_default_routes() -> None:
    data = render_network_data(EDGE, MACS)
    assert data["links"] == [
        {"id": "eth0", "name": "eth0", "type": "phy", "ethernet_mac_address": MACS[0]},
        {"id": "eth1", "name": "eth1", "type": "phy", "ethernet_mac_address": MACS[1]},
    ]
    v4, v6, dhcp = data["networks"]
    assert (v4["link"], v4["type"], v4["ip_address"], v4["netmask"]) == (
        "eth0",
        "ipv4",
        "10.20.0.5",
        "255.255.255.0",
    )
    assert v4["routes"] == [{"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": "10.20.0.1"}]
    assert (v6["type"], v6["ip_address"], v6["netmask"]) == (
        "ipv6",
        "2001:db8:20::5",
        "ffff:ffff:ffff:ffff::",
    )
    assert v6["routes"] == [{"network": "::", "netmask": "::", "gateway": "2001:db8:20::1"}]
    assert v4["dns_search"] == ["edge.example"]
    assert (dhcp["link"], dhcp["type"]) == ("eth1", "ipv4_dhcp")
    assert len({n["id"] for n in data["networks"]}) == 3
    assert data["services"] == [
        {"type": "dns", "address": "10.20.0.53"},
        {"type": "dns", "address": "2001:db8:20::53"},
    ]


@pytest.mark.parametrize(
    ("interface", "says"),
    [
        ({}, "set dhcp4, dhcp6 or addresses"),
        ({"addresses": ["10.0.0.5"]}, "prefix length"),
        ({"addresses": ["10.0.0.500/24"]}, "prefix length"),
        ({"addresses": ["10.0.0.5/24"], "gateway4": "10.0.1.1"}, "gateway4 must be"),
        ({"addresses": ["2001:db8::5/64"], "gateway4": "10.0.0.1"}, "gateway4 must be"),
        ({"addresses": ["10.0.0.5/24"], "gateway6": "10.0.0.1"}, "gateway6 must be"),
        ({"dhcp4": True, "gateway4": "10.0.0.1"}, "gateway4 must be"),
    ],
)
def test_bad_interface_settings_are_rejected_with_a_readable_message(
    interface: dict[str, Any], says: str
) -> None:
    with pytest.raises(ValidationError) as err:
        MachineNetwork.model_validate({"interfaces": [interface]})
    assert says in str(err.value)


def test_link_local_ipv6_gateway_is_accepted() -> None:
    MachineNetwork.model_validate({"interfaces": [{"addresses": ["2001:db8::5/64"], "gateway6": "fe80::1"}]})


def test_bad_nameserver_is_rejected() -> None:
    with pytest.raises(ValidationError, match="nameservers must be IP addresses"):
        MachineNetwork.model_validate({"interfaces": [{"dhcp4": True}], "nameservers": ["dns.example"]})


def test_a_template_may_not_carry_static_addresses_but_dhcp_and_dns() -> None:
    spec: dict[str, Any] = {"backend": {"libvirt": {}}, "image": {"volume": "base"}}
    dhcp = {"interfaces": [{"dhcp4": True}], "nameservers": ["10.0.0.53"]}
    C3osMachineTemplateResource.model_validate({"spec": {**spec, "network": dhcp}})
    static = {"interfaces": [{"addresses": ["10.0.0.5/24"]}]}
    with pytest.raises(ValidationError, match="static addresses belong to one machine"):
        C3osMachineTemplateResource.model_validate({"spec": {**spec, "network": static}})
