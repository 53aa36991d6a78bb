"""A whole cluster from our ClusterClass: CAPI's topology controller, our bootstrap and
control-plane providers (a real `capi-c3os run`), the workload stand-in. The test plays
the infrastructure provider (C3osCluster provisioned, machines provisioned, Nodes
registered) — booting VMs is the libvirt backend's part. Shows that the control plane
initialises, CAPI then creates the workers, and every Machine gets its Node."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as kc

from capi_c3os.dev.manager import start_manager
from capi_c3os.dev.mgmt import ManagementPlane, apply
from capi_c3os.dev.processes import free_port
from capi_c3os.dev.workload import MachinePlayer, WorkloadStandIn, cluster_ca
from tests.integration.controlplane.test_controlplane import _exists
from tests.integration.test_templates import await_class_accepted, render
from tests.support import eventually

pytestmark = pytest.mark.integration

INFRA = ("infrastructure.cluster.x-k8s.io", "v1alpha1")
CAPI = ("cluster.x-k8s.io", "v1beta2")


def test_a_topology_cluster_comes_up_servers_first_then_workers(
    mgmt: ManagementPlane, k8s: Any, namespace: str, tmp_path: Path
) -> None:
    api, core = kc.CustomObjectsApi(k8s), kc.CoreV1Api(k8s)
    port = free_port()
    rendered = render(
        "topology",
        namespace,
        tmp_path,
        mgmt.kubeconfig,
        C3OS_CONTROL_PLANE_ENDPOINT_HOST="127.0.0.1",
        C3OS_CONTROL_PLANE_ENDPOINT_PORT=str(port),
    )
    for doc in rendered:  # one server and two workers keep the test short
        if doc["kind"] == "Cluster":
            doc["spec"]["topology"]["controlPlane"]["replicas"] = 1
            doc["spec"]["topology"]["workers"]["machineDeployments"][0]["replicas"] = 2
    apply(mgmt.kubeconfig, [d for d in rendered if d["kind"] != "Cluster"])
    await_class_accepted(api, namespace, "c3os-libvirt")
    apply(mgmt.kubeconfig, [d for d in rendered if d["kind"] == "Cluster"])

    manager = start_manager(
        mgmt.kubeconfig, tmp_path / "manager.log", providers="bootstrap,control-plane", metrics=False
    )
    standin: WorkloadStandIn | None = None
    player = MachinePlayer(k8s, namespace)
    try:
        manager.wait_ready(60)

        # Play the infrastructure cluster: provisioned, one failure domain.
        def cloned() -> str | None:
            items = api.list_namespaced_custom_object(*INFRA, namespace, "c3osclusters")["items"]
            return str(items[0]["metadata"]["name"]) if items else None

        player.provision_cluster(eventually(cloned, "C3osCluster cloned"))
        eventually(lambda: _exists(core, namespace, "shop-17-cca"), "cluster CAs", timeout=120)
        standin = WorkloadStandIn(tmp_path / "workload", cluster_ca(core, namespace, "shop-17-ca"),
                                  cluster_ca(core, namespace, "shop-17-cca"), port).start()  # fmt: skip
        player.standin = standin
        player.start()

        def machines() -> list[dict[str, Any]]:
            return list(api.list_namespaced_custom_object(*CAPI, namespace, "machines")["items"])

        def all_nodes_linked() -> bool:
            ms = machines()
            return len(ms) == 3 and all(m.get("status", {}).get("nodeRef") for m in ms)

        eventually(
            all_nodes_linked,
            "one server and two workers with Nodes",
            timeout=300,
            explain=lambda: str(
                [(m["metadata"]["name"], m.get("status", {}).get("phase")) for m in machines()]
            ),
        )
        workers = [
            m for m in machines() if "cluster.x-k8s.io/control-plane" not in m["metadata"].get("labels", {})
        ]
        assert len(workers) == 2
        for worker in workers:
            secret = core.read_namespaced_secret(worker["spec"]["bootstrap"]["dataSecretName"], namespace)
            data = yaml.safe_load(base64.b64decode(secret.data["value"]))
            assert "k3s-agent" in data, sorted(data)  # workers join as k3s agents
            assert "k3s" not in data or not data["k3s"].get("enabled")
    finally:
        player.stop()
        if standin:
            standin.stop()
        manager.stop()
