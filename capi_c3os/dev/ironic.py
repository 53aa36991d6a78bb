"""A real standalone OpenStack Ironic on loopback, for tests, benchmarks and demos.

Ironic is installed (pinned) into its own virtualenv in a cache outside the work tree,
``~/.cache/capi-c3os/ironic-<version>-venv`` (or ``CAPI_C3OS_IRONIC_VENV``), once per
machine; ``python3 -m capi_c3os.dev.ironic`` installs it and prints its path. It then runs
as the single combined ``ironic`` process (API + conductor, the only mode SQLite allows)
with ``fake-hardware`` nodes, noauth, HTTP basic auth or Keystone (a test Keystone from
``capi_c3os.dev.keystone``), optionally TLS. The recipe and
its gotchas are in ``shared/facts/ironic.md``.

With ``redfish=True`` it also drives real (virtual) machines: the ``redfish`` hardware type
with ``redfish`` power/management, ``redfish-virtual-media`` boot and the ``ramdisk``
deploy, for nodes whose BMC is a sushy-emulator (``capi_c3os.dev.sushy``) in front of a
libvirtd. The conductor publishes what it hands a BMC (the boot ISO it downloaded, the
config-2 image it mastered) under ``[deploy] http_root``, which a plain HTTP server on
loopback serves at ``[deploy] http_url``; tests put their images under its ``images/``.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import shutil
import sqlite3
import subprocess
import sys
import urllib.request
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pycdlib

from capi_c3os.dev.keystone import IronicIdentities
from capi_c3os.dev.processes import ManagedProcess, ProcessError, free_port
from capi_c3os.dev.venvs import PinnedVenv, bcrypt_hash

IRONIC_VERSION = "39.0.0"
IRONICCLIENT_VERSION = "6.3.0"
REQUIREMENTS = (f"ironic=={IRONIC_VERSION}", f"python-ironicclient=={IRONICCLIENT_VERSION}")

LOOPBACK = "127.0.0.1"


VENV = PinnedVenv("Ironic", f"ironic-{IRONIC_VERSION}-venv", REQUIREMENTS, "CAPI_C3OS_IRONIC_VENV")


# Ironic 39 retries SQLite's "database is locked" (its `wrap_sqlite_retry`) on node writes
# but not on the allocation writes. Under concurrent undeploys a teardown worker dies in
# `destroy_allocation` right after "Successfully unprovisioned": the node stays `deleting`
# for good (only a conductor restart moves it on, to `error`). The test Ironic is started
# through this launcher, which applies Ironic's own retry to those four methods; nothing
# else of Ironic is changed. Production Ironics on MySQL/PostgreSQL never take this path.
SQLITE_RETRY_LAUNCHER = """
import sys
from ironic.db.sqlalchemy import api
for name in ("create_allocation", "update_allocation", "take_over_allocation", "destroy_allocation"):
    setattr(api.Connection, name, api.wrap_sqlite_retry(getattr(api.Connection, name)))
