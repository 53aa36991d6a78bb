"""Our templates, rendered by clusterctl and reconciled by the real CAPI topology
controller: the ClusterClass variables reach the objects CAPI clones from our templates,
and our CRDs accept every object CAPI writes."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as kc
from kubernetes.client.exceptions import ApiException

from capi_c3os.capi import conditions as cond
from capi_c3os.dev import binaries
from capi_c3os.dev.mgmt import ManagementPlane, apply
from tests.conftest import REPO
from tests.support import eventually

pytestmark = pytest.mark.integration

SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKq2 edge@example"
IMAGE_SHA256 = "0" * 63 + "1"
VERSION = "v1.33.4+k3s1"


def render(
    flavor: str, namespace: str, home: Path, kubeconfig: Path, **variables: str
) -> list[dict[str, Any]]:
    """`clusterctl generate cluster --flavor <flavor>` from our generated repository."""
    env = {
        **os.environ, "HOME": str(home), "NAMESPACE": namespace,
        "C3OS_REPOSITORY": str(REPO / "config" / "clusterctl"),
        "C3OS_CONTROL_PLANE_ENDPOINT_HOST": "api.shop-17.example",
        "C3OS_IMAGE_URL": "https://images.example/c3os-v3.2.qcow2",
        "C3OS_IMAGE_SHA256": IMAGE_SHA256,
        "C3OS_SSH_AUTHORIZED_KEY": SSH_KEY,
        **variables,
    }  # fmt: skip
    done = subprocess.run(
        [str(binaries.locate("clusterctl")), "generate", "cluster", "shop-17", "--flavor", flavor,
         "--infrastructure", "c3os:v0.1.0",
         "--config", str(REPO / "config" / "clusterctl" / "clusterctl.yaml"),
         "--kubeconfig", str(kubeconfig), "--kubernetes-version", VERSION,
         "--control-plane-machine-count", "3", "--worker-machine-count", "2",
         "--target-namespace", namespace],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def await_class_accepted(api: kc.CustomObjectsApi, namespace: str, name: str) -> None:
    """CAPI has validated the ClusterClass's variables (its VariablesReady condition)."""

    def accepted() -> bool:
        cc = api.get_namespaced_custom_object(
            "cluster.x-k8s.io", "v1beta2", namespace, "clusterclasses", name
        )
        return cond.is_true(cc, "VariablesReady")

    eventually(accepted, f"CAPI to accept the ClusterClass {name}")


def topology_state(api: kc.CustomObjectsApi, namespace: str) -> str:
    """What CAPI's topology controller says, for failure messages."""
    cluster = api.get_namespaced_custom_object(
        "cluster.x-k8s.io", "v1beta2", namespace, "clusters", "shop-17"
    )
    return "; ".join(
        f"{c['type']}={c['status']} {c.get('message', '')}"
        for c in cluster.get("status", {}).get("conditions", [])
        if c["status"] != "True"
    )


def test_clusterclass_topology_clones_our_templates_with_the_variables(
    mgmt: ManagementPlane, k8s: Any, namespace: str, tmp_path: Path
) -> None:
    # The topology flavor brings the ClusterClass it names along (clusterctl adds it).
    rendered = render("topology", namespace, tmp_path, mgmt.kubeconfig)
    assert {d["kind"] for d in rendered} >= {"Cluster", "ClusterClass", "C3osClusterTemplate"}
    apply(mgmt.kubeconfig, [d for d in rendered if d["kind"] != "Cluster"])
    api = kc.CustomObjectsApi(k8s)

    await_class_accepted(api, namespace, "c3os-libvirt")
    apply(mgmt.kubeconfig, [d for d in rendered if d["kind"] == "Cluster"])

    def one(group: str, plural: str) -> dict[str, Any] | None:
        items = api.list_namespaced_custom_object(group, "v1alpha1", namespace, plural)["items"]
        return items[0] if len(items) == 1 else None

    infra = eventually(lambda: one("infrastructure.cluster.x-k8s.io", "c3osclusters"), "C3osCluster cloned")
    assert infra["spec"]["controlPlaneEndpoint"] == {"host": "api.shop-17.example", "port": 6443}
    assert [s["name"] for s in infra["spec"]["sites"]] == ["site-a"]

    control_plane = eventually(
        lambda: one("controlplane.cluster.x-k8s.io", "c3oscontrolplanes"),
        "C3osControlPlane cloned",
        explain=lambda: topology_state(api, namespace),
    )
    assert control_plane["spec"]["version"] == VERSION
    assert control_plane["spec"]["replicas"] == 3
    assert control_plane["spec"]["serverConfig"]["users"] == [
        {"name": "kairos", "groups": ["admin"], "sshAuthorizedKeys": [SSH_KEY]}
    ]
    assert (
        control_plane["spec"]["machineTemplate"]["spec"]["infrastructureRef"]["kind"] == "C3osMachineTemplate"
    )
    assert control_plane["spec"]["rollout"]["strategy"]["type"] == "RollingUpdate"  # the variable's default

    # Worker MachineDeployments (and their templates) wait until the control plane is
    # initialised, which needs the control-plane provider: covered where that runs.
    name = control_plane["spec"]["machineTemplate"]["spec"]["infrastructureRef"]["name"]
    template = api.get_namespaced_custom_object(
        "infrastructure.cluster.x-k8s.io", "v1alpha1", namespace, "c3osmachinetemplates", name
    )
    spec = template["spec"]["template"]["spec"]
    assert spec["image"] == {
        "url": "https://images.example/c3os-v3.2.qcow2",
        "checksum": IMAGE_SHA256,
        "checksumAlgorithm": "sha256",
        "format": "qcow2",
    }
    assert (spec["cpus"], spec["memoryMiB"], spec["diskGiB"]) == (2, 4096, 30)


