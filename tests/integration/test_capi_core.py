"""The real CAPI core manager (v1.14) works with our CRDs: it resolves a `Cluster`'s
reference to a C3osCluster through the v1beta2 contract label, owns it, and reads the
contract fields we publish. Here the test plays our infrastructure provider by hand;
the provider's own reconciler is tested in its issue."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest
from kubernetes import client as kc

from capi_c3os.api import C3osCluster
from capi_c3os.dev import binaries
from capi_c3os.dev.mgmt import ManagementPlane
from tests.examples import GOOD, wire
from tests.support import condition, eventually

pytestmark = pytest.mark.integration

CAPI = ("cluster.x-k8s.io", "v1beta2")


def _cluster(api: kc.CustomObjectsApi, namespace: str, name: str) -> dict[str, Any]:
    result: dict[str, Any] = api.get_namespaced_custom_object(*CAPI, namespace, "clusters", name)
    return result


def _condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == type_), None)


def test_capi_reconciles_a_cluster_that_references_our_c3oscluster(
    mgmt: ManagementPlane, k8s: Any, namespace: str
) -> None:
    api = kc.CustomObjectsApi(k8s)
    infra = wire(C3osCluster, GOOD[C3osCluster])
    infra["metadata"] = {"name": "edge", "namespace": namespace}
    api.create_namespaced_custom_object(
        C3osCluster.GROUP, C3osCluster.VERSION, namespace, "c3osclusters", infra
    )
    api.create_namespaced_custom_object(
        *CAPI,
        namespace,
        "clusters",
        {
            "apiVersion": "cluster.x-k8s.io/v1beta2",
            "kind": "Cluster",
            "metadata": {"name": "edge", "namespace": namespace},
            "spec": {
                "infrastructureRef": {"apiGroup": C3osCluster.GROUP, "kind": "C3osCluster", "name": "edge"}
            },
        },
    )

    cluster = eventually(
        lambda: (c := _cluster(api, namespace, "edge")) and _condition(c, "InfrastructureReady") and c,
        "CAPI to set the Cluster's InfrastructureReady condition",
    )
    assert "cluster.cluster.x-k8s.io" in cluster["metadata"]["finalizers"]
    assert _condition(cluster, "InfrastructureReady")["status"] == "False"  # type: ignore[index]

    def owned_by_cluster() -> bool:
        obj = api.get_namespaced_custom_object(
            C3osCluster.GROUP, C3osCluster.VERSION, namespace, "c3osclusters", "edge"
        )
        return any(
            ref["kind"] == "Cluster" and ref["name"] == "edge"
            for ref in obj["metadata"].get("ownerReferences", [])
        )

    eventually(owned_by_cluster, "CAPI to set the Cluster as owner of the C3osCluster")

    # Play the provider: report provisioned + Ready; CAPI copies them per the v1beta2 contract.
    api.patch_namespaced_custom_object_status(
        C3osCluster.GROUP,
        C3osCluster.VERSION,
        namespace,
        "c3osclusters",
        "edge",
        {
            "status": {
                "initialization": {"provisioned": True},
                "failureDomains": [{"name": "lab", "controlPlane": True}],
                "conditions": [condition("Ready", "True", "Provisioned")],
            }
        },
    )

    def infrastructure_provisioned() -> dict[str, Any] | None:
        c = _cluster(api, namespace, "edge")
        return c if c.get("status", {}).get("initialization", {}).get("infrastructureProvisioned") else None

    cluster = eventually(
        infrastructure_provisioned, "Cluster.status.initialization.infrastructureProvisioned"
    )
    assert cluster["spec"]["controlPlaneEndpoint"] == GOOD[C3osCluster]["spec"]["controlPlaneEndpoint"]
    assert [d["name"] for d in cluster["status"]["failureDomains"]] == ["lab"]
    eventually(
        lambda: (
            (_condition(_cluster(api, namespace, "edge"), "InfrastructureReady") or {}).get("status")
            == "True"
        ),
        "the Cluster's InfrastructureReady to mirror our Ready condition",
    )

    # clusterctl (built from the same release) reads the same objects.
    described = subprocess.run(
        [
            str(binaries.locate("clusterctl")),
            "describe",
            "cluster",
            "edge",
            "-n",
            namespace,
            "--kubeconfig",
            str(mgmt.kubeconfig),
            "--show-conditions",
            "all",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert described.returncode == 0, described.stderr
    tree = described.stdout
    assert f"Cluster {namespace}/edge" in tree, tree
    assert f"C3osCluster {namespace}/edge" in tree, tree
    assert "InfrastructureReady" in tree
