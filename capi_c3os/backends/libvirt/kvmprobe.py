"""`domainType: auto`: use KVM on a host only where a boot check proved it works.

A host can advertise KVM and still be unfit for it: under nested virtualisation a
`type='kvm'` guest may start and then crawl or hang forever (libvirt.md; on the
development machine a Debian kernel never gets past its decompressor under KVM, while
it boots in 2 s under emulation). So "kvm" in the domain capabilities is necessary,
not sufficient. The check boots the same tiny guest (kvmprobe.S: long mode, a compute
loop, 64 MiB of memory writes, ACPI power-off) twice as a transient domain, first
emulated (TCG), then with KVM, and chooses KVM only when the KVM guest ran to its
power-off sooner than the emulated one. Both runs are on the same host in the same
minute, so load affects both alike; a working KVM is 10x faster or more.

Crash-safe: the probe domain is transient (it leaves no definition behind) and has a
fixed name, so a check that died half-way is cleaned up by the next one; the probe
volume is replaced the same way and deleted at the end.
"""

from __future__ import annotations

import base64
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import libvirt  # type: ignore[import-untyped]  # libvirt-python ships no type hints

PROBE_NAME = "c3os-kvm-probe"
PROBE_VOLUME = PROBE_NAME + ".img"
EMULATED_DEADLINE = 180.0
"""Safety net for the emulated run on a badly overloaded host (typically 1-3 s)."""
POLL = 0.05
DISK_SIZE = 1024 * 1024
"""SeaBIOS does not boot a virtio disk of one sector; 1 MiB it does."""

# kvmprobe.S assembled (see its header); zero padding and the boot signature follow.
_CODE = base64.b64decode(
    "+jHAjthmDwEW8HwPIMBmg8gBDyLAZuodfAAACABmuBAAjtiOwI7QvwAQAAAxwLkADAAA86vHBQAQAAADIAAAxwUA"
    "IAAAAzAAAL8AMAAAuIMAAACJBwUAACAAg8cIgf8AQAAAde64ABAAAA8i2A8g4IPIIA8i4LmAAADADzINAAEAAA8w"
    "DyDADQAAAIAPIsDqlnwAABgASMfBAOH1BUj/yXX7SMfHAAAgAEjHwQAAgABIuFpaWlpaWlpa80irZroEBma4ACBm"
    "7/Tr/WYPH0QAAAAAAAAAAAAA//8AAACazwD//wAAAJLPAP//AAAAmq8AHwDQfAAA"
)
BOOT_SECTOR = _CODE + bytes(510 - len(_CODE)) + b"\x55\xaa"


@dataclass(frozen=True)
class Verdict:
    """The domain type `auto` means on one host, and why (shown in machine status)."""

    domain_type: str
    """kvm or qemu."""
    reason: str


def decide(kvm_unavailable: str | None, emulated: float | None, kvm: float | None) -> Verdict:
    """The verdict from what the check saw: why the host offers no KVM (None if it does),
    and the seconds each run took to power off (None: it did not within its deadline)."""
    if kvm_unavailable is not None:
        return Verdict("qemu", f"the host offers no KVM ({kvm_unavailable})")
    if emulated is None:
        return Verdict("qemu", "the boot check did not finish even emulated, so KVM is unproven")
    if kvm is None:
        return Verdict(
            "qemu",
            f"KVM is advertised but its test guest did not finish within {emulated:.1f} s, "
            "the time the emulated one took (nested or broken KVM)",
        )
    if kvm >= emulated:
        return Verdict("qemu", f"KVM is not faster than emulation ({kvm:.1f} s vs {emulated:.1f} s)")
    return Verdict("kvm", f"a test guest booted under KVM in {kvm:.2f} s (emulated: {emulated:.2f} s)")


def kvm_unavailable(conn: libvirt.virConnect) -> str | None:
    """Why libvirt on this host cannot run `type='kvm'` domains, or None if it says it can."""
    try:
        caps = ET.fromstring(conn.getDomainCapabilities(None, "x86_64", None, "kvm", 0))
    except libvirt.libvirtError as exc:
        return str(exc.get_error_message() or exc)
    if caps.findtext("domain") not in (None, "kvm"):
        return "domain capabilities do not list kvm"
    return None


