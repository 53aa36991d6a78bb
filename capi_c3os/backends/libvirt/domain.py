"""The libvirt domain and volume XML for one machine, and reading our tag back.

Pure functions of the intent: the same machine always gets the same XML, name and
UUID, so a repeated or resumed provision finds what an earlier one made.
"""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from capi_c3os.api.infrastructure import LibvirtNetworkInterface
from capi_c3os.backends.base import MachineIdentity

METADATA_NS = "https://capi-c3os.io/xmlns/libvirt/machine/v1"
"""Our namespace in <metadata>: the ownership tag."""
METADATA_PREFIX = "c3os"

DISK_SUFFIX = "-disk.qcow2"
CONFIG_DRIVE_SUFFIX = "-config.iso"
BASE_PREFIX = "c3os-base-"


@dataclass(frozen=True)
class Tag:
    """Who a domain belongs to (and why it has its type), as written into its <metadata>."""

    namespace: str
    name: str
    provider_id: str
    cluster: str = ""
    """`<namespace>/<cluster name>`: lets a cluster find its machines' orphans."""
    domain_type_reason: str = ""
    """Why the domain got its type (the site's choice, or `auto`'s boot check verdict):
    kept with the domain, so its status says so after a manager restart too."""

    def identity(self) -> MachineIdentity:
        return MachineIdentity(self.namespace, self.name, self.provider_id)


_READABLE = 50
"""As in MachineIdentity.resource_name: the readable part is cut after this many characters."""


def resource_stem(identity: MachineIdentity) -> str:
    """What the domain and its volumes are named after. Up to 50 characters of
    `<namespace>-<name>` it is `identity.resource_name` (readable, 8 hex of the UUID):
    nobody can choose another identity with that readable part, so 32 bits suffice.
    Past the cut, whoever picks a name in a namespace whose name continues another's
    (`team` / `team-a`) is free in the tail and could match 32 bits by trying names;
    volumes carry no tag, so a match would hand them another machine's disk. Such
    identities get 96 bits of the UUID instead (63 characters in all)."""
    readable = f"{identity.namespace}-{identity.name}"
    if len(readable) <= _READABLE:
        return identity.resource_name
    return f"{readable[:38].rstrip('-.')}-{identity.uuid.replace('-', '')[:24]}"


def legacy_stem(identity: MachineIdentity) -> str | None:
    """The stem releases before the 96-bit one gave a long identity, else None. A domain
    of that name is adopted or removed only when its tag names this very machine."""
    stem = resource_stem(identity)
    return identity.resource_name if identity.resource_name != stem else None


def domain_name(identity: MachineIdentity) -> str:
    return resource_stem(identity)


def disk_volume_name(identity: MachineIdentity) -> str:
    return resource_stem(identity) + DISK_SUFFIX


def config_drive_volume_name(identity: MachineIdentity) -> str:
    return resource_stem(identity) + CONFIG_DRIVE_SUFFIX


def identity_of_volume(name: str) -> MachineIdentity | None:
    """The machine a disk or config-drive volume was named for, recovered from its name
    (volumes carry no tag): `<namespace>-<name>-<8 hex of the UUID>` only decodes where
    one split of the readable part into namespace and name reproduces the UUID prefix
    (32 bits: a foreign volume matches by chance once in 4 billion). Names truncated at
    50 characters, and machines with a providerID of their own, do not decode."""
    for suffix in (DISK_SUFFIX, CONFIG_DRIVE_SUFFIX):
        if name.endswith(suffix):
            stem = name[: -len(suffix)]
            break
    else:
        return None
    readable, _, short = stem.rpartition("-")
    if len(short) != 8:
        return None
    for index, char in enumerate(readable):
        if char != "-":
            continue
        namespace, machine = readable[:index], readable[index + 1 :]
        if not namespace or not machine:
            continue
        identity = MachineIdentity(namespace, machine, f"c3os://{namespace}/{machine}")
        if identity.resource_name == stem:
            return identity
    return None


