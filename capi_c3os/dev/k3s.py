"""k3s, stood in for from what Kairos's executor left on the nodes.

No k3s binary or c3os image can run here. The stand-in VMs (hack/standin-image.sh) do
boot and run Kairos's executor, yip: its datasource step pulls the user-data from the
config drive, the rootfs/initramfs/fs/boot stages of that document run, then our
provider-id ExecStartPre; the VM prints the files that left on the node (/etc/rancher,
/var/lib/rancher, /oem, /etc/hostname) on its serial console. `K3sStandIn` watches the
domains of a `PrivateLibvirtd` and, for each running VM whose console shows them, does
what k3s on that VM would do with exactly those files (`BootData.from_node`), never with
the cloud-config itself: a document yip cannot load leaves no /oem/userdata.yaml and no
token, and k3s never starts:

- the first server (`--cluster-init` in its `k3s` block) creates the cluster: a
  `WorkloadStandIn` (real etcd + kube-apiserver) serving with **the server CA and
  client CA yip wrote under /var/lib/rancher/k3s/server/tls**, on the control-plane endpoint's loopback port,
  then `kube-system/k3s-serving`;
- a joining server or agent (`--server=https://host:port`) joins only if that URL names
  a running cluster's endpoint and its CA-pinned token (`K10<sha256 of the server CA
  PEM>::server:<secret>`) pins that cluster's CA and carries its secret; otherwise it
  never joins and the reason is logged, once, as a failing k3s join would log it;
- a joined node is a Ready Node named after the hostname yip set, with the
  `provider-id=` kubelet arg of k3s's merged config (what our ExecStartPre wrote from the
  drive's meta-data; without one k3s's own `k3s://<hostname>`);
  servers carry the control-plane role label; its kubeletVersion is the k3s version the
  image ships (`KAIROS_SOFTWARE_VERSION` of the `/etc/kairos-release` the VM printed at
  boot), never what the Machine asked for: on c3os, k3s comes with the image;
- etcd-removal annotations are answered like k3s's etcd controller (every round, see
  `WorkloadStandIn.answer_etcd_removals`; `etcd_removed` lists them);
- a domain that stops or vanishes: its Node goes Ready=False (heartbeats stop);
- once every server that joined a cluster is undefined, the cluster stops (its
  datastore went with them) and the endpoint is free again.
- machines of other `sources` (bare metal: `k3s_ironic`) join the same way from the
  files yip left when their source ran it over the drive they received (`yipnode`).

- in-place upgrades (`images`: the built stand-in image, whose `oci/` is the stand-in
  registry): each cluster's batch/v1 Jobs pinned (`nodeName`) to a Node this stand-in
  runs in that cluster are run on that Node's VM, and only there, as kubelet + containerd
  would (`capi_c3os/dev/nodeupgrade.py`); Job status is written as kubelet and the Job
  controller would (this workload apiserver runs no controller manager). A Job for a node
  of another cluster or an unknown node is never run; on machines of `sources` (bare metal)
  the source upgrades its file-level slots (`k3s_ironic`);
- every boot of a VM (a reboot appends to its console) is followed: while the new boot is
  not up the Node is NotReady; once up, it reports the boot's id, the k3s version of the
  slot it booted and the Kairos node labels (boot-state from its /proc/cmdline).

Not reproduced: the VM's root is RAM, so a rebooted VM runs every step again (a step's
`if:` sees a fresh root); the stand-in keeps each machine's files across boots.

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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import libvirt  # type: ignore[import-untyped]  # libvirt-python ships no type hints
import yaml
from kubernetes import client as kc
from kubernetes.client.exceptions import ApiException

from capi_c3os.bootstrap import tokens
from capi_c3os.bootstrap.certificates import KeyPair
from capi_c3os.bootstrap.cloudconfig import K3S_DIR, TLS_DIR, Role
from capi_c3os.dev import nodeupgrade
from capi_c3os.dev.libvirtd import PrivateLibvirtd
from capi_c3os.dev.mgmt import api_client
from capi_c3os.dev.nodeupgrade import AgentError, Boot, GuestAgent, Registry
from capi_c3os.dev.workload import WorkloadStandIn

log = logging.getLogger(__name__)

BOOTED = "C3OS-STANDIN READY"
"""The stand-in OS printed this once it has read its config drive and tried DHCP: from
here on k3s would be starting."""
RELEASE = re.compile(
    r"----- BEGIN KAIROS-RELEASE -----\r?\n(?P<text>.*?)----- END KAIROS-RELEASE -----", re.S
)
YIP_DONE = "C3OS-STANDIN YIP DONE"
"""The stand-in OS printed the files Kairos's executor left (hack/standin-image.sh)."""
FILE = re.compile(
    r"----- BEGIN FILE (?P<path>/\S+) (?P<mode>[0-7]+) (?P<uid>\d+) (?P<gid>\d+) BASE64 -----\r?\n"
    r"(?P<b64>.*?)----- END FILE -----",
    re.S,
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


def console_files(log_text: str) -> dict[str, bytes]:
    """The files yip left on a stand-in VM, as it printed them after the boot stages: path
    -> bytes (a block cut short by a crash is left out)."""
    files = {}
    for match in FILE.finditer(log_text):
        with suppress(binascii.Error, ValueError):
            files[match["path"]] = base64.b64decode("".join(match["b64"].split()), validate=True)
    return files


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
    """The node does not hold what k3s needs; the message names the part."""


OEM_USERDATA = "/oem/userdata.yaml"
"""Where Kairos's datasource step (`path: /oem`) leaves the user data, only when yip can
load it (yip v1.25.1 pkg/plugins/datasource.go processUserData): the config Kairos and
provider-kairos read the `k3s`/`k3s-agent` block from."""
HOSTNAME_FILE = "/etc/hostname"
K3S_CONFIG = f"{K3S_DIR}/config.yaml"


def k3s_config(files: dict[str, bytes]) -> dict[str, Any]:
    """k3s's configuration from the node's config.yaml and config.yaml.d/*.yaml, merged as
    k3s merges them (k3s pkg/configfilearg/parser.go, readConfigFile and dotDFiles: the
    file, then the drop-ins named `*.yaml`/`*.yml` in directory order; later keys win, a key
    ending in `+` appends to the list); a file k3s cannot parse makes it refuse to start."""
    merged: dict[str, Any] = {}
    paths = [K3S_CONFIG] if K3S_CONFIG in files else []
    drop_ins = f"{K3S_DIR}/config.yaml.d/"
    paths += sorted(
        p
        for p in files
        if p.startswith(drop_ins) and "/" not in p[len(drop_ins) :] and p.lower().endswith((".yaml", ".yml"))
    )
    for path in paths:
        try:
            content = yaml.safe_load(files[path]) or {}
        except yaml.YAMLError:
            raise BootDataError(f"{path} is not YAML: k3s refuses to start") from None
        if not isinstance(content, dict):
            raise BootDataError(f"{path} is not a mapping: k3s refuses to start")
        for key, value in content.items():
            if str(key).endswith("+"):
                base = str(key)[:-1]
                merged[base] = _as_list(merged.get(base)) + _as_list(value)
            else:
                merged[str(key)] = value
    return merged


def _as_list(value: Any) -> list[Any]:
    return [] if value is None else list(value) if isinstance(value, list) else [value]


def _flag(args: list[str], config: dict[str, Any], name: str) -> str | None:
    """A k3s setting given as `--name=value` (the unit's ExecStart) or in the config files;
    the command line wins, as in k3s."""
    flag = next((a.split("=", 1)[1] for a in args if a.startswith(f"--{name}=")), None)
    if flag is not None:
        return flag
    value = config.get(name)
    return None if value is None else str(value)


@dataclass(frozen=True)
class BootData:
    """What k3s on one machine would start from: the files Kairos's executor (yip) left
    on the node (see `from_node`)."""

    role: Role
    hostname: str
    """The node's hostname (yip's hostname step): the Node name."""
    provider_id: str
    """The kubelet's `--provider-id` from k3s's config (our ExecStartPre's result), else
    k3s's own `k3s://<hostname>`."""
    server_url: str | None
    """`--server=...` (joiners only)."""
    tls_sans: tuple[str, ...]
    token: str = field(repr=False)
    server_ca: KeyPair | None = field(default=None, repr=False)
    client_ca: KeyPair | None = field(default=None, repr=False)
    """Only the first server carries the CAs."""

    @classmethod
    def from_node(cls, files: dict[str, bytes]) -> BootData:
        """`files`: absolute path -> bytes of what yip wrote on the node this boot and
        before (`yipnode.NODE_PATHS`). The `k3s`/`k3s-agent` block is read from the
        document yip's datasource step saved, as provider-kairos reads it (its
        `oneTimeBootstrap`: `enabled` picks the unit, `args` follow `k3s server|agent`);
        everything else k3s reads is a file on the node."""
        if OEM_USERDATA not in files:
            raise BootDataError(
                f"no {OEM_USERDATA}: yip found no cloud-config it could load on the config drive, "
                "so Kairos configures nothing and k3s is never started"
            )
        try:
            doc = yaml.safe_load(files[OEM_USERDATA])
        except yaml.YAMLError as exc:
            raise BootDataError(f"{OEM_USERDATA} is not YAML: {exc.__class__.__name__}") from None
        block = (doc.get("k3s") or doc.get("k3s-agent")) if isinstance(doc, dict) else None
        if not isinstance(block, dict) or not block.get("enabled"):
            raise BootDataError("the node's cloud-config enables neither k3s nor k3s-agent")
        hostname = files.get(HOSTNAME_FILE, b"").decode(errors="replace").strip()
        if not hostname:
            raise BootDataError(f"no hostname on the node ({HOSTNAME_FILE})")
        args = [str(a) for a in block.get("args") or []]
        config = k3s_config(files)
        server = _flag(args, config, "server")
        if "k3s-agent" in doc:
            role = Role.AGENT
        else:
            init = "--cluster-init" in args or config.get("cluster-init") is True
            role = Role.INIT_SERVER if init else Role.JOIN_SERVER
        if role is not Role.INIT_SERVER and server is None:
            raise BootDataError("a joining node without --server")
        token = _flag(args, config, "token")
        token_path = _flag(args, config, "token-file")
        if token is None and token_path is not None:
            if token_path not in files:
                raise BootDataError(f"no token file {token_path} on the node: k3s cannot read its token")
            token = files[token_path].decode(errors="replace").strip()
        if not token:
            raise BootDataError(f"no token on the node ({token_path or 'no --token or --token-file'})")
        kubelet_args = [str(a) for a in _as_list(config.get("kubelet-arg"))]
        ids = [a.split("=", 1)[1] for a in kubelet_args if a.startswith("provider-id=")]
        provider_id = ids[-1] if ids else f"k3s://{hostname}"
        sans = tuple(str(s) for s in _as_list(config.get("tls-san")))
        server_ca = client_ca = None
        if role is Role.INIT_SERVER:
            try:
                server_ca = KeyPair(files[f"{TLS_DIR}/server-ca.crt"], files[f"{TLS_DIR}/server-ca.key"])
                client_ca = KeyPair(files[f"{TLS_DIR}/client-ca.crt"], files[f"{TLS_DIR}/client-ca.key"])
            except KeyError as exc:
                raise BootDataError(
                    f"the first server has no {exc.args[0]} on the node (k3s would make CAs of its own)"
                ) from None
        return cls(role, hostname, provider_id, server, sans, token, server_ca, client_ca)


@dataclass
class Disk:
    """A node's persistent files as yip leaves them (`/etc`, `/var/lib/rancher` persist
    on Kairos), and what the last boot wrote."""

    files: dict[str, bytes] = field(default_factory=dict, repr=False)
    written: set[str] = field(default_factory=set)
    """Paths the last boot changed (newer than anything k3s stored)."""

    def boot(self, files: dict[str, bytes]) -> None:
        """The node's files after a boot's stages: what differs from before was written."""
        self.written = {path for path, data in files.items() if self.files.get(path) != data}
        self.files.update(files)

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
    boot_id: str = ""
    """The boot the Node last reported ("" for machines without boot markers)."""
    booting: bool = False
    """A new boot started and is not up yet: the kubelet is gone meanwhile."""


@dataclass(frozen=True)
class Booted:
    """A machine after Kairos's boot stages: the files yip left (`yipnode.NODE_PATHS`) and
    the k3s version its image ships."""

    files: dict[str, bytes] = field(repr=False)
    k3s_version: str | None


class MachineSource(Protocol):
    """Machines besides the daemon's VMs (e.g. `k3s_ironic.IronicMachines`)."""

    def running(self) -> dict[str, bool]:
        """name -> up; names must not collide with domain names."""

    def booted(self, name: str) -> Booted | None:
        """The machine's files after Kairos's boot stages, None until it booted."""

    def boot(self, name: str) -> Boot | None:
        """The machine's current boot (id, command line, the release of the slot it
        booted, up or not), None until it booted."""

    def upgrade(self, name: str, rootfs: Path) -> tuple[bool, str]:
        """Run the upgrade Job's `kairos-agent upgrade --source dir:<rootfs>` and the reboot
        on the machine: (written and rebooting, message)."""


class K3sStandIn:
    """Plays k3s on the VMs of one private libvirtd (see the module docstring)."""

    def __init__(
        self,
        daemon: PrivateLibvirtd | None,
        workdir: Path,
        endpoints: Iterable[tuple[str, int]] = (),
        interval: float = 1.0,
        images: Path | None = None,
    ) -> None:
        self.daemon = daemon
        self.registry = Registry(images) if images is not None else None
        """The stand-in registry upgrade Jobs pull from (None: every image is not found)."""
        self.jobs: dict[str, str] = {}
        """`<namespace>/<job name>` -> its outcome so far (running, Complete, Failed: ...)."""
        self._job_threads: list[threading.Thread] = []
        self._jobs_taken: set[str] = set()  # Job uids this stand-in started
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
        for thread in self._job_threads:
            thread.join(timeout=60)
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
        """name -> running, for every domain of the daemon (none without one: machines of
        `sources` only)."""
        if self.daemon is None:
            return {}
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
                if running:
                    self._follow_boots(name, joined)
                up = running and not joined.booting
                if up != joined.ready:
                    self._set_ready(name, joined, up)
            for name, running in sorted(domains.items()):
                if running:
                    self._started.setdefault(name, time.monotonic())
                if running and name not in self._joined:
                    self._try_join(name)
            for cluster in list(self._clusters.values()):
                self._start_jobs(cluster)
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
        if ready:
            state = "running again: Ready"
        elif joined.booting:
            state = "rebooting: kubelet silent, Ready=False"
        else:
            state = "stopped or gone: kubelet silent, Ready=False"
        self._event(f"{domain}: {state} (node {joined.node})")

    def _refuse(self, domain: str, reason: str) -> None:
        if self._refused.get(domain) != reason:
            self._refused[domain] = reason
            self._event(f"{domain}: k3s does not join: {reason}")

    def _try_join(self, domain: str) -> None:
        source = self._owners.get(domain)
        boot: Boot | None = None
        if source is not None:
            booted = source.booted(domain)
            if booted is None:
                return
        else:
            assert self.daemon is not None  # a domain: it came from the daemon
            console = serial_log(self.daemon, domain)
            current = nodeupgrade.boots(console)
            boot = current[-1] if current else None
            if boot is not None:
                console = boot.text  # only this boot's console: a reboot starts over
            if BOOTED not in console:
                return
            if YIP_DONE not in console:
                self._refuse(domain, "the image ran no Kairos stages (no yip output on its console)")
                return
            booted = Booted(console_files(console), console_k3s_version(console))
        version = booted.k3s_version
        if domain not in self.boot_seconds:
            self.boot_seconds[domain] = time.monotonic() - self._started[domain]
        disk = self._disks.setdefault(domain, Disk())
        disk.boot(booted.files)
        try:
            data = BootData.from_node(disk.files)
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
        joined = self._joined[domain] = _Joined(cluster, data.hostname, server)
        if source is not None:
            boot = source.boot(domain)
        if boot is not None:
            self._report_boot(domain, joined, boot)
        self._refused.pop(domain, None)
        self._event(
            f"{domain}: k3s {'server' if server else 'agent'} joined https://{cluster.host}:{cluster.port}"
            f" as node {data.hostname} ({data.provider_id}), k3s {version or 'version unknown'}"
        )

    # -------------------------------------------------------------- boots and upgrades

    def _follow_boots(self, domain: str, joined: _Joined) -> None:
        """A joined machine's latest boot: a new one not up yet takes the kubelet away; once
        up, the Node reports it."""
        source = self._owners.get(domain)
        if source is not None:
            current = source.boot(domain)
            found = [current] if current is not None else []
        else:
            assert self.daemon is not None
            found = nodeupgrade.boots(serial_log(self.daemon, domain))
        if not found or found[-1].boot_id == joined.boot_id:
            joined.booting = False
            return
        boot = found[-1]
        if not boot.up:
            if not joined.booting:
                self._event(f"{domain}: rebooting (boot {boot.boot_id}, {boot.cmdline or 'no cmdline yet'})")
            joined.booting = True
            return
        joined.booting = False
        self._report_boot(domain, joined, boot)

    def _report_boot(self, domain: str, joined: _Joined, boot: Boot) -> None:
        labels, annotations = nodeupgrade.node_report(boot)
        version = shipped_k3s_version("\n".join(f"{k}={v}" for k, v in boot.release.items()))
        joined.cluster.workload.report_boot(joined.node, boot.boot_id, version, labels, annotations)
        joined.boot_id = boot.boot_id
        self._event(
            f"{domain}: node {joined.node} up, boot {boot.boot_id}, "
            f"boot-state {labels['kairos.io/boot-state']}, k3s {version or 'version unknown'}"
        )

    def _start_jobs(self, cluster: _Cluster) -> None:
        """Jobs pinned to a Node this stand-in runs in `cluster`, not yet started: each runs
        in its own thread (an upgrade takes a while)."""
        nodes = {j.node: d for d, j in self._joined.items() if j.cluster is cluster}
        with api_client(cluster.workload.kubeconfig) as client:
            jobs = kc.BatchV1Api(client).list_job_for_all_namespaces().items
        for job in jobs:
            uid = job.metadata.uid
            domain = nodes.get(job.spec.template.spec.node_name or "")
            if domain is None or uid in self._jobs_taken:
                continue  # not ours to run: no such node here (another cluster's, unknown)
            status = job.status
            if status is not None and (status.active or status.succeeded or status.failed):
                continue  # started before this stand-in (a restart): not run twice
            self._jobs_taken.add(uid)
            key = f"{job.metadata.namespace}/{job.metadata.name}"
            self.jobs[key] = "running"
            self._event(f"{domain}: running Job {key} on node {job.spec.template.spec.node_name}")
            thread = threading.Thread(target=self._run_job, args=(cluster, domain, job), daemon=True)
            self._job_threads.append(thread)
            thread.start()

    def _run_job(self, cluster: _Cluster, domain: str, job: kc.V1Job) -> None:
        key = f"{job.metadata.namespace}/{job.metadata.name}"
        started = datetime.now(UTC)
        try:
            self._job_status(cluster, job, {"active": 1, "startTime": _stamp(started)})
            ok, message = self._upgrade(domain, job)
        except Exception as exc:  # the stand-in's own failure: the Job fails, readable
            ok, message = False, f"stand-in kubelet: {exc.__class__.__name__}: {exc}"
        outcome = "Complete" if ok else f"Failed: {message}"
        self.jobs[key] = outcome
        self._event(f"{domain}: Job {key} {outcome}")
        now = _stamp(datetime.now(UTC))
        if ok:
            conditions = [_condition("SuccessCriteriaMet", "CompletionsReached", message, now),
                          _condition("Complete", "CompletionsReached", message, now)]  # fmt: skip
            status = {"active": 0, "ready": 0, "succeeded": 1, "completionTime": now}
        else:
            conditions = [_condition("FailureTarget", "BackoffLimitExceeded", message, now),
                          _condition("Failed", "BackoffLimitExceeded", message, now)]  # fmt: skip
            status = {"active": 0, "ready": 0, "failed": 1}
        with suppress(Exception):  # the cluster went away meanwhile
            self._job_status(cluster, job, {**status, "startTime": _stamp(started), "conditions": conditions})

    def _job_status(self, cluster: _Cluster, job: kc.V1Job, status: dict[str, Any]) -> None:
        with api_client(cluster.workload.kubeconfig) as client:
            kc.BatchV1Api(client).patch_namespaced_job_status(
                job.metadata.name, job.metadata.namespace, {"status": status}
            )

    def _upgrade(self, domain: str, job: kc.V1Job) -> tuple[bool, str]:
        """The Job's pod on `domain`'s VM: (succeeded, message)."""
        problem = nodeupgrade.job_problem(job)
        if problem:
            return False, f"not run by the stand-in kubelet: {problem}"
        container = job.spec.template.spec.containers[0]
        rootfs = self.registry.resolve(container.image) if self.registry else None
        if rootfs is None:
            return False, f'Failed to pull image "{container.image}": not found (ErrImagePull)'
        source = self._owners.get(domain)
        if source is not None:
            return source.upgrade(domain, rootfs)
        assert self.daemon is not None
        before = nodeupgrade.boots(serial_log(self.daemon, domain))
        boot_before = before[-1].boot_id if before else ""
        conn = self.daemon.connect()
        try:
            agent = GuestAgent(conn.lookupByName(domain))
            workdir = f"/run/c3os-pods/{job.metadata.uid}"
            sent = nodeupgrade.pull(agent, rootfs, workdir)
            self._event(f"{domain}: pulled {container.image} ({sent} bytes through the guest agent)")
            agent.write_file(f"{workdir}/script", container.command[2].encode())
            pid = agent.start("/bin/c3os-run-container", f"{workdir}/rootfs", f"{workdir}/script")
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline and not self._stop.is_set():
                console = nodeupgrade.boots(serial_log(self.daemon, domain))
                if console and console[-1].boot_id != boot_before:
                    # Rebooted by the script's last line: the container never reports back.
                    # What kairos-agent printed on the console before says how it went (with
                    # the script's `set -e` a failed upgrade exits instead: handled below).
                    text = "".join(b.text for b in console if b.boot_id == boot_before)
                    if nodeupgrade.UPGRADE_DONE in text:
                        return True, "upgrade written, node rebooting"
                    errors = [line.split(" ERROR ", 1)[1].strip() for line in text.splitlines()
                              if line.startswith(nodeupgrade.AGENT_ERROR)]  # fmt: skip
                    detail = f": {errors[-1]}" if errors else ""
                    return False, f"the node rebooted before kairos-agent upgrade completed{detail}"
                try:
                    status = agent.command("guest-exec-status", pid=pid)
                except AgentError:
                    time.sleep(0.5)  # the guest is going down: the console tells
                    continue
                if status.get("exited"):
                    code = int(status.get("exitcode", -1))
                    err = base64.b64decode(status.get("err-data", "")).decode(errors="replace")
                    out = base64.b64decode(status.get("out-data", "")).decode(errors="replace")
                    if code != 0:
                        last = (err.strip() or out.strip()).splitlines()[-1:] or [""]
                        return False, f"upgrade container exited with code {code}: {last[0]}"
                    # Exited 0: reboot requested; the console shows the new boot soon.
                time.sleep(0.5)
            return False, "the upgrade did not finish within 600s"
        finally:
            with suppress(libvirt.libvirtError):
                conn.close()

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


def _stamp(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _condition(kind: str, reason: str, message: str, now: str) -> dict[str, str]:
    return {"type": kind, "status": "True", "reason": reason, "message": message,
            "lastProbeTime": now, "lastTransitionTime": now}  # fmt: skip


__all__ = [
    "BOOTED",
    "YIP_DONE",
    "BootData",
    "BootDataError",
    "Booted",
    "Disk",
    "K3sStandIn",
    "MachineSource",
    "console_blocks",
    "console_files",
    "console_k3s_version",
    "k3s_config",
    "serial_log",
    "shipped_k3s_version",
]
