"""Benchmark of the Ironic backend against a real standalone Ironic (fake-hardware, SQLite).

    .venv/bin/python bench/ironic.py [--nodes 100] [--workers 8] [--rounds 5]
                                     [--machines 10] [--idle 60]

1. One machine, create -> running: the backend (provision() called whenever its
   requeue says, polling capped at --poll s) against the same ironicclient call sequence
   made directly (allocate, wait, patch, deploy, wait) with the same polling; the ratio of
   wall times and the Ironic requests of each, median of --rounds.
2. --nodes fake nodes -> as many machines to running, scheduled by their requeue_after
   on --workers threads (what the reconciler's thread pool does): wall time, this process's
   CPU seconds and peak RSS, Ironic requests per machine; then one health pass over the
   running machines (requests per machine) and the deletion of all of them.

3. Manager level (--machines, 0 to skip): as many fake nodes, first taken to `active` by a
   raw ironicclient script (allocation, instance_info, deploy with configdrive, wait for
   active; --pool threads, each machine polled every --poll s) and back to `available`,
   then the same nodes as C3osMachines reconciled by our real `capi-c3os run --providers
   infrastructure` process (--max-concurrent-reconciles=--pool) against a real management
   plane (etcd, kube-apiserver with a metadata-only audit log), each with its Machine and
   bootstrap Secret, to provisioned: wall time of both and manager/raw, the manager's CPU
   seconds and RSS, reconciles per machine (its metrics), Kubernetes API writes per
   machine (the audit log, by the manager's own user) and Ironic requests per machine by
   method and path (Ironic's log) for both sides; then --idle seconds with nothing to do:
   requests per machine (per resync with --sync-period) and CPU.

Everything runs on loopback; Ironic and the management plane are started and stopped by
the script.
"""

from __future__ import annotations

import argparse
import base64
import heapq
import json
import os
import re
import resource
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as kc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from capi_c3os.api.infrastructure import IronicMachine, IronicSite, MachineImage, Site
from capi_c3os.backends.base import (
    BackendError,
    MachineIdentity,
    MachineIntent,
    Phase,
    Progress,
    SiteCredentials,
)
from capi_c3os.backends.ironic import IronicBackend
from capi_c3os.backends.ironic.client import IronicApi, connect
from capi_c3os.backends.ironic.instance import allocation_request, configdrive, instance_info
from capi_c3os.capi.metadata import CLUSTER_SECRET_TYPE
from capi_c3os.dev.ironic import IronicServer
from capi_c3os.dev.manager import Manager, start_manager
from capi_c3os.dev.mgmt import ManagementPlane, api_client, apply, wait_for_crds_established

REPO = Path(__file__).resolve().parent.parent
CHECKSUM = "ab" * 32
USER_DATA = b"#cloud-config\nk3s:\n  enabled: true\n"


class CountingConnector:
    """Builds the real client and keeps it, to read its request count."""

    def __init__(self) -> None:
        self.apis: list[IronicApi] = []

    def __call__(self, site: IronicSite, credentials: SiteCredentials) -> IronicApi:
        api = connect(site, credentials)
        self.apis.append(api)
        return api

    @property
    def calls(self) -> int:
        return sum(a.calls for a in self.apis)


def intent_for(site: Site, rc: str, name: str) -> MachineIntent:
    identity = MachineIdentity("bench", name, f"c3os://bench/{name}")
    return MachineIntent(
        identity=identity,
        site=site,
        credentials=SiteCredentials(),
        image=MachineImage(url="http://images.example/c3os.qcow2", checksum=CHECKSUM),
        cpus=2,
        memory_mib=4096,
        disk_gib=20,
        hostname=name,
        user_data=USER_DATA,
        meta_data={"instance-id": identity.uuid, "local-hostname": name, "provider-id": identity.provider_id},
        ironic=IronicMachine(resource_class=rc),
        cluster="bench/c1",
    )


