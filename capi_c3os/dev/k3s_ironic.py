"""Bare-metal machines for the k3s stand-in: the nodes of a test Ironic.

fake-hardware boots nothing, so what such a machine "receives" is exactly what Ironic
would write to it: the config-2 drive Ironic holds for a node (`read_configdrive`). A node
counts as up while it is `active` (not its power state: fake deploys leave the fake power
as it was, off); it is known by its node and instance
(`ironic/<node name>/<instance uuid>`), so a node deployed again for another machine is a
new machine to k3s, and an undeployed one is down (its Node goes Ready=False). The k3s
version such a machine runs is the one its image ships: the version its image URL's name
carries Kairos style (`...-k3sv1.34.1-k3s1...`), else the stand-in's default, handed to
k3s as the image's `/etc/kairos-release`. What k3s starts from is what yip leaves when it
runs Kairos's boot stages over that drive (`yipnode.apply`, once per instance).

In-place upgrades, at file level (no OS boots here): each machine has two slots, each
holding the kairos-release of an OS and whether that OS comes up, both the image's at
first (as after an install). `upgrade` does what the stand-in image's `kairos-agent
upgrade` and boot assessment do on a VM (hack/standin-image.sh; kairos-agent v2.31.4
pkg/action/upgrade.go): the new OS (the upgrade image's /etc/kairos-release; it does not
come up when its /boot/release.img replaces /init, as the `broken-` images do) goes into
active, active into passive unless the machine booted passive; then the reboot: a new boot
id, from active (`COS_ACTIVE` on the command line) if the new OS comes up, else a failed
boot and the fallback to passive (`COS_PASSIVE upgrade_failure`). The Ironic node, its
instance and allocation are untouched: only the machine's slots change.

Use: `k3s.sources.append(IronicMachines(server))`; `upgrade_image` lays out an upgrade
image of the stand-in registry (`<images>/oci/<tag>`, `nodeupgrade.Registry`) with only
what these machines read of it, so tests need not build the stand-in image.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from capi_c3os.capi.versions import version_from_image_name
from capi_c3os.dev import yipnode
from capi_c3os.dev.ironic import IronicServer, read_configdrive
from capi_c3os.dev.k3s import Booted, shipped_k3s_version
from capi_c3os.dev.nodeupgrade import Boot, parse_release
from capi_c3os.dev.workload import STANDIN_K3S_VERSION as DEFAULT_K3S

PREFIX = "ironic/"


@dataclass(frozen=True)
class OS:
    """What a slot holds: an OS's kairos-release and whether it comes up."""

    release: dict[str, str]
    comes_up: bool = True


@dataclass
class Slots:
    active: OS
    passive: OS
    boot: Boot


def _boot(slot: str, os: OS, extra: str = "") -> Boot:
    cmdline = f"console=ttyS0 panic=5 root=LABEL=COS_{slot.upper()}{extra}"
    return Boot(str(uuid.uuid4()), cmdline, os.release, True, "")


def replaces_init(release_img: bytes) -> bool:
    """Whether a gzipped newc cpio (an upgrade image's /boot/release.img) holds /init."""
    data, names = gzip.decompress(release_img), []
    offset = 0
    while offset + 110 <= len(data) and data[offset : offset + 6] == b"070701":
        size, name_size = int(data[offset + 54 : offset + 62], 16), int(data[offset + 94 : offset + 102], 16)
        name = data[offset + 110 : offset + 110 + name_size - 1].decode(errors="replace")
        names.append(name.removeprefix("./"))
        offset = (offset + 110 + name_size + 3) & ~3
        offset = (offset + size + 3) & ~3
    return "init" in names


def upgrade_image(root: Path, version: str, broken: bool = False) -> Path:
    """An upgrade image's root at `root`, as hack/standin-image.sh lays it out, reduced to
    what `IronicMachines.upgrade` reads: /etc/kairos-release shipping k3s `version`, and
    /boot/release.img (a gzipped newc cpio of that release; `broken`: also an /init, the
    boot that never comes up)."""
    release = f'KAIROS_SOFTWARE_VERSION_PREFIX="k3s"\nKAIROS_SOFTWARE_VERSION="{version}"\n'
    cpio_root = root / "cpio"
    (cpio_root / "etc").mkdir(parents=True)
    (cpio_root / "etc" / "kairos-release").write_text(release)
    if broken:
        (cpio_root / "init").write_text("#!/bin/sh\nexit 1\n")
    (root / "etc").mkdir()
    (root / "boot").mkdir()
    (root / "etc" / "kairos-release").write_text(release)
    names = subprocess.run(["find", "."], cwd=cpio_root, capture_output=True, check=True).stdout
    packed = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=cpio_root, input=names,
                            capture_output=True, check=True).stdout  # fmt: skip
    zipped = subprocess.run(["gzip", "-9"], input=packed, capture_output=True, check=True).stdout
    (root / "boot" / "release.img").write_bytes(zipped)
    return root


