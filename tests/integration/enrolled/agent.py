"""A host's agent, as phase 1 of issue 17 plays it: a small Python client in the test
that speaks the enrollment protocol over HTTPS to the manager's real endpoint, pinning
the CA from the manager's Secret. (The real agent runs in the registration live ISO.)"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GIB = 1024**3


def hardware(
    system_uuid: str, *, memory_mib: int = 16384, disks: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Facts as an agent reads them from /proc, /sys and SMBIOS."""
    return {
        "cpu": {"arch": "amd64", "model": "Intel(R) Core(TM) i5-8259U", "cores": 4, "threads": 8},
        "memoryMiB": memory_mib,
        "disks": disks
        if disks is not None
        else [
            {
                "name": "/dev/nvme0n1",
                "sizeBytes": 256 * GIB,
                "model": "Samsung 970",
                "serial": "S4E",
                "rotational": False,
            },
            {"name": "/dev/sda", "sizeBytes": 16 * GIB, "model": "USB stick", "removable": True},
        ],
        "nics": [{"name": "eno1", "mac": "52:54:00:" + ":".join(system_uuid[i : i + 2] for i in (0, 2, 4))}],
        "system": {
            "uuid": system_uuid,
            "serial": "SN-" + system_uuid[:8],
            "manufacturer": "Intel Corp.",
            "product": "NUC8i5BEH",
        },
        "tpm": {"present": True, "version": "2.0"},
    }


@dataclass
class Answer:
    status: int
    body: Any
    raw: bytes = b""


@dataclass
class Agent:
    url: str
    """https://127.0.0.1:<port>"""
    ca_pem: bytes
    credential: str = field(default="", repr=False)
    namespace: str = ""
    name: str = ""

    def _context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cadata=self.ca_pem.decode())

    def call(self, method: str, path: str, secret: str, body: Any = None, raw: bytes | None = None) -> Answer:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if secret:
            request.add_header("Authorization", f"Bearer {secret}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, context=self._context(), timeout=30) as resp:
                content = resp.read()
                return Answer(resp.status, json.loads(content) if content else None, content)
        except urllib.error.HTTPError as exc:
            content = exc.read()
            return Answer(exc.code, json.loads(content) if content else None, content)

    def register(self, namespace: str, pool: str, token: str, facts: dict[str, Any]) -> Answer:
        answer = self.call(
            "POST", f"/enrollment/v1/namespaces/{namespace}/pools/{pool}/hosts", token, {"hardware": facts}
        )
        if answer.status == 200:
            self.credential = answer.body["credential"]
            self.namespace, self.name = answer.body["namespace"], answer.body["name"]
        return answer

    def assignment(self, namespace: str | None = None, name: str | None = None) -> Answer:
        ns, host = namespace or self.namespace, name or self.name
        return self.call("GET", f"/enrollment/v1/namespaces/{ns}/hosts/{host}/assignment", self.credential)

    def report(self, event: str, claim_id: str, message: str = "") -> Answer:
        path = f"/enrollment/v1/namespaces/{self.namespace}/hosts/{self.name}/reports"
        return self.call("POST", path, self.credential, {"event": event, "id": claim_id, "message": message})


def host_tree(root: Path, system_uuid: str) -> Path:
    """A fake /proc and /sys under `root` holding what `hardware(system_uuid.lower())` says, as
    Linux lays it out, plus what the agent must leave out: a bridge and loopback (no
    device), a loop device, an empty CD drive. The USB stick says removable=0, as many
    do: the agent tells it by its USB path."""

    def write(path: str, text: str) -> None:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text + "\n")

    facts = hardware(system_uuid.lower())  # as the agent reports it (Linux prints lower case)
    cpuinfo = "".join(
        f"processor\t: {i}\nmodel name\t: {facts['cpu']['model']}\nphysical id\t: 0\ncore id\t\t: {i % 4}\n\n"
        for i in range(8)
    )
    write("proc/cpuinfo", cpuinfo)
    write("proc/meminfo", f"MemTotal:       {facts['memoryMiB'] * 1024} kB\nMemFree:         1024 kB")
    dmi = "sys/class/dmi/id/"
    write(dmi + "product_uuid", system_uuid)
    write(dmi + "product_serial", facts["system"]["serial"])
    write(dmi + "sys_vendor", facts["system"]["manufacturer"] + "  ")
    write(dmi + "product_name", facts["system"]["product"])
    devices = "sys/devices/pci0000:00/"
    nvme = devices + "0000:00:1d.0/nvme/nvme0/nvme0n1"
    write(nvme + "/size", str(256 * GIB // 512))
    write(nvme + "/removable", "0")
    write(nvme + "/queue/rotational", "0")
    write(nvme + "/device/model", "Samsung 970                             ")
    write(nvme + "/device/serial", "S4E")
    stick = devices + "0000:00:14.0/usb2/2-1/2-1:1.0/host0/target0:0:0/0:0:0:0/block/sda"
    write(stick + "/size", str(16 * GIB // 512))
    write(stick + "/removable", "0")
    write(stick + "/device/model", "USB stick")
    (root / "sys/block").mkdir(parents=True)
    for name, target in (("nvme0n1", nvme), ("sda", stick)):
        (root / "sys/block" / name).symlink_to(Path("..", *Path(target).parts[1:]))
    write("sys/block/loop0/size", "2048")  # a loop device: never a disk
    write("sys/block/sr0/size", "0")  # a CD drive without a disc
    nic = facts["nics"][0]
    write(f"sys/class/net/{nic['name']}/address", nic["mac"].upper())
    (root / f"sys/class/net/{nic['name']}/device").mkdir()
    write("sys/class/net/br0/address", "52:54:00:ff:ff:ff")  # a bridge: no device
    write("sys/class/net/lo/address", "00:00:00:00:00:00")
    write("sys/class/tpm/tpm0/tpm_version_major", "2")
    return root
