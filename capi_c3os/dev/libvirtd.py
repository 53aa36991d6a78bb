"""A private libvirtd (+ virtlogd) for tests and benchmarks, leaving the host's alone.

libvirtd running as root keeps its state in fixed places (/etc/libvirt, /var/lib/libvirt,
/run/libvirt, ...). To give every test run its own daemon, each one runs in a private
mount namespace where those directories are bind mounts of directories under `root`;
the unix socket therefore shows up outside at `root/run/libvirt-sock`, and the URI is
`qemu+unix:///system?socket=<that path>`. QEMU runs as root with no security driver,
cgroups or namespaces of its own (these machines are containers without systemd).

With `network=True` the daemon, its network (bridge, dnsmasq, NAT rules) and its guests
live in a network namespace of their own (`unshare --net`; it vanishes with its last
process, iptables chains included): the networking rule for tests (facts/libvirt.md) —
guest traffic never leaves it. Without it, guests get no NIC.

With `tls=TlsFiles(...)` the daemon also listens for `qemu+tls` on 127.0.0.1 at
`tls_port` (host network namespace; so not together with `network=True`), checking client
certificates against the given CA.

Everything runs in a PID namespace of its own too (`unshare --pid --fork --kill-child`),
whose init is a small shell (the "keeper") that only reaps orphans (QEMU is one once
libvirtd double-forks it). The keeper dies with the process that started it
(PR_SET_PDEATHSIG), and with it the kernel kills every process of the namespace: a test
run killed half-way (SIGTERM, SIGKILL) leaves no libvirtd, virtlogd, dnsmasq or QEMU
behind. libvirtd itself runs in these namespaces through `enter_argv()`, so `restart()`
can kill libvirtd alone (SIGKILL; QEMU and virtlogd keep running, as when a host's daemon
crashes) and start it again, and it takes its running guests back. Other programs (an
sshd for `qemu+ssh`) run there the same way and see this daemon's socket at the standard
path. Inside, /proc is the namespace's own, so PIDs in the daemons' pid files are not
host PIDs: processes are found through /proc by their PID namespace instead.

Stop destroys every domain through the API, stops libvirtd, then the keeper, which ends
the namespaces and whatever still ran in them; QEMU processes that still use files under
`root` (by PID) are killed as a last resort.
"""

from __future__ import annotations

import os
import signal
import time
from contextlib import closing, suppress
from dataclasses import dataclass
from pathlib import Path

import libvirt  # type: ignore[import-untyped]  # libvirt-python ships no type hints

from capi_c3os.dev.processes import ManagedProcess, ProcessError, all_processes, free_port

# (directory inside the namespace, directory under root)
_PRIVATE_DIRS = (
    ("/etc/libvirt", "etc"),
    ("/var/lib/libvirt", "lib"),
    ("/var/cache/libvirt", "cache"),
    ("/var/log/libvirt", "log"),
    ("/run/libvirt", "run"),
)

QEMU_CONF = """\
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
namespaces = []
cgroup_controllers = []
"""

LIBVIRTD_CONF = """\
listen_tls = 0
listen_tcp = 0
unix_sock_rw_perms = "0700"
auth_unix_rw = "none"
auth_unix_ro = "none"
log_outputs = "3:stderr"
"""

TLS_CONF = """\
listen_tls = 1
listen_addr = "127.0.0.1"
tls_port = "{port}"
auth_tls = "none"
ca_file = "{ca}"
cert_file = "{cert}"
key_file = "{key}"
"""


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of the daemon's TLS side: the CA that signs client certificates, and the
    server's certificate (for 127.0.0.1) and key."""

    ca: Path
    cert: Path
    key: Path


# `--kill-child`: the namespace's init gets SIGKILL when `unshare` (outside) dies, and
# with it every process inside. `--mount-proc`: libvirtd reads /proc by the PIDs it sees.
KEEPER_NAMESPACES = ("--pid", "--fork", "--kill-child", "--mount", "--propagation", "private", "--mount-proc")

NETWORK_NAME = "c3os-test"
NETWORK_XML = """\
<network>
  <name>{name}</name>
  <forward mode='nat'/>
  <bridge name='c3osbr0' stp='off'/>
  <ip address='192.168.150.1' netmask='255.255.255.0'>
    <dhcp><range start='192.168.150.10' end='192.168.150.200'/></dhcp>
  </ip>
</network>
"""

POOL_XML = """\
<pool type='dir'>
  <name>{name}</name>
  <target><path>{path}</path></target>
</pool>
"""


