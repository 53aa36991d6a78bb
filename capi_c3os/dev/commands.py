"""`capi-c3os dev up | down`: the local management plane for `make demo`."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

import yaml

from capi_c3os.dev import binaries
from capi_c3os.dev.mgmt import ManagementPlane, apply, wait_for_crds_established
from capi_c3os.dev.processes import free_port, http_ok

DEFAULT_DIR = Path(".demo")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="dev_command", required=True)
    up = sub.add_parser("up", help="start etcd, kube-apiserver, CAPI core and our manager in the background")
    up.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="work directory (state, logs, kubeconfig)")
    up.add_argument("--crds", type=Path, default=Path("config/crd"), help="directory of our CRDs")
    up.set_defaults(func=up_main)
    down = sub.add_parser("down", help="stop everything `dev up` started")
    down.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    down.set_defaults(func=down_main)


def up_main(args: argparse.Namespace) -> int:
    root: Path = args.dir.resolve()
    if (root / "state.json").exists() and _live_pids(root):
        print(f"already running (state in {root}); run `make demo-down` first", file=sys.stderr)
        return 1
    plane = ManagementPlane(root, detached=True)
    print("starting etcd, kube-apiserver, kube-controller-manager and the CAPI core manager ...")
    plane.start()
    crds = [yaml.safe_load(p.read_text()) for p in sorted(args.crds.glob("*.yaml"))]
    apply(plane.kubeconfig, crds)
    wait_for_crds_established(plane.kubeconfig, crds)
    health, metrics = free_port(), free_port()
    manager = plane.spawn(
        "capi-c3os-manager",
        [
            sys.executable,
            "-m",
            "capi_c3os",
            "run",
            f"--kubeconfig={plane.kubeconfig}",
            f"--health-addr=127.0.0.1:{health}",
            f"--metrics-addr=127.0.0.1:{metrics}",
        ],
    )
    plane.ports.update(manager_health=health, manager_metrics=metrics)
    manager.wait_until(lambda: http_ok(f"http://127.0.0.1:{health}/readyz"), "manager /readyz", 60)
    plane.save_state()
    tools = _link_tools(root / "bin")
    print(f"""
management plane is up (logs in {plane.logs})

  export KUBECONFIG={plane.kubeconfig} PATH={tools}:$PATH
  kubectl get crds | grep c3os          # our eight kinds and CAPI's
  kubectl explain c3osmachine.spec      # field documentation from the models
  clusterctl describe cluster <name>   # once a Cluster exists
  curl -s http://127.0.0.1:{metrics}/metrics | grep capi_c3os

stop it with: make demo-down
""")
    return 0


def _link_tools(bin_dir: Path) -> Path:
    """kubectl and clusterctl of the pinned versions, under their usual names."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name in ("kubectl", "clusterctl"):
        link = bin_dir / name
        link.unlink(missing_ok=True)
        link.symlink_to(binaries.locate(name))
    return bin_dir


def _live_pids(root: Path) -> dict[str, int]:
    state = json.loads((root / "state.json").read_text())
    live = {}
    for name, pid in state.get("pids", {}).items():
        try:
            os.kill(pid, 0)
            live[name] = pid
        except ProcessLookupError:
            pass
    return live


def down_main(args: argparse.Namespace) -> int:
    root: Path = args.dir.resolve()
    if not (root / "state.json").exists():
        print(f"nothing to stop in {root}")
        return 0
    # Reverse start order: our manager and CAPI first, etcd last.
    for name, pid in reversed(list(_live_pids(root).items())):
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            os.killpg(pid, signal.SIGKILL)
        print(f"stopped {name}")
    (root / "state.json").unlink()
    return 0
