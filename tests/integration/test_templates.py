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
INFRA = ("infrastructure.cluster.x-k8s.io", "v1alpha1")
CONTROL_PLANE = ("controlplane.cluster.x-k8s.io", "v1alpha1")


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


@pytest.fixture
def accepted_topology(
    mgmt: ManagementPlane, k8s: Any, namespace: str, tmp_path: Path
) -> list[dict[str, Any]]:
    """The topology flavor rendered, everything but its Cluster applied, and the
    ClusterClass accepted by CAPI: the Cluster is the test's to apply."""
    rendered = render("topology", namespace, tmp_path, mgmt.kubeconfig)
    apply(mgmt.kubeconfig, [d for d in rendered if d["kind"] != "Cluster"])
    await_class_accepted(kc.CustomObjectsApi(k8s), namespace, "c3os-libvirt")
    return rendered


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
    mgmt: ManagementPlane, accepted_topology: list[dict[str, Any]]
) -> None:
    (cluster,) = [d for d in accepted_topology if d["kind"] == "Cluster"]
    (images,) = [v for v in cluster["spec"]["topology"]["variables"] if v["name"] == "images"]
    assert list(images["value"]) == [VERSION]
    images["value"]["latest"] = images["value"][VERSION]  # a tag, not the version it ships
    with pytest.raises(ApiException) as refused:
        apply(mgmt.kubeconfig, [cluster])
    assert "keys must be Kubernetes versions such as v1.33.4+k3s1" in str(refused.value.body)


SHOP_FLOOR = {
    "name": "shop-floor",
    "controlPlane": False,
    "enrolled": {
        "pool": "shop-floor",
        "registrationTokenSecretRef": {"name": "shop-token"},
        "acceptance": "Token",
    },
}
ENROLLED_HOSTS = {
    "hostSelector": {
        "matchLabels": {"host.c3os.io/arch": "amd64"},
        "matchExpressions": [
            {"key": "host.c3os.io/memory-gib", "operator": "In", "values": ["16", "32"]},
            {"key": "example.com/rack", "operator": "Exists"},  # a label of the user's own
        ],
    },
    "installDisk": {"minSizeGiB": 100, "rotational": False},
}


def with_enrolled_workers(rendered: list[dict[str, Any]], hosts: Any) -> dict[str, Any]:
    """The topology flavor's Cluster with an enrolled site and an enrolled-worker
    MachineDeployment placed on it, its hosts chosen by the enrolledHosts variable."""
    (cluster,) = [d for d in rendered if d["kind"] == "Cluster"]
    topology = cluster["spec"]["topology"]
    topology["controlPlane"]["replicas"] = 1
    topology["workers"]["machineDeployments"] = [
        {"class": "enrolled-worker", "name": "md-shop", "replicas": 2, "failureDomain": "shop-floor"}
    ]
    for variable in topology["variables"]:
        if variable["name"] == "sites":
            variable["value"].append(SHOP_FLOOR)
    topology["variables"].append({"name": "enrolledHosts", "value": hosts})
    return cluster


def test_enrolled_worker_machines_get_the_host_selector_and_disk_hints(
    mgmt: ManagementPlane, k8s: Any, namespace: str, accepted_topology: list[dict[str, Any]]
) -> None:
    api = kc.CustomObjectsApi(k8s)
    apply(mgmt.kubeconfig, [with_enrolled_workers(accepted_topology, ENROLLED_HOSTS)])

    def one(group: str, version: str, plural: str, **labels: str) -> dict[str, Any] | None:
        selector = ",".join(f"{k}={v}" for k, v in labels.items())
        items = api.list_namespaced_custom_object(group, version, namespace, plural, label_selector=selector)
        return items["items"][0] if len(items["items"]) == 1 else None

    infra = eventually(lambda: one(*INFRA, "c3osclusters"), "C3osCluster cloned")
    assert infra["spec"]["sites"][1] == SHOP_FLOOR  # the enrolled site, as the variable gave it
    control_plane = eventually(
        lambda: one(*CONTROL_PLANE, "c3oscontrolplanes"), "C3osControlPlane cloned",
        explain=lambda: topology_state(api, namespace),
    )  # fmt: skip
    # CAPI creates workers once the control plane is stable: play a provisioned one
    # (nothing else writes its status here, no control-plane provider runs).
    api.patch_namespaced_custom_object_status(
        *CONTROL_PLANE, namespace, "c3oscontrolplanes", control_plane["metadata"]["name"],
        {"status": {"versions": [{"version": VERSION, "replicas": 1}],
                    "initialization": {"controlPlaneInitialized": True}}},
    )  # fmt: skip
    deployment = eventually(
        lambda: one("cluster.x-k8s.io", "v1beta2", "machinedeployments",
                    **{"topology.cluster.x-k8s.io/deployment-name": "md-shop"}),
        "the enrolled-worker MachineDeployment", explain=lambda: topology_state(api, namespace),
    )  # fmt: skip
    assert deployment["spec"]["template"]["spec"]["failureDomain"] == "shop-floor"
    ref = deployment["spec"]["template"]["spec"]["infrastructureRef"]
    assert ref["kind"] == "C3osMachineTemplate"
    template = api.get_namespaced_custom_object(*INFRA, namespace, "c3osmachinetemplates", ref["name"])
    spec = template["spec"]["template"]["spec"]
    assert spec["backend"] == {"enrolled": ENROLLED_HOSTS}
    assert spec["image"]["url"] == "https://images.example/c3os-v3.2.qcow2"  # the host downloads it


