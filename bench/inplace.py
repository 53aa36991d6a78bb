"""Benchmark: the rollout of one release to the next on 3 servers + 2 workers (stand-in
VMs, real CAPI core), in place against replacing the machines, side by side in one run.

    .venv/bin/python bench/inplace.py [--order replace,inplace]

Starts the management plane (etcd, kube-apiserver with a metadata-only audit log,
kube-controller-manager, CAPI core with the RuntimeSDK and InPlaceUpdates gates), a
private libvirtd with its network (a network namespace of its own) and the k3s stand-in.
For each strategy, on its own namespace with its own `capi-c3os run` (all providers,
under its own user so its requests can be told apart): the cluster of
tests/integration/libvirt/test_inplace_cluster.py with two workers is made on the
stand-in release, then rolled out to the next one, the control plane first, the
MachineDeployment once the servers are done (the order CAPI's topology controller keeps),
and the cluster deleted again:

- inplace: C3osControlPlane `rollout.strategy.type: InPlace`, the manager serving the
  Runtime SDK extension (its ExtensionConfig selects that namespace), so CAPI updates the
  workers through CanUpdateMachineSet / UpdateMachine: each VM installs the next image
  into its other slot and reboots;
- replace: `RollingUpdate`, no extension: every Machine is replaced by a new VM booting
  the next release's volume.

The MachineDeployment rolls with maxSurge 0 / maxUnavailable 1 for both (what CAPI's
in-place updates need; the same for replace keeps the comparison about the mechanism).
Per strategy it prints, for the rollout (from the first patch until every Machine and its
Node run the next version and nothing is left to delete): wall time (and of the servers
alone), the seconds without a Ready API server (the workload endpoint not answering, or
no Ready server Node; sampled every --interval s and the gaps summed), the fewest Ready
servers seen and server-seconds short of 3, the writes to the management API server (audit
log: by our manager, and by everyone), the VMs created and deleted (libvirt domains seen);
then replace/inplace. Figures only: nothing here asserts a duration.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import urllib3
import yaml
from kubernetes import client as kc
from kubernetes.client.exceptions import ApiException

REPO = Path(__file__).resolve().parent.parent
# bench/libvirt.py would shadow `import libvirt`: this directory off the path, the repo on it.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO / "bench"]
sys.path.insert(0, str(REPO))

from capi_c3os.dev.k3s import K3sStandIn  # noqa: E402
from capi_c3os.dev.libvirtd import PrivateLibvirtd  # noqa: E402
from capi_c3os.dev.manager import Manager, start_manager  # noqa: E402
from capi_c3os.dev.mgmt import ManagementPlane, api_client, apply, wait_for_crds_established  # noqa: E402
from capi_c3os.dev.processes import free_port  # noqa: E402
from capi_c3os.dev.workload import CONTROL_PLANE_ROLE  # noqa: E402
from tests.integration.conftest import RUNTIME  # noqa: E402
from tests.integration.inplace import CP  # noqa: E402
from tests.integration.libvirt.conftest import (  # noqa: E402
    BOOT_VOLUME,
    NEXT_BOOT_VOLUME,
    NEXT_K3S,
    STANDIN_K3S,
    Capi,
)
from tests.integration.libvirt.test_inplace_cluster import (  # noqa: E402
    CAPI,
    NAME,
    SERVERS,
    create_cluster,
    oci,
    template,
)

USER = "capi-c3os-bench-manager"
WORKERS = 2
TIMEOUT = 1800.0  # TCG VMs on a shared machine: a safety net only
WRITES = frozenset({"create", "update", "patch", "delete", "deletecollection"})
IN_PROGRESS = "in-place-updates.internal.cluster.x-k8s.io/update-in-progress"


def wait(probe: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if probe():
                return
        except (ApiException, urllib3.exceptions.HTTPError) as exc:
            # An API server on a loaded machine drops a response now and then: next round.
            print(f"waiting for {what}: {exc!r}", file=sys.stderr)
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(1)


def ready(obj: Any) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in obj.status.conditions or [])


@dataclass
class Watch:
    """Samples, every `interval` s while running, the workload endpoint and its Ready
    server Nodes, and (every second) the libvirt domains."""

    k3s: K3sStandIn
    libvirtd: PrivateLibvirtd
    port: int
    interval: float
    samples: list[tuple[float, bool, int]] = field(default_factory=list)
    """(monotonic time, the endpoint answered, Ready server Nodes)"""
    initial: set[str] = field(default_factory=set)
    """UUIDs of the domains at the start"""
    domains: set[str] = field(default_factory=set)
    """UUIDs of every domain seen"""
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Watch:
        self.initial = self.uuids()
        self.domains = set(self.initial)
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        self.domains |= self.uuids()

    def uuids(self) -> set[str]:
        with self.libvirtd.connect() as conn:
            return {d.UUIDString() for d in conn.listAllDomains(0)}

    def _loop(self) -> None:
        workload = self.k3s.cluster("127.0.0.1", self.port)
        assert workload is not None
        last_domains = 0.0
        with api_client(workload.kubeconfig) as client:
            core = kc.CoreV1Api(client)
            while not self._stop.is_set():
                now = time.monotonic()
                try:
                    nodes = core.list_node(_request_timeout=self.interval * 4).items
                    servers = sum(ready(n) for n in nodes if CONTROL_PLANE_ROLE in (n.metadata.labels or {}))
                    self.samples.append((now, True, servers))
                except Exception:  # the endpoint does not answer: no API server
                    self.samples.append((now, False, 0))
                if now - last_domains >= 1:
                    last_domains = now
                    with suppress(Exception):
                        self.domains |= self.uuids()
                self._stop.wait(max(0.0, self.interval - (time.monotonic() - now)))

    def figures(self) -> tuple[float, int, float]:
        """(seconds without a Ready API server, fewest Ready servers, server-seconds short
        of SERVERS): each sample stands for the time until the next."""
        gap = short = 0.0
        for (t, up, servers), (t_next, _, _) in zip(self.samples, self.samples[1:], strict=False):
            if not up or servers == 0:
                gap += t_next - t
            short += max(0, SERVERS - servers) * (t_next - t)
        return gap, min(s for _, _, s in self.samples), short


def audit_writes(audit_log: Path, offset: int) -> tuple[Counter[str], Counter[str]]:
    """Writes in the audit log after byte `offset`: by user (leader-election Lease
    renewals, which only take time, apart as `<user> (leases)`), and our manager's by
    verb and resource."""
    users: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    with audit_log.open() as log:
        log.seek(offset)
        for line in log:
            event = json.loads(line)
            if event.get("verb") not in WRITES:
                continue
            user = event.get("user", {}).get("username", "?")
            ref = event.get("objectRef") or {}
            users[f"{user} (leases)" if ref.get("resource") == "leases" else user] += 1
            if user == USER:
                sub = f"/{ref['subresource']}" if ref.get("subresource") else ""
                kinds[f"{event['verb']} {ref.get('resource')}{sub}"] += 1
    return users, kinds


@dataclass
class Result:
    wall: float
    servers: float
    gap: float
    fewest: int
    short: float
    created: int
    deleted: int
    users: Counter[str]
    """writes by user"""
    kinds: Counter[str]
    """our manager's writes by verb and resource"""

    @property
    def ours(self) -> int:
        return self.users[USER]

    @property
    def total(self) -> int:
        return sum(self.users.values())

    @property
    def no_leases(self) -> int:
        return sum(n for user, n in self.users.items() if not user.endswith(" (leases)"))