from ironic.command.singleprocess import main
sys.argv[0] = "ironic"
sys.exit(main())
"""


def _run(argv: list[str], cwd: Path | None = None) -> None:
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ProcessError(f"{' '.join(argv[:3])} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")


@dataclass
class IronicServer:
    """One Ironic with its own directory (config, SQLite database, locks, log)."""

    root: Path
    http_basic: tuple[str, str] | None = None
    """(user, password): serve with HTTP basic auth instead of noauth."""
    keystone: IronicIdentities | None = None
    """Serve with auth_strategy keystone: tokens are validated as `keystone.service`, and
    this module's own requests authenticate as `keystone.operator`."""
    tls: tuple[Path, Path] | None = None
    """(certificate, key) files: serve HTTPS with them."""
    ca_file: Path | None = None
    """CA bundle that verifies the serving certificate (for this module's own requests)."""
    deploy_callback_timeout: int = 6
    """Seconds a `direct` deploy (or a clean) waits for the agent before Ironic fails it:
    with fake power no agent ever calls back, which gives tests a real failure."""
    sqlite_allocation_retries: bool = True
    """Start Ironic through SQLITE_RETRY_LAUNCHER (False: the plain `ironic` command, to
    show the upstream bug)."""
    redfish: bool = False
    """Also enable the redfish hardware type, virtual media boot and the HTTP server (see
    the module's docstring); fake-hardware stays available and the default."""
    http_port: int = field(default_factory=free_port)
    http_process: ManagedProcess | None = None
    port: int = field(default_factory=free_port)
    process: ManagedProcess | None = None
    venv: Path | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{LOOPBACK}:{self.port}"

    @property
    def config_file(self) -> Path:
        return self.root / "ironic.conf"

    @property
    def log_path(self) -> Path:
        return self.root / "ironic.log"

    @property
    def http_root(self) -> Path:
        """What the HTTP server serves (redfish=True)."""
        return self.root / "httpboot"

    @property
    def http_url(self) -> str:
        return f"http://{LOOPBACK}:{self.http_port}"

    def publish(self, path: Path) -> str:
        """A file served to BMCs and the conductor (redfish=True): its URL."""
        images = self.http_root / "images"
        images.mkdir(parents=True, exist_ok=True)
        target = images / path.name
        shutil.copyfile(path, target)
        return f"{self.http_url}/images/{path.name}"

    @property
    def hardware_types(self) -> tuple[str, ...]:
        return ("fake-hardware", "redfish") if self.redfish else ("fake-hardware",)

    def write_config(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "locks").mkdir(exist_ok=True)
        auth = "noauth"
        extra_default = ""
        if self.http_basic:
            auth = "http_basic"
            users = self.root / "htpasswd"
            users.write_text(f"{self.http_basic[0]}:{bcrypt_hash(self._venv, self.http_basic[1])}\n")
            extra_default = f"http_basic_auth_user_file = {users}\n"
        authtoken = ""
        if self.keystone:
            auth = "keystone"
            authtoken = self.keystone.authtoken_config()
        api_tls = ""
        if self.tls:
            api_tls = f"enable_ssl_api = true\n[ssl]\ncert_file = {self.tls[0]}\nkey_file = {self.tls[1]}\n"
        interfaces = {
            "boot": "fake",
            "deploy": "fake,direct,ramdisk",
            "management": "fake",
            "power": "fake",
            "inspect": "fake,no-inspect",
            "console": "no-console",
            "raid": "fake,no-raid",
            "vendor": "fake,no-vendor",
            "bios": "fake,no-bios",
            "rescue": "fake,no-rescue",
            "firmware": "fake,no-firmware",
        }
        extra_sections = ""
        if self.redfish:
            interfaces["boot"] += ",redfish-virtual-media"
            interfaces["management"] += ",redfish"
            interfaces["power"] += ",redfish"
            # Downloads (the boot ISO, into the master ISO cache) and temporary files stay
            # under root; published images land in http_root, served on loopback.
            (self.root / "tmp").mkdir(exist_ok=True)
            self.http_root.mkdir(exist_ok=True)
            extra_default += f"tempdir = {self.root / 'tmp'}\n"
            extra_sections = f"""[deploy]
http_url = {self.http_url}
http_root = {self.http_root}
iso_master_path = {self.root / "master_iso_images"}
ramdisk_image_download_source = local
[nova]
send_power_notifications = false
"""
        enabled = "".join(f"enabled_{kind}_interfaces = {names}\n" for kind, names in interfaces.items())
        self.config_file.write_text(
            f"""[DEFAULT]
auth_strategy = {auth}
{extra_default}host = capi-c3os-test
rpc_transport = none
enabled_hardware_types = {",".join(self.hardware_types)}
{enabled}enabled_network_interfaces = noop
default_network_interface = noop
minimum_memory_warning_only = true
log_file = {self.log_path}
[api]
host_ip = {LOOPBACK}
port = {self.port}
{api_tls}[database]
connection = sqlite:///{self.root / "ironic.sqlite"}?timeout=30
[dhcp]
dhcp_provider = none
[conductor]
automated_clean = true
sync_power_state_interval = 60
deploy_callback_timeout = {self.deploy_callback_timeout}
clean_callback_timeout = {self.deploy_callback_timeout}
check_provision_state_interval = 1
[oslo_concurrency]
lock_path = {self.root / "locks"}
{extra_sections}{authtoken}"""
        )

    @property
    def _venv(self) -> Path:
        if self.venv is None:
            self.venv = VENV.ensure()
        return self.venv

    def start(self, timeout: float = 120.0) -> IronicServer:
        venv = self._venv
        self.write_config()
        _run([str(venv / "bin" / "ironic-dbsync"), "--config-file", str(self.config_file), "create_schema"])
        if self.redfish:
            self._start_http(venv)
        return self._launch(timeout)

    def _start_http(self, venv: Path) -> None:
        argv = [str(venv / "bin" / "python"), "-m", "http.server", str(self.http_port), "--bind", LOOPBACK]
        argv += ["--directory", str(self.http_root)]
        self.http_process = ManagedProcess("ironic-http", argv, self.root / "http.log")
        self.http_process.start()
        self.http_process.wait_until(self._http_answers, "Ironic's HTTP server", 30)

    def _http_answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.http_url + "/", timeout=5):
                return True
        except OSError:
            return False

    def restart(self, timeout: float = 120.0) -> IronicServer:
        """Stop and start again on the same database and port (what an operator's restart of
        the conductor does: nodes left in a transient state are failed on start). The HTTP
        server keeps running."""
        if self.process is not None:
            self.process.stop()
        return self._launch(timeout)

    def _launch(self, timeout: float) -> IronicServer:
        venv = self._venv
        self.process = ManagedProcess(
            "ironic",
            [*self._command(venv), "--config-file", str(self.config_file)],
            self.root / "ironic.out",
        )
        self.process.start()
        try:
            # The API answers before the conductor has registered its drivers; nodes can
            # be enrolled only once fake-hardware is listed.
            self.process.wait_until(
                self._driver_ready, f"Ironic API with {', '.join(self.hardware_types)}", timeout
            )
        except BaseException:
            self.stop()  # its own process group: nothing outlives a failed start
            raise
        return self

    def _command(self, venv: Path) -> list[str]:
        if self.sqlite_allocation_retries:
            return [str(venv / "bin" / "python"), "-c", SQLITE_RETRY_LAUNCHER]
        return [str(venv / "bin" / "ironic")]

    def _driver_ready(self) -> bool:
        try:
            body = self.request("GET", "/v1/drivers")
        except OSError:
            return False
        names = {d.get("name") for d in body.get("drivers", [])}
        return names.issuperset(self.hardware_types)

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """A raw API call with the standard library (readiness checks, test set-up)."""
        import base64  # noqa: PLC0415
        import ssl  # noqa: PLC0415

        headers = {"X-OpenStack-Ironic-API-Version": "latest", "Content-Type": "application/json"}
        if self.http_basic:
            token = base64.b64encode(f"{self.http_basic[0]}:{self.http_basic[1]}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        if self.keystone:
            headers["X-Auth-Token"] = self.keystone.operator.token()
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        context = None
        if self.tls:
            context = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        with urllib.request.urlopen(req, timeout=10, context=context) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
        if self.http_process is not None:
            self.http_process.stop()

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


# Ironic keeps the config drive as its JSON source and masters the ISO when a deploy
# interface needs it (agent, redfish virtual media) with this very function; fake-hardware
# never does, so read_configdrive has Ironic master it the same way.
MASTER_CONFIGDRIVE = """
import json, sys, types
from ironic.conductor import configdrive_utils
node = types.SimpleNamespace(**json.load(sys.stdin))
sys.stdout.write(configdrive_utils.get_configdrive_image(node))
"""
CONFIGDRIVE_ROOT = "/openstack/latest"


def read_configdrive(server: IronicServer, node_uuid: str) -> tuple[bytes, dict[str, Any]]:
    """What the bare-metal machine behind `node_uuid` would boot with: the config drive Ironic
    holds for it (read from Ironic's own database: the API shows `******`), as the ISO Ironic
    writes to the machine, decoded: (`openstack/latest/user_data`, `meta_data.json`)."""
    database = f"file:{server.root / 'ironic.sqlite'}?mode=ro"
    with closing(sqlite3.connect(database, uri=True, timeout=30)) as db:
        query = "SELECT uuid, name, instance_info FROM nodes WHERE uuid = ?"
        row = db.execute(query, (node_uuid,)).fetchone()
    if row is None:
        raise LookupError(f"Ironic has no node {node_uuid}")
    uuid, name, raw_info = row
    info = json.loads(raw_info or "{}")
    if not info.get("configdrive"):
        raise LookupError(f"node {node_uuid} holds no config drive (it is not deployed)")
    if not any(shutil.which(tool) for tool in ("genisoimage", "mkisofs", "xorrisofs")):
        raise ProcessError("Ironic masters config drives with genisoimage, mkisofs or xorrisofs: install one")
    proc = subprocess.run(
        [str(server._venv / "bin" / "python"), "-c", MASTER_CONFIGDRIVE],
        input=json.dumps({"uuid": uuid, "name": name, "instance_info": info}),
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise ProcessError(f"Ironic could not master the config drive of {node_uuid}:\n{proc.stderr[-2000:]}")
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(gzip.decompress(base64.b64decode(proc.stdout))))
    try:
        if iso.pvd.volume_identifier.decode().strip() != "config-2":
            raise ProcessError(f"the config drive of {node_uuid} is not labelled config-2")
        user_data, meta_data = (_iso_file(iso, name) for name in ("user_data", "meta_data.json"))
    finally:
        iso.close()
    return user_data, json.loads(meta_data)


def _iso_file(iso: pycdlib.PyCdlib, name: str) -> bytes:
    out = io.BytesIO()
    iso.get_file_from_iso_fp(out, rr_path=f"{CONFIGDRIVE_ROOT}/{name}")
    return out.getvalue()


def main() -> int:
    return VENV.main("ironic")


if __name__ == "__main__":
    sys.exit(main())