def enroll(api: Any, count: int, rc: str, workers: int) -> list[str]:
    def one(_: int) -> str:
        node = api.node.create(driver="fake-hardware", resource_class=rc, deploy_interface="fake")
        api.node.set_provision_state(node.uuid, "manage")
        wait_node(api, node.uuid, "manageable")
        api.node.set_provision_state(node.uuid, "provide")
        wait_node(api, node.uuid, "available")
        api.node.set_power_state(node.uuid, "off")
        while api.node.get(node.uuid, fields=["power_state"]).power_state != "power off":
            time.sleep(0.1)  # asynchronous; allocations skip nodes of unknown power state
        return str(node.uuid)

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, range(count)))


def wait_node(api: Any, node: str, state: str, poll: float = 0.1) -> None:
    while True:
        found = api.node.get(node, fields=["provision_state", "target_provision_state"])
        if found.provision_state == state and not found.target_provision_state:
            return
        time.sleep(poll)


def direct_deploy(api: IronicApi, intent: MachineIntent, poll: float) -> None:
    """The same requests the backend makes, in order, with nothing around them."""
    assert intent.ironic is not None
    allocation = api.create_allocation(**allocation_request(intent.identity, intent.ironic, intent.cluster))
    while allocation.state == "allocating":
        time.sleep(poll)
        found = api.get_allocation(allocation.uuid)
        assert found is not None
        allocation = found
    assert allocation.node_uuid is not None, allocation.last_error
    api.patch_node(
        allocation.node_uuid, [{"op": "add", "path": "/instance_info", "value": instance_info(intent)}]
    )
    api.set_provision_state(allocation.node_uuid, "active", configdrive=configdrive(intent))
    while True:
        node = api.get_node(allocation.node_uuid)
        assert node is not None
        if node.provision_state == "active":
            return
        time.sleep(poll)


def direct_undeploy(api: IronicApi, intent: MachineIntent, poll: float) -> None:
    node = api.node_by_instance_uuid(intent.identity.uuid)
    assert node is not None
    api.set_provision_state(node.uuid, "deleted")
    while (found := api.get_node(node.uuid)) is not None and found.provision_state != "available":
        time.sleep(poll)


def attempt(step: Any, *args: Any) -> Progress:
    """A step as the reconciler sees it: a retryable BackendError is a wait."""
    try:
        progress: Progress = step(*args)
    except BackendError as err:
        if err.retry_after is None:
            return Progress(Phase.FAILED, err.reason, err.message)
        return Progress(Phase.PROVISIONING, err.reason, err.message, requeue_after=min(err.retry_after, 10.0))
    return progress


def drive(step: Any, done: set[Phase], poll: float) -> Progress:
    while True:
        progress = attempt(step)
        if progress.phase in done or progress.phase is Phase.FAILED:
            return progress
        time.sleep(min(progress.requeue_after or poll, poll))


def one_machine(server: IronicServer, rounds: int, poll: float) -> None:
    site = Site(name="bench", ironic=IronicSite(endpoint=server.url))
    admin = connect(site.ironic, SiteCredentials())  # type: ignore[arg-type]
    rc = f"one-{uuid.uuid4().hex[:6]}"
    enroll(admin._client, 1, rc, 1)
    ours, direct, our_calls, direct_calls = [], [], [], []
    for i in range(rounds):
        connector = CountingConnector()
        backend = IronicBackend(connector=connector)
        intent = intent_for(site, rc, f"one-ours-{i}")
        started = time.perf_counter()
        progress = drive(lambda: backend.provision(intent), {Phase.RUNNING}, poll)  # noqa: B023
        ours.append(time.perf_counter() - started)
        assert progress.phase is Phase.RUNNING, progress
        our_calls.append(connector.calls)
        drive(lambda: backend.deprovision(intent.identity, site, SiteCredentials()), {Phase.DELETED}, poll)  # noqa: B023

        plain = connect(site.ironic, SiteCredentials())  # type: ignore[arg-type]
        intent = intent_for(site, rc, f"one-direct-{i}")
        started = time.perf_counter()
        direct_deploy(plain, intent, poll)
        direct.append(time.perf_counter() - started)
        direct_calls.append(plain.calls)
        direct_undeploy(plain, intent, poll)
    ratio = statistics.median(ours) / statistics.median(direct)
    print(
        f"one machine to running (median of {rounds}, poll {poll}s): backend {statistics.median(ours):.2f}s "
        f"with {statistics.median(our_calls):.0f} Ironic requests; direct ironicclient "
        f"{statistics.median(direct):.2f}s with {statistics.median(direct_calls):.0f} requests; "
        f"ratio {ratio:.2f}"
    )