def base_volume_name(digest: str, fmt: str) -> str:
    """A base image downloaded from a URL is shared by every machine of the pool that
    names the same checksum."""
    return f"{BASE_PREFIX}{digest[:32]}.{fmt}"


def mac_address(identity: MachineIdentity, index: int) -> str:
    """The MAC of the machine's `index`-th NIC: the same on every (re)creation, so the
    config drive's network settings can name it and a DHCP server keeps its lease. A
    locally administered unicast address (first byte 02) with 40 bits from the identity:
    collisions on one network are as unlikely as with random MACs (libvirt's are 24 bits)."""
    digest = hashlib.sha256(f"{identity.provider_id}/nic{index}".encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x02, *digest[:5]))


def tag_xml(tag: Tag) -> str:
    root = ET.Element("machine", {"xmlns": METADATA_NS})
    for key, value in (
        ("namespace", tag.namespace),
        ("name", tag.name),
        ("providerID", tag.provider_id),
        ("cluster", tag.cluster),
    ):
        ET.SubElement(root, key).text = value
    if tag.domain_type_reason:
        ET.SubElement(root, "domainTypeReason").text = tag.domain_type_reason
    return ET.tostring(root, encoding="unicode")


def parse_tag(xml: str | None) -> Tag | None:
    """Our tag from a domain's <metadata> element text (as `dom.metadata` returns it)."""
    if not xml:
        return None
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None

    def text(key: str) -> str:
        element = root.find(f"{{{METADATA_NS}}}{key}")
        if element is None:
            element = root.find(key)
        return (element.text or "") if element is not None else ""

    if not (text("namespace") and text("name") and text("providerID")):
        return None
    return Tag(text("namespace"), text("name"), text("providerID"), text("cluster"), text("domainTypeReason"))


@dataclass(frozen=True)
class DomainSpec:
    """Everything the domain XML depends on."""

    identity: MachineIdentity
    tag: Tag
    domain_type: str
    """kvm, qemu, or test (libvirt's fake driver)."""
    cpus: int
    memory_mib: int
    disk_path: str
    disk_format: str
    config_drive_path: str
    cdrom_path: str | None = None
    """A live ISO to boot (and install from) before the disk."""
    uefi: bool = False
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str | None = None
    interfaces: tuple[LibvirtNetworkInterface, ...] = ()
    macs: tuple[str, ...] = ()
    """MAC of each interface, in order (libvirt picks one where missing)."""
    serial_log: str | None = None


def domain_xml(spec: DomainSpec) -> str:
    domain = ET.Element("domain", {"type": spec.domain_type})
    ET.SubElement(domain, "name").text = domain_name(spec.identity)
    ET.SubElement(domain, "uuid").text = spec.identity.uuid
    ET.SubElement(domain, "title").text = f"{spec.identity.namespace}/{spec.identity.name}"
    metadata = ET.SubElement(domain, "metadata")
    metadata.append(ET.fromstring(tag_xml(spec.tag)))
    ET.SubElement(domain, "memory", {"unit": "MiB"}).text = str(spec.memory_mib)
    ET.SubElement(domain, "vcpu").text = str(spec.cpus)

    os_attrs = {"firmware": "efi"} if spec.uefi else {}
    os_el = ET.SubElement(domain, "os", os_attrs)
    ET.SubElement(os_el, "type", {"arch": "x86_64"}).text = "hvm"
    if spec.kernel:
        ET.SubElement(os_el, "kernel").text = spec.kernel
        if spec.initrd:
            ET.SubElement(os_el, "initrd").text = spec.initrd
        if spec.cmdline:
            ET.SubElement(os_el, "cmdline").text = spec.cmdline
    else:
        # An empty disk (a live ISO installs onto it) falls through to the cdrom; once
        # installed, the disk boots first.
        ET.SubElement(os_el, "boot", {"dev": "hd"})
        if spec.cdrom_path:
            ET.SubElement(os_el, "boot", {"dev": "cdrom"})
    features = ET.SubElement(domain, "features")
    ET.SubElement(features, "acpi")
    ET.SubElement(features, "apic")
    ET.SubElement(domain, "on_poweroff").text = "destroy"
    ET.SubElement(domain, "on_reboot").text = "restart"
    ET.SubElement(domain, "on_crash").text = "destroy"

    _add_devices(ET.SubElement(domain, "devices"), spec)
    return ET.tostring(domain, encoding="unicode")


