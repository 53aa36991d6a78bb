"""A real standalone OpenStack Ironic on loopback, for tests, benchmarks and demos.

Ironic is installed (pinned) into its own virtualenv in a cache outside the work tree,
``~/.cache/capi-c3os/ironic-<version>-venv`` (or ``CAPI_C3OS_IRONIC_VENV``), once per
machine; ``python3 -m capi_c3os.dev.ironic`` installs it and prints its path. It serves
``fake-hardware`` nodes with noauth, HTTP basic auth or Keystone (a test Keystone from
``capi_c3os.dev.keystone``), optionally TLS, in one of two shapes (``Shape``; the default
from ``CAPI_C3OS_IRONIC_SHAPE``, else ``single``):

- ``single``: the combined ``ironic`` process (API + conductor, the only mode SQLite
  allows) on SQLite, with the short intervals tests want (``TEST_CONDUCTOR``);
- ``production``: a private MariaDB (``capi_c3os.dev.mariadb``), the API under gunicorn
  (worker processes with threads, Ironic's own WSGI entry point) and a separate
  ``ironic-conductor`` that the API reaches over json-rpc on loopback, with Ironic's own
  interval defaults unless overridden (``conductor``).

The recipe and its gotchas are in ``shared/facts/ironic.md``.

With ``redfish=True`` it also drives real (virtual) machines: the ``redfish`` hardware type
with ``redfish`` power/management, ``redfish-virtual-media`` boot and the ``ramdisk``
deploy, for nodes whose BMC is a sushy-emulator (``capi_c3os.dev.sushy``) in front of a
libvirtd. The conductor publishes what it hands a BMC (the boot ISO it downloaded, the
config-2 image it mastered) under ``[deploy] http_root``, which a plain HTTP server on
loopback serves at ``[deploy] http_url``; tests put their images under its ``images/``.
"""

from __future__ import annotations

import base64
import enum
import gzip
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pycdlib

from capi_c3os.dev.keystone import IronicIdentities
from capi_c3os.dev.mariadb import MariaDB
from capi_c3os.dev.processes import ManagedProcess, ProcessError, free_port
from capi_c3os.dev.venvs import PinnedVenv, bcrypt_hash

IRONIC_VERSION = "39.0.0"
IRONICCLIENT_VERSION = "6.3.0"
# gunicorn serves the API of the production shape (a pure-Python wheel, so it installs
# into this virtualenv's interpreter as it is: uWSGI, what Ironic's DevStack plugin uses,
# compiles against the interpreter, and Debian's uwsgi-plugin-python3 serves Debian's
# Python, not this one); PyMySQL is the MySQL driver oslo.db documents for Ironic.
GUNICORN_VERSION = "27.0.1"
PYMYSQL_VERSION = "1.2.4"
REQUIREMENTS = (
    f"ironic=={IRONIC_VERSION}",
    f"python-ironicclient=={IRONICCLIENT_VERSION}",
    f"gunicorn=={GUNICORN_VERSION}",
    f"PyMySQL=={PYMYSQL_VERSION}",
)

LOOPBACK = "127.0.0.1"


VENV = PinnedVenv("Ironic", f"ironic-{IRONIC_VERSION}-venv", REQUIREMENTS, "CAPI_C3OS_IRONIC_VENV")


class Shape(enum.StrEnum):
    SINGLE = "single"
    """One `ironic` process (API + conductor) on SQLite: quick to start, the tests' default."""
    PRODUCTION = "production"
    """MariaDB, the API under gunicorn, a separate conductor over json-rpc."""


SHAPE_ENV = "CAPI_C3OS_IRONIC_SHAPE"


def default_shape() -> Shape:
    """The shape `CAPI_C3OS_IRONIC_SHAPE` names (benchmarks, a test run against the
    production shape), else `single`."""
    name = os.environ.get(SHAPE_ENV, Shape.SINGLE.value)
    try:
        return Shape(name)
    except ValueError:
        known = ", ".join(s.value for s in Shape)
        raise ValueError(f"{SHAPE_ENV}={name!r} is not a shape of the test Ironic ({known})") from None


