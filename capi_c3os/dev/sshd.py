"""A private sshd in front of a private libvirtd, for `qemu+ssh` tests.

It listens on a loopback port with a host key made for this run, lets `root` in with one
generated client key (nothing else: no passwords, no PAM), and runs inside the
libvirtd's mount namespace (`PrivateLibvirtd.enter_argv`), so the remote side of a
`qemu+ssh://root@127.0.0.1:PORT/system` connection — `virt-ssh-helper`, or `nc -U` — finds
that daemon's socket at the standard path, exactly as on a real host.

`kill()` ends the listener and every session it forked (SIGKILL: the remote host is
gone); `start()` again serves the same port, host key and client key.
"""

from __future__ import annotations

import os
import signal
import subprocess
from contextlib import suppress
from pathlib import Path

from capi_c3os.dev.libvirtd import PrivateLibvirtd
from capi_c3os.dev.processes import ManagedProcess, all_processes, free_port

SSHD = "/usr/sbin/sshd"

SSHD_CONFIG = """\
Port {port}
ListenAddress 127.0.0.1
HostKey {host_key}
AuthorizedKeysFile {authorized_keys}
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PidFile none
LogLevel VERBOSE
"""


class PrivateSshd:
    def __init__(self, root: Path, daemon: PrivateLibvirtd) -> None:
        self.root = root
        self.daemon = daemon
        self.port = free_port()
        self.process: ManagedProcess | None = None
        self._starts = 0

    @property
    def host_key(self) -> Path:
        return self.root / "ssh_host_ed25519_key"

    @property
    def client_key(self) -> Path:
        return self.root / "client_ed25519_key"

    @property
    def known_hosts(self) -> bytes:
        """The known_hosts line a client needs for this server (non-default port form)."""
        public = (self.root / "ssh_host_ed25519_key.pub").read_text().split()
        return f"[127.0.0.1]:{self.port} {public[0]} {public[1]}\n".encode()

    @property
    def uri(self) -> str:
        return f"qemu+ssh://root@127.0.0.1:{self.port}/system"

    def start(self) -> PrivateSshd:
        if not self.host_key.exists():
            self.root.mkdir(parents=True, exist_ok=True)
            os.chmod(self.root, 0o700)
            for key in (self.host_key, self.client_key):
                subprocess.run(
                    ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", key.name, "-f", str(key)],
                    check=True,
                )
            authorized = self.root / "authorized_keys"
            authorized.write_text((self.root / "client_ed25519_key.pub").read_text())
            (self.root / "sshd_config").write_text(
                SSHD_CONFIG.format(port=self.port, host_key=self.host_key, authorized_keys=authorized)
            )
        # sshd's privilege separation directory; /run is the host's in the namespace.
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        self._starts += 1
        self.process = ManagedProcess(
            "sshd",
            [*self.daemon.enter_argv(), SSHD, "-D", "-e", "-f", str(self.root / "sshd_config")],
            self.root / f"sshd-{self._starts}.log",
        )
        self.process.start()
        self.process.wait_until(self._listening, f"sshd listening on 127.0.0.1:{self.port}", 30)
        return self

    def _listening(self) -> bool:
        return self.process is not None and "Server listening on" in self.process.log_path.read_text(
            errors="replace"
        )

    def sessions(self) -> list[int]:
        """PIDs of the processes serving connections (they leave sshd's process group)."""
        if self.process is None or self.process.pid is None:
            return []
        return _descendants(self.process.pid)

    def kill(self) -> None:
        """The remote host goes away: listener and sessions die at once."""
        if self.process is None:
            return
        victims = self.sessions()
        self.process.stop(sig=signal.SIGKILL)
        for pid in victims:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def stop(self) -> None:
        self.kill()


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for process in all_processes():
        children.setdefault(process.ppid, []).append(process.pid)
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found
