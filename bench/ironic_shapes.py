"""The raw ironicclient side of bench/ironic.py against both shapes of the test Ironic, side
by side in one run (capi_c3os.dev.ironic: `single` = one process on SQLite, `production` =
MariaDB + the API under gunicorn + a separate conductor over json-rpc, Ironic's intervals).

    .venv/bin/python bench/ironic_shapes.py [--nodes 100] [--workers 4,16,64] [--poll 0.2]

Both Ironics run at once with --nodes available fake-hardware nodes each; for every worker
count the shapes take turns (so load from elsewhere on the machine falls on both alike):
the raw script (allocation, instance_info, deploy with configdrive, wait for active; as
many threads as workers, each machine polled every --poll s) takes all nodes to `active`,
then back to `available`. Per run: wall time, nodes/s, machines that failed and why, Ironic
requests per machine (the API's log), and the CPU seconds of each Ironic process group
(its share of the wall time says which one was the bottleneck).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.ironic import direct_deploy, direct_undeploy, enroll, intent_for, ironic_requests
from capi_c3os.api.infrastructure import IronicSite, Site
from capi_c3os.backends.base import MachineIntent, SiteCredentials
from capi_c3os.backends.ironic import client
from capi_c3os.backends.ironic.client import IronicApi, connect
from capi_c3os.dev.ironic import IronicServer, Shape
from capi_c3os.dev.mariadb import MariaDB
from capi_c3os.dev.processes import ManagedProcess

TICK = os.sysconf("SC_CLK_TCK")


def group_cpu(process: ManagedProcess | None) -> float:
    """CPU seconds of every process in `process`'s group (gunicorn's workers are children)."""
    if process is None or process.pid is None:
        return 0.0
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == process.pid:  # pgrp: ManagedProcess starts each in its own
            total += int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
    return total / TICK


def components(server: IronicServer) -> dict[str, ManagedProcess | None]:
    mariadb = {"mariadb": server.mariadb.process} if server.mariadb else {}
    if server.shape is Shape.SINGLE:
        return {"ironic": server.process, **mariadb}
    return {"api": server.process, "conductor": server.conductor_process, **mariadb}


@dataclass
class SingleOnMariaDB(IronicServer):
    """Not a shape of the harness: the combined process on MariaDB instead of SQLite, to
    tell SQLite's part from the process layout's (--shapes single-mariadb)."""

    @property
    def database_url(self) -> str:
        if self.mariadb is None:
            self.mariadb = MariaDB(self.root / "mariadb")
        return self.mariadb.url()


@dataclass
class Run:
    shape: str
    workers: int
    wall: float = 0.0
    done: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    requests: int = 0
    cpu: dict[str, float] = field(default_factory=dict)
    release: float = 0.0
    probes: list[float] = field(default_factory=list)
    """Latencies of GET / (no database, no conductor) during the run: the API's own queue."""


def describe(error: Exception) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:90]}"


def raw_run(server: IronicServer, rc: str, nodes: int, workers: int, poll: float) -> Run:
    site = Site(name="bench", ironic=IronicSite(endpoint=server.url))
    client.configure(workers)  # one connection per thread, as the manager keeps per reconcile
    api = connect(site.ironic, SiteCredentials())  # type: ignore[arg-type]
    tag = uuid.uuid4().hex[:4]
    intents = [intent_for(site, rc, f"raw-{tag}-{i:04d}") for i in range(nodes)]
    run = Run(label(server), workers)

    def one(intent: MachineIntent) -> bool:
        try:
            direct_deploy(api, intent, poll)
        except Exception as error:  # a benchmark counts failures, by kind
            run.errors[describe(error)] += 1
            return False
        return True

    procs = components(server)
    cpu0 = {name: group_cpu(p) for name, p in procs.items()}
    requests0 = ironic_requests(server)
    finished = threading.Event()
    prober = threading.Thread(target=probe, args=(server.url, run.probes, finished))
    prober.start()
    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        run.done = sum(pool.map(one, intents))
    run.wall = time.perf_counter() - started
    finished.set()
    prober.join()
    run.requests = ironic_requests(server) - requests0
    run.cpu = {name: group_cpu(p) - cpu0[name] for name, p in procs.items()}
    started = time.perf_counter()
    release_all(api, rc, workers, poll, intents)
    run.release = time.perf_counter() - started
    return run


