"""A C3osMachine with a live ISO on real "bare metal": Ironic's `redfish` hardware type with
`redfish-virtual-media` boot and the `ramdisk` deploy, against sushy-emulator (Redfish BMC)
in front of a private libvirtd whose QEMU domain is the machine.

Everything is on loopback or in the test's own namespaces: the VM has no NIC; the BMC
downloads the ISO and the config drive from Ironic's HTTP server on 127.0.0.1 and uploads
them into the daemon's pool. What is real: Ironic validates the node, powers it through
Redfish, downloads and republishes our ISO, masters the config-2 image from the JSON our
backend sent and has the BMC insert both (CD and floppy); the VM boots the ISO from the
CD-ROM (SeaBIOS -> isolinux), reads config-2 from the floppy, prints it on its serial
console and "installs itself" onto its empty disk. Undeploy powers off and ejects.

Automated cleaning is off for this machine (`automatedCleaning: false`): Ironic cleans
through its agent (IPA) booted from a deploy ISO or kernel/ramdisk, which does not exist
offline; with it on, the undeploy would wait for an agent and end in `clean failed`."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt  # type: ignore[import-untyped]
import pytest

from capi_c3os.backends.base import MachineIdentity
from capi_c3os.dev.ironic import IronicServer
from capi_c3os.dev.k3s import console_blocks
from capi_c3os.dev.libvirtd import PrivateLibvirtd
from capi_c3os.dev.sushy import SushyEmulator
from tests.integration.ironic.lab import IronicLab, new_resource_class
from tests.integration.libvirt.conftest import CAPI, INFRA, Capi, standin_image  # noqa: F401 - a fixture
from tests.support import eventually, serving

pytestmark = pytest.mark.integration

BOOT_TIMEOUT = 300.0
"""Safety net for Ironic's deploy steps plus one TCG boot on a loaded 2-core machine."""

USER_DATA = b"#cloud-config\n# rendered for a bare-metal node\ninstall:\n  device: auto\n  reboot: true\n"

# The "server": i440fx (its floppy controller takes the config-drive medium), SeaBIOS named
# as a rom loader so sushy reports the Legacy boot mode (without a loader it reports none,
# and Ironic's switch to BIOS fails in libvirt: no firmware descriptor for 'bios'), no NIC.
DOMAIN_XML = """\
<domain type='qemu'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <loader type='rom'>/usr/share/seabios/bios-256k.bin</loader>
    <boot dev='hd'/>
  </os>
  <features><acpi/><apic/></features>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='{disk}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <serial type='file'><source path='{serial}'/><target port='0'/></serial>
    <console type='file'><source path='{serial}'/><target type='serial' port='0'/></console>
  </devices>
</domain>
"""


@pytest.fixture(scope="module")
def bmc_libvirtd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateLibvirtd]:
    """The "hardware": a private libvirtd (host network namespace: its guests get no NIC)."""
    daemon = PrivateLibvirtd(tmp_path_factory.mktemp("bm-libvirtd"))
    try:
        yield daemon.start()
    finally:
        daemon.stop()


@pytest.fixture(scope="module")
def sushy(bmc_libvirtd: PrivateLibvirtd, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SushyEmulator]:
    emulator = SushyEmulator(tmp_path_factory.mktemp("sushy"), bmc_libvirtd.uri)
    try:
        yield emulator.start()
    finally:
        emulator.stop()


@pytest.fixture(scope="module")
def redfish_ironic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IronicServer]:
    with serving(
        IronicServer(tmp_path_factory.mktemp("ironic-redfish"), redfish=True), "ironic-redfish"
    ) as server:
        yield server


def define_bare_metal(daemon: PrivateLibvirtd, name: str) -> tuple[str, Path, Path]:
    """A powered-off domain with an empty 1 GiB disk: (its UUID, disk, serial log)."""
    domain_uuid = str(uuid.uuid4())
    disk = daemon.pool_path / f"{name}-disk.raw"
    with disk.open("wb") as handle:
        handle.truncate(1024**3)
    serial = daemon.root / f"{name}-serial.log"
    xml = DOMAIN_XML.format(name=name, uuid=domain_uuid, disk=disk, serial=serial)
    conn = daemon.connect()
    try:
        conn.defineXML(xml)
        conn.storagePoolLookupByName(daemon.pool_name).refresh(0)
    finally:
        conn.close()
    return domain_uuid, disk, serial


def enroll_redfish_node(lab: IronicLab, sushy: SushyEmulator, system_uuid: str, rc: str) -> str:
    """What an operator does for a Redfish BMC: enroll, manage (Ironic checks the BMC),
    provide. The node's own automated_clean stays unset (the conductor's default)."""
    user, password = sushy.credentials
    node = lab.admin.node.create(
        driver="redfish",
        name=f"bm-{rc}",
        resource_class=rc,
        boot_interface="redfish-virtual-media",
        deploy_interface="ramdisk",
        driver_info={
            "redfish_address": sushy.url,
            "redfish_system_id": f"/redfish/v1/Systems/{system_uuid}",
            "redfish_username": user,
            "redfish_password": password,
        },
    )
    lab.admin.node.set_provision_state(node.uuid, "manage")
    lab.wait_states([node.uuid], "manageable")
    # Providing with the conductor's automated cleaning would boot the agent: not offline.
    lab.admin.node.update(node.uuid, [{"op": "add", "path": "/automated_clean", "value": False}])
    lab.admin.node.set_provision_state(node.uuid, "provide")
    lab.wait_states([node.uuid], "available")
    lab.admin.node.update(node.uuid, [{"op": "replace", "path": "/automated_clean", "value": None}])
    eventually(lambda: lab.node(node.uuid)["power_state"] == "power off", "Redfish power state read", 60)
    return str(node.uuid)


