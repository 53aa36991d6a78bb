"""Benchmark: bootstrap-ready to domain running, our libvirt backend against the same
raw libvirt calls made directly, for a 64 MiB and a 4 GiB base image.

    .venv/bin/python bench/libvirt.py [--rounds 5]

Starts a private libvirtd (capi_c3os.dev.libvirtd; no guest network), builds the stand-in
image (hack/standin-image.sh), and for each base size times, per round:
- ours: `LibvirtBackend.provision(intent)` from nothing until it reports the domain
  running (config drive built and uploaded, overlay created and resized, domain defined
  and started, ownership tagged);
- raw: the same libvirt calls typed out by hand (overlay volume, config drive volume +
  upload of the same ISO, defineXML, create).
Prints medians and the ratio ours/raw. Copy-on-write keeps both flat in the image size.

With --machines 10,50 (--rounds 0 skips the above), at each size N on one private
libvirtd in its own network namespace (the site has no network: guests get no NIC, so
a machine is provisioned once its domain runs): first a raw libvirt-python script makes N
machines, --pool at a time on one connection (overlay volume on the base, config drive
volume + upload, define with direct kernel boot of the stand-in, start), and they are
removed; then our real `capi-c3os run --providers infrastructure` process
(--max-concurrent-reconciles=--pool) against a real management plane provisions N
C3osMachines (each with its Machine and bootstrap Secret) the same way. Printed: wall time
of both and manager/raw, libvirt calls per machine of both (counted by libvirtd, which
logs each call it serves), the manager's reconciles per machine, Kubernetes API writes and
requests per machine (the audit log), CPU and RSS; then --idle seconds with nothing to do
(per machine per resync with --sync-period); then the machines are deleted. Comparing the
per-machine figures of the two sizes shows whether they are flat in N. The guests are
1 vCPU and 256 MiB (the schema's minimum), booting the stand-in's kernel and busybox
initramfs. Figures only: nothing here asserts a duration.
"""

from __future__ import annotations

import sys
from pathlib import Path

# This file is called libvirt.py: keep its directory off the path, or `import libvirt`
# would import this file.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import argparse  # noqa: E402
import base64  # noqa: E402
import dataclasses  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402

import libvirt  # type: ignore[import-untyped]  # noqa: E402
import yaml  # noqa: E402
from kubernetes import client as kc  # noqa: E402
from kubernetes.client.exceptions import ApiException  # noqa: E402

from bench.ironic import (  # noqa: E402
    CAPI,
    CLUSTER_NAME,
    INFRA,
    MANAGER_USER,
    api_requests,
    kube_requests,
    per_machine,
    process_memory,
    process_usage,
)
from capi_c3os.api.infrastructure import DirectKernelBoot, LibvirtMachine, LibvirtSite, MachineImage, Site  # noqa: E402
from capi_c3os.backends.base import MachineIdentity, MachineIntent, Phase, SiteCredentials  # noqa: E402
from capi_c3os.backends.configdrive import build_config_drive  # noqa: E402
from capi_c3os.backends.libvirt import LibvirtBackend  # noqa: E402
from capi_c3os.backends.libvirt import domain as dx  # noqa: E402
from capi_c3os.capi.metadata import CLUSTER_SECRET_TYPE  # noqa: E402
from capi_c3os.dev.libvirtd import PrivateLibvirtd  # noqa: E402
from capi_c3os.dev.manager import Manager, start_manager  # noqa: E402
from capi_c3os.dev.mgmt import ManagementPlane, api_client, apply, wait_for_crds_established  # noqa: E402

GIB = 1024**3
USER_DATA = b"#cloud-config\nk3s:\n  enabled: true\n"


def make_base(daemon: PrivateLibvirtd, name: str, size: int) -> None:
    """A raw base image with every byte allocated (fallocate), so its size is real."""
    path = daemon.pool_path / name
    subprocess.run(["fallocate", "-l", str(size), str(path)], check=True)
    with libvirt.open(daemon.uri) as conn:
        conn.storagePoolLookupByName(daemon.pool_name).refresh(0)