def many_machines(  # noqa: PLR0915 - one scenario, read top to bottom
    server: IronicServer, nodes: int, workers: int, poll: float
) -> None:
    site = Site(name="bench", ironic=IronicSite(endpoint=server.url, max_concurrent_provisioning=20))
    admin = connect(site.ironic, SiteCredentials())  # type: ignore[arg-type]
    rc = f"many-{uuid.uuid4().hex[:6]}"
    started = time.perf_counter()
    enroll(admin._client, nodes, rc, workers)
    print(f"enrolled {nodes} fake-hardware nodes to available in {time.perf_counter() - started:.1f}s")

    connector = CountingConnector()
    backend = IronicBackend(connector=connector)
    intents = [intent_for(site, rc, f"m-{i:04d}") for i in range(nodes)]

    def run_all(step: Any, done: set[Phase]) -> dict[str, Progress]:
        """A requeue scheduler: each machine is called again when its Progress says."""
        due: list[tuple[float, int]] = [(0.0, i) for i in range(len(intents))]
        finished: dict[str, Progress] = {}
        last: dict[int, Progress] = {}
        limit = float(os.environ.get("BENCH_DEADLINE", "900"))
        deadline = time.monotonic() + limit
        lock = threading.Lock()
        with ThreadPoolExecutor(workers) as pool:
            while due or len(finished) < len(intents):
                now = time.monotonic()
                batch = []
                with lock:
                    while due and due[0][0] <= now:
                        batch.append(heapq.heappop(due)[1])

                def call(index: int) -> None:
                    progress = attempt(step, intents[index])
                    with lock:
                        last[index] = progress
                        if progress.phase in done or progress.phase is Phase.FAILED:
                            finished[intents[index].identity.name] = progress
                        else:
                            wait = min(progress.requeue_after or poll, 10.0)
                            heapq.heappush(due, (time.monotonic() + wait, index))

                list(pool.map(call, batch))
                if not batch:
                    time.sleep(0.05)
                if len(finished) == len(intents):
                    break
                if time.monotonic() > deadline:  # a benchmark stops by itself
                    stuck = [
                        f"{intents[i].identity.name}: {p.reason} {p.message}"
                        for i, p in last.items()
                        if intents[i].identity.name not in finished
                    ]
                    raise SystemExit(f"gave up after {limit:.0f} s; unfinished:\n" + "\n".join(stuck[:10]))
        return finished

    cpu0 = time.process_time()
    started = time.perf_counter()
    calls0 = connector.calls
    running = run_all(backend.provision, {Phase.RUNNING})
    wall = time.perf_counter() - started
    failed = [p for p in running.values() if p.phase is not Phase.RUNNING]
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"{nodes} machines to running: {wall:.1f}s wall, "
        f"{time.process_time() - cpu0:.1f} CPU s in this process, "
        f"peak RSS {peak_mib:.0f} MiB, {(connector.calls - calls0) / nodes:.1f} Ironic requests per machine, "
        f"{len(failed)} failed"
    )
    calls0 = connector.calls
    cpu0 = time.process_time()
    for intent in intents:
        backend.provision(intent)
    print(
        f"health pass over {nodes} running machines: "
        f"{(connector.calls - calls0) / nodes:.1f} Ironic requests "
        f"per machine, {time.process_time() - cpu0:.2f} CPU s"
    )
    calls0 = connector.calls
    started = time.perf_counter()
    deleted = run_all(lambda i: backend.deprovision(i.identity, site, SiteCredentials()), {Phase.DELETED})
    print(
        f"{nodes} machines deleted: {time.perf_counter() - started:.1f}s wall, "
        f"{(connector.calls - calls0) / nodes:.1f} Ironic requests per machine, "
        f"{sum(p.phase is not Phase.DELETED for p in deleted.values())} not deleted"
    )


