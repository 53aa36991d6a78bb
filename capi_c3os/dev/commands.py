"""`capi-c3os dev up | down` (`make demo`, `make demo-down`): a whole edge cluster on
this machine, left running, and removed again.

`up` starts, each as a detached process recorded in `<dir>/state.json`:
- the management plane (etcd, kube-apiserver, kube-controller-manager, CAPI core) with
  our CRDs, and our manager (`python -m capi_c3os run`, all three providers);
- the edge site (`python -m capi_c3os.dev.edge_site`): a private libvirtd whose network
  lives in a network namespace of its own, and the k3s stand-in for its VMs;
then creates a cluster of one server and one worker from the libvirt ClusterClass
(`capi_c3os.dev.demo_cluster`), prints a line per change while the machines come up,
writes the workload kubeconfig and prints `clusterctl describe cluster`.

`down` deletes the cluster through the API (our manager removes VMs and volumes), stops
every process in reverse order, ends anything still using the directory (QEMU, dnsmasq,
workload servers of a crashed site), and removes all state but `logs/`. Both commands
are safe to re-run: `up` on a stopped or half-started directory cleans it first.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import time
from contextlib import closing
from pathlib import Path

import libvirt  # type: ignore[import-untyped]  # libvirt-python ships no type hints
import yaml
from kubernetes import client as kc

from capi_c3os.dev import binaries, demo_cluster
from capi_c3os.dev.demo_cluster import NAME, NAMESPACE, DemoError, Watch
from capi_c3os.dev.edge_site import site_file
from capi_c3os.dev.libvirtd import PrivateLibvirtd
from capi_c3os.dev.manager import start_manager
from capi_c3os.dev.mgmt import ManagementPlane, api_client, apply, wait_for_crds_established
from capi_c3os.dev.processes import ProcessError, free_port

DEFAULT_DIR = Path(".demo")
SITE = "edge-site"
MANAGER = "capi-c3os-manager"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="dev_command", required=True)
    up = sub.add_parser(
        "up", help="start a management plane, an edge site and a 1+1 cluster in the background"
    )
    up.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="work directory (state, logs, kubeconfigs)")
    up.add_argument("--crds", type=Path, default=Path("config/crd"), help="directory of our CRDs")
    up.add_argument("--timeout", type=float, default=1800, help="seconds to wait for the cluster")
    up.set_defaults(func=up_main)
    down = sub.add_parser("down", help="remove the cluster and stop everything `dev up` started")
    down.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    down.add_argument("--timeout", type=float, default=600, help="seconds to wait for the cluster's deletion")
    down.set_defaults(func=down_main)


def _say(line: str) -> None:
    print(line, flush=True)


# ------------------------------------------------------------------------------ up


def up_main(args: argparse.Namespace) -> int:
    root: Path = args.dir.resolve()
    live = _live_pids(root)
    if live:
        print(
            f"already running (state in {root}: {', '.join(live)}); run `make demo-down` first",
            file=sys.stderr,
        )
        return 1
    if root.exists() and any(p.name != "logs" for p in root.iterdir()):
        _say(f"cleaning up what an earlier run left in {root} ...")
        _down(root, timeout=60)
    started = time.monotonic()
    try:
        image = demo_cluster.choose_image(dict(os.environ))
    except DemoError as exc:
        print(f"dev up: {exc}", file=sys.stderr)
        return 1
    try:
        plane, site = _start(root, args.crds, image)
        watch = Watch(api_client(plane.kubeconfig), root / "k3s" / "k3s.log" if image.standin else None)
        _create_cluster(root, plane, site, image, watch)
    except (DemoError, ProcessError, TimeoutError, OSError, KeyboardInterrupt) as exc:
        print(
            f"dev up failed: {exc}\nstopping what was started (logs stay in {root / 'logs'})", file=sys.stderr
        )
        _down(root, timeout=60)
        return 1
    _say(f"waiting for {NAME}: 1 control-plane + 1 worker machine (a line per change)")
    deadline = time.monotonic() + args.timeout
    try:
        while True:
            for line in watch.changes():
                _say(line)
            if watch.up(need_nodes=image.standin):
                break
            if time.monotonic() > deadline:
                print(f"{NAME} not up after {args.timeout:.0f}s; {_left_running(root)}", file=sys.stderr)
                return 1
            time.sleep(2)
    except KeyboardInterrupt:
        print(f"stopped watching; {_left_running(root)}", file=sys.stderr)
        return 130
    took = time.monotonic() - started
    _say(
        f"{NAME} is up after {took:.0f}s"
        if image.standin
        else f"{NAME}: the server's VM runs after {took:.0f}s"
    )
    workload = _workload_kubeconfig(root, watch, image.standin)
    _say(demo_cluster.describe(plane.kubeconfig))
    _say(_usage(root, plane, workload, image.standin))
    return 0


def _left_running(root: Path) -> str:
    return (
        f"everything is left running for a look (logs in {root / 'logs'}, serial consoles in "
        f"{root / 'libvirtd' / 'log' / 'qemu'}); `make demo-down` removes it"
    )


def _start(root: Path, crds_dir: Path, image: demo_cluster.Image) -> tuple[ManagementPlane, dict[str, str]]:
    with_k3s = image.standin
    plane = ManagementPlane(root, detached=True)
    _say("starting etcd, kube-apiserver, kube-controller-manager and the CAPI core manager ...")
    plane.start()
    crds = [yaml.safe_load(p.read_text()) for p in sorted(crds_dir.glob("*.yaml"))]
    apply(plane.kubeconfig, crds)
    wait_for_crds_established(plane.kubeconfig, crds)
    endpoint = free_port()
    _say("starting our manager ...")
    # A local image is named by a file:// URL: the manager may read files under its directory only.
    flags = [f"--image-file-dir={image.file_dir}"] if image.file_dir else []
    manager = start_manager(
        plane.kubeconfig, plane.logs / f"{MANAGER}.log", *flags, name=MANAGER, detached=plane.detached
    )
    plane.ports.update(manager_health=manager.health_port, manager_metrics=manager.metrics_port or 0)
    plane.ports.update(endpoint=endpoint)
    plane.adopt(manager.process)
    manager.wait_ready(120)
    what = "a private libvirtd" + (" and the k3s stand-in" if with_k3s else "")
    _say(f"starting the edge site: {what} ...")
    site_proc = plane.spawn(
        SITE,
        [
            sys.executable, "-m", "capi_c3os.dev.edge_site", f"--root={root}",
            *([f"--endpoint=127.0.0.1:{endpoint}"] if with_k3s else ["--no-k3s"]),
        ],
    )  # fmt: skip
    site_proc.wait_until(site_file(root).exists, "libvirtd answering", 120)
    plane.save_state()
    _link_tools(root / "bin")
    site: dict[str, str] = json.loads(site_file(root).read_text())
    return plane, site


def _create_cluster(
    root: Path, plane: ManagementPlane, site: dict[str, str], image: demo_cluster.Image, watch: Watch
) -> None:
    port = plane.ports["endpoint"]
    key = demo_cluster.ssh_public_key(root, dict(os.environ))
    docs = demo_cluster.render(root, plane.kubeconfig, image, site, port, key)
    _say(
        f"creating {NAME} from the ClusterClass {demo_cluster.CLASS} ({root / (NAME + '.yaml')}),"
        f" image {image.url}"
    )
    apply(plane.kubeconfig, [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}])
    apply(plane.kubeconfig, [d for d in docs if d["kind"] != "Cluster"])
    deadline = time.monotonic() + 120
    while not watch.class_accepted():
        if time.monotonic() > deadline:
            raise TimeoutError(f"CAPI did not accept the ClusterClass {demo_cluster.CLASS} in 120s")
        time.sleep(0.5)
    apply(plane.kubeconfig, [d for d in docs if d["kind"] == "Cluster"])


def _workload_kubeconfig(root: Path, watch: Watch, standin: bool) -> Path | None:
    path = watch.kubeconfig(root / f"{NAME}.kubeconfig")
    _say(f"workload kubeconfig (from Secret {NAMESPACE}/{NAME}-kubeconfig): {path}")
    if path is None or not standin:
        return path
    with api_client(path) as client:  # it works against what the k3s stand-in serves
        nodes = kc.CoreV1Api(client).list_node().items
    _say(f"workload nodes: {', '.join(sorted(n.metadata.name for n in nodes))}")
    return path


def _usage(root: Path, plane: ManagementPlane, workload: Path | None, standin: bool) -> str:
    tools = root / "bin"
    if standin:
        k3s = f"""  KUBECONFIG={workload} kubectl get nodes -o wide   # the workload cluster
  (k3s is the stand-in: the VMs boot the stand-in image, {root / "k3s" / "k3s.log"} says what
  k3s would have done with what their consoles show they received)"""
    else:
        k3s = f"""  (C3OS_IMAGE: the server's VM boots that image and no k3s stand-in runs. Its Node, and so
  the worker (whose bootstrap data waits for an initialized control plane), appear only if
  k3s in the VM serves the endpoint 127.0.0.1:{plane.ports["endpoint"]}, which it cannot from
  the site's network namespace. Its serial console: {root / "libvirtd" / "log" / "qemu"})"""
    return f"""
everything is running (logs in {plane.logs})

  export KUBECONFIG={plane.kubeconfig} PATH={tools}:$PATH
  clusterctl describe cluster {NAME} -n {NAMESPACE}
  kubectl get clusters,machines,c3osmachines -n {NAMESPACE}
{k3s}
  curl -s http://127.0.0.1:{plane.ports["manager_metrics"]}/metrics | grep capi_c3os

remove it all with: make demo-down
"""


def _link_tools(bin_dir: Path) -> Path:
    """kubectl and clusterctl of the pinned versions, under their usual names."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name in ("kubectl", "clusterctl"):
        link = bin_dir / name
        link.unlink(missing_ok=True)
        link.symlink_to(binaries.locate(name))
    return bin_dir


# ---------------------------------------------------------------------------- down


def down_main(args: argparse.Namespace) -> int:
    root: Path = args.dir.resolve()
    if not root.exists():
        print(f"nothing to stop in {root}")
        return 0
    return _down(root, args.timeout)


def _down(root: Path, timeout: float) -> int:
    if not root.exists():
        return 0
    live = _live_pids(root)
    failed = 0
    if {"kube-apiserver", "capi-manager", MANAGER, SITE} <= set(live):
        failed = _delete_cluster(root, timeout)
    # Reverse start order: the site (VMs, libvirtd) and managers first, etcd last.
    for name, pid in reversed(list(live.items())):
        _stop(pid)
        _say(f"stopped {name}")
    leftovers = processes_using(root)  # QEMU, virtlogd, dnsmasq of a site that died
    for pid in leftovers:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while any(alive(pid) for pid in leftovers) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in leftovers:
        if alive(pid):
            _signal(pid, signal.SIGKILL)
        _say(f"stopped leftover process {pid}")
    time.sleep(0.5 if leftovers else 0)
    left = processes_using(root)
    if left:
        print(f"processes still using {root}: {left}", file=sys.stderr)
        return 1
    _clean(root)
    _say(f"removed the demo state in {root} (logs kept in {root / 'logs'})")
    return failed


def _delete_cluster(root: Path, timeout: float) -> int:
    with api_client(root / "kubeconfig") as client:
        watch = Watch(client, None)
        if watch.cluster() is None:
            return 0
        watch.changes()  # where things stand; from here on only what deletion changes
        _say(f"deleting {NAME} (its VMs and volumes) ...")
        watch.custom.delete_namespaced_custom_object(*demo_cluster.CAPI, NAMESPACE, "clusters", NAME)
        deadline = time.monotonic() + timeout
        while watch.cluster() is not None:
            for line in watch.changes():
                _say(line)
            if time.monotonic() > deadline:
                print(
                    f"{NAME} not deleted in {timeout:.0f}s; destroying its VMs with libvirtd", file=sys.stderr
                )
                return 1
            time.sleep(1)
    _say(f"{NAME} deleted; {_libvirt_leftovers(root)}")
    return 0


def _libvirt_leftovers(root: Path) -> str:
    """What the cluster's deletion left in libvirt (base images are shared, and stay)."""
    daemon = PrivateLibvirtd(root / "libvirtd")
    try:
        with closing(daemon.connect()) as conn:
            domains = [d.name() for d in conn.listAllDomains(0)]
            pool = conn.storagePoolLookupByName(daemon.pool_name)
            pool.refresh(0)
            volumes = [v for v in pool.listVolumes() if not v.startswith("c3os-base-")]
    except libvirt.libvirtError as exc:
        return f"libvirtd not answering ({exc.get_error_message()})"
    return f"libvirt domains left: {domains or 'none'}, machine volumes left: {volumes or 'none'}"


def _stop(pid: int, timeout: float = 30.0) -> None:
    """SIGTERM (to its process group when it leads one, as a managed process does), then
    SIGKILL if it is still there after `timeout`."""
    _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return
        time.sleep(0.1)
    _signal(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)


def _signal(pid: int, sig: int) -> None:
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def alive(pid: int) -> bool:
    """Running: it exists and is no zombie (exited, not yet reaped by its parent)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return " Z " not in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1][:3]
    except OSError:
        return False


def processes_using(root: Path) -> list[int]:
    """Processes, other than this one, whose command line names a path under `root`
    or whose mount namespace has a bind mount from it (libvirtd's private directories,
    so also dnsmasq, which names neither)."""
    marker = str(root.resolve()).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            mounts = (entry / "mountinfo").read_bytes()
        except OSError:
            continue
        if (marker + b"/" in cmdline or marker + b"\0" in cmdline or marker + b"/" in mounts) and alive(
            int(entry.name)
        ):
            found.append(int(entry.name))
    return found


def _live_pids(root: Path) -> dict[str, int]:
    try:
        state = json.loads((root / "state.json").read_text())
    except (OSError, ValueError):
        return {}
    return {name: pid for name, pid in state.get("pids", {}).items() if alive(pid)}


def _clean(root: Path) -> None:
    """Remove all state of a stopped demo but its logs (the site's logs moved there)."""
    if not root.exists():
        return
    logs = root / "logs"
    for sub in ("libvirtd", "k3s"):
        for log in (root / sub).rglob("*.log"):
            target = logs / sub / log.relative_to(root / sub)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(log, target)
    for entry in root.iterdir():
        if entry.name == "logs":
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