def intent_for(daemon: PrivateLibvirtd, image: Path, base: str, name: str) -> MachineIntent:
    identity = MachineIdentity("bench", name, f"c3os://bench/{name}")
    return MachineIntent(
        identity=identity,
        site=Site(name="bench", libvirt=LibvirtSite(uri=daemon.uri, pool=daemon.pool_name)),
        credentials=SiteCredentials(),
        image=MachineImage(volume=base, format="raw"),
        cpus=1,
        memory_mib=256,
        disk_gib=8,
        hostname=name,
        user_data=USER_DATA,
        meta_data={"instance-id": identity.uuid, "local-hostname": name, "provider-id": identity.provider_id},
        libvirt=LibvirtMachine(
            direct_kernel_boot=DirectKernelBoot(
                kernel=str(image / "vmlinuz"), initrd=str(image / "initrd.img"), cmdline="console=ttyS0 quiet"
            )
        ),
    )


def ours(backend: LibvirtBackend, intent: MachineIntent) -> float:
    start = time.perf_counter()
    progress = backend.provision(intent)
    elapsed = time.perf_counter() - start
    assert progress.phase is Phase.RUNNING, progress
    return elapsed


def raw(conn: libvirt.virConnect, daemon: PrivateLibvirtd, intent: MachineIntent, base: str) -> float:
    identity = intent.identity
    start = time.perf_counter()
    pool = conn.storagePoolLookupByName(daemon.pool_name)
    base_vol = pool.storageVolLookupByName(base)
    disk = pool.createXML(
        dx.volume_xml(dx.disk_volume_name(identity), intent.disk_gib * GIB, "qcow2", base_vol.path(), "raw"),
        0,
    )
    iso = build_config_drive(intent.user_data, intent.meta_data)
    drive = pool.createXML(dx.volume_xml(dx.config_drive_volume_name(identity), len(iso), "raw"), 0)
    stream = conn.newStream(0)
    drive.upload(stream, 0, len(iso), 0)
    stream.send(iso)
    stream.finish()
    dkb = intent.libvirt.direct_kernel_boot if intent.libvirt else None
    spec = dx.DomainSpec(
        identity=identity,
        tag=dx.Tag(identity.namespace, identity.name, identity.provider_id),
        domain_type="qemu",
        cpus=intent.cpus,
        memory_mib=intent.memory_mib,
        disk_path=disk.path(),
        disk_format="qcow2",
        config_drive_path=drive.path(),
        kernel=dkb.kernel if dkb else None,
        initrd=dkb.initrd if dkb else None,
        cmdline=dkb.cmdline if dkb else None,
    )
    dom = conn.defineXML(dx.domain_xml(spec))
    dom.create()
    return time.perf_counter() - start


def cleanup(backend: LibvirtBackend, intent: MachineIntent) -> None:
    backend.deprovision(intent.identity, intent.site, intent.credentials)


BASE_VOLUME = "standin.qcow2"
CALL = re.compile(r": debug : remoteDispatch(\w+)Helper:")


def reconciles(manager: Manager) -> Counter[str]:
    """C3osMachine reconciles the manager ran, by what triggered them and how they ended."""
    counts: Counter[str] = Counter()
    for (name, labels), value in manager.metrics().items():
        found = dict(labels)
        if name == "capi_c3os_reconcile_total" and found.get("kind") == "C3osMachine":
            counts[f"{found['trigger']} {found['result']}"] += int(value)
    return counts


def libvirt_calls(daemon: PrivateLibvirtd, calls: Counter[str]) -> int:
    """API calls libvirtd has served so far (all clients), each counted by name in `calls`."""
    total = 0
    with daemon.log_path.open(errors="replace") as log:
        for line in log:
            found = CALL.search(line)
            if found is not None:
                total += 1
                calls[found[1]] += 1
    return total


def _with_disk(intent: MachineIntent) -> MachineIntent:
    """The stand-in's base (qcow2) and a 1 GiB disk, as the manager's machines get."""
    return dataclasses.replace(intent, disk_gib=1, image=MachineImage(volume=BASE_VOLUME, format="qcow2"))


