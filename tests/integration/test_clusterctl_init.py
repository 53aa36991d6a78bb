"""`clusterctl init --core cluster-api --bootstrap c3os --control-plane c3os
--infrastructure c3os` against a fresh management plane, from an offline repository
(see capi_c3os/dev/clusterctl.py for how cert-manager is handled). The managers clusterctl
installs as Deployments cannot run without a kubelet, so the harness runs the same
binaries as local processes, under the identities clusterctl created, and points the
installed webhooks at them; then a Cluster is reconciled by CAPI core and by us."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as kc

from capi_c3os.api import C3osCluster
from capi_c3os.dev import binaries
from capi_c3os.dev.clusterctl import write_repository
from capi_c3os.dev.manager import start_manager
from capi_c3os.dev.mgmt import ManagementPlane, api_client
from tests.conftest import REPO
from tests.examples import GOOD, wire
from tests.support import eventually, keep_directory

pytestmark = pytest.mark.integration


@pytest.fixture
def bare_plane(tmp_path: Path) -> Iterator[ManagementPlane]:
    """etcd, kube-apiserver and kube-controller-manager only: clusterctl installs the rest."""
    plane = ManagementPlane(tmp_path / "plane").start(capi=False)
    try:
        yield plane
    finally:
        plane.stop()
        keep_directory(plane.logs, "clusterctl-init")


def clusterctl(plane: ManagementPlane, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(binaries.locate("clusterctl")), *args, "--kubeconfig", str(plane.kubeconfig)],
        env={**os.environ, "HOME": str(home)}, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def test_clusterctl_init_installs_core_and_our_three_providers(
    bare_plane: ManagementPlane, tmp_path: Path
) -> None:
    config = write_repository(tmp_path / "repository", REPO / "config" / "clusterctl")
    init = clusterctl(
        bare_plane, tmp_path, "init", "--config", str(config), "--core", "cluster-api",
        "--bootstrap", "c3os", "--control-plane", "c3os", "--infrastructure", "c3os",
    )  # fmt: skip
    assert init.returncode == 0, init.stderr + init.stdout
    assert "initialized successfully" in init.stderr + init.stdout

    with api_client(bare_plane.kubeconfig) as client:
        api = kc.CustomObjectsApi(client)
        inventory = api.list_cluster_custom_object("clusterctl.cluster.x-k8s.io", "v1alpha3", "providers")[
            "items"
        ]
        installed = {(p["metadata"]["name"], p["type"], p["version"]) for p in inventory}
        assert installed == {
            ("cluster-api", "CoreProvider", binaries.CAPI_VERSION),
            ("bootstrap-c3os", "BootstrapProvider", "v0.1.0"),
            ("control-plane-c3os", "ControlPlaneProvider", "v0.1.0"),
            ("infrastructure-c3os", "InfrastructureProvider", "v0.1.0"),
        }
        # clusterctl labelled what it installed for us, so `clusterctl move`/`delete` find it.
        crd = kc.ApiextensionsV1Api(client).read_custom_resource_definition(
            "c3osmachines.infrastructure.cluster.x-k8s.io"
        )
        assert crd.metadata.labels["cluster.x-k8s.io/provider"] == "infrastructure-c3os"
        assert crd.metadata.labels["clusterctl.cluster.x-k8s.io"] == ""

        # Run CAPI core and our infrastructure manager as local processes.
        bare_plane.start_capi()
        kubeconfig = bare_plane.write_service_account_kubeconfig(
            tmp_path / "infra.kubeconfig", "c3os-infrastructure-system", "c3os-infrastructure-manager"
        )
        manager = start_manager(
            kubeconfig, tmp_path / "infrastructure.log", "--leader-elect",
            "--leader-election-namespace=c3os-infrastructure-system",
            "--leader-election-id=c3os-infrastructure-manager",
            providers="infrastructure", metrics=False,
        )  # fmt: skip
        try:
            manager.wait_ready(60)
            _cluster_is_reconciled_by_capi_and_by_us(api)
        finally:
            assert manager.stop() == 0, manager.tail()


def _cluster_is_reconciled_by_capi_and_by_us(api: kc.CustomObjectsApi) -> None:
    kc.CoreV1Api(api.api_client).create_namespace(kc.V1Namespace(metadata=kc.V1ObjectMeta(name="edge")))
    infra = wire(C3osCluster, GOOD[C3osCluster])
    infra["metadata"] = {"name": "shop", "namespace": "edge"}
    api.create_namespaced_custom_object(
        C3osCluster.GROUP, C3osCluster.VERSION, "edge", C3osCluster.PLURAL, infra
    )
    api.create_namespaced_custom_object("cluster.x-k8s.io", "v1beta2", "edge", "clusters", {
        "apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Cluster",
        "metadata": {"name": "shop", "namespace": "edge"},
        "spec": {"infrastructureRef": {"apiGroup": C3osCluster.GROUP, "kind": "C3osCluster", "name": "shop"}},
    })  # fmt: skip

    def conditions(obj: dict[str, Any]) -> dict[str, str]:
        return {c["type"]: c["status"] for c in obj.get("status", {}).get("conditions", [])}

    def infra_reconciled() -> bool:
        obj = api.get_namespaced_custom_object(
            C3osCluster.GROUP, C3osCluster.VERSION, "edge", "c3osclusters", "shop"
        )
        owned = any(r["kind"] == "Cluster" for r in obj["metadata"].get("ownerReferences", []))
        return owned and conditions(obj).get("Paused") == "False"

    eventually(infra_reconciled, "CAPI to own the C3osCluster and our manager to reconcile it")

    def capi_reports_infrastructure() -> bool:  # CAPI's reconcile may come after ours
        cluster = api.get_namespaced_custom_object("cluster.x-k8s.io", "v1beta2", "edge", "clusters", "shop")
        return "InfrastructureReady" in conditions(cluster)

    eventually(capi_reports_infrastructure, "CAPI to report the Cluster's InfrastructureReady condition")