MANAGER_USER = "capi-c3os-bench-infrastructure"
INFRA = ("infrastructure.cluster.x-k8s.io", "v1alpha1")
CAPI = ("cluster.x-k8s.io", "v1beta2")
CLUSTER_NAME = "cluster.x-k8s.io/cluster-name"
WRITES = frozenset({"create", "update", "patch", "delete", "deletecollection"})
IRONIC_REQUEST = re.compile(r" ironic\.api \[.*\] \S+ - (GET|PUT|POST|PATCH|DELETE) (/v1\S*)")
ID = re.compile(r"/(?:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|(?:raw|m)-\d{4}[^/?]*)")


def kube_requests(audit_log: Path, kinds: Counter[str] | None = None) -> tuple[int, int]:
    """(all, writes) the manager's identity made, from the API server's audit log; each
    write counted by verb and resource in `kinds` when given, and those answered 409 once
    more under "409 <verb> <resource>"."""
    total = writes = 0
    with audit_log.open() as log:
        for line in log:
            event = json.loads(line)
            if event.get("user", {}).get("username") == MANAGER_USER:
                total += 1
                if event.get("verb") in WRITES:
                    writes += 1
                    if kinds is not None:
                        ref = event.get("objectRef") or {}
                        sub = f"/{ref['subresource']}" if ref.get("subresource") else ""
                        kind = f"{event['verb']} {ref.get('resource')}{sub}"
                        kinds[kind] += 1
                        if (event.get("responseStatus") or {}).get("code") == 409:
                            kinds[f"409 {kind}"] += 1
    return total, writes


def ironic_requests(server: IronicServer, templates: Counter[str] | None = None) -> int:
    """Requests Ironic logged; each counted by method and path template (ids replaced by
    {id}, the query by its parameter names) in `templates` when given."""
    total = 0
    with server.log_path.open(errors="replace") as log:
        for line in log:
            found = IRONIC_REQUEST.search(line)
            if found is None:
                continue
            total += 1
            if templates is not None:
                path, _, query = found[2].partition("?")
                keys = sorted({part.split("=", 1)[0] for part in query.split("&") if part})
                template = ID.sub("/{id}", path) + (f"?{','.join(keys)}" if keys else "")
                templates[f"{found[1]} {template}"] += 1
    return total


def per_machine(counts: Counter[str], machines: int, top: int = 12) -> str:
    return ", ".join(f"{k} {n / machines:.2f}" for k, n in counts.most_common(top))


def process_usage(pid: int) -> tuple[float, float]:
    """(CPU seconds, peak RSS MiB) of a running process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return cpu, process_memory(pid, "VmHWM")


def process_memory(pid: int, field: str = "VmRSS") -> float:
    """A /proc/<pid>/status memory figure (VmRSS: now, VmHWM: peak) in MiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith(f"{field}:")) / 1024


def reconciles(manager: Manager, by: str = "result") -> Counter[str]:
    """C3osMachine reconciles the manager ran, by result (or by `by`: trigger)."""
    counts: Counter[str] = Counter()
    for (name, labels), value in manager.metrics().items():
        found = dict(labels)
        if name == "capi_c3os_reconcile_total" and found.get("kind") == "C3osMachine":
            counts[found[by]] += int(value)
    return counts


def api_requests(manager: Manager) -> Counter[str]:
    """The manager's own count of its API requests by verb and resource (reconcilers and
    lease; kopf's watches and patches are not in it)."""
    counts: Counter[str] = Counter()
    for (name, labels), value in manager.metrics().items():
        if name == "capi_c3os_api_requests_total":
            found = dict(labels)
            counts[f"{found['verb']} {found['resource']}"] += int(value)
    return counts


