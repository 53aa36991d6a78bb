"""`make demo` / `make demo-down` (capi-c3os dev up / down), run as a user runs them: up
creates a whole edge cluster (management plane, our manager, a private libvirtd, the k3s
stand-in, 1 server + 1 worker VM booting the stand-in image) and leaves it running; down
removes all of it, leaving no process, VM or mount behind."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest
from kubernetes import client as kc

from capi_c3os.capi import conditions as cond
from capi_c3os.dev.commands import alive, processes_using
from capi_c3os.dev.demo_cluster import CAPI, CONTROL_PLANE_LABEL, NAME, NAMESPACE
from capi_c3os.dev.libvirtd import PrivateLibvirtd
from capi_c3os.dev.mgmt import api_client
from tests.conftest import REPO

pytestmark = pytest.mark.integration

PROCESSES = {
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "capi-manager",
    "capi-c3os-manager",
    "edge-site",
}
UP_TIMEOUT = 2400  # two VM boots one after the other under TCG on a shared machine: a safety net


def _dev(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("C3OS_")}  # the stand-in image
    return subprocess.run(
        [sys.executable, "-m", "capi_c3os", "dev", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _mounted(root: Path) -> list[str]:
    """Mount table lines, of any process, that come from under `root`."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            text = (entry / "mountinfo").read_text()
        except OSError:
            continue
        found += [line for line in text.splitlines() if f"{root}/" in line]
    return found


def _assert_progress_printed(out: str) -> None:
    """A line per change, machine phases through to nodes joining, then the description."""
    # (Polled every 2 s: a phase that lasts less may be skipped, so not every one is required.)
    for role in ("control-plane", "worker"):
        phases = re.findall(rf"machine {NAME}-\S+ \({role}\) phase: (\S+)\n", out)
        assert phases[-1] == "Running" and len(phases) >= 2, (role, phases)
        assert set(phases) <= {"-", "Pending", "Provisioning", "Provisioned", "Running"}, phases
        assert re.search(rf"machine {NAME}-\S+ \({role}\) node: \S+ joined\n", out), role
    assert len(re.findall(rf"c3osmachine {NAME}-\S+: VM \S+ started", out)) >= 2
    assert "k3s server joined" in out and "k3s agent joined" in out
    assert f"cluster {NAME} Available: True" in out
    # `clusterctl describe cluster`, printed.
    assert re.search(rf"Cluster {NAMESPACE}/{NAME}, v\S+ +2/2 +2 +2", out), out[-3000:]


def test_demo_up_creates_an_edge_cluster_and_down_removes_everything(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    up = _dev("up", "--dir", str(root), timeout=UP_TIMEOUT)
    try:
        assert up.returncode == 0, f"{up.stdout[-4000:]}\n{up.stderr[-4000:]}"
        pids = json.loads((root / "state.json").read_text())["pids"]
        assert set(pids) == PROCESSES
        assert all(alive(pid) for pid in pids.values())

        _assert_progress_printed(up.stdout)

        # The cluster, as the management plane has it.
        with api_client(root / "kubeconfig") as client:
            custom = kc.CustomObjectsApi(client)
            cluster = custom.get_namespaced_custom_object(*CAPI, NAMESPACE, "clusters", NAME)
            machines = custom.list_namespaced_custom_object(*CAPI, NAMESPACE, "machines")["items"]
        assert cond.is_true(cluster, "Available")
        assert len(machines) == 2
        assert [CONTROL_PLANE_LABEL in m["metadata"].get("labels", {}) for m in machines].count(True) == 1
        assert all(m["status"]["phase"] == "Running" and m["status"].get("nodeRef") for m in machines)

        # Both VMs run in the site's libvirtd.
        with closing(PrivateLibvirtd(root / "libvirtd").connect()) as conn:
            running = [d.name() for d in conn.listAllDomains(0) if d.isActive()]
        assert len(running) == 2, running

        # The workload kubeconfig works against the cluster the k3s stand-in serves.
        workload = root / f"{NAME}.kubeconfig"
        assert f"workload kubeconfig (from Secret {NAMESPACE}/{NAME}-kubeconfig): {workload}" in up.stdout
        with api_client(workload) as client:
            nodes = {n.metadata.name for n in kc.CoreV1Api(client).list_node().items}
        assert nodes == {m["status"]["nodeRef"]["name"] for m in machines}

        # The printed tools work against the management plane.
        get = subprocess.run(
            [str(root / "bin" / "kubectl"), "get", "machines", "-n", NAMESPACE, "--no-headers"],
            env={**os.environ, "KUBECONFIG": str(root / "kubeconfig")},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert get.returncode == 0, get.stderr
        assert len(get.stdout.splitlines()) == 2

        again = _dev("up", "--dir", str(root))
        assert again.returncode == 1
        assert "already running" in again.stderr
    finally:
        down = _dev("down", "--dir", str(root), timeout=900)
    assert down.returncode == 0, f"{down.stdout[-3000:]}\n{down.stderr[-3000:]}"
    # The cluster was deleted through the API first: our manager removed VMs and volumes.
    assert f"{NAME} deleted; libvirt domains left: none, machine volumes left: none" in down.stdout
    still = {name: Path(f"/proc/{pid}/stat").read_text()[:80] for name, pid in pids.items() if alive(pid)}
    assert still == {}, down.stdout[-3000:]
    assert processes_using(root) == []
    assert _mounted(root) == []
    assert sorted(p.name for p in root.iterdir()) == ["logs"]
    assert (root / "logs" / "k3s" / "k3s.log").exists()

    # Safe to re-run.
    again = _dev("down", "--dir", str(root))
    assert again.returncode == 0, again.stderr