@pytest.mark.parametrize("flavor", ["libvirt", "ironic"])
def test_flat_cluster_templates_render_and_apply(
    mgmt: ManagementPlane, k8s: Any, namespace: str, tmp_path: Path, flavor: str
) -> None:
    rendered = render(
        flavor, namespace, tmp_path, mgmt.kubeconfig, C3OS_IRONIC_ENDPOINT="https://ironic.rack-1:6385"
    )
    kinds = sorted(d["kind"] for d in rendered)
    assert kinds == sorted(["Cluster", "C3osCluster", "C3osControlPlane", "C3osMachineTemplate",
                            "MachineDeployment", "C3osMachineTemplate", "C3osConfigTemplate"])  # fmt: skip
    apply(mgmt.kubeconfig, rendered)  # the API server validates every object (our CRDs, CAPI's webhooks)
    api = kc.CustomObjectsApi(k8s)
    site = api.get_namespaced_custom_object(
        "infrastructure.cluster.x-k8s.io", "v1alpha1", namespace, "c3osclusters", "shop-17"
    )["spec"]["sites"][0]
    assert flavor in site
    eventually(
        lambda: (
            "cluster.cluster.x-k8s.io"
            in api.get_namespaced_custom_object(
                "cluster.x-k8s.io", "v1beta2", namespace, "clusters", "shop-17"
            )["metadata"].get("finalizers", [])
        ),
        "CAPI to take the Cluster",
    )


def test_ironic_clusterclass_is_accepted(mgmt: ManagementPlane, k8s: Any, namespace: str) -> None:
    docs = [
        d for d in yaml.safe_load_all((REPO / "templates" / "clusterclass-c3os-ironic.yaml").read_text()) if d
    ]
    for doc in docs:
        doc["metadata"]["namespace"] = namespace
    apply(mgmt.kubeconfig, docs)
    api = kc.CustomObjectsApi(k8s)

    await_class_accepted(api, namespace, "c3os-ironic")


def test_an_images_key_that_is_no_version_is_refused(
    mgmt: ManagementPlane, k8s: Any, namespace: str, tmp_path: Path
) -> None:
    rendered = render("topology", namespace, tmp_path, mgmt.kubeconfig)
    apply(mgmt.kubeconfig, [d for d in rendered if d["kind"] != "Cluster"])
    await_class_accepted(kc.CustomObjectsApi(k8s), namespace, "c3os-libvirt")
    (cluster,) = [d for d in rendered if d["kind"] == "Cluster"]
    (images,) = [v for v in cluster["spec"]["topology"]["variables"] if v["name"] == "images"]
    assert list(images["value"]) == [VERSION]
    images["value"]["latest"] = images["value"][VERSION]  # a tag, not the version it ships
    with pytest.raises(ApiException) as refused:
        apply(mgmt.kubeconfig, [cluster])
    assert "keys must be Kubernetes versions such as v1.33.4+k3s1" in str(refused.value.body)


def test_the_rollout_strategy_variable_reaches_the_control_plane_and_a_bad_one_is_refused(
    mgmt: ManagementPlane, k8s: Any, namespace: str, tmp_path: Path
) -> None:
    """controlPlaneRolloutStrategy: InPlace gets to the C3osControlPlane CAPI clones, a
    change of the variable reaches the running one, and a value that is no strategy is
    refused when the Cluster is written (CAPI's variable validation)."""
    rendered = render("topology", namespace, tmp_path, mgmt.kubeconfig)
    apply(mgmt.kubeconfig, [d for d in rendered if d["kind"] != "Cluster"])
    api = kc.CustomObjectsApi(k8s)
    await_class_accepted(api, namespace, "c3os-libvirt")
    (cluster,) = [d for d in rendered if d["kind"] == "Cluster"]
    variables = cluster["spec"]["topology"]["variables"]

    variables.append({"name": "controlPlaneRolloutStrategy", "value": "Recreate"})
    with pytest.raises(ApiException) as refused:
        apply(mgmt.kubeconfig, [cluster])
    assert refused.value.status == 422
    message = json.loads(refused.value.body)["message"]
    assert "spec.topology.variables[controlPlaneRolloutStrategy].value" in message
    assert "Recreate" in message and 'supported values: "RollingUpdate", "InPlace"' in message, message

    variables[-1]["value"] = "InPlace"
    apply(mgmt.kubeconfig, [cluster])

    def strategy() -> str | None:
        items = api.list_namespaced_custom_object(
            "controlplane.cluster.x-k8s.io", "v1alpha1", namespace, "c3oscontrolplanes"
        )["items"]
        return items[0]["spec"]["rollout"]["strategy"]["type"] if items else None

    eventually(lambda: strategy() == "InPlace", "InPlace on the C3osControlPlane",
               explain=lambda: f"{strategy()}; {topology_state(api, namespace)}")  # fmt: skip
    variables[-1]["value"] = "RollingUpdate"  # the user's choice, changed on a running cluster
    apply(mgmt.kubeconfig, [cluster])
    eventually(lambda: strategy() == "RollingUpdate", "RollingUpdate again on the C3osControlPlane",
               explain=lambda: f"{strategy()}; {topology_state(api, namespace)}")  # fmt: skip