def raw_side(server: IronicServer, rc: str, machines: int, pool: int, poll: float) -> float:
    """The raw ironicclient script on `machines` available nodes of class `rc`, `pool` at a
    time: deploy all (timed, Ironic requests by kind), then undeploy all back to
    available (so the manager gets the same nodes). Returns the deploy wall time."""
    site = Site(name="bench", ironic=IronicSite(endpoint=server.url))
    api = connect(site.ironic, SiteCredentials())  # type: ignore[arg-type]
    intents = [intent_for(site, rc, f"raw-{i:04d}") for i in range(machines)]
    before: Counter[str] = Counter()
    ironic_requests(server, before)
    started = time.perf_counter()
    with ThreadPoolExecutor(pool) as workers:
        list(workers.map(lambda intent: direct_deploy(api, intent, poll), intents))
    wall = time.perf_counter() - started
    after: Counter[str] = Counter()
    ironic_requests(server, after)
    made = after - before
    print(
        f"raw ironicclient: {machines} nodes to active, {pool} at a time (poll {poll}s): {wall:.1f}s wall, "
        f"{machines / wall:.2f} nodes/s, {sum(made.values()) / machines:.1f} Ironic requests per machine"
    )
    print(f"  raw Ironic requests per machine: {per_machine(made, machines)}")
    started = time.perf_counter()
    with ThreadPoolExecutor(pool) as workers:
        list(workers.map(lambda intent: direct_undeploy(api, intent, poll), intents))
    print(f"raw ironicclient: {machines} nodes back to available in {time.perf_counter() - started:.1f}s")
    return wall


