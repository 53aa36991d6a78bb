"""A private MariaDB server for tests and benchmarks: its own data directory, unix socket and
loopback port, started from Debian's `mariadb-server-core` binaries (hack/system-deps.sh) as
a child process that dies with its parent. Never the system's service: nothing under /etc,
/var/lib/mysql or /run/mysqld is read or written."""

from __future__ import annotations

import hashlib
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from capi_c3os.dev.processes import ManagedProcess, ProcessError, free_port

LOOPBACK = "127.0.0.1"
_SOCKET_PATH_MAX = 100
"""A unix socket path must fit sockaddr_un (108 bytes with the terminator)."""


def _binary(name: str) -> str:
    # /usr/sbin is not on an unprivileged user's PATH, and mariadbd lives there.
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if found is None:
        raise ProcessError(f"{name} not found: install Debian's mariadb-server-core (hack/system-deps.sh)")
    return found


@dataclass
class MariaDB:
    """One MariaDB with one database and one user that may do anything in it (over TCP on
    loopback, password authentication), the way an OpenStack service is given its database."""

    root: Path
    database: str = "ironic"
    user: str = "ironic"
    password: str = field(default_factory=lambda: secrets.token_hex(16), repr=False)
    port: int = field(default_factory=free_port)
    max_connections: int = 1024
    """DevStack's setting for an OpenStack database (MariaDB's default, 151, is below what a
    busy API and conductor open: oslo.db pools up to 5 + 50 connections per process)."""
    process: ManagedProcess | None = None

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    @property
    def socket(self) -> Path:
        path = self.root / "mariadb.sock"
        if len(str(path)) <= _SOCKET_PATH_MAX:
            return path
        # A deep test directory: the socket goes to a short private directory named after it.
        digest = hashlib.sha256(str(self.root.resolve()).encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"c3os-mariadb-{digest}" / "mariadb.sock"

    @property
    def log_path(self) -> Path:
        return self.root / "mariadb.log"

    def url(self, driver: str = "mysql+pymysql") -> str:
        """The SQLAlchemy URL of the database (it holds the password: configuration only)."""
        return (
            f"{driver}://{self.user}:{self.password}@{LOOPBACK}:{self.port}/{self.database}?charset=utf8mb4"
        )

    def start(self, timeout: float = 120.0) -> MariaDB:
        self.root.mkdir(parents=True, exist_ok=True)
        if not (self.datadir / "mysql").is_dir():
            self._install_db()
        self.process = ManagedProcess("mariadb", self._command(), self.log_path)
        self.process.start()
        try:
            self.process.wait_until(self._ready, "MariaDB ready for connections", timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _owner(self) -> list[str]:
        # mariadbd refuses to run as root unless told to; as anyone else --user only warns.
        if os.geteuid() != 0:
            return []
        return [f"--user={pwd.getpwuid(os.geteuid()).pw_name}"]

    def _install_db(self) -> None:
        argv = [_binary("mariadb-install-db"), "--no-defaults", f"--datadir={self.datadir}", *self._owner()]
        # No name resolution (nothing but loopback is used), no test database; root logs
        # in only through the socket by its OS identity (unix_socket), as Debian sets it up.
        argv += ["--skip-name-resolve", "--skip-test-db", "--auth-root-authentication-method=socket"]
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise ProcessError(f"mariadb-install-db failed ({proc.returncode}):\n{proc.stderr[-3000:]}")

    def _init_file(self) -> Path:
        """SQL run at every start with full rights (so no client and no admin login are
        needed): the database and its user, idempotently. Readable by its owner only."""
        path = self.root / "init.sql"
        quoted = self.password.replace("\\", "\\\\").replace("'", "\\'")
        account = f"'{self.user}'@'{LOOPBACK}'"
        path.write_text("")
        path.chmod(0o600)
        path.write_text(
            f"CREATE DATABASE IF NOT EXISTS `{self.database}` CHARACTER SET utf8mb4;\n"
            f"CREATE USER IF NOT EXISTS {account} IDENTIFIED BY '{quoted}';\n"
            f"GRANT ALL PRIVILEGES ON `{self.database}`.* TO {account};\n"
        )
        return path

    def _command(self) -> list[str]:
        self.socket.parent.mkdir(mode=0o700, exist_ok=True)
        return [
            _binary("mariadbd"),
            "--no-defaults",  # must come first: no /etc/mysql configuration
            f"--datadir={self.datadir}",
            f"--socket={self.socket}",
            f"--pid-file={self.root / 'mariadb.pid'}",
            f"--bind-address={LOOPBACK}",
            f"--port={self.port}",
            "--skip-name-resolve",
            f"--max-connections={self.max_connections}",
            f"--init-file={self._init_file()}",
            *self._owner(),
        ]

    def _ready(self) -> bool:
        # MariaDB runs the init file before it listens, so a connection means a database.
        try:
            with socket.create_connection((LOOPBACK, self.port), timeout=1):
                pass
        except OSError:
            return False
        try:
            return "ready for connections" in self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return False

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(timeout=30)
        if not self.socket.is_relative_to(self.root):
            shutil.rmtree(self.socket.parent, ignore_errors=True)  # the short directory

    def tail(self, lines: int = 30) -> str:
        return self.process.tail(lines) if self.process else "(not started)"
