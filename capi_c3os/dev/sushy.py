"""A Redfish BMC for libvirt domains: sushy-tools' `sushy-emulator` on loopback, for tests.

With its libvirt driver each domain of the given libvirtd is a Redfish System: power,
boot device and virtual media (an ISO URL "inserted" is downloaded by the emulator,
uploaded into the daemon's storage pool and attached as a CD-ROM; a `Floppy`/`USBStick`
medium becomes a floppy disk). Ironic's `redfish` hardware type then drives those
domains as bare metal. Installed (pinned) into its own virtualenv in a cache outside the
work tree, ``~/.cache/capi-c3os/sushy-tools-<version>-venv`` (or
``CAPI_C3OS_SUSHY_VENV``); libvirt-python is built there against libvirt-dev.
``python3 -m capi_c3os.dev.sushy`` installs it and prints its path.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from capi_c3os.dev.processes import ManagedProcess, ProcessError, free_port
from capi_c3os.dev.venvs import PinnedVenv, bcrypt_hash

SUSHY_TOOLS_VERSION = "2.2.0"
LIBVIRT_PYTHON_VERSION = "12.8.0"
REQUIREMENTS = (f"sushy-tools=={SUSHY_TOOLS_VERSION}", f"libvirt-python=={LIBVIRT_PYTHON_VERSION}")

LOOPBACK = "127.0.0.1"


VENV = PinnedVenv(
    "sushy-tools", f"sushy-tools-{SUSHY_TOOLS_VERSION}-venv", REQUIREMENTS, "CAPI_C3OS_SUSHY_VENV"
)


def _run(argv: list[str]) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ProcessError(f"{' '.join(argv[:3])} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc.stdout


@dataclass
class SushyEmulator:
    """One sushy-emulator serving the domains of the libvirtd at `libvirt_uri`, with HTTP
    basic auth (`credentials`), its state and temporary downloads under `root`."""

    root: Path
    libvirt_uri: str
    pool: str = "default"
    """The daemon's storage pool where inserted media are uploaded."""
    credentials: tuple[str, str] = ("redfish-admin", "redfish-password")
    port: int = field(default_factory=free_port)
    process: ManagedProcess | None = None
    venv: Path | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.root / "sushy.log"

    def start(self, timeout: float = 60.0) -> SushyEmulator:
        venv = self.venv = self.venv or VENV.ensure()
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "tmp").mkdir(exist_ok=True)
        users = self.root / "htpasswd"
        users.write_text(f"{self.credentials[0]}:{bcrypt_hash(venv, self.credentials[1])}\n")
        config = self.root / "emulator.conf"
        settings: dict[str, Any] = {
            "SUSHY_EMULATOR_LISTEN_IP": LOOPBACK,
            "SUSHY_EMULATOR_LISTEN_PORT": self.port,
            "SUSHY_EMULATOR_LIBVIRT_URI": self.libvirt_uri,
            "SUSHY_EMULATOR_STORAGE_POOL": self.pool,
            "SUSHY_EMULATOR_STATE_DIR": str(self.root / "state"),
            "SUSHY_EMULATOR_AUTH_FILE": str(users),
        }
        config.write_text("".join(f"{key} = {value!r}\n" for key, value in settings.items()))
        env = {"TMPDIR": str(self.root / "tmp")}  # where downloaded media wait for upload
        self.process = ManagedProcess(
            "sushy-emulator",
            [str(venv / "bin" / "sushy-emulator"), "--config", str(config)],
            self.log_path,
            env=env,
        )
        self.process.start()
        try:
            self.process.wait_until(self._answers, "sushy-emulator answering", timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _answers(self) -> bool:
        try:
            self.get("/redfish/v1/Systems")
        except (OSError, urllib.error.HTTPError):
            return False
        return True

    def get(self, path: str) -> Any:
        token = base64.b64encode(":".join(self.credentials).encode()).decode()
        req = urllib.request.Request(self.url + path, headers={"Authorization": f"Basic {token}"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def virtual_media(self, system_id: str) -> dict[str, dict[str, Any]]:
        """The system's virtual media devices by id (`Cd`, `Floppy`): `Inserted`, `Image`."""
        found = {}
        collection = self.get(f"/redfish/v1/Systems/{system_id}/VirtualMedia")
        for member in collection.get("Members", []):
            device = self.get(member["@odata.id"])
            found[device["Id"]] = device
        return found

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


def main() -> int:
    return VENV.main("sushy-tools")


if __name__ == "__main__":
    sys.exit(main())