class Run:
    """One strategy on its own namespace: the manager, the k3s stand-in, the cluster."""

    def __init__(
        self, plane: ManagementPlane, libvirtd: PrivateLibvirtd, image: Path, root: Path, strategy: str
    ) -> None:
        self.plane, self.libvirtd, self.strategy = plane, libvirtd, strategy
        self.namespace = f"bench-{strategy}"
        self.root = root / strategy
        self.root.mkdir()
        self.port = free_port()
        self.k3s = K3sStandIn(libvirtd, self.root / "k3s", endpoints=[("127.0.0.1", self.port)], images=image)

    def start_manager(self, client: Any) -> Manager:
        kubeconfig = self.plane.write_kubeconfig(self.root / "manager.kubeconfig", USER, ("system:masters",))
        flags: list[str] = []
        if self.strategy == "inplace":
            port = free_port()
            flags = ["--extension-addr", f"127.0.0.1:{port}", "--extension-url", f"https://127.0.0.1:{port}"]
        manager = start_manager(
            kubeconfig, self.root / "manager.log", *flags, namespace=self.namespace,
            env={"POD_NAMESPACE": self.namespace}, name=f"manager-{self.strategy}",
        )  # fmt: skip
        manager.wait_ready(60)
        if flags:
            api = kc.CustomObjectsApi(client)

            def discovered() -> bool:
                config = api.get_cluster_custom_object(*RUNTIME, "c3os")
                conditions = (config.get("status") or {}).get("conditions") or []
                return any(c["type"] == "Discovered" and c["status"] == "True" for c in conditions)

            wait(discovered, "ExtensionConfig c3os discovered", 120)
        return manager

    def run(self, interval: float) -> Result:
        with api_client(self.plane.kubeconfig) as client:
            kc.CoreV1Api(client).create_namespace(
                kc.V1Namespace(metadata=kc.V1ObjectMeta(name=self.namespace))
            )
            capi = Capi(client, self.namespace)
            manager = self.start_manager(client)
            self.k3s.start()
            try:
                return self.measure(capi, interval)
            finally:
                with suppress(Exception):
                    capi.delete(CAPI, "clusters", NAME)
                    wait(lambda: not self.machines(capi), "the cluster deleted", 600)
                self.k3s.stop()
                manager.stop()
                if self.strategy == "inplace":
                    with suppress(Exception):
                        kc.CustomObjectsApi(client).delete_cluster_custom_object(*RUNTIME, "c3os")

    def machines(self, capi: Capi) -> list[dict[str, Any]]:
        return list(capi.custom.list_namespaced_custom_object(*CAPI, capi.namespace, "machines")["items"])

    def nodes(self) -> dict[str, Any]:
        workload = self.k3s.cluster("127.0.0.1", self.port)
        assert workload is not None
        with api_client(workload.kubeconfig) as client:
            return {n.metadata.name: n for n in kc.CoreV1Api(client).list_node().items}

    def rolled(self, capi: Capi, workers: bool, version: str) -> bool:
        """Every Machine of the part runs `version` on its Node, Ready, up to date, and
        nothing of the part is left to delete or update."""
        found = [m for m in self.machines(capi) if ("pool" in m["metadata"].get("labels", {})) == workers]
        if len(found) != (WORKERS if workers else SERVERS):
            return False
        nodes = self.nodes()
        for machine in found:
            meta, status = machine["metadata"], machine.get("status") or {}
            node = nodes.get((status.get("nodeRef") or {}).get("name", ""))
            conditions = {c["type"]: c["status"] for c in status.get("conditions") or []}
            if (
                meta.get("deletionTimestamp")
                or IN_PROGRESS in (meta.get("annotations") or {})
                or machine["spec"].get("version") != version
                or conditions.get("UpToDate") != "True"
                or node is None
                or not ready(node)
                or node.status.node_info.kubelet_version != version
            ):
                return False
        if workers:
            return True
        cp = capi.must_get(CP, "c3oscontrolplanes", NAME).get("status") or {}
        return (
            cp.get("versions") == [{"version": version, "replicas": SERVERS}]
            and cp.get("readyReplicas") == SERVERS
        )

    def measure(self, capi: Capi, interval: float) -> Result:
        strategy = "InPlace" if self.strategy == "inplace" else "RollingUpdate"
        create_cluster(capi, self.libvirtd, self.port, strategy, WORKERS)

        def up() -> bool:
            return self.k3s.cluster("127.0.0.1", self.port) is not None and all(
                self.rolled(capi, workers, STANDIN_K3S) for workers in (False, True)
            )

        wait(up, f"{self.strategy}: the cluster up")
        template(capi, "cp-next", NEXT_BOOT_VOLUME, oci(NEXT_K3S))
        template(capi, "md-next", NEXT_BOOT_VOLUME, oci(NEXT_K3S))
        watch = Watch(self.k3s, self.libvirtd, self.port, interval).start()
        offset = self.plane.audit_log.stat().st_size
        start = time.monotonic()
        spec = {"version": NEXT_K3S, "machineTemplate": {"spec": {"infrastructureRef": {"name": "cp-next"}}}}
        capi.custom.patch_namespaced_custom_object(
            *CP, capi.namespace, "c3oscontrolplanes", NAME, {"spec": spec}
        )
        wait(lambda: self.rolled(capi, False, NEXT_K3S), f"{self.strategy}: the servers rolled out")
        servers = time.monotonic() - start
        change = {
            "spec": {"template": {"spec": {"version": NEXT_K3S, "infrastructureRef": {"name": "md-next"}}}}
        }
        capi.custom.patch_namespaced_custom_object(*CAPI, capi.namespace, "machinedeployments", "md", change)
        wait(lambda: self.rolled(capi, True, NEXT_K3S), f"{self.strategy}: the workers rolled out")
        wall = time.monotonic() - start
        users, kinds = audit_writes(self.plane.audit_log, offset)
        watch.stop()
        after = watch.uuids()
        gap, fewest, short = watch.figures()
        created, deleted = len(watch.domains - watch.initial), len(watch.domains - after)
        return Result(wall, servers, gap, fewest, short, created, deleted, users, kinds)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--order", default="replace,inplace", help="strategies, in the order they run")
    parser.add_argument("--interval", type=float, default=0.25, help="readiness sampling interval (s)")
    args = parser.parse_args()
    strategies = args.order.split(",")
    out = subprocess.run(
        [str(REPO / "hack" / "standin-image.sh")], check=True, capture_output=True, text=True
    )
    image = Path(out.stdout.strip().splitlines()[-1])  # kernel, initrd, boot volumes (built once, cached)
    results: dict[str, Result] = {}
    with tempfile.TemporaryDirectory(prefix="bench-inplace-") as tmp:
        root = Path(tmp)
        plane = ManagementPlane(root / "mgmt", audit=True).start()
        libvirtd = PrivateLibvirtd(root / "libvirtd", network=True)
        try:
            crds = [yaml.safe_load(p.read_text()) for p in sorted((REPO / "config" / "crd").glob("*.yaml"))]
            apply(plane.kubeconfig, crds)
            wait_for_crds_established(plane.kubeconfig, crds)
            libvirtd.start()
            libvirtd.upload_file(image / "boot.qcow2", BOOT_VOLUME)
            libvirtd.upload_file(image / "boot-k3sv1.34.1-k3s1.qcow2", NEXT_BOOT_VOLUME)
            for strategy in strategies:
                results[strategy] = Run(plane, libvirtd, image, root, strategy).run(args.interval)
                print(f"{strategy}: {results[strategy]}", file=sys.stderr)
        finally:
            libvirtd.stop()
            plane.stop()
    report(results)
    return 0


