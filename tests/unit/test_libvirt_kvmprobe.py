"""The `domainType: auto` decision and the boot check's guest (the check itself runs
against a real libvirtd: tests/integration/libvirt/test_libvirt_kvm_check.py)."""

from __future__ import annotations

import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from capi_c3os.backends.libvirt import kvmprobe
from capi_c3os.backends.libvirt.kvmprobe import decide

SOURCE = Path(kvmprobe.__file__).with_suffix(".S")


def test_kvm_only_when_its_guest_finished_sooner_than_the_emulated_one() -> None:
    assert decide(None, 1.5, 0.2).domain_type == "kvm"
    assert "0.20 s" in decide(None, 1.5, 0.2).reason


@pytest.mark.parametrize(
    ("unavailable", "emulated", "kvm", "says"),
    [
        ("KVM is not supported by '/usr/bin/qemu-system-x86_64'", None, None, "offers no KVM"),
        (None, None, None, "did not finish even emulated"),
        (None, 1.5, None, "did not finish within 1.5 s"),
        (None, 1.5, 1.5, "not faster than emulation"),
        (None, 1.5, 3.0, "not faster than emulation (3.0 s vs 1.5 s)"),
    ],
)
def test_otherwise_emulation_with_the_reason(
    unavailable: str | None, emulated: float | None, kvm: float | None, says: str
) -> None:
    verdict = decide(unavailable, emulated, kvm)
    assert verdict.domain_type == "qemu"
    assert says in verdict.reason


@pytest.mark.skipif(shutil.which("as") is None or shutil.which("ld") is None, reason="needs GNU binutils")
def test_boot_sector_is_kvmprobe_s_assembled(tmp_path: Path) -> None:
    obj, binary = tmp_path / "p.o", tmp_path / "p.bin"
    subprocess.run(["as", "--64", "-o", str(obj), str(SOURCE)], check=True)
    link = ["ld", "-m", "elf_x86_64", "-Ttext", "0x7c00", "--oformat", "binary", "-e", "_start"]
    subprocess.run([*link, "-o", str(binary), str(obj)], check=True)
    assert binary.read_bytes() == kvmprobe.BOOT_SECTOR
    assert len(kvmprobe.BOOT_SECTOR) == 512 and kvmprobe.BOOT_SECTOR.endswith(b"\x55\xaa")


def test_probe_domain_boots_its_disk_and_leaves_on_power_off() -> None:
    root = ET.fromstring(kvmprobe.probe_xml("kvm", "/pool/c3os-kvm-probe.img"))
    assert root.get("type") == "kvm" and root.findtext("name") == kvmprobe.PROBE_NAME
    assert root.findtext("on_poweroff") == "destroy"
    assert root.findtext("on_reboot") == "restart"  # a triple fault loops: never a success
    assert root.find("devices/disk/source").get("file") == "/pool/c3os-kvm-probe.img"  # type: ignore[union-attr]
    assert root.find("features/acpi") is not None  # the power-off port needs ACPI
