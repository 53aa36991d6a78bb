"""A real OpenStack Keystone on loopback, for tests of Ironic sites with authType keystone.

Keystone is installed (pinned, with the gunicorn WSGI server) into its own virtualenv in a
cache outside the work tree, ``~/.cache/capi-c3os/keystone-<version>-venv`` (or
``CAPI_C3OS_KEYSTONE_VENV``), once per machine and apart from Ironic's so their
dependencies never fight; ``python3 -m capi_c3os.dev.keystone`` installs it and prints its
path. Each server has its own directory: SQLite database, fernet and credential keys,
config and log. ``start()`` runs ``keystone-manage db_sync``, ``fernet_setup``,
``credential_setup`` and ``bootstrap`` (admin user and project, RegionOne, the identity
endpoint), then serves ``keystone.wsgi``'s public application with gunicorn.

Identities for an Ironic (``ironic_identities``): an ``ironic`` user with the ``service``
role in the ``service`` project (keystonemiddleware validates tokens as it), the
``baremetal`` service and endpoint in the catalog, and the bootstrap admin with a
system-scoped token as the operator who enrolls nodes.
"""

from __future__ import annotations

import getpass
import grp
import json
import os
import secrets
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from capi_c3os.dev.processes import ManagedProcess, ProcessError, free_port
from capi_c3os.dev.venvs import PinnedVenv

KEYSTONE_VERSION = "30.0.0"
GUNICORN_VERSION = "27.0.1"
REQUIREMENTS = (f"keystone=={KEYSTONE_VERSION}", f"gunicorn=={GUNICORN_VERSION}")

LOOPBACK = "127.0.0.1"
DOMAIN = "Default"
REGION = "RegionOne"
# Ironic's `service_role` policy rule: the `service` role in this project acts as a
# system member (Ironic's `[DEFAULT] rbac_service_project_name`).
SERVICE_PROJECT = "service"


VENV = PinnedVenv("Keystone", f"keystone-{KEYSTONE_VERSION}-venv", REQUIREMENTS, "CAPI_C3OS_KEYSTONE_VENV")


def _run(argv: list[str], env: dict[str, str] | None = None) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
    if proc.returncode != 0:
        raise ProcessError(f"{' '.join(argv[:4])} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")


# Keystone's WSGI application parses the process's command line with oslo.config, so it
# cannot run under gunicorn's own command (it would reject gunicorn's options): this
# launcher hands gunicorn its settings in code and leaves argv empty. gunicorn's control
# socket (a fixed path under $HOME) is off so parallel Keystones never share one.
GUNICORN_LAUNCHER = """
import sys
from gunicorn.app.base import BaseApplication
bind = sys.argv[1]
del sys.argv[1:]

class Keystone(BaseApplication):
    def load_config(self):
        settings = {"bind": bind, "workers": 1, "threads": 4, "control_socket_disable": True}
        for key, value in settings.items():
            self.cfg.set(key, value)

    def load(self):
        from keystone.server import wsgi
        return wsgi.initialize_public_application()

Keystone().run()
"""


class KeystoneError(RuntimeError):
    """A set-up call to the test Keystone failed."""


@dataclass(frozen=True)
class Credentials:
    """A Keystone user as a client sees it: project-scoped, or system-scoped when
    `project_name` is None."""

    auth_url: str
    username: str
    password: str
    project_name: str | None
    user_domain_name: str = DOMAIN
    project_domain_name: str = DOMAIN

    def __repr__(self) -> str:  # keeps the password out of test reports
        return f"Credentials({self.username}@{self.project_name or 'system'})"

    def auth_body(self) -> dict[str, Any]:
        scope: dict[str, Any] = {"system": {"all": True}}
        if self.project_name is not None:
            project = {"name": self.project_name, "domain": {"name": self.project_domain_name}}
            scope = {"project": project}
        user = {"name": self.username, "password": self.password, "domain": {"name": self.user_domain_name}}
        return {"auth": {"identity": {"methods": ["password"], "password": {"user": user}}, "scope": scope}}

    def token(self) -> str:
        """A new token (one request to Keystone)."""
        return issue_token(self.auth_url, self.auth_body())

    def secret_data(self) -> dict[str, bytes]:
        """The Ironic site's credentials Secret for this user (authType keystone)."""
        data = {
            "auth-url": self.auth_url,
            "username": self.username,
            "password": self.password,
            "project-name": self.project_name or "",
            "user-domain-name": self.user_domain_name,
            "project-domain-name": self.project_domain_name,
        }
        return {k: v.encode() for k, v in data.items()}


