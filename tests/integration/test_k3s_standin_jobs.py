"""Which Jobs the k3s stand-in runs, against real workload API servers (no VM needed for
the Jobs it must not run or must fail before touching a VM): only Jobs pinned to a Node it
runs in that same cluster; one for another cluster's node name, an unknown node, or one
already started is left alone; one that is not the contract's, or whose image the
registry does not have, fails with a readable message and the VM is never touched."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as kc

from capi_c3os.bootstrap.certificates import new_ca
from capi_c3os.dev.k3s import K3sStandIn, _Cluster, _Joined
from capi_c3os.dev.libvirtd import PrivateLibvirtd
from capi_c3os.dev.mgmt import api_client
from capi_c3os.dev.nodeupgrade import REGISTRY
from capi_c3os.dev.processes import free_port
from capi_c3os.dev.workload import WorkloadStandIn
from capi_c3os.workload.upgrade import UPGRADE_SCRIPT, upgrade_job

pytestmark = pytest.mark.integration


def job(name: str, node: str, image: str, script: str = UPGRADE_SCRIPT) -> dict[str, Any]:
    """The providers' upgrade Job under another name, its script replaced if given."""
    body = upgrade_job(node, image, "")
    body["metadata"]["name"] = name
    body["spec"]["template"]["spec"]["containers"][0]["command"][2] = script
    return body


@pytest.fixture
def clusters(tmp_path: Path) -> Iterator[tuple[WorkloadStandIn, WorkloadStandIn]]:
    made = []
    try:
        for name in ("a", "b"):
            made.append(
                WorkloadStandIn(
                    tmp_path / name, new_ca(f"{name}-s"), new_ca(f"{name}-c"), free_port()
                ).start()
            )
        yield made[0], made[1]
    finally:
        for workload in made:
            workload.stop()


def test_only_jobs_for_this_clusters_own_nodes_run_and_bad_ones_fail_before_any_vm(
    clusters: tuple[WorkloadStandIn, WorkloadStandIn], tmp_path: Path
) -> None:
    a, b = clusters
    # The daemon is never started: touching a VM here would fail loudly.
    k3s = K3sStandIn(PrivateLibvirtd(tmp_path / "libvirtd"), tmp_path / "k3s", images=tmp_path / "images")
    (tmp_path / "images" / "oci" / "k3sv1.34.1-k3s1" / "boot").mkdir(parents=True)
    cluster_a = _Cluster("127.0.0.1", a.port, a, b"", "")
    cluster_b = _Cluster("127.0.0.1", b.port, b, b"", "")
    for workload, node in ((a, "a-0"), (b, "b-0")):
        workload.register_node(node, f"c3os://x/{node}", control_plane=True, etcd=False)
    k3s._joined = {"vm-a": _Joined(cluster_a, "a-0", True), "vm-b": _Joined(cluster_b, "b-0", True)}

    good = f"{REGISTRY}:k3sv1.34.1-k3s1"
    with api_client(a.kubeconfig) as client:
        batch = kc.BatchV1Api(client)
        for body in (
            job("other-cluster-node", "b-0", good),
            job("unknown-node", "ghost", good),
            job("missing-image", "a-0", f"{REGISTRY}:k3sv9.9.9-k3s1"),
            job("not-the-script", "a-0", good, script="rm -rf /host\n"),
            job("started-before", "a-0", good),
        ):
            batch.create_namespaced_job("kube-system", body)
        batch.patch_namespaced_job_status(
            "started-before", "kube-system", {"status": {"active": 1, "startTime": "2026-01-01T00:00:00Z"}}
        )

        k3s._start_jobs(cluster_a)
        k3s._start_jobs(cluster_b)  # b has no Jobs: its node's name in a's Jobs means nothing
        k3s._start_jobs(cluster_a)  # a second round starts nothing twice
        for thread in k3s._job_threads:
            thread.join(timeout=30)

        def outcome(name: str) -> tuple[int, int, dict[str, str]]:
            status = batch.read_namespaced_job(name, "kube-system").status
            conditions = {c.type: c.message for c in status.conditions or [] if c.status == "True"}
            return status.active or 0, status.failed or 0, conditions

        assert outcome("other-cluster-node") == (0, 0, {})
        assert outcome("unknown-node") == (0, 0, {})
        assert outcome("started-before") == (1, 0, {})
        active, failed, conditions = outcome("missing-image")
        assert (active, failed, sorted(conditions)) == (0, 1, ["Failed", "FailureTarget"])
        assert 'Failed to pull image "registry.c3os.test/c3os-standin:k3sv9.9.9-k3s1"' in conditions["Failed"]
        active, failed, conditions = outcome("not-the-script")
        assert (active, failed) == (0, 1)
        assert "not the upgrade script kairos-operator generates" in conditions["Failed"]
    assert sorted(k3s.jobs) == ["kube-system/missing-image", "kube-system/not-the-script"]
    assert len(k3s._job_threads) == 2