class PrivateLibvirtd:
    def __init__(
        self,
        root: Path,
        network: bool = False,
        pool: str = "default",
        tls: TlsFiles | None = None,
        log_calls: bool = False,
    ) -> None:
        """`log_calls`: libvirtd logs every API call it serves (`remoteDispatch<Call>Helper`
        lines in `log_path`, with the client's address), for benchmarks to count them."""
        if network and tls is not None:
            raise ValueError("a TLS listener on loopback needs the host network namespace (network=False)")
        self.root = root
        self.network = network
        self.pool_name = pool
        self.tls = tls
        self.tls_port = free_port() if tls is not None else 0
        self.log_calls = log_calls
        self.process: ManagedProcess | None = None
        self.keeper: ManagedProcess | None = None
        self._restarts = 0

    @property
    def socket(self) -> Path:
        return self.root / "run" / "libvirt-sock"

    @property
    def uri(self) -> str:
        return f"qemu+unix:///system?socket={self.socket}"

    @property
    def log_path(self) -> Path:
        return self.root / "libvirtd.log"

    @property
    def pool_path(self) -> Path:
        return self.root / "pool"

    @property
    def qemu_log_dir(self) -> Path:
        """Where `/var/log/libvirt/qemu` (serial logs, QEMU logs) of the daemon lands."""
        return self.root / "log" / "qemu"

    def connect(self) -> libvirt.virConnect:
        # libvirt prints every error to stderr by default; "not found" is expected here.
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        return libvirt.open(self.uri)

    def start(self, timeout: float = 60.0) -> PrivateLibvirtd:
        for _, sub in _PRIVATE_DIRS:
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "etc" / "qemu.conf").write_text(QEMU_CONF)
        conf = LIBVIRTD_CONF
        if self.tls is not None:
            conf = conf.replace("listen_tls = 0\n", "") + TLS_CONF.format(
                port=self.tls_port, ca=self.tls.ca, cert=self.tls.cert, key=self.tls.key
            )
        if self.log_calls:
            conf = conf.replace(
                'log_outputs = "3:stderr"', 'log_filters = "1:daemon.remote"\nlog_outputs = "1:stderr"'
            )
        (self.root / "etc" / "libvirtd.conf").write_text(conf)
        (self.root / "etc" / "virtlogd.conf").write_text('log_outputs = "3:stderr"\n')
        self.pool_path.mkdir(exist_ok=True)
        self.qemu_log_dir.mkdir(parents=True, exist_ok=True)
        ready = self.root / "namespace-ready"
        ready.unlink(missing_ok=True)
        mounts = []
        for inside, sub in _PRIVATE_DIRS:
            os.makedirs(inside, exist_ok=True)  # mount points must exist on the host
            mounts.append(f"mount --bind {self.root / sub} {inside}")
        # PID 1 of the namespace must reap orphans (QEMU), else they stay zombies and libvirt
        # waits on them when it destroys a domain: the shell's `wait` reaps any child while
        # its `sleep` job runs. SIGTERM from outside does not reach a namespace's init.
        script = " && ".join(
            [
                *mounts,
                "virtlogd -d -f /etc/libvirt/virtlogd.conf -p /run/libvirt/virtlogd.pid",
                f": > {ready}",
                "{ sleep infinity & wait; }",
            ]
        )
        namespaces = [*KEEPER_NAMESPACES, *(["--net"] if self.network else [])]
        self.keeper = ManagedProcess("libvirtd-namespace", ["unshare", *namespaces, "sh", "-c", script],
                                     self.root / "namespace.log")  # fmt: skip
        self.keeper.start()
        self.keeper.wait_until(
            lambda: ready.exists() and self._init_pid() is not None, "namespaces set up", timeout
        )
        self._start_libvirtd(self.log_path, "libvirtd answering on its socket", timeout)
        with closing(self.connect()) as conn:
            self._ensure_pool(conn)
            if self.network:
                self._ensure_network(conn)
        return self

    def _start_libvirtd(self, log: Path, what: str, timeout: float) -> None:
        self.process = ManagedProcess("libvirtd", [*self.enter_argv(), *self._libvirtd_argv()], log)
        self.process.start()
        self.process.wait_until(self._answers, what, timeout)

    @property
    def pid(self) -> int | None:
        """Host PID of libvirtd itself (`process` is the `nsenter` that started it)."""
        found = self.namespace_processes("libvirtd")
        return found[0] if found else None

    def _init_pid(self) -> int | None:
        """Host PID of the namespace's init: the one child of `unshare`."""
        if self.keeper is None or self.keeper.pid is None:
            return None
        try:
            children = Path(f"/proc/{self.keeper.pid}/task/{self.keeper.pid}/children").read_text().split()
        except OSError:
            return None
        return int(children[0]) if children else None

    @property
    def netns(self) -> Path:
        """The daemon's network namespace (its guests' network: bridge 192.168.150.1), for
        a `relay.Relay` to listen in; only with `network=True`."""
        init = self._init_pid()
        if not self.network or init is None:
            raise ProcessError("no network namespace of its own (network=True, start() first)")
        return Path(f"/proc/{init}/ns/net")

    def namespace_processes(self, program: str | None = None) -> list[int]:
        """Host PIDs of the live processes in this daemon's PID namespace (of `program`
        only, by its command name, when given)."""
        init = self._init_pid()
        if init is None:
            return []
        try:
            ns = os.readlink(f"/proc/{init}/ns/pid")
        except OSError:
            return []
        return [
            p.pid
            for p in all_processes()
            if not p.zombie and program in (None, p.comm) and _pid_namespace(p.pid) == ns
        ]

    def _libvirtd_argv(self) -> list[str]:
        listen = ["--listen"] if self.tls is not None else []
        return [
            "libvirtd",
            *listen,
            "-f",
            "/etc/libvirt/libvirtd.conf",
            "-p",
            "/run/libvirt/libvirtd.pid",
        ]

    def enter_argv(self) -> list[str]:
        """The prefix that runs a program in this daemon's namespaces (PID, mount, and
        network when it has its own), anchored on their init, which outlives libvirtd
        restarts. The program dies with the namespace."""
        init = self._init_pid()
        if init is None:
            raise ProcessError("the daemon's namespaces are not running (start() first)")
        return ["nsenter", "--target", str(init), "--pid", "--mount", *(["--net"] if self.network else [])]

    def restart(self, timeout: float = 60.0) -> None:
        """libvirtd dies at once (SIGKILL), as in a crash; then a new libvirtd starts in
        the same namespaces and takes over the running guests."""
        assert self.process is not None, "start() first"
        self.process.stop(sig=signal.SIGKILL)
        for pid in self.namespace_processes("libvirtd"):
            _kill(pid, sig=signal.SIGKILL)
        self._restarts += 1
        self._start_libvirtd(
            self.root / f"libvirtd-{self._restarts}.log",
            "restarted libvirtd answering on its socket",
            timeout,
        )

    def _answers(self) -> bool:
        if not self.socket.exists():
            return False
        try:
            conn = self.connect()
        except libvirt.libvirtError:
            return False
        conn.close()
        return True

    def _ensure_pool(self, conn: libvirt.virConnect) -> None:
        try:
            pool = conn.storagePoolLookupByName(self.pool_name)
        except libvirt.libvirtError:
            pool = conn.storagePoolDefineXML(POOL_XML.format(name=self.pool_name, path=self.pool_path), 0)
        if not pool.isActive():
            pool.create(0)
        pool.setAutostart(1)

    def _ensure_network(self, conn: libvirt.virConnect) -> None:
        try:
            net = conn.networkLookupByName(NETWORK_NAME)
        except libvirt.libvirtError:
            net = conn.networkDefineXML(NETWORK_XML.format(name=NETWORK_NAME))
        if not net.isActive():
            net.create()

    def upload_file(self, path: Path, name: str, fmt: str = "qcow2") -> str:
        """Put a file into the pool as a volume (a base image for tests); its path."""
        target = self.pool_path / name
        target.write_bytes(path.read_bytes())
        with closing(self.connect()) as conn:
            pool = conn.storagePoolLookupByName(self.pool_name)
            pool.refresh(0)
            return str(pool.storageVolLookupByName(name).path())

    def stop(self) -> None:
        if self.process is not None and self.process.alive():
            try:
                with closing(self.connect()) as conn:
                    for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
                        with suppress(libvirt.libvirtError):
                            dom.destroy()
                    if self.network:
                        for net in conn.listAllNetworks(libvirt.VIR_CONNECT_LIST_NETWORKS_ACTIVE):
                            net.destroy()  # stops its dnsmasq
            except libvirt.libvirtError:
                pass
            self.process.stop()
        if self.keeper is not None:
            members = self.namespace_processes()
            self.keeper.stop()  # its init dies, and the kernel kills the rest of the namespace
            _wait_gone(members)
        for pid in self.leftover_processes():
            _kill(pid)

    def leftover_processes(self) -> list[int]:
        """PIDs of QEMU processes that still use files under `root` (their disks live
        in our pool)."""
        found = []
        marker = str(self.root).encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            program = os.path.basename(cmdline.split(b"\0", 1)[0])
            if program.startswith(b"qemu-system") and marker in cmdline:
                found.append(int(entry.name))
        return found


def _pid_namespace(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def _wait_gone(pids: list[int], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        live = {p.pid for p in all_processes() if not p.zombie}
        if not live & set(pids):
            return
        time.sleep(0.1)


def _kill(pid: int, timeout: float = 10.0, sig: int = signal.SIGTERM) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    with suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


__all__ = ["NETWORK_NAME", "PrivateLibvirtd", "ProcessError", "TlsFiles"]