def probe(url: str, latencies: list[float], finished: threading.Event) -> None:
    while not finished.wait(0.5):
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(url + "/", timeout=30):
                latencies.append(time.perf_counter() - started)
        except OSError:
            latencies.append(float("inf"))  # refused, reset or timed out


def release_all(api: IronicApi, rc: str, workers: int, poll: float, intents: list[MachineIntent]) -> None:
    """Every node of `rc` back to available, whatever a failed deploy left (an allocation
    without a deploy, a failed deploy), so the next run starts from the same place."""

    def undeploy(intent: MachineIntent) -> None:
        with contextlib.suppress(Exception):  # never deployed (a failure): cleaned up below
            direct_undeploy(api, intent, poll)

    with ThreadPoolExecutor(min(workers, 16)) as pool:
        list(pool.map(undeploy, intents))
    raw = api._client
    for allocation in raw.allocation.list(resource_class=rc, limit=0):
        raw.allocation.delete(allocation.uuid)
    while True:
        left = raw.node.list(resource_class=rc, limit=0, fields=["uuid", "provision_state"])
        stuck = [n for n in left if n.provision_state != "available"]
        if not stuck:
            return
        for node in stuck:
            if node.provision_state in ("active", "deploy failed"):
                raw.node.set_provision_state(node.uuid, "deleted")
        time.sleep(1.0)


def label(server: IronicServer) -> str:
    return "single-mariadb" if isinstance(server, SingleOnMariaDB) else server.shape.value


def start(root: Path, name: str, nodes: int) -> tuple[IronicServer, str]:
    started = time.perf_counter()
    if name == "single-mariadb":
        server: IronicServer = SingleOnMariaDB(root / name, shape=Shape.SINGLE)
    else:
        server = IronicServer(root / name, shape=Shape(name))
    server.start()
    admin = connect(IronicSite(endpoint=server.url), SiteCredentials())
    rc = f"shape-{name}"
    enroll(admin._client, nodes, rc, 8)
    print(f"{name}: Ironic up with {nodes} available nodes in {time.perf_counter() - started:.1f}s")
    return server, rc


def report(runs: list[Run], nodes: int) -> None:
    print(f"\n{nodes} nodes available -> active by the raw ironicclient script, per shape and worker count")
    for run in runs:
        busy = ", ".join(f"{name} {cpu:.1f} ({cpu / run.wall:.0%})" for name, cpu in run.cpu.items())
        errors = "; ".join(f"{n}x {e}" for e, n in run.errors.most_common(3)) or "none"
        probes = sorted(run.probes) or [0.0]
        api = (
            f"GET / median {statistics.median(probes) * 1000:.0f} ms, "
            f"max {probes[-1] * 1000:.0f} ms ({len(probes)} probes)"
        )
        print(
            f"  {run.shape:14} {run.workers:3} workers: {run.wall:6.1f}s, "
            f"{run.done / run.wall:5.2f} nodes/s, {run.done}/{nodes} active, "
            f"{run.requests / nodes:.1f} requests/machine; released in {run.release:.1f}s; "
            f"CPU s (share of wall): {busy}; {api}; failures: {errors}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--workers", default="4,16,64", help="comma-separated worker counts")
    parser.add_argument("--poll", type=float, default=0.2, help="wait between polls of one machine, s")
    parser.add_argument(
        "--shapes", default="single,production", help="single, production, single-mariadb (SingleOnMariaDB)"
    )
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the Ironics on SIGTERM
    shapes = args.shapes.split(",")
    unknown = set(shapes) - {*(s.value for s in Shape), "single-mariadb"}
    if unknown:
        parser.error(f"unknown shapes: {', '.join(sorted(unknown))}")
    counts = [int(w) for w in args.workers.split(",")]
    load = os.getloadavg()
    print(f"{os.cpu_count()} CPUs, load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} at the start")
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="bench-ironic-shapes-") as root:
        servers: dict[str, tuple[IronicServer, str]] = {}
        try:
            for shape in shapes:
                servers[shape] = start(Path(root), shape, args.nodes)
            for workers in counts:
                for shape in shapes:
                    server, rc = servers[shape]
                    run = raw_run(server, rc, args.nodes, workers, args.poll)
                    runs.append(run)
                    report([run], args.nodes)
        finally:
            for server, _ in servers.values():
                server.stop()
    load = os.getloadavg()
    print(f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} at the end")
    report(runs, args.nodes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