def probe_xml(domain_type: str, disk_path: str) -> str:
    domain = ET.Element("domain", {"type": domain_type})
    ET.SubElement(domain, "name").text = PROBE_NAME
    ET.SubElement(domain, "memory", {"unit": "MiB"}).text = "128"
    ET.SubElement(domain, "vcpu").text = "1"
    os_el = ET.SubElement(domain, "os")
    ET.SubElement(os_el, "type", {"arch": "x86_64"}).text = "hvm"
    ET.SubElement(os_el, "boot", {"dev": "hd"})
    features = ET.SubElement(domain, "features")
    ET.SubElement(features, "acpi")
    ET.SubElement(domain, "on_poweroff").text = "destroy"
    # A guest that triple-faults reboots and never powers off: counted as a failure.
    ET.SubElement(domain, "on_reboot").text = "restart"
    ET.SubElement(domain, "on_crash").text = "destroy"
    devices = ET.SubElement(domain, "devices")
    disk = ET.SubElement(devices, "disk", {"type": "file", "device": "disk"})
    ET.SubElement(disk, "driver", {"name": "qemu", "type": "raw"})
    ET.SubElement(disk, "source", {"file": disk_path})
    ET.SubElement(disk, "target", {"dev": "vda", "bus": "virtio"})
    ET.SubElement(disk, "readonly")
    ET.SubElement(devices, "memballoon", {"model": "none"})
    return ET.tostring(domain, encoding="unicode")


def check(
    conn: libvirt.virConnect,
    pool: libvirt.virStoragePool,
    upload: Callable[[libvirt.virConnect, libvirt.virStorageVol, bytes], None],
    volume_xml: Callable[[str, int, str], str],
) -> Verdict:
    """Run the boot check on the host behind `conn`, with its probe disk in `pool`."""
    unavailable = kvm_unavailable(conn)
    if unavailable is not None:
        return decide(unavailable, None, None)
    _remove_domain(conn)
    _remove_volume(pool)
    vol = pool.createXML(volume_xml(PROBE_VOLUME, DISK_SIZE, "raw"), 0)
    try:
        upload(conn, vol, BOOT_SECTOR + bytes(DISK_SIZE - len(BOOT_SECTOR)))
        path = str(vol.path())
        emulated = _run(conn, probe_xml("qemu", path), EMULATED_DEADLINE)
        if isinstance(emulated, str):
            return Verdict(
                "qemu", f"the boot check could not start an emulated guest ({emulated}); KVM is unproven"
            )
        kvm = _run(conn, probe_xml("kvm", path), emulated) if emulated is not None else None
    finally:
        _remove_domain(conn)
        _remove_volume(pool)
    if isinstance(kvm, str):
        return decide(f"a kvm guest does not start: {kvm}", None, None)
    return decide(None, emulated, kvm)


def _run(conn: libvirt.virConnect, xml: str, deadline: float) -> float | str | None:
    """Seconds from start until the guest powered itself off; None if it did not within
    `deadline` (the domain is destroyed then); libvirt's message if it could not start."""
    try:
        dom = conn.createXML(xml, 0)
    except libvirt.libvirtError as exc:
        return str(exc.get_error_message() or exc)
    started = time.monotonic()
    while True:
        elapsed = time.monotonic() - started
        if not _alive(dom):
            return elapsed
        if elapsed > deadline:
            _remove_domain(conn)
            return None
        time.sleep(POLL)


def _alive(dom: Any) -> bool:
    try:
        return bool(dom.isActive())
    except libvirt.libvirtError:
        return False  # a transient domain is gone once it powered off


def _remove_domain(conn: libvirt.virConnect) -> None:
    try:
        dom = conn.lookupByName(PROBE_NAME)
        if not dom.isPersistent():  # ours are transient; leave anyone else's alone
            dom.destroy()
    except libvirt.libvirtError:
        pass  # not there (the usual case), or gone meanwhile


def _remove_volume(pool: libvirt.virStoragePool) -> None:
    with suppress(libvirt.libvirtError):  # not there: the usual case
        pool.storageVolLookupByName(PROBE_VOLUME).delete(0)