TEST_CONDUCTOR: Mapping[str, int] = {
    "sync_power_state_interval": 60,
    # A deploy or clean that waits for an agent (none exists with fake power) fails after
    # 6 s, noticed within a second: real failures for tests, quickly.
    "deploy_callback_timeout": 6,
    "clean_callback_timeout": 6,
    "check_provision_state_interval": 1,
}
"""[conductor] options of the single shape. The production shape keeps Ironic's own
defaults (ironic/conf/conductor.py of the installed version: sync_power_state_interval
120, check_provision_state_interval 60, check_allocations_interval 60,
deploy_callback_timeout and clean_callback_timeout 1800) unless `conductor` overrides them."""

FAST_FAILURES: Mapping[str, int] = {
    key: TEST_CONDUCTOR[key]
    for key in ("deploy_callback_timeout", "clean_callback_timeout", "check_provision_state_interval")
}
"""The overrides tests of failure paths need in any shape (an agent that never calls back)."""


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


# Ironic's own WSGI entry point (the `ironic.wsgi` module: threading backend, then the
# application), with the configuration named: under a WSGI server sys.argv is the server's.
API_WSGI = """
import oslo_service.backend as backend
backend.init_backend(backend.BackendType.THREADING)
from ironic.api import wsgi
application = wsgi.initialize_wsgi_app({argv!r})
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
    shape: Shape = field(default_factory=default_shape)
    conductor: Mapping[str, int | str] = field(default_factory=dict)
    """[conductor] options over the shape's own (TEST_CONDUCTOR for `single`, Ironic's
    defaults for `production`), e.g. FAST_FAILURES."""
    api_workers: int = field(default_factory=lambda: min(os.cpu_count() or 1, 4))
    """Production shape: gunicorn worker processes (Ironic's rule for [api] api_workers:
    the CPUs, at most 4)."""
    api_threads: int = 10
    """Production shape: threads per API worker (as many as the single process's embedded
    server has in all)."""
    sqlite_allocation_retries: bool = True
    """Single shape: start Ironic through SQLITE_RETRY_LAUNCHER (False: the plain `ironic`
    command, to show the upstream bug)."""
    redfish: bool = False
    """Also enable the redfish hardware type, virtual media boot and the HTTP server (see
    the module's docstring); fake-hardware stays available and the default."""
    http_port: int = field(default_factory=free_port)
    http_process: ManagedProcess | None = None
    port: int = field(default_factory=free_port)
    process: ManagedProcess | None = None
    """The combined process (single) or the API's gunicorn (production)."""
    json_rpc_port: int = field(default_factory=free_port)
    conductor_process: ManagedProcess | None = None
    mariadb: MariaDB | None = None
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
        """Ironic's log of the API requests (the combined process's whole log)."""
        return self.root / "ironic.log"

    @property
    def conductor_log_path(self) -> Path:
        """The conductor's log (production; single: log_path)."""
        return self.root / "ironic-conductor.log" if self.shape is Shape.PRODUCTION else self.log_path

    @property
    def database_url(self) -> str:
        """Ironic's database (SQLAlchemy URL; MariaDB's holds its password)."""
        if self.shape is Shape.PRODUCTION:
            if self.mariadb is None:
                self.mariadb = MariaDB(self.root / "mariadb")
            return self.mariadb.url()
        return f"sqlite:///{self.root / 'ironic.sqlite'}?timeout=30"

    @property
    def conductor_options(self) -> dict[str, int | str]:
        base = TEST_CONDUCTOR if self.shape is Shape.SINGLE else {}
        return {"automated_clean": "true", **base, **self.conductor}

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
        extra_sections = ""
        api_tls = ""
        if self.tls and self.shape is Shape.SINGLE:  # gunicorn serves TLS in production
            api_tls = f"enable_ssl_api = true\n[ssl]\ncert_file = {self.tls[0]}\nkey_file = {self.tls[1]}\n"
        if self.shape is Shape.PRODUCTION:
            # The conductor registers as 127.0.0.1 and the API calls it there on the
            # json-rpc port; that channel is loopback only and unauthenticated in tests
            # whatever the API's own auth is.
            rpc = "json-rpc"
            host = LOOPBACK
            extra_sections += f"""[json_rpc]
auth_strategy = noauth
host_ip = {LOOPBACK}
port = {self.json_rpc_port}
"""
        else:
            rpc, host = "none", "capi-c3os-test"
        conductor = "".join(f"{key} = {value}\n" for key, value in self.conductor_options.items())
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
        if self.redfish:
            interfaces["boot"] += ",redfish-virtual-media"
            interfaces["management"] += ",redfish"
            interfaces["power"] += ",redfish"
            # Downloads (the boot ISO, into the master ISO cache) and temporary files stay
            # under root; published images land in http_root, served on loopback.
            (self.root / "tmp").mkdir(exist_ok=True)
            self.http_root.mkdir(exist_ok=True)
            extra_default += f"tempdir = {self.root / 'tmp'}\n"
            extra_sections += f"""[deploy]
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
{extra_default}host = {host}
rpc_transport = {rpc}
enabled_hardware_types = {",".join(self.hardware_types)}
{enabled}enabled_network_interfaces = noop
default_network_interface = noop
minimum_memory_warning_only = true
log_file = {self.log_path}
[api]
host_ip = {LOOPBACK}
port = {self.port}
{api_tls}[database]
connection = {self.database_url}
[dhcp]
dhcp_provider = none
[conductor]
{conductor}[oslo_concurrency]
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
        if self.mariadb is not None:
            self.mariadb.start()
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
        """Stop and start the conductor again on the same database and ports (what an
        operator's restart of the conductor does: nodes left in a transient state are
        failed on start). Single shape: the whole combined process. The HTTP server,
        MariaDB and the production API keep running."""
        conductor = self.conductor_process if self.shape is Shape.PRODUCTION else self.process
        if conductor is not None:
            conductor.stop()
        return self._launch(timeout)

    def _launch(self, timeout: float) -> IronicServer:
        venv = self._venv
        if self.shape is Shape.PRODUCTION:
            self.conductor_process = ManagedProcess(
                "ironic-conductor",
                [str(venv / "bin" / "ironic-conductor"), *self._args(self.conductor_log_path)],
                self.root / "ironic-conductor.out",
            )
            self.conductor_process.start()
            if self.process is None or not self.process.alive():
                api_out = self.root / "ironic-api.out"
                self.process = ManagedProcess("ironic-api", self._gunicorn(venv), api_out)
                self.process.start()
        else:
            argv = [*self._command(venv), "--config-file", str(self.config_file)]
            self.process = ManagedProcess("ironic", argv, self.root / "ironic.out")
            self.process.start()
        assert self.process is not None
        try:
            # The API answers before the conductor has registered its drivers; nodes can
            # be enrolled only once fake-hardware is listed (and, in production, once the
            # conductor takes json-rpc calls).
            self.process.wait_until(self._ready, f"Ironic API with {', '.join(self.hardware_types)}", timeout)
        except BaseException:
            self.stop()  # its own process group: nothing outlives a failed start
            raise
        return self

    def _args(self, log: Path) -> list[str]:
        return ["--config-file", str(self.config_file), "--log-file", str(log)]

    def _gunicorn(self, venv: Path) -> list[str]:
        """The API under gunicorn: worker processes with threads (gthread), each loading
        Ironic's WSGI application (API_WSGI); its listen backlog is gunicorn's (2048)."""
        module = self.root / "capi_c3os_ironic_api.py"
        module.write_text(API_WSGI.format(argv=["ironic-api", *self._args(self.log_path)]))
        argv = [str(venv / "bin" / "gunicorn"), "--bind", f"{LOOPBACK}:{self.port}"]
        argv += ["--workers", str(self.api_workers), "--threads", str(self.api_threads)]
        argv += ["--worker-class", "gthread"]
        # No control socket: gunicorn would put it in $HOME, one for every instance.
        argv += ["--pythonpath", str(self.root), "--graceful-timeout", "5", "--no-control-socket"]
        if self.tls:
            argv += ["--certfile", str(self.tls[0]), "--keyfile", str(self.tls[1])]
        return [*argv, f"{module.stem}:application"]

    def _command(self, venv: Path) -> list[str]:
        if self.sqlite_allocation_retries:
            return [str(venv / "bin" / "python"), "-c", SQLITE_RETRY_LAUNCHER]
        return [str(venv / "bin" / "ironic")]

    def _ready(self) -> bool:
        if self.shape is Shape.PRODUCTION:
            conductor = self.conductor_process
            if conductor is None or not conductor.alive():
                raise ProcessError(f"ironic-conductor exited:\n{conductor.tail() if conductor else ''}")
            try:
                with socket.create_connection((LOOPBACK, self.json_rpc_port), timeout=1):
                    pass
            except OSError:
                return False
        return self._driver_ready()

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
        for process in (self.process, self.conductor_process, self.http_process):
            if process is not None:
                process.stop()
        if self.mariadb is not None:
            self.mariadb.stop()  # last: the conductor writes its goodbye to the database

    def tail(self, lines: int = 40) -> str:
        logs = [self.log_path]
        if self.shape is Shape.PRODUCTION:
            logs += [self.conductor_log_path, self.root / "ironic-api.out"]
        parts = []
        for log in logs:
            try:
                text = "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
            except FileNotFoundError:
                text = "(no log)"
            parts.append(text if len(logs) == 1 else f"--- {log.name}\n{text}")
        return "\n".join(parts)


# Ironic keeps the config drive as its JSON source and masters the ISO when a deploy
# interface needs it (agent, redfish virtual media) with this very function; fake-hardware
# never does, so read_configdrive has Ironic master it the same way, from the node's row in
# Ironic's own database (SQLite or MariaDB: the URL comes by stdin, it may hold a password).
MASTER_CONFIGDRIVE = """
import json, shutil, sys, types
import sqlalchemy
from ironic.conductor import configdrive_utils
request = json.load(sys.stdin)
query = sqlalchemy.text("SELECT uuid, name, instance_info FROM nodes WHERE uuid = :uuid")
with sqlalchemy.create_engine(request["database"]).connect() as db:
    row = db.execute(query, {"uuid": request["node"]}).first()
info = json.loads(row.instance_info or "{}") if row is not None else {}
if row is None:
    json.dump({"missing": "node"}, sys.stdout)
elif not info.get("configdrive"):
    json.dump({"missing": "configdrive"}, sys.stdout)
elif not any(shutil.which(tool) for tool in ("genisoimage", "mkisofs", "xorrisofs")):
    json.dump({"missing": "tool"}, sys.stdout)
else:
    node = types.SimpleNamespace(uuid=row.uuid, name=row.name, instance_info=info)
    json.dump({"iso": configdrive_utils.get_configdrive_image(node)}, sys.stdout)
"""
CONFIGDRIVE_ROOT = "/openstack/latest"


def read_configdrive(server: IronicServer, node_uuid: str) -> tuple[bytes, dict[str, Any]]:
    """What the bare-metal machine behind `node_uuid` would boot with: the config drive Ironic
    holds for it (read from Ironic's own database: the API shows `******`), as the ISO Ironic
    writes to the machine, decoded: (`openstack/latest/user_data`, `meta_data.json`)."""
    proc = subprocess.run(
        [str(server._venv / "bin" / "python"), "-c", MASTER_CONFIGDRIVE],
        input=json.dumps({"database": server.database_url, "node": node_uuid}),
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise ProcessError(f"Ironic could not master the config drive of {node_uuid}:\n{proc.stderr[-2000:]}")
    answer = json.loads(proc.stdout)
    missing = answer.get("missing")
    if missing == "node":
        raise LookupError(f"Ironic has no node {node_uuid}")
    if missing == "configdrive":
        raise LookupError(f"node {node_uuid} holds no config drive (it is not deployed)")
    if missing == "tool":
        raise ProcessError("Ironic masters config drives with genisoimage, mkisofs or xorrisofs: install one")
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(gzip.decompress(base64.b64decode(answer["iso"]))))
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