def _expressions(*requirements: dict[str, Any]) -> dict[str, Any]:
    return {"hostSelector": {"matchExpressions": list(requirements)}}


FIELD = "spec.topology.variables[enrolledHosts]"
BAD_ENROLLED_HOSTS = [  # value, the field CAPI names, what it says there
    (_expressions({"key": "host.c3os.io/tpm", "operator": "In"}), ".value.hostSelector.matchExpressions[0]",
     "In and NotIn need values; Exists and DoesNotExist take none"),
    (_expressions({"key": "host.c3os.io/cpus", "operator": "Gt", "values": ["4"]}),
     ".value.hostSelector.matchExpressions[0].operator",
     'supported values: "In", "NotIn", "Exists", "DoesNotExist"'),
    (_expressions({"key": "no spaces/allowed", "operator": "Exists"}),
     ".value.hostSelector.matchExpressions[0].key", "should match"),
    ({"hostSelector": {"matchLabels": {"host.c3os.io/product": "NUC 11"}}},
     ".value.hostSelector.matchLabels.host.c3os.io/product", "should match"),
    ({"hostSelector": {"labels": {"host.c3os.io/arch": "amd64"}}}, "",
     '"hostSelector.labels" field(s) are not specified in the variable schema'),
    ({"installDisk": {"deviceName": "sda"}}, ".value.installDisk.deviceName", "at least 6"),
    ({"installDisk": {"minSizeGiB": 0}}, ".value.installDisk.minSizeGiB", "greater than or equal to 1"),
]  # fmt: skip


def test_a_bad_enrolled_hosts_variable_is_refused_on_the_cluster(
    mgmt: ManagementPlane, accepted_topology: list[dict[str, Any]]
) -> None:
    for hosts, field, said in BAD_ENROLLED_HOSTS:
        rendered = yaml.safe_load(yaml.safe_dump(accepted_topology))  # a fresh copy each time
        with pytest.raises(ApiException) as refused:
            apply(mgmt.kubeconfig, [with_enrolled_workers(rendered, hosts)])
        causes = json.loads(refused.value.body)["details"]["causes"]
        assert [(c["field"], said in c["message"]) for c in causes] == [(FIELD + field, True)], causes


def test_a_bad_enrolled_site_stops_the_topology_with_the_api_servers_words(
    mgmt: ManagementPlane, k8s: Any, namespace: str, accepted_topology: list[dict[str, Any]]
) -> None:
    """The `sites` variable passes sites through as they are; our C3osCluster CRD judges
    them when CAPI creates the C3osCluster, and CAPI says so on the Cluster."""
    cluster = with_enrolled_workers(accepted_topology, {})
    for variable in cluster["spec"]["topology"]["variables"]:
        if variable["name"] == "sites":
            variable["value"][1]["enrolled"]["acceptance"] = "Sometimes"
    apply(mgmt.kubeconfig, [cluster])
    api = kc.CustomObjectsApi(k8s)

    def refused() -> str | None:
        found = api.get_namespaced_custom_object(
            "cluster.x-k8s.io", "v1beta2", namespace, "clusters", "shop-17"
        )
        reconciled = cond.get_condition(found, "TopologyReconciled") or {}
        message = str(reconciled.get("message", ""))
        return message if reconciled.get("status") == "False" and "acceptance" in message else None

    message = eventually(
        refused, "the topology to stop at the C3osCluster", explain=lambda: topology_state(api, namespace)
    )
    assert 'supported values: "Token", "Approval"' in message, message
    assert api.list_namespaced_custom_object(*INFRA, namespace, "c3osclusters")["items"] == []


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