def raw_scale(daemon: PrivateLibvirtd, image: Path, machines: int, pool: int) -> float:
    """The raw script: `machines` machines, `pool` at a time on one connection; then
    removed. Returns the wall time to all running."""
    intents = [
        _with_disk(intent_for(daemon, image, BASE_VOLUME, f"raw-{machines}-{i:04d}")) for i in range(machines)
    ]
    before: Counter[str] = Counter()
    libvirt_calls(daemon, before)
    with libvirt.open(daemon.uri) as conn:
        started = time.perf_counter()
        with ThreadPoolExecutor(pool) as workers:
            list(workers.map(lambda intent: raw(conn, daemon, intent, BASE_VOLUME), intents))
        wall = time.perf_counter() - started
    after: Counter[str] = Counter()
    libvirt_calls(daemon, after)
    made = after - before
    print(
        f"raw libvirt-python: {machines} machines to running, {pool} at a time: {wall:.1f}s wall, "
        f"{machines / wall:.2f} machines/s, {sum(made.values()) / machines:.1f} libvirt calls per machine"
    )
    print(f"  raw libvirt calls per machine: {per_machine(made, machines, 16)}")
    backend = LibvirtBackend()
    with ThreadPoolExecutor(pool) as workers:
        list(workers.map(lambda intent: cleanup(backend, intent), intents))
    backend.connections.close()
    return wall


