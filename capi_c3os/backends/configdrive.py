"""Config drives: the ISO a machine reads its bootstrap data from, built in-process.

Two layouts, both understood by c3os/Kairos (and cloud-init):

- NoCloud: volume label `cidata`, files `user-data`, `meta-data` (YAML) and optionally
  `network-config`.
- OpenStack config drive: volume label `config-2`, files `openstack/latest/user_data`,
  `openstack/latest/meta_data.json` and optionally `openstack/latest/network_data.json`
  (Ironic's own config drives look like this).

`user-data` is the bootstrap data byte for byte: it is never parsed or re-encoded here.
Files carry Rock Ridge and Joliet names, so Linux sees the lowercase, hyphenated names
whatever it mounts with.
"""

from __future__ import annotations

import io
import ipaddress
import json
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import pycdlib
import yaml

from capi_c3os.api.infrastructure import MachineNetwork

Layout = Literal["nocloud", "configdrive"]

MIN_SIZE = 256 * 1024
"""Drives are padded to at least this: busybox's `findfs`/volume_id (in many initramfs
tools, and our stand-in image) does not recognise an ISO smaller than 128 KiB, and a
few zero sectors at the end are invisible to every other reader."""

NOCLOUD_LABEL = "cidata"
CONFIG_2_LABEL = "config-2"


def render_meta_data(meta_data: Mapping[str, Any], layout: Layout) -> bytes:
    """meta-data as YAML (NoCloud) or meta_data.json (config-2; keys as OpenStack names
    them: `uuid`, `hostname`, plus ours as given)."""
    if layout == "nocloud":
        return yaml.safe_dump(dict(meta_data), sort_keys=True, default_flow_style=False).encode()
    data = dict(meta_data)
    if "instance-id" in data:
        data.setdefault("uuid", data["instance-id"])
    if "local-hostname" in data:
        data.setdefault("hostname", data["local-hostname"])
        data.setdefault("name", data["local-hostname"])
    return json.dumps(data, sort_keys=True, indent=2).encode()


def interface_name(index: int) -> str:
    """The name the guest gives its `index`-th NIC (matched by MAC)."""
    return f"eth{index}"


def render_network_config(network: MachineNetwork, macs: Sequence[str]) -> dict[str, Any]:
    """NoCloud `network-config`, version 2 (netplan style, as cloud-init and Kairos read
    it): one entry per configured NIC, matched by its MAC and named eth<N>."""
    ethernets: dict[str, Any] = {}
    for index, (iface, mac) in enumerate(zip(network.interfaces, macs, strict=False)):
        name = interface_name(index)
        entry: dict[str, Any] = {
            "match": {"macaddress": mac},
            "set-name": name,
            "dhcp4": iface.dhcp4,
            "dhcp6": iface.dhcp6,
        }
        if iface.addresses:
            entry["addresses"] = list(iface.addresses)
        routes = [
            {"to": default, "via": gateway}
            for default, gateway in (("0.0.0.0/0", iface.gateway4), ("::/0", iface.gateway6))
            if gateway
        ]
        if routes:
            entry["routes"] = routes
        dns: dict[str, Any] = {}
        if network.nameservers:
            dns["addresses"] = list(network.nameservers)
        if network.search_domains:
            dns["search"] = list(network.search_domains)
        if dns:
            entry["nameservers"] = dns
        ethernets[name] = entry
    return {"version": 2, "ethernets": ethernets}


def render_network_data(network: MachineNetwork, macs: Sequence[str]) -> dict[str, Any]:
    """OpenStack `network_data.json` (config-2 drives): links by MAC, one network per
    static address or DHCP family, default routes on the first network of their family,
    nameservers as dns services."""
    links: list[dict[str, Any]] = []
    networks: list[dict[str, Any]] = []
    for index, (iface, mac) in enumerate(zip(network.interfaces, macs, strict=False)):
        link = interface_name(index)
        links.append({"id": link, "name": link, "type": "phy", "ethernet_mac_address": mac})
        gateways = {4: iface.gateway4, 6: iface.gateway6}
        for text in iface.addresses or []:
            address = ipaddress.ip_interface(text)
            net: dict[str, Any] = {
                "id": f"{link}-{len(networks)}",
                "link": link,
                "type": f"ipv{address.version}",
                "ip_address": str(address.ip),
                "netmask": str(address.netmask),
                "routes": [],
            }
            gateway = gateways[address.version]
            if gateway and _reaches(gateway, address):
                any_net = "0.0.0.0" if address.version == 4 else "::"
                net["routes"].append({"network": any_net, "netmask": any_net, "gateway": gateway})
                gateways[address.version] = None  # one default route per family
            if network.nameservers:
                net["dns_nameservers"] = list(network.nameservers)
            if network.search_domains:
                net["dns_search"] = list(network.search_domains)
            networks.append(net)
        for wanted, kind in ((iface.dhcp4, "ipv4_dhcp"), (iface.dhcp6, "ipv6_dhcp")):
            if wanted:
                networks.append({"id": f"{link}-{len(networks)}", "link": link, "type": kind})
    services = [{"type": "dns", "address": server} for server in network.nameservers or []]
    return {"links": links, "networks": networks, "services": services}


def _reaches(gateway: str, address: ipaddress.IPv4Interface | ipaddress.IPv6Interface) -> bool:
    """The gateway is on the address's subnet (or IPv6 link-local, always on-link)."""
    ip = ipaddress.ip_address(gateway)
    return ip in address.network or (ip.version == 6 and ip.is_link_local)


def build_config_drive(
    user_data: bytes,
    meta_data: Mapping[str, Any],
    network_config: Mapping[str, Any] | None = None,
    layout: Layout = "nocloud",
) -> bytes:
    """The ISO image, as bytes (config drives are small: kilobytes)."""
    files: list[tuple[str, str, bytes]] = []  # (iso9660 path, real path, content)
    if layout == "nocloud":
        label = NOCLOUD_LABEL
        files.append(("/USERDATA.;1", "/user-data", user_data))
        files.append(("/METADATA.;1", "/meta-data", render_meta_data(meta_data, layout)))
        if network_config is not None:
            rendered = yaml.safe_dump(dict(network_config), sort_keys=True).encode()
            files.append(("/NETWORKC.;1", "/network-config", rendered))
        dirs: list[tuple[str, str]] = []
    else:
        label = CONFIG_2_LABEL
        dirs = [("/OPENSTAC", "/openstack"), ("/OPENSTAC/LATEST", "/openstack/latest")]
        files.append(("/OPENSTAC/LATEST/USERDATA.;1", "/openstack/latest/user_data", user_data))
        files.append(
            (
                "/OPENSTAC/LATEST/METADATA.;1",
                "/openstack/latest/meta_data.json",
                render_meta_data(meta_data, layout),
            )
        )
        if network_config is not None:
            rendered = json.dumps(dict(network_config), sort_keys=True, indent=2).encode()
            files.append(("/OPENSTAC/LATEST/NETWORKD.;1", "/openstack/latest/network_data.json", rendered))

    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident=label)
    for iso_path, real in dirs:
        iso.add_directory(iso_path, rr_name=real.rsplit("/", 1)[1], joliet_path=real)
    for iso_path, real, content in files:
        iso.add_fp(
            io.BytesIO(content), len(content), iso_path, rr_name=real.rsplit("/", 1)[1], joliet_path=real
        )
    out = io.BytesIO()
    iso.write_fp(out)
    iso.close()
    data = out.getvalue()
    return data + b"\0" * max(0, MIN_SIZE - len(data))
