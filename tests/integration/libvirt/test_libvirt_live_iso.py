"""A C3osMachine with a live ISO image (`image: {volume, format: iso}`): the VM boots the
stand-in live ISO from a CD-ROM (SeaBIOS -> isolinux -> kernel; no directKernelBoot),
reads its config drive from the second CD-ROM and "installs itself" onto the empty disk
the backend gave it (the stand-in writes a marker and the user-data there)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from capi_c3os.backends.base import MachineIdentity
from capi_c3os.backends.libvirt import domain as dx
from capi_c3os.dev.libvirtd import NETWORK_NAME, PrivateLibvirtd
from tests.integration.libvirt.conftest import Capi, console_blocks, serial_log
from tests.integration.libvirt.test_libvirt_machine import (
    BOOT_TIMEOUT,
    USER_DATA,
    delete_cluster_and_wait,
    domain_names,
    pool_volumes,
)
from tests.support import eventually

pytestmark = pytest.mark.integration

LIVE_VOLUME = "standin-live.iso"


@pytest.fixture(scope="module")
def live_iso(libvirtd: PrivateLibvirtd, standin_image: Path) -> str:
    return libvirtd.upload_file(standin_image / "live.iso", LIVE_VOLUME, fmt="raw")


def disk_head(path: Path, length: int, scratch: Path) -> bytes:
    """The first bytes of a qcow2 disk a running QEMU holds (a shared read: no lock)."""
    out = scratch / "head.raw"
    argv = [
        "qemu-img",
        "dd",
        "-U",
        "-f",
        "qcow2",
        "-O",
        "raw",
        f"if={path}",
        f"of={out}",
        "bs=512",
        "count=1",
    ]
    subprocess.run(argv, check=True, capture_output=True)
    return out.read_bytes()[:length]


def test_live_iso_boots_from_cdrom_reads_its_config_drive_and_installs_onto_the_empty_disk(
    capi: Capi, libvirtd: PrivateLibvirtd, live_iso: str, start_manager: Any, tmp_path: Path
) -> None:
    manager = start_manager()
    manager.wait_ready()
    volumes_before = pool_volumes(libvirtd)
    capi.create_cluster("c1", {"libvirt": {"uri": libvirtd.uri, "network": NETWORK_NAME}})
    spec = {
        "backend": {"libvirt": {}},
        "image": {"volume": LIVE_VOLUME, "format": "iso"},
        "cpus": 1,
        "memoryMiB": 256,
        "diskGiB": 1,
    }
    capi.create_machine("c1", "live-0", spec, USER_DATA)

    eventually(
        lambda: capi.provisioned("live-0"),
        "C3osMachine provisioned",
        BOOT_TIMEOUT,
        explain=lambda: capi.ready_message("live-0"),
    )
    identity = MachineIdentity(capi.namespace, "live-0", f"c3os://{capi.namespace}/live-0")
    domain = dx.domain_name(identity)

    def installed() -> str | None:
        text = serial_log(libvirtd, domain)
        return text if "C3OS-STANDIN READY" in text else None

    log = eventually(
        installed,
        "the live ISO to boot and install",
        BOOT_TIMEOUT,
        explain=lambda: serial_log(libvirtd, domain)[-2000:],
    )
    assert console_blocks(log)["USER-DATA"] == USER_DATA
    assert "C3OS-STANDIN CONFIG-DRIVE /dev/sr" in log
    # The disk started empty (no base image behind it) and the live system, booted by the
    # BIOS from the CD-ROM with isolinux's `c3os.live` kernel argument, wrote onto it.
    assert f"DISK vda SECTORS {1024**3 // 512} HEAD ...................." in log
    assert "C3OS-STANDIN INSTALLED vda" in log
    disk = libvirtd.pool_path / dx.disk_volume_name(identity)
    marker = b"C3OS-STANDIN-INSTALLED\n"
    assert disk_head(disk, len(marker) + len(USER_DATA), tmp_path) == marker + USER_DATA

    delete_cluster_and_wait(capi, "c1", ["live-0"])
    assert domain not in domain_names(libvirtd)
    assert pool_volumes(libvirtd) == volumes_before