def manager_scale(  # noqa: PLR0915 - one scenario, read top to bottom
    daemon: PrivateLibvirtd, image: Path, plane: ManagementPlane, manager: Manager, machines: int,
    pool: int, idle: float, sync_period: float | None, raw_wall: float,
) -> None:  # fmt: skip
    assert manager.pid is not None
    ns = f"bench-{machines}"
    spec = {
        "backend": {"libvirt": {"directKernelBoot": {
            "kernel": str(image / "vmlinuz"), "initrd": str(image / "initrd.img"),
            "cmdline": "console=ttyS0 quiet",
        }}},
        "image": {"volume": BASE_VOLUME}, "cpus": 1, "memoryMiB": 256, "diskGiB": 1,
    }  # fmt: skip
    # The type the raw script defines (domainType auto would boot a probe guest first).
    site = {"uri": daemon.uri, "pool": daemon.pool_name, "domainType": "qemu"}
    with api_client(plane.kubeconfig) as client:
        api, core = kc.CustomObjectsApi(client), kc.CoreV1Api(client)
        core.create_namespace(kc.V1Namespace(metadata=kc.V1ObjectMeta(name=ns)))
        api.create_namespaced_custom_object(*INFRA, ns, "c3osclusters", {
            "apiVersion": "/".join(INFRA), "kind": "C3osCluster", "metadata": {"name": "vms"},
            "spec": {"controlPlaneEndpoint": {"host": "cp.example.test", "port": 6443},
                     "sites": [{"name": "host", "libvirt": site}]},
        })  # fmt: skip
        api.create_namespaced_custom_object(*CAPI, ns, "clusters", {
            "apiVersion": "/".join(CAPI), "kind": "Cluster", "metadata": {"name": "vms"},
            "spec": {"infrastructureRef": {"apiGroup": INFRA[0], "kind": "C3osCluster", "name": "vms"}},
        })  # fmt: skip
        time.sleep(2.0)  # the cluster's first reconcile (orphan sweep of an empty site) out of the way
        cpu0, _ = process_usage(manager.pid)
        kinds0: Counter[str] = Counter()
        calls0: Counter[str] = Counter()
        kube0, virt0 = kube_requests(plane.audit_log, kinds0), libvirt_calls(daemon, calls0)
        runs0, requests0 = reconciles(manager), api_requests(manager)
        started = time.perf_counter()

        def create(i: int) -> None:
            name = f"m-{i:04d}"
            core.create_namespaced_secret(ns, kc.V1Secret(
                metadata=kc.V1ObjectMeta(name=f"{name}-bootstrap", labels={CLUSTER_NAME: "vms"}),
                type=CLUSTER_SECRET_TYPE,
                data={"value": base64.b64encode(USER_DATA).decode(),
                      "format": base64.b64encode(b"cloud-config").decode()},
            ))  # fmt: skip
            api.create_namespaced_custom_object(*INFRA, ns, "c3osmachines", {
                "apiVersion": "/".join(INFRA), "kind": "C3osMachine",
                "metadata": {"name": name, "labels": {CLUSTER_NAME: "vms"}}, "spec": spec,
            })  # fmt: skip
            api.create_namespaced_custom_object(*CAPI, ns, "machines", {
                "apiVersion": "/".join(CAPI), "kind": "Machine",
                "metadata": {"name": name, "labels": {CLUSTER_NAME: "vms"}},
                "spec": {"clusterName": "vms", "bootstrap": {"dataSecretName": f"{name}-bootstrap"},
                         "infrastructureRef": {"apiGroup": INFRA[0], "kind": "C3osMachine", "name": name}},
            })  # fmt: skip

        with ThreadPoolExecutor(4) as creators:
            list(creators.map(create, range(machines)))
        created = time.perf_counter() - started

        def provisioned() -> int:
            try:
                items = api.list_namespaced_custom_object(*INFRA, ns, "c3osmachines")["items"]
            except ApiException as exc:  # an API server swamped by the host's load answers 504
                print(f"  (listing the machines failed: {exc.status} {exc.reason}; looking again)")
                return -1
            return sum(
                1 for m in items if ((m.get("status") or {}).get("initialization") or {}).get("provisioned")
            )

        deadline = time.monotonic() + 1800
        while (done := provisioned()) < machines:
            if time.monotonic() > deadline or not manager.alive():
                raise SystemExit(f"{done} of {machines} provisioned:\n{manager.tail()}")
            time.sleep(1.0)
        wall = time.perf_counter() - started
        time.sleep(5.0)  # what the last machines' starts still cause (domain events) is counted too
        cpu, peak = process_usage(manager.pid)
        kinds: Counter[str] = Counter()
        calls: Counter[str] = Counter()
        (kube, writes), virt = kube_requests(plane.audit_log, kinds), libvirt_calls(daemon, calls)
        runs = reconciles(manager) - runs0
        rss = process_memory(manager.pid)
        print(
            f"manager: {machines} C3osMachines to provisioned: {wall:.1f}s wall "
            f"(objects created in {created:.1f}s), manager/raw {wall / raw_wall:.2f}, "
            f"manager {cpu - cpu0:.1f} CPU s, RSS {rss:.0f} MiB (peak {peak:.0f} MiB), "
            f"{sum(runs.values()) / machines:.2f} reconciles per machine "
            f"({per_machine(runs, machines) or 'none'}), "
            f"{(writes - kube0[1]) / machines:.1f} Kubernetes API writes and "
            f"{(kube - kube0[0]) / machines:.1f} requests per machine, "
            f"{(virt - virt0) / machines:.1f} libvirt calls per machine"
        )
        print(f"  writes per machine: {per_machine(kinds - kinds0, machines, 8)}")
        made = api_requests(manager) - requests0
        print(f"  the reconcilers' API requests per machine: {per_machine(made, machines)}")
        print(f"  libvirt calls per machine: {per_machine(calls - calls0, machines, 24)}")
        if idle:
            cpu0, kube0, virt0, runs0 = cpu, (kube, writes), virt, reconciles(manager)
            calls0, kinds0 = calls, kinds
            time.sleep(idle)
            cpu, peak = process_usage(manager.pid)
            kinds, calls = Counter(), Counter()
            (kube, writes), virt = kube_requests(plane.audit_log, kinds), libvirt_calls(daemon, calls)
            resyncs = idle / sync_period if sync_period else 1.0
            print(
                f"manager idle for {idle:.0f}s with {machines} provisioned machines"
                + (f" ({resyncs:.1f} resync periods)" if sync_period else "")
                + f": {cpu - cpu0:.1f} CPU s, RSS {process_memory(manager.pid):.0f} MiB, "
                f"{(virt - virt0) / machines / resyncs:.2f} libvirt calls, "
                f"{(kube - kube0[0]) / machines / resyncs:.2f} Kubernetes requests "
                f"({(writes - kube0[1]) / machines / resyncs:.2f} writes), "
                f"{sum((reconciles(manager) - runs0).values()) / machines / resyncs:.2f} reconciles "
                "per machine" + (" per resync" if sync_period else "")
            )
            if calls - calls0:
                print(f"  idle libvirt calls per machine: {per_machine(calls - calls0, machines)}")
        started = time.perf_counter()
        for i in range(machines):
            api.delete_namespaced_custom_object(*INFRA, ns, "c3osmachines", f"m-{i:04d}")
        deadline = time.monotonic() + 900
        while api.list_namespaced_custom_object(*INFRA, ns, "c3osmachines")["items"]:
            if time.monotonic() > deadline:
                raise SystemExit(f"machines of {ns} not deleted:\n{manager.tail()}")
            time.sleep(1.0)
        print(f"manager: {machines} C3osMachines deleted in {time.perf_counter() - started:.1f}s")