def _add_devices(devices: ET.Element, spec: DomainSpec) -> None:
    disk = ET.SubElement(devices, "disk", {"type": "file", "device": "disk"})
    ET.SubElement(disk, "driver", {"name": "qemu", "type": spec.disk_format})
    ET.SubElement(disk, "source", {"file": spec.disk_path})
    ET.SubElement(disk, "target", {"dev": "vda", "bus": "virtio"})
    # `<boot dev='cdrom'>` marks the first cdrom by target name bootable (libvirt keeps
    # disks sorted by target): the live ISO must be sda, the config drive after it.
    paths = [spec.cdrom_path, spec.config_drive_path] if spec.cdrom_path else [spec.config_drive_path]
    cdroms = list(zip(("sda", "sdb"), paths, strict=False))
    for dev, path in cdroms:
        cdrom = ET.SubElement(devices, "disk", {"type": "file", "device": "cdrom"})
        ET.SubElement(cdrom, "driver", {"name": "qemu", "type": "raw"})
        ET.SubElement(cdrom, "source", {"file": path})
        ET.SubElement(cdrom, "target", {"dev": dev, "bus": "sata"})
        ET.SubElement(cdrom, "readonly")
    for index, nic in enumerate(spec.interfaces):
        if nic.network:
            iface = ET.SubElement(devices, "interface", {"type": "network"})
            ET.SubElement(iface, "source", {"network": nic.network})
        else:
            iface = ET.SubElement(devices, "interface", {"type": "bridge"})
            ET.SubElement(iface, "source", {"bridge": nic.bridge or ""})
        if index < len(spec.macs):
            ET.SubElement(iface, "mac", {"address": spec.macs[index]})
        ET.SubElement(iface, "model", {"type": nic.model})
    if spec.domain_type != "test":
        serial = ET.SubElement(devices, "serial", {"type": "pty"})
        if spec.serial_log:
            ET.SubElement(serial, "log", {"file": spec.serial_log, "append": "off"})
        ET.SubElement(serial, "target", {"port": "0"})
        console = ET.SubElement(devices, "console", {"type": "pty"})
        ET.SubElement(console, "target", {"type": "serial", "port": "0"})
        channel = ET.SubElement(devices, "channel", {"type": "unix"})
        ET.SubElement(channel, "target", {"type": "virtio", "name": "org.qemu.guest_agent.0"})
        rng = ET.SubElement(devices, "rng", {"model": "virtio"})
        ET.SubElement(rng, "backend", {"model": "random"}).text = "/dev/urandom"
        ET.SubElement(devices, "memballoon", {"model": "none"})


def volume_xml(
    name: str, capacity: int, fmt: str, backing_path: str | None = None, backing_format: str = ""
) -> str:
    vol = ET.Element("volume")
    ET.SubElement(vol, "name").text = name
    ET.SubElement(vol, "capacity", {"unit": "bytes"}).text = str(capacity)
    target = ET.SubElement(vol, "target")
    ET.SubElement(target, "format", {"type": fmt})
    ET.SubElement(target, "permissions").append(_mode("0600"))
    if backing_path:
        backing = ET.SubElement(vol, "backingStore")
        ET.SubElement(backing, "path").text = backing_path
        ET.SubElement(backing, "format", {"type": backing_format})
    return ET.tostring(vol, encoding="unicode")


def _mode(value: str) -> ET.Element:
    element = ET.Element("mode")
    element.text = value
    return element