class IronicMachines:
    """A `k3s.MachineSource` over the deployed nodes of one Ironic."""

    def __init__(self, server: IronicServer) -> None:
        self.server = server
        self._nodes: dict[str, tuple[str, str]] = {}  # machine name -> (node, instance) uuid
        # What an instance received never changes: master each drive once (a subprocess).
        self._received: dict[str, dict[str, bytes]] = {}
        self._booted: dict[str, Booted] = {}
        self._slots: dict[str, Slots] = {}
        self._lock = threading.Lock()

    def running(self) -> dict[str, bool]:
        fields = "uuid,name,provision_state,instance_uuid"
        nodes: list[dict[str, Any]] = self.server.request("GET", f"/v1/nodes?fields={fields}")["nodes"]
        up = {}
        with self._lock:
            for node in nodes:
                if not node.get("instance_uuid"):
                    continue
                name = f"{PREFIX}{node['name'] or node['uuid']}/{node['instance_uuid']}"
                self._nodes[name] = (node["uuid"], node["instance_uuid"])
                up[name] = node["provision_state"] == "active"
        return up

    def received(self, name: str) -> dict[str, bytes] | None:
        with self._lock:
            if name in self._received:
                return self._received[name]
            known = self._nodes.get(name)
        if known is None:
            return None
        node, instance = known
        try:
            user_data, meta_data = read_configdrive(self.server, node)
        except LookupError:  # undeployed meanwhile
            return None
        if meta_data.get("uuid") != instance:  # deployed again meanwhile: another machine's
            return None
        blocks = {
            "USER-DATA": user_data,
            "META-DATA": json.dumps(meta_data).encode(),
            "KAIROS-RELEASE": self._release(node),
        }
        with self._lock:
            self._received[name] = blocks
        return blocks

    def booted(self, name: str) -> Booted | None:
        """The machine's files after yip ran Kairos's boot stages over its drive."""
        with self._lock:
            if name in self._booted:
                return self._booted[name]
        received = self.received(name)
        if received is None:
            return None
        drive = {
            "openstack/latest/user_data": received["USER-DATA"],
            "openstack/latest/meta_data.json": received["META-DATA"],
        }
        files, _log = yipnode.apply(drive, config_2=True)
        booted = Booted(files, shipped_k3s_version(received["KAIROS-RELEASE"].decode()))
        with self._lock:
            self._booted[name] = booted
        return booted

    def boot(self, name: str) -> Boot | None:
        with self._lock:
            if name in self._slots:
                return self._slots[name].boot
        received = self.received(name)
        if received is None:
            return None
        installed = OS(parse_release(received["KAIROS-RELEASE"].decode()))
        with self._lock:
            slots = self._slots.setdefault(name, Slots(installed, installed, _boot("active", installed)))
            return slots.boot

    def slots(self, name: str) -> Slots | None:
        with self._lock:
            return self._slots.get(name)

    def upgrade(self, name: str, rootfs: Path) -> tuple[bool, str]:
        if self.boot(name) is None:
            return False, "the machine is not up"
        try:
            release = parse_release((rootfs / "etc" / "kairos-release").read_text())
            new = OS(release, not replaces_init((rootfs / "boot" / "release.img").read_bytes()))
        except (OSError, ValueError) as exc:
            return False, f"kairos-agent upgrade: not a c3os stand-in OS ({exc.__class__.__name__})"
        with self._lock:
            slots = self._slots[name]
            if "COS_PASSIVE" not in slots.boot.cmdline:
                slots.passive = slots.active  # upgrade.go: active backed up into passive
            slots.active = new
            # The reboot and boot assessment: active once; if it does not come up, passive.
            if new.comes_up:
                slots.boot = _boot("active", new)
            else:
                slots.boot = _boot("passive", slots.passive, " upgrade_failure")
        return True, "upgrade written, node rebooting"

    def _release(self, node: str) -> bytes:
        info = self.server.request("GET", f"/v1/nodes/{node}?fields=instance_info").get("instance_info") or {}
        version = version_from_image_name(str(info.get("image_source") or "")) or DEFAULT_K3S
        return (
            'KAIROS_NAME="c3os-standin"\nKAIROS_VERSION="v3.5.3-c3os-standin"\n'
            f'KAIROS_SOFTWARE_VERSION_PREFIX="k3s"\nKAIROS_SOFTWARE_VERSION="{version}"\n'
        ).encode()


__all__ = ["OS", "IronicMachines", "Slots", "replaces_init", "upgrade_image"]