def media(sushy: SushyEmulator, system_uuid: str) -> dict[str, tuple[bool, str]]:
    return {
        k: (bool(v.get("Inserted")), v.get("Image") or "")
        for k, v in sushy.virtual_media(system_uuid).items()
    }


def test_live_iso_is_deployed_through_redfish_virtual_media_boots_with_its_config_drive_and_is_undeployed(
    capi: Capi,
    redfish_ironic: IronicServer,
    bmc_libvirtd: PrivateLibvirtd,
    sushy: SushyEmulator,
    standin_image: Path,  # noqa: F811 - the fixture imported above
    start_manager: Any,
) -> None:
    lab = IronicLab(redfish_ironic)
    rc = new_resource_class()
    system_uuid, disk, serial = define_bare_metal(bmc_libvirtd, "bm-0")
    node_uuid = enroll_redfish_node(lab, sushy, system_uuid, rc)
    iso = standin_image / "live.iso"
    iso_url = redfish_ironic.publish(iso)
    checksum = hashlib.sha256(iso.read_bytes()).hexdigest()

    manager = start_manager()
    manager.wait_ready()
    capi.create_cluster("bm", {"ironic": {"endpoint": redfish_ironic.url}})
    spec = {
        # The stand-in ISO boots with isolinux (BIOS); Ironic's default boot mode is UEFI.
        "backend": {"ironic": {"resourceClass": rc, "automatedCleaning": False, "bootMode": "bios"}},
        "image": {"url": iso_url, "checksum": checksum, "format": "iso"},
    }
    capi.create_machine("bm", "metal-0", spec, USER_DATA)
    identity = MachineIdentity(capi.namespace, "metal-0", f"c3os://{capi.namespace}/metal-0")

    def explain() -> str:
        node = lab.node(node_uuid)
        return f"{capi.ready_message('metal-0')}; node {node['provision_state']}: {node['last_error']}"

    eventually(lambda: capi.provisioned("metal-0"), "C3osMachine provisioned", BOOT_TIMEOUT, explain=explain)
    node = lab.node(node_uuid)
    assert node["provision_state"] == "active"
    assert node["instance_uuid"] == identity.uuid
    assert node["deploy_interface"] == "ramdisk"
    assert node["power_state"] == "power on"

    def booted() -> str | None:
        text = serial.read_text(errors="replace") if serial.exists() else ""
        return text if "C3OS-STANDIN READY" in text else None

    log = eventually(
        booted,
        "the live ISO to boot from virtual media",
        BOOT_TIMEOUT,
        explain=lambda: serial.read_text(errors="replace")[-2000:] if serial.exists() else "no serial output",
    )
    # The config-2 drive Ironic mastered, inserted by the BMC as a floppy: byte for byte the
    # user-data we rendered, and our meta-data.
    blocks = console_blocks(log)
    assert blocks["USER-DATA"] == USER_DATA
    assert "C3OS-STANDIN CONFIG-DRIVE /dev/fd0 config-2" in log
    meta = blocks["META-DATA"].decode()
    assert identity.uuid in meta and identity.provider_id in meta
    # It installed itself onto the node's empty disk.
    assert "C3OS-STANDIN INSTALLED vda" in log
    marker = b"C3OS-STANDIN-INSTALLED\n"
    with disk.open("rb") as handle:
        assert handle.read(len(marker) + len(USER_DATA)) == marker + USER_DATA
    # Ironic published its copy of our ISO and the config drive on its HTTP server; the
    # BMC has both inserted.
    inserted = media(sushy, system_uuid)
    assert inserted["Cd"][0] and inserted["Cd"][1].startswith(redfish_ironic.http_url)
    assert inserted["Floppy"][0] and "configdrive" in inserted["Floppy"][1]

    capi.delete(CAPI, "clusters", "bm")
    eventually(
        lambda: capi.get(INFRA, "c3osmachines", "metal-0") is None, "C3osMachine gone", 180, explain=explain
    )
    node = lab.node(node_uuid)
    assert node["provision_state"] == "available"
    assert node["instance_uuid"] is None and node["allocation_uuid"] is None
    assert lab.allocations_named(identity.resource_name) == []
    assert node["power_state"] == "power off"
    assert media(sushy, system_uuid) == {"Cd": (False, ""), "Floppy": (False, "")}
    conn = bmc_libvirtd.connect()
    try:
        assert conn.lookupByName("bm-0").state()[0] == libvirt.VIR_DOMAIN_SHUTOFF
    finally:
        conn.close()
