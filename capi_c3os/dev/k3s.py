"""k3s, stood in for from what the VMs really received.

No k3s binary or c3os image can run here. The stand-in VMs (hack/standin-image.sh) do
boot, find their config drive and print the user-data and meta-data they read on their
serial console. `K3sStandIn` watches the domains of a `PrivateLibvirtd` and, for each
running VM whose console shows both, does what k3s on that VM would do with exactly
those bytes:

- the first server (`--cluster-init` in its `k3s` block) creates the cluster: a
  `WorkloadStandIn` (real etcd + kube-apiserver) serving with **the server CA and
  client CA its user-data carries**, on the control-plane endpoint's loopback port,
  then `kube-system/k3s-serving`;
- a joining server or agent (`--server=https://host:port`) joins only if that URL names
  a running cluster's endpoint and its CA-pinned token (`K10<sha256 of the server CA
  PEM>::server:<secret>`) pins that cluster's CA and carries its secret; otherwise it
  never joins and the reason is logged, once, as a failing k3s join would log it;
- a joined node is a Ready Node named after the meta-data `local-hostname`, with the
  meta-data `provider-id` (what the bootstrap's ExecStartPre gives the kubelet);
  servers carry the control-plane role label; its kubeletVersion is the k3s version the
  image ships (`KAIROS_SOFTWARE_VERSION` of the `/etc/kairos-release` the VM printed at
  boot), never what the Machine asked for: on c3os, k3s comes with the image;
- etcd-removal annotations are answered like k3s's etcd controller (every round, see
  `WorkloadStandIn.answer_etcd_removals`; `etcd_removed` lists them);
- a domain that stops or vanishes: its Node goes Ready=False (heartbeats stop);
- once every server that joined a cluster is undefined, the cluster stops (its
  datastore went with them) and the endpoint is free again.
- machines of other `sources` (bare metal: `k3s_ironic`) join the same way from the
  config drive their source says they received.

The endpoint's port cannot be read from the first server's user-data (k3s listens on
6443 and a VIP or load balancer maps the endpoint to it): the endpoints the stand-in
"load balancer" answers on are given (`add_endpoint`); the first server whose `tls-san`
names an endpoint's host takes the newest such endpoint with no cluster (a freed endpoint
is older than one added for the cluster being made now).

Use: `K3sStandIn(daemon, workdir, endpoints=[("127.0.0.1", port)]).start()`, then
`cluster(host, port)` for the running `WorkloadStandIn`, `events` / `workdir/k3s.log`
for what happened, `stop()`. `step()` runs one round (the thread calls it every
`interval` seconds). Secret material (tokens, CA keys) is never logged.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import secrets
import threading
import time
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import libvirt  # type: ignore[import-untyped]  # libvirt-python ships no type hints
import yaml
from kubernetes.client.exceptions import ApiException

from capi_c3os.bootstrap import tokens
from capi_c3os.bootstrap.certificates import KeyPair
from capi_c3os.bootstrap.cloudconfig import CONFIG_FILE, HEADER, TLS_DIR, TOKEN_FILE, Role
from capi_c3os.dev.libvirtd import PrivateLibvirtd
from capi_c3os.dev.workload import WorkloadStandIn

log = logging.getLogger(__name__)

BOOTED = "C3OS-STANDIN READY"
"""The stand-in OS printed this once it has read its config drive and tried DHCP: from
here on k3s would be starting."""
RELEASE = re.compile(
    r"----- BEGIN KAIROS-RELEASE -----\r?\n(?P<text>.*?)----- END KAIROS-RELEASE -----", re.S
)
MARKER = re.compile(
    r"----- BEGIN (?P<what>[A-Z-]+) BASE64 -----\r?\n(?P<b64>.*?)----- END (?P=what) BASE64 -----", re.S
)


# ------------------------------------------------------------------ the serial console


def serial_log(daemon: PrivateLibvirtd, domain: str) -> str:
    """The serial console of `domain` so far (libvirt's `<log file=...>`)."""
    path = daemon.qemu_log_dir / f"{domain}-serial.log"
    return path.read_text(errors="replace") if path.exists() else ""


def console_blocks(log_text: str) -> dict[str, bytes]:
    """USER-DATA and META-DATA exactly as the guest read them from its config drive."""
    blocks = {}
    for match in MARKER.finditer(log_text):
        with suppress(binascii.Error, ValueError):  # a block cut short by a crash
            blocks[match["what"]] = base64.b64decode("".join(match["b64"].split()), validate=True)
    return blocks


def shipped_k3s_version(release: str) -> str | None:
    """KAIROS_SOFTWARE_VERSION of an /etc/kairos-release (shell `KEY="value"` lines), when
    the image ships k3s."""
    values = {}
    for line in release.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep:
            values[key] = value.strip().strip('"')
    if values.get("KAIROS_SOFTWARE_VERSION_PREFIX", "k3s") != "k3s":
        return None
    return values.get("KAIROS_SOFTWARE_VERSION") or None


def console_k3s_version(log_text: str) -> str | None:
    """The k3s version of the image a stand-in VM booted (the release it printed)."""
    match = RELEASE.search(log_text)
    return shipped_k3s_version(match["text"]) if match else None


# ------------------------------------------------------------------ what a node received


class BootDataError(ValueError):
    """The config drive does not hold what k3s needs; the message names the part."""


@dataclass(frozen=True)
class BootData:
    """What k3s on one machine would take from its config drive."""

    role: Role
    hostname: str
    """meta-data `local-hostname`: the Node name."""
    provider_id: str
    """meta-data `provider-id`: the kubelet's `--provider-id`."""
    server_url: str | None
    """`--server=...` (joiners only)."""
    tls_sans: tuple[str, ...]
    token: str = field(repr=False)
    server_ca: KeyPair | None = field(default=None, repr=False)
    client_ca: KeyPair | None = field(default=None, repr=False)
    """Only the first server carries the CAs."""

    @classmethod
    def parse(cls, user_data: bytes, meta_data: bytes, disk: Disk | None = None) -> BootData:
        """`disk`: the node's persistent files, from its earlier boots; this boot's
        `initramfs` stage is applied to it (it is updated in place)."""
        disk = Disk() if disk is None else disk
        try:
            doc = yaml.safe_load(user_data)
            meta = yaml.safe_load(meta_data)  # YAML (NoCloud) or JSON (config-2): both load
        except yaml.YAMLError as exc:
            raise BootDataError(f"config drive is not YAML: {exc.__class__.__name__}") from None
        if not user_data.startswith(HEADER.encode()) or not isinstance(doc, dict):
            raise BootDataError(f"user-data is not a {HEADER} document")
        if not isinstance(meta, dict) or not meta.get("local-hostname") or not meta.get("provider-id"):
            raise BootDataError("meta-data lacks local-hostname or provider-id")
        block = doc.get("k3s") or doc.get("k3s-agent")
        if not isinstance(block, dict) or not block.get("enabled"):
            raise BootDataError("user-data enables neither k3s nor k3s-agent")
        args = [str(a) for a in block.get("args") or []]
        server = next((a.split("=", 1)[1] for a in args if a.startswith("--server=")), None)
        if "k3s-agent" in doc:
            role = Role.AGENT
        else:
            role = Role.INIT_SERVER if "--cluster-init" in args else Role.JOIN_SERVER
        if role is not Role.INIT_SERVER and server is None:
            raise BootDataError("a joining node without --server")
        disk.boot(doc)
        files = disk.files
        token_path = next((a.split("=", 1)[1] for a in args if a.startswith("--token-file=")), TOKEN_FILE)
        token = files.get(token_path, b"").decode(errors="replace").strip()
        if not token:
            raise BootDataError(f"no token in {token_path}")
        config = yaml.safe_load(files.get(CONFIG_FILE, b"")) or {}
        sans = tuple(str(s) for s in config.get("tls-san") or [])
        server_ca = client_ca = None
        if role is Role.INIT_SERVER:
            try:
                server_ca = KeyPair(files[f"{TLS_DIR}/server-ca.crt"], files[f"{TLS_DIR}/server-ca.key"])
                client_ca = KeyPair(files[f"{TLS_DIR}/client-ca.crt"], files[f"{TLS_DIR}/client-ca.key"])
            except KeyError as exc:
                raise BootDataError(f"the first server's user-data lacks {exc.args[0]}") from None
        return cls(
            role,
            str(meta["local-hostname"]),
            str(meta["provider-id"]),
            server,
            sans,
            token,
            server_ca,
            client_ca,
        )


_MISSING = re.compile(r"\[ ! -s (?P<path>/[^\s'\"]+) \]")


def if_holds(condition: str, files: dict[str, bytes]) -> bool:
    """Whether a yip step's `if` lets the step run, on a node holding `files`.

    yip v1.25.1 runs the text with `sh -c` and skips the step when it exits non-zero
    (`pkg/plugins/if.go` IfConditional, `pkg/executor/default.go` applyStage). The
    stand-in has no node root to run a shell in, so it evaluates the one form our
    bootstrap renders (`cloudconfig.first_boot_condition`): `[ ! -s PATH ] || ...`,
    true while any PATH is missing or empty. Anything else is refused, not guessed."""
    terms = condition.split(" || ")
    matches = [_MISSING.fullmatch(term.strip()) for term in terms]
    if not all(matches):
        raise BootDataError(f"an initramfs step's `if` the stand-in cannot evaluate: {condition!r}")
    return any(not files.get(m["path"]) for m in matches if m is not None)


@dataclass
class Disk:
    """A node's persistent files as yip leaves them (`/etc`, `/var/lib/rancher` persist
    on Kairos), and what the last boot wrote."""

    files: dict[str, bytes] = field(default_factory=dict, repr=False)
    written: set[str] = field(default_factory=set)
    """Paths the last boot's initramfs stage wrote (newer than anything k3s stored)."""

    def boot(self, doc: dict[str, Any]) -> None:
        """Kairos runs the `initramfs` stage at every boot: each step in order, skipped
        when its `if` fails (yip decodes b64 content)."""
        self.written = set()
        for step in (doc.get("stages") or {}).get("initramfs") or []:
            condition = step.get("if")
            if condition and not if_holds(str(condition), self.files):
                continue
            for entry in step.get("files") or []:
                content = str(entry.get("content", ""))
                data = base64.b64decode(content) if entry.get("encoding") == "b64" else content.encode()
                self.files[entry["path"]] = data
                self.written.add(entry["path"])

    def datastore_conflict(self, datastore: dict[str, bytes]) -> str | None:
        """Why k3s would refuse to start a server whose datastore holds `datastore`
        (path -> bytes of its CA files), or None. k3s compares each bootstrap file on
        disk with the datastore: one that differs and is newer (written at this boot)
        stops it ("... newer than datastore and could cause a cluster outage"); an
        older one is overwritten from the datastore (k3s pkg/cluster/bootstrap.go,
        ReconcileBootstrapData: disk newer is fatal, datastore newer rewrites the disk)."""
        newer = sorted(
            path for path, data in datastore.items() if path in self.written and self.files.get(path) != data
        )
        for path, data in datastore.items():
            if path not in newer:
                self.files[path] = data
        if newer:
            return f"{', '.join(newer)} newer than datastore and could cause a cluster outage"
        return None


# ------------------------------------------------------------------ the stand-in


@dataclass
class _Cluster:
    host: str
    port: int
    workload: WorkloadStandIn
    ca_pem: bytes = field(repr=False)
    secret: str = field(repr=False)


@dataclass
class _Joined:
    cluster: _Cluster
    node: str
    server: bool
    ready: bool = True


class MachineSource(Protocol):
    """Machines besides the daemon's VMs (e.g. `k3s_ironic.IronicMachines`)."""

    def running(self) -> dict[str, bool]:
        """name -> up; names must not collide with domain names."""

    def received(self, name: str) -> dict[str, bytes] | None:
        """USER-DATA and META-DATA as the machine read them, None until it booted."""


class K3sStandIn:
    """Plays k3s on the VMs of one private libvirtd (see the module docstring)."""

    def __init__(
        self,
        daemon: PrivateLibvirtd,
        workdir: Path,
        endpoints: Iterable[tuple[str, int]] = (),
        interval: float = 1.0,
    ) -> None:
        self.daemon = daemon
        self.workdir = workdir
        self.interval = interval
        self.events: list[str] = []
        """What happened, in order (joins, refusals, nodes going down): the k3s log."""
        self._endpoints: list[tuple[str, int]] = list(endpoints)
        self._clusters: dict[tuple[str, int], _Cluster] = {}
        self._joined: dict[str, _Joined] = {}  # domain name ->
        self._refused: dict[str, str] = {}  # domain name -> last reason logged
        self._started: dict[str, float] = {}  # domain name -> first seen running (monotonic)
        self._disks: dict[str, Disk] = {}  # domain name -> its files, across boots
        self.boot_seconds: dict[str, float] = {}
        """domain name -> seconds from first seen running to the OS up (console), to within
        `interval`: the boot time of each VM, for reports."""
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: libvirt.virConnect | None = None
        self.sources: list[MachineSource] = []
        """More machines to play k3s on (appended by their owners)."""
        self._owners: dict[str, MachineSource] = {}
        workdir.mkdir(parents=True, exist_ok=True)

    @property
    def log_file(self) -> Path:
        return self.workdir / "k3s.log"

    def add_endpoint(self, host: str, port: int) -> None:
        """A control-plane endpoint the stand-in load balancer answers on."""
        with self._lock:
            self._endpoints.append((host, port))

    def cluster(self, host: str, port: int) -> WorkloadStandIn | None:
        """The running cluster behind an endpoint, once its first server came up."""
        with self._lock:
            found = self._clusters.get((host, port))
            return found.workload if found else None

    def node_of(self, domain: str) -> str | None:
        """The Node a domain's k3s registered, if it joined."""
        with self._lock:
            joined = self._joined.get(domain)
            return joined.node if joined else None

    def start(self) -> K3sStandIn:
        self._thread = threading.Thread(target=self._loop, name="k3s-standin", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        with self._lock:
            for cluster in self._clusters.values():
                cluster.workload.stop()
            self._clusters.clear()
        if self._conn is not None:
            with suppress(libvirt.libvirtError):
                self._conn.close()
            self._conn = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except Exception as exc:  # libvirtd or a workload server restarting: next round
                log.debug("k3s stand-in round failed: %s", exc)
                if self._conn is not None:
                    with suppress(libvirt.libvirtError):
                        self._conn.close()
                    self._conn = None
            self._stop.wait(self.interval)

    def _event(self, message: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {message}"
        self.events.append(line)
        log.info("%s", message)
        with self.log_file.open("a") as out:
            out.write(line + "\n")

    def _domains(self) -> dict[str, bool]:
        """name -> running, for every domain of the daemon."""
        if self._conn is None:
            self._conn = self.daemon.connect()
        return {dom.name(): bool(dom.isActive()) for dom in self._conn.listAllDomains(0)}

    def step(self) -> None:
        """One round: join what booted, mark down what stopped."""
        with self._lock:
            domains = self._domains()
            for source in self.sources:
                found = source.running()
                self._owners.update(dict.fromkeys(found, source))
                domains.update(found)
            for name, joined in self._joined.items():
                running = domains.get(name, False)
                if running != joined.ready:
                    self._set_ready(name, joined, running)
            for name, running in sorted(domains.items()):
                if running:
                    self._started.setdefault(name, time.monotonic())
                if running and name not in self._joined:
                    self._try_join(name)
            for cluster in list(self._clusters.values()):
                for node in cluster.workload.answer_etcd_removals():
                    self._event(f"etcd member {node} removed (k3s etcd controller), node annotated")
                self._forget_if_gone(cluster, domains)

    def _forget_if_gone(self, cluster: _Cluster, domains: dict[str, bool]) -> None:
        """Once every server that joined a cluster is undefined, its datastore is gone
        with them: the cluster stops and its endpoint is free for a new one."""
        servers = [d for d, j in self._joined.items() if j.cluster is cluster and j.server]
        if not servers or any(d in domains for d in servers):
            return
        cluster.workload.stop()
        del self._clusters[(cluster.host, cluster.port)]
        for domain in [d for d, j in self._joined.items() if j.cluster is cluster]:
            del self._joined[domain]
        self._event(f"every server of https://{cluster.host}:{cluster.port} is gone: the cluster is gone")

    def _set_ready(self, domain: str, joined: _Joined, ready: bool) -> None:
        try:
            joined.cluster.workload.set_node_ready(joined.node, ready)
        except ApiException as exc:
            if exc.status != 404:  # CAPI deleted the Node with its Machine: nothing to report
                raise
        joined.ready = ready
        state = "running again: Ready" if ready else "stopped or gone: kubelet silent, Ready=False"
        self._event(f"{domain}: {state} (node {joined.node})")

    def _refuse(self, domain: str, reason: str) -> None:
        if self._refused.get(domain) != reason:
            self._refused[domain] = reason
            self._event(f"{domain}: k3s does not join: {reason}")

    def _try_join(self, domain: str) -> None:
        source = self._owners.get(domain)
        if source is not None:
            received = source.received(domain)
            if received is None:
                return
            blocks = received
            release = received.get("KAIROS-RELEASE")
            version = shipped_k3s_version(release.decode(errors="replace")) if release else None
        else:
            console = serial_log(self.daemon, domain)
            if BOOTED not in console:
                return
            blocks = console_blocks(console)
            version = console_k3s_version(console)
        if domain not in self.boot_seconds:
            self.boot_seconds[domain] = time.monotonic() - self._started[domain]
        if "USER-DATA" not in blocks or "META-DATA" not in blocks:
            self._refuse(domain, "no config drive read at boot")
            return
        try:
            data = BootData.parse(
                blocks["USER-DATA"], blocks["META-DATA"], self._disks.setdefault(domain, Disk())
            )
        except BootDataError as exc:
            self._refuse(domain, str(exc))
            return
        if data.role is Role.INIT_SERVER:
            cluster = self._init_cluster(domain, data)
        else:
            cluster = self._cluster_for_join(domain, data)
        if cluster is None:
            return
        server = data.role.server
        cluster.workload.register_node(
            data.hostname, data.provider_id, control_plane=server, kubelet_version=version
        )
        if server:
            cluster.workload.mark_serving()
        self._joined[domain] = _Joined(cluster, data.hostname, server)
        self._refused.pop(domain, None)
        self._event(
            f"{domain}: k3s {'server' if server else 'agent'} joined https://{cluster.host}:{cluster.port}"
            f" as node {data.hostname} ({data.provider_id}), k3s {version or 'version unknown'}"
        )

    def _init_cluster(self, domain: str, data: BootData) -> _Cluster | None:
        assert data.server_ca is not None and data.client_ca is not None
        free = [e for e in self._endpoints if e[0] in data.tls_sans and e not in self._clusters]
        if not free:
            self._refuse(domain, f"--cluster-init, but no free endpoint for tls-san {list(data.tls_sans)}")
            return None
        parsed = tokens.parse_token(data.token)
        if parsed is None or not tokens.pins(data.token, data.server_ca.cert_pem):
            self._refuse(domain, "--cluster-init with a token that does not pin its own server CA")
            return None
        host, port = free[-1]
        self._event(f"{domain}: k3s --cluster-init: starting the cluster on https://{host}:{port}")
        workload = WorkloadStandIn(
            self.workdir / f"cluster-{port}", data.server_ca, data.client_ca, port
        ).start()
        cluster = _Cluster(host, port, workload, data.server_ca.cert_pem, parsed.secret)
        self._clusters[(host, port)] = cluster
        return cluster

    def _cluster_for_join(self, domain: str, data: BootData) -> _Cluster | None:
        assert data.server_url is not None
        url = urlsplit(data.server_url)
        if url.scheme != "https" or url.hostname is None:
            self._refuse(domain, f"--server={data.server_url} is not an https URL")
            return None
        cluster = self._clusters.get((url.hostname, url.port or 6443))
        if cluster is None:
            self._refuse(domain, f"no k3s server answers on {data.server_url} (retrying)")
            return None
        parsed = tokens.parse_token(data.token)
        if parsed is None:
            self._refuse(domain, "token is not in the CA-pinned K10 form")
            return None
        if not tokens.pins(data.token, cluster.ca_pem):
            self._refuse(domain, f"token CA hash does not match the CA {data.server_url} serves")
            return None
        if not secrets.compare_digest(parsed.secret, cluster.secret):
            self._refuse(domain, f"token rejected by {data.server_url} (wrong secret)")
            return None
        return cluster


__all__ = [
    "BOOTED",
    "BootData",
    "BootDataError",
    "Disk",
    "K3sStandIn",
    "console_blocks",
    "console_k3s_version",
    "if_holds",
    "serial_log",
    "shipped_k3s_version",
]