def scale(
    image: Path, root: Path, sizes: list[int], pool: int, idle: float, sync_period: float | None
) -> None:
    daemon = PrivateLibvirtd(root / "libvirtd", network=True, log_calls=True).start()
    plane: ManagementPlane | None = None
    manager: Manager | None = None
    try:
        daemon.upload_file(image / "base.qcow2", BASE_VOLUME)
        warm = _with_disk(intent_for(daemon, image, BASE_VOLUME, "warmup"))  # QEMU's capabilities probe
        backend = LibvirtBackend()
        ours(backend, warm)
        cleanup(backend, warm)
        backend.connections.close()
        raw_walls = {n: raw_scale(daemon, image, n, pool) for n in sizes}
        plane = ManagementPlane(root / "mgmt", audit=True).start()
        crds = [
            yaml.safe_load(p.read_text()) for p in sorted((_HERE.parent / "config" / "crd").glob("*.yaml"))
        ]
        apply(plane.kubeconfig, crds)
        wait_for_crds_established(plane.kubeconfig, crds)
        kubeconfig = plane.write_kubeconfig(root / "manager.kubeconfig", MANAGER_USER, ("system:masters",))
        manager = start_manager(
            kubeconfig, root / "manager.log", f"--max-concurrent-reconciles={pool}",
            *([f"--sync-period={sync_period}"] if sync_period else []), providers="infrastructure",
            log_level="debug" if os.environ.get("BENCH_KEEP_LOGS") else None,
        )  # fmt: skip
        manager.wait_ready()
        for n in sizes:
            manager_scale(daemon, image, plane, manager, n, pool, idle, sync_period, raw_walls[n])
    finally:
        if manager is not None:
            manager.stop()
            if os.environ.get("BENCH_KEEP_LOGS"):  # the manager's and libvirtd's logs, for a look
                shutil.copy(root / "manager.log", os.environ["BENCH_KEEP_LOGS"])
        if plane is not None:
            plane.stop()
        daemon.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5, help="0 skips the one-machine comparison")
    parser.add_argument("--machines", default="", help="sizes of the scale comparison, e.g. 10,50")
    parser.add_argument("--pool", type=int, default=4, help="reconcile pool and raw script threads")
    parser.add_argument("--idle", type=float, default=30.0, help="idle phase at each size, seconds")
    parser.add_argument("--sync-period", type=float, help="the manager's resync period (its default: 600 s)")
    args = parser.parse_args()
    out = subprocess.run(
        [str(_HERE.parent / "hack" / "standin-image.sh")], check=True, capture_output=True, text=True
    )
    image = Path(out.stdout.strip().splitlines()[-1])
    if args.machines:
        with tempfile.TemporaryDirectory(prefix="capi-c3os-bench-") as tmp:
            counts = [int(n) for n in args.machines.split(",")]
            scale(image, Path(tmp), counts, args.pool, args.idle, args.sync_period)
    if not args.rounds:
        return
    with tempfile.TemporaryDirectory(prefix="capi-c3os-bench-") as tmp:
        daemon = PrivateLibvirtd(Path(tmp)).start()
        try:
            backend = LibvirtBackend(serial_log_dir="/var/log/libvirt/qemu")
            sizes = {"64MiB": 64 * 1024**2, "4GiB": 4 * GIB}
            for label, size in sizes.items():
                make_base(daemon, f"base-{label}.raw", size)
            # One untimed boot first: libvirt probes QEMU's capabilities on first use.
            warm = intent_for(daemon, image, "base-64MiB.raw", "warmup")
            ours(backend, warm)
            cleanup(backend, warm)
            print(
                f"{'base':>6} {'ours (s)':>9} {'raw (s)':>8} {'ratio':>6}  (medians of {args.rounds} rounds)"
            )
            with libvirt.open(daemon.uri) as conn:
                for label in sizes:
                    base = f"base-{label}.raw"
                    times: dict[str, list[float]] = {"ours": [], "raw": []}
                    for i in range(args.rounds):
                        mine = intent_for(daemon, image, base, f"ours-{label.lower()}-{i}")
                        times["ours"].append(ours(backend, mine))
                        cleanup(backend, mine)
                        theirs = intent_for(daemon, image, base, f"raw-{label.lower()}-{i}")
                        times["raw"].append(raw(conn, daemon, theirs, base))
                        cleanup(backend, theirs)
                    o, r = statistics.median(times["ours"]), statistics.median(times["raw"])
                    print(f"{label:>6} {o:9.3f} {r:8.3f} {o / r:6.2f}")
            backend.connections.close()
        finally:
            daemon.stop()


if __name__ == "__main__":
    main()