def manager_scale(  # noqa: PLR0915 - one scenario, read top to bottom
    server: IronicServer,
    root: Path,
    machines: int,
    idle: float,
    workers: int,
    sync_period: float | None,
    pool: int,
    poll: float,
) -> None:
    site = IronicSite(endpoint=server.url)
    admin = connect(site, SiteCredentials())
    rc = f"mgr-{uuid.uuid4().hex[:6]}"
    started = time.perf_counter()
    enroll(admin._client, machines, rc, workers)
    print(f"enrolled {machines} fake-hardware nodes to available in {time.perf_counter() - started:.1f}s")
    raw_wall = raw_side(server, rc, machines, pool, poll)

    plane = ManagementPlane(root / "mgmt", audit=True).start()
    manager: Manager | None = None
    try:
        crds = [yaml.safe_load(p.read_text()) for p in sorted((REPO / "config" / "crd").glob("*.yaml"))]
        apply(plane.kubeconfig, crds)
        wait_for_crds_established(plane.kubeconfig, crds)
        kubeconfig = plane.write_kubeconfig(root / "manager.kubeconfig", MANAGER_USER, ("system:masters",))
        manager = start_manager(
            kubeconfig, root / "manager.log", f"--max-concurrent-reconciles={pool}",
            *([f"--sync-period={sync_period}"] if sync_period else []), providers="infrastructure",
        )  # fmt: skip
        manager.wait_ready()
        assert manager.pid is not None
        with api_client(plane.kubeconfig) as client:
            api, core = kc.CustomObjectsApi(client), kc.CoreV1Api(client)
            ns = "bench"
            core.create_namespace(kc.V1Namespace(metadata=kc.V1ObjectMeta(name=ns)))
            api.create_namespaced_custom_object(*INFRA, ns, "c3osclusters", {
                "apiVersion": "/".join(INFRA), "kind": "C3osCluster", "metadata": {"name": "metal"},
                "spec": {"controlPlaneEndpoint": {"host": "cp.example.test", "port": 6443},
                         "sites": [{"name": "rack", "ironic": {"endpoint": server.url}}]},
            })  # fmt: skip
            api.create_namespaced_custom_object(*CAPI, ns, "clusters", {
                "apiVersion": "/".join(CAPI), "kind": "Cluster", "metadata": {"name": "metal"},
                "spec": {"infrastructureRef": {"apiGroup": INFRA[0], "kind": "C3osCluster", "name": "metal"}},
            })  # fmt: skip
            cpu0, _ = process_usage(manager.pid)
            kinds0: Counter[str] = Counter()
            paths0: Counter[str] = Counter()
            kube0, ironic0 = kube_requests(plane.audit_log, kinds0), ironic_requests(server, paths0)
            runs0, requests0 = reconciles(manager), api_requests(manager)
            triggers0 = reconciles(manager, by="trigger")
            started = time.perf_counter()

            def create(i: int) -> None:
                name = f"m-{i:04d}"
                core.create_namespaced_secret(ns, kc.V1Secret(  # as CAPI's bootstrap providers make it
                    metadata=kc.V1ObjectMeta(name=f"{name}-bootstrap", labels={CLUSTER_NAME: "metal"}),
                    type=CLUSTER_SECRET_TYPE,
                    data={"value": base64.b64encode(USER_DATA).decode(),
                          "format": base64.b64encode(b"cloud-config").decode()},
                ))  # fmt: skip
                api.create_namespaced_custom_object(*INFRA, ns, "c3osmachines", {
                    "apiVersion": "/".join(INFRA), "kind": "C3osMachine",
                    "metadata": {"name": name, "labels": {CLUSTER_NAME: "metal"}},
                    "spec": {"backend": {"ironic": {"resourceClass": rc}},
                             "image": {"url": "http://images.example/c3os.qcow2", "checksum": CHECKSUM}},
                })  # fmt: skip
                api.create_namespaced_custom_object(*CAPI, ns, "machines", {
                    "apiVersion": "/".join(CAPI), "kind": "Machine",
                    "metadata": {"name": name, "labels": {CLUSTER_NAME: "metal"}},
                    "spec": {"clusterName": "metal", "bootstrap": {"dataSecretName": f"{name}-bootstrap"},
                             "infrastructureRef": {"apiGroup": INFRA[0], "kind": "C3osMachine",
                                                   "name": name}},
                })  # fmt: skip

            with ThreadPoolExecutor(workers) as creators:
                list(creators.map(create, range(machines)))
            created = time.perf_counter() - started

            def provisioned() -> int:
                items = api.list_namespaced_custom_object(*INFRA, ns, "c3osmachines")["items"]
                return sum(
                    1 for m in items
                    if ((m.get("status") or {}).get("initialization") or {}).get("provisioned")
                )  # fmt: skip

            limit = float(os.environ.get("BENCH_DEADLINE", "3600"))
            deadline = time.monotonic() + limit
            while (done := provisioned()) < machines:
                if time.monotonic() > deadline or not manager.alive():
                    raise SystemExit(
                        f"{done} of {machines} provisioned after {limit:.0f}s:\n{manager.tail()}"
                    )
                time.sleep(2.0)
            wall = time.perf_counter() - started
            cpu, peak = process_usage(manager.pid)
            kinds: Counter[str] = Counter()
            paths: Counter[str] = Counter()
            (kube, writes), ironic = kube_requests(plane.audit_log, kinds), ironic_requests(server, paths)
            runs = reconciles(manager) - runs0
            print(
                f"manager: {machines} C3osMachines to provisioned: {wall:.1f}s wall "
                f"(objects created in {created:.1f}s), manager/raw {wall / raw_wall:.2f}, "
                f"manager {cpu - cpu0:.1f} CPU s, RSS {process_memory(manager.pid):.0f} MiB "
                f"(peak {peak:.0f} MiB), "
                f"{sum(runs.values()) / machines:.2f} reconciles per machine "
                f"({per_machine(runs, machines) or 'none'}), "
                f"{(writes - kube0[1]) / machines:.1f} Kubernetes API writes and "
                f"{(kube - kube0[0]) / machines:.1f} requests per machine, "
                f"{(ironic - ironic0) / machines:.1f} Ironic requests per machine"
            )
            print(f"  writes per machine: {per_machine(kinds - kinds0, machines, 10)}")
            triggers = reconciles(manager, by="trigger") - triggers0
            superseded = manager.metric_sum("capi_c3os_superseded_events_total", kind="C3osMachine")
            print(
                f"  reconciles per machine by trigger: {per_machine(triggers, machines)}; "
                f"events of our own writes, not reconciled: {superseded / machines:.2f}"
            )
            made = api_requests(manager) - requests0
            print(f"  the reconcilers' API requests per machine: {per_machine(made, machines)}")
            print(f"  Ironic requests per machine: {per_machine(paths - paths0, machines)}")
            cpu0, (kube0_all, kube0_writes), ironic0, kinds0 = cpu, (kube, writes), ironic, kinds
            paths0, runs0 = paths, reconciles(manager)
            triggers0 = reconciles(manager, by="trigger")
            time.sleep(idle)
            cpu, peak = process_usage(manager.pid)
            kinds, paths = Counter(), Counter()
            (kube, writes), ironic = kube_requests(plane.audit_log, kinds), ironic_requests(server, paths)
            resyncs = idle / sync_period if sync_period else 1.0
            print(
                f"manager idle for {idle:.0f}s with {machines} provisioned machines"
                + (f" ({resyncs:.1f} resync periods)" if sync_period else "")
                + f": {cpu - cpu0:.1f} CPU s, RSS {process_memory(manager.pid):.0f} MiB "
                f"(peak {peak:.0f} MiB), "
                f"{(ironic - ironic0) / machines / resyncs:.2f} Ironic requests, "
                f"{(kube - kube0_all) / machines / resyncs:.2f} Kubernetes requests "
                f"({(writes - kube0_writes) / machines / resyncs:.2f} writes) per machine"
                + (" per resync" if sync_period else "")
                + f", {sum((reconciles(manager) - runs0).values()) / machines / resyncs:.2f} reconciles"
            )
            if triggers := reconciles(manager, by="trigger") - triggers0:
                print(f"  idle reconciles per machine by trigger: {per_machine(triggers, machines)}")
            if paths - paths0:
                print(f"  idle Ironic requests per machine: {per_machine(paths - paths0, machines)}")
            if kinds - kinds0:
                print(
                    "  idle writes per machine: "
                    + ", ".join(f"{k} {n / machines:.2f}" for k, n in (kinds - kinds0).most_common(8))
                )
    finally:
        if manager:
            manager.stop()
            if keep := os.environ.get("BENCH_LOGS"):  # the manager's log and the audit log
                shutil.copy(root / "manager.log", keep)
                shutil.copy(plane.audit_log, f"{keep}.audit")
        plane.stop()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument(
        "--pool", type=int, default=4, help="manager level: reconcile pool and raw script threads (default 4)"
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--poll", type=float, default=0.2, help="cap on the wait between calls, seconds")
    parser.add_argument("--machines", type=int, default=10, help="manager-level scale; 0 skips it")
    parser.add_argument("--idle", type=float, default=60.0, help="manager-level idle phase, seconds")
    parser.add_argument("--sync-period", type=float, help="the manager's resync period (its default: 600 s)")
    args = parser.parse_args()
    # Ironic runs in its own process group: turn SIGTERM into an exit that stops it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory(prefix="bench-ironic-") as root:
        started = time.perf_counter()
        server = IronicServer(Path(root)).start()
        print(f"Ironic up in {time.perf_counter() - started:.1f}s at {server.url}")
        try:
            if args.rounds:
                one_machine(server, args.rounds, args.poll)
            if args.nodes:
                many_machines(server, args.nodes, args.workers, args.poll)
            if args.machines:
                manager_scale(
                    server, Path(root), args.machines, args.idle, args.workers, args.sync_period,
                    args.pool, args.poll,
                )  # fmt: skip
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
