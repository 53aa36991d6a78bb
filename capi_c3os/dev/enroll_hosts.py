"""Enrolled hosts as VMs of a `PrivateLibvirtd` (its network namespace: bridge
192.168.150.1): "bare metal" that boots hack/standin-image.sh's register.iso, whose
agent enrolls with the settings of a small `C3OS-ENROLL` ISO (`settings_iso`), installs
the stand-in onto its disk when claimed, reboots into it and reports booted, and wipes
the disk on reset. The manager's enrollment endpoint listens on the host's loopback; a
`relay.Relay` in the daemon's namespace (`HostVMs.start`) is what the hosts reach.

Each VM: 1 vCPU, `memory_mib`, a blank `DISK_MIB` qcow2 (`vda`, the install target), the
registration ISO on the first CD-ROM and the settings ISO on the second, one NIC on the
daemon's NAT network, and a serial console logged where the k3s stand-in reads it
(`/var/log/libvirt/qemu/<name>-serial.log`, appended across reboots). The firmware
boots the disk, else the CD: a wiped disk boots registration again. Its SMBIOS system
UUID is the domain's, so the host registers as `host-<uuid>`."""

from __future__ import annotations

import io
import subprocess
import uuid as uuidlib
from contextlib import closing, suppress
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape

import libvirt  # type: ignore[import-untyped]  # libvirt-python ships no type hints
import pycdlib

from capi_c3os.dev.libvirtd import NETWORK_NAME, PrivateLibvirtd
from capi_c3os.dev.processes import free_port
from capi_c3os.dev.relay import Relay

SETTINGS_LABEL = "C3OS-ENROLL"
DISK_MIB = 72
"""The install layout needs 69 MiB (standin-image.sh: cidata 4 MiB + C3OSBOOT 64 MiB)."""
RELAY_HOST = "192.168.150.1"
"""The daemon's bridge address: where the relay listens, what the hosts dial."""

DOMAIN_XML = """\
<domain type='qemu'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  <memory unit='MiB'>{memory}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64'>hvm</type>
    <boot dev='hd'/>
    <boot dev='cdrom'/>
  </os>
  <features><acpi/><apic/></features>
  <on_reboot>restart</on_reboot>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{disk}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <source file='{register}'/>
      <target dev='sda' bus='sata'/>
      <readonly/>
    </disk>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <source file='{settings}'/>
      <target dev='sdb' bus='sata'/>
      <readonly/>
    </disk>
    <interface type='network'>
      <source network='{network}'/>
      <model type='virtio'/>
    </interface>
    <serial type='pty'>
      <log file='/var/log/libvirt/qemu/{name}-serial.log' append='on'/>
      <target port='0'/>
    </serial>
    <console type='pty'><target type='serial' port='0'/></console>
    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
    <memballoon model='none'/>
  </devices>
</domain>
"""


def settings_iso(
    url: str, namespace: str, pool: str, token: str, ca_pem: bytes, poll_seconds: int = 0
) -> bytes:
    """The C3OS-ENROLL drive the registration image reads: one file per setting
    (`url`, `namespace`, `pool`, `token`, `ca.crt`, `poll-seconds`)."""
    files = {
        "url": url.encode(),
        "namespace": namespace.encode(),
        "pool": pool.encode(),
        "token": token.encode(),
        "ca.crt": ca_pem,
        "poll-seconds": str(poll_seconds).encode(),
    }
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident=SETTINGS_LABEL)
    for index, (name, content) in enumerate(files.items()):
        iso.add_fp(io.BytesIO(content), len(content), f"/F{index}.;1", rr_name=name, joliet_path=f"/{name}")
    out = io.BytesIO()
    iso.write_fp(out)
    iso.close()
    return out.getvalue()


@dataclass
class HostVM:
    name: str
    uuid: str
    disk: Path

    @property
    def host(self) -> str:
        """The C3osHost it registers as."""
        return f"host-{self.uuid}"

    def disk_bytes(self) -> bytes:
        """The disk's guest-visible content (qemu-img convert to raw)."""
        raw = self.disk.with_suffix(".raw")
        subprocess.run(["qemu-img", "convert", "-U", "-O", "raw", str(self.disk), str(raw)], check=True)
        try:
            return raw.read_bytes()
        finally:
            raw.unlink()


@dataclass
class HostVMs:
    """`count` hosts in `daemon`, enrolling at `target` (the endpoint on the host's
    loopback) through a relay at RELAY_HOST:`relay_port`."""

    daemon: PrivateLibvirtd
    workdir: Path
    register_iso: Path
    memory_mib: int = 256
    relay_port: int = field(default_factory=free_port)
    vms: list[HostVM] = field(default_factory=list)
    relay: Relay | None = None

    @property
    def url(self) -> str:
        return f"https://{RELAY_HOST}:{self.relay_port}"

    def start_relay(self, target: tuple[str, int]) -> Relay:
        self.relay = Relay(self.daemon.netns, (RELAY_HOST, self.relay_port), target).start()
        return self.relay

    def add(self, name: str, settings: bytes) -> HostVM:
        """Define and start one host with these settings (`settings_iso`)."""
        vm = HostVM(name, str(uuidlib.uuid4()), self.workdir / f"{name}.qcow2")
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(vm.disk), f"{DISK_MIB}M"], check=True)
        settings_path = self.workdir / f"{name}-settings.iso"
        settings_path.write_bytes(settings)
        xml = DOMAIN_XML.format(
            name=escape(name),
            uuid=vm.uuid,
            memory=self.memory_mib,
            disk=escape(str(vm.disk)),
            register=escape(str(self.register_iso)),
            settings=escape(str(settings_path)),
            network=NETWORK_NAME,
        )
        with closing(self.daemon.connect()) as conn:
            conn.defineXML(xml).create()
        self.vms.append(vm)
        return vm

    def reboot(self, vm: HostVM) -> None:
        """A hard reset (the power button): RAM is gone, the disk stays."""
        with closing(self.daemon.connect()) as conn:
            conn.lookupByName(vm.name).reset(0)

    def stop(self) -> None:
        with closing(self.daemon.connect()) as conn:
            for vm in self.vms:
                with suppress(libvirt.libvirtError):
                    dom = conn.lookupByName(vm.name)
                    with suppress(libvirt.libvirtError):
                        dom.destroy()
                    dom.undefine()
        if self.relay is not None:
            self.relay.stop()