def report(results: dict[str, Result]) -> None:
    rows: list[tuple[str, Callable[[Result], float], str]] = [
        ("rollout wall time (s)", lambda r: r.wall, ".0f"),
        ("  of which the servers (s)", lambda r: r.servers, ".0f"),
        ("no Ready API server (s)", lambda r: r.gap, ".1f"),
        ("fewest Ready servers", lambda r: r.fewest, "d"),
        (f"server-seconds short of {SERVERS}", lambda r: r.short, ".0f"),
        ("mgmt API writes, our manager", lambda r: r.ours, "d"),
        ("mgmt API writes, everyone", lambda r: r.total, "d"),
        ("  not counting Lease renewals", lambda r: r.no_leases, "d"),
        ("VMs created", lambda r: r.created, "d"),
        ("VMs deleted", lambda r: r.deleted, "d"),
    ]
    names = list(results)
    ratio = "replace/inplace" if {"replace", "inplace"} <= set(names) else ""
    print(f"{'':<32}" + "".join(f"{n:>10}" for n in names) + (f"{ratio:>17}" if ratio else ""))
    for label, get, fmt in rows:
        values = [get(results[n]) for n in names]
        line = f"{label:<32}" + "".join(f"{format(v, fmt):>10}" for v in values)
        if ratio:
            a, b = get(results["replace"]), get(results["inplace"])
            line += f"{(f'{a / b:.2f}' if b else '-'):>17}"
        print(line)
    for name in names:
        top = ", ".join(f"{k} {n}" for k, n in results[name].kinds.most_common(8))
        print(f"{name}: our manager's writes: {top}")
        users = ", ".join(f"{k} {n}" for k, n in results[name].users.most_common(8))
        print(f"{name}: writes by user: {users}")


if __name__ == "__main__":
    sys.exit(main())