def issue_token(auth_url: str, body: dict[str, Any]) -> str:
    req = urllib.request.Request(
        f"{auth_url.rstrip('/')}/auth/tokens",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        token: str = resp.headers["X-Subject-Token"]
    return token


@dataclass(frozen=True)
class IronicIdentities:
    """What an Ironic needs from a Keystone: the service user keystonemiddleware validates
    tokens as, and an operator (system admin) for set-up and readiness calls."""

    service: Credentials
    operator: Credentials

    def authtoken_config(self) -> str:
        """Ironic's `[keystone_authtoken]` section."""
        s = self.service
        # No token cache: a revoked token is refused at once (keystonemiddleware otherwise
        # trusts a validated token for 300 s), which the re-authentication tests rely on.
        return f"""[keystone_authtoken]
auth_type = password
auth_url = {s.auth_url}
www_authenticate_uri = {s.auth_url}
username = {s.username}
password = {s.password}
user_domain_name = {s.user_domain_name}
project_name = {s.project_name}
project_domain_name = {s.project_domain_name}
token_cache_time = -1
"""


@dataclass
class KeystoneServer:
    """One Keystone with its own directory (config, SQLite database, keys, log)."""

    root: Path
    token_expiration: int = 3600
    """Seconds a token is valid (`[token] expiration`)."""
    admin_password: str = field(default_factory=lambda: secrets.token_urlsafe(18), repr=False)
    port: int = field(default_factory=free_port)
    process: ManagedProcess | None = None
    venv: Path | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def auth_url(self) -> str:
        return f"{self.url}/v3"

    @property
    def config_file(self) -> Path:
        return self.root / "keystone.conf"

    @property
    def log_path(self) -> Path:
        return self.root / "keystone.log"

    @property
    def admin(self) -> Credentials:
        """The bootstrap admin, system-scoped (the cloud operator)."""
        return Credentials(self.auth_url, "admin", self.admin_password, None)

    def write_config(self) -> None:
        # bcrypt's fewest rounds: every token issued checks a password, and tests issue many.
        for sub in ("fernet-keys", "credential-keys", "receipt-keys"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(
            f"""[DEFAULT]
log_file = {self.log_path}
[database]
connection = sqlite:///{self.root / "keystone.sqlite"}?timeout=30
[identity]
password_hash_rounds = 4
[token]
provider = fernet
expiration = {self.token_expiration}
[fernet_tokens]
key_repository = {self.root / "fernet-keys"}
[fernet_receipts]
key_repository = {self.root / "receipt-keys"}
[credential]
key_repository = {self.root / "credential-keys"}
"""
        )

    def start(self, timeout: float = 120.0) -> KeystoneServer:
        if self.venv is None:
            self.venv = VENV.ensure()
        self.write_config()
        manage = [str(self.venv / "bin" / "keystone-manage"), "--config-file", str(self.config_file)]
        owner = ["--keystone-user", getpass.getuser(), "--keystone-group", grp.getgrgid(os.getgid()).gr_name]
        _run([*manage, "db_sync"])
        _run([*manage, "fernet_setup", *owner])
        _run([*manage, "credential_setup", *owner])
        # The password goes by environment, not argv (argv is world-readable in /proc).
        bootstrap = [
            "bootstrap",
            "--bootstrap-region-id",
            REGION,
            *(
                arg
                for kind in ("admin", "internal", "public")
                for arg in (f"--bootstrap-{kind}-url", self.auth_url)
            ),
        ]
        _run([*manage, *bootstrap], env={**os.environ, "OS_BOOTSTRAP_PASSWORD": self.admin_password})
        self.process = ManagedProcess(
            "keystone",
            [str(self.venv / "bin" / "python"), "-c", GUNICORN_LAUNCHER, f"{LOOPBACK}:{self.port}"],
            self.root / "keystone.out",
            env={"OS_KEYSTONE_CONFIG_FILES": str(self.config_file)},
        )
        self.process.start()
        try:
            self.process.wait_until(self._ready, "Keystone answering tokens", timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _ready(self) -> bool:
        try:
            self.admin.token()
        except (OSError, urllib.error.HTTPError):
            return False
        return True

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    # --- the identity API, as the operator -------------------------------------------------

    def request(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        all_headers = {
            "X-Auth-Token": self.admin.token(),
            "Content-Type": "application/json",
            **(headers or {}),
        }
        req = urllib.request.Request(self.auth_url + path, data=data, method=method, headers=all_headers)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as err:
            raise KeystoneError(f"{method} {path}: HTTP {err.code} {err.read()[:500]!r}") from None
        return json.loads(raw) if raw else None

    def _id(self, collection: str, name: str) -> str:
        found = self.request("GET", f"/{collection}?name={name}")[collection]
        if not found:
            raise KeystoneError(f"no {collection[:-1]} named {name}")
        ident: str = found[0]["id"]
        return ident

    def project(self, name: str) -> str:
        """The id of project `name`, created when missing."""
        try:
            return self._id("projects", name)
        except KeystoneError:
            created = self.request("POST", "/projects", {"project": {"name": name, "domain_id": "default"}})
            ident: str = created["project"]["id"]
            return ident

    def create_user(self, name: str, project: str, roles: tuple[str, ...]) -> Credentials:
        """A user with a random password and `roles` on `project` (created when missing)."""
        password = secrets.token_urlsafe(18)
        project_id = self.project(project)
        body = {"user": {"name": name, "password": password, "domain_id": "default"}}
        user_id = self.request("POST", "/users", body)["user"]["id"]
        for role in roles:
            self.request("PUT", f"/projects/{project_id}/users/{user_id}/roles/{self._id('roles', role)}")
        return Credentials(self.auth_url, name, password, project)

    def register_endpoint(self, service_type: str, name: str, url: str) -> None:
        service = self.request("POST", "/services", {"service": {"type": service_type, "name": name}})
        for interface in ("public", "internal", "admin"):
            endpoint = {"service_id": service["service"]["id"], "interface": interface, "url": url}
            self.request("POST", "/endpoints", {"endpoint": {**endpoint, "region_id": REGION}})

    def application_credential(self, user: Credentials, name: str) -> dict[str, bytes]:
        """A new application credential of `user` (for its project), as the Ironic site's
        credentials Secret holds it."""
        token = user.token()
        body = {"application_credential": {"name": name}}
        user_id = self.request("GET", f"/users?name={user.username}")["users"][0]["id"]
        req = urllib.request.Request(
            f"{self.auth_url}/users/{user_id}/application_credentials",
            data=json.dumps(body).encode(),
            method="POST",
            headers={"X-Auth-Token": token, "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            created = json.loads(resp.read())["application_credential"]
        return {
            "auth-url": user.auth_url.encode(),
            "application-credential-id": created["id"].encode(),
            "application-credential-secret": created["secret"].encode(),
        }

    def revoke(self, token: str) -> None:
        self.request("DELETE", "/auth/tokens", headers={"X-Subject-Token": token})

    def ironic_identities(self, ironic_url: str) -> IronicIdentities:
        """The ironic service user and the baremetal catalog entry for an Ironic at
        `ironic_url` (call once per Ironic)."""
        service = self.create_user(f"ironic-{secrets.token_hex(3)}", SERVICE_PROJECT, ("service",))
        self.register_endpoint("baremetal", "ironic", ironic_url)
        return IronicIdentities(service=service, operator=self.admin)

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


def main() -> int:
    return VENV.main("keystone")


if __name__ == "__main__":
    sys.exit(main())
