"""C3osControlPlane(Template) as ClusterClass uses them, on a real kube-apiserver: CAPI's
topology controller server-side-applies the control plane it computes from the template
and later dry-runs the same apply to see whether anything would change; that must be
stable (or CAPI would patch, and we roll, forever). Bad replicas / maxSurge are refused
with a message a person can act on."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from kubernetes import client as kc
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient

GROUP, VERSION = "controlplane.cluster.x-k8s.io", "v1alpha1"
TOPOLOGY_MANAGER = "capi-topology"
SURGE = ("rollout", "strategy", "rollingUpdate", "maxSurge")

pytestmark = pytest.mark.integration

TEMPLATE_SPEC: dict[str, Any] = {
    "machineTemplate": {
        "metadata": {"labels": {"tier": "server"}},
        "spec": {"deletion": {"nodeDrainTimeoutSeconds": 60}},
    },
    "serverConfig": {"k3s": {"nodeLabels": {"site": "a"}, "server": {"tlsSANs": ["shop.example.test"]}}},
    "rollout": {"strategy": {"rollingUpdate": {"maxSurge": 0}}},
    "remediation": {"maxRetry": 2},
}


def desired(namespace: str, **changes: Any) -> dict[str, Any]:
    """The C3osControlPlane CAPI's topology controller computes from the template: the
    template's spec plus replicas, version, the cloned infrastructure template and the
    topology labels."""
    spec = copy.deepcopy(TEMPLATE_SPEC)
    spec["machineTemplate"]["metadata"]["labels"]["topology.cluster.x-k8s.io/owned"] = ""
    spec["machineTemplate"]["spec"]["infrastructureRef"] = {
        "apiGroup": "infrastructure.cluster.x-k8s.io",
        "kind": "C3osMachineTemplate",
        "name": "shop-cp-x7k2p",
    }
    spec.update({"replicas": 3, "version": "v1.33.4+k3s1", **changes})
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "C3osControlPlane",
        "metadata": {
            "name": "shop-cp",
            "namespace": namespace,
            "labels": {"cluster.x-k8s.io/cluster-name": "shop", "topology.cluster.x-k8s.io/owned": ""},
        },
        "spec": spec,
    }


def apply(k8s: Any, body: dict[str, Any], *, dry_run: bool) -> dict[str, Any]:
    resource = DynamicClient(k8s).resources.get(api_version=body["apiVersion"], kind=body["kind"])
    result: dict[str, Any] = resource.server_side_apply(
        body=body, namespace=body["metadata"]["namespace"], field_manager=TOPOLOGY_MANAGER,
        force_conflicts=True, dry_run="All" if dry_run else None,
    ).to_dict()  # fmt: skip
    return result


def test_the_topology_dry_run_of_an_unchanged_control_plane_changes_nothing(k8s: Any, namespace: str) -> None:
    api = kc.CustomObjectsApi(k8s)
    template = {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "C3osControlPlaneTemplate",
        "metadata": {"name": "c3os", "namespace": namespace}, "spec": {"template": {"spec": TEMPLATE_SPEC}},
    }  # fmt: skip
    apply(k8s, template, dry_run=False)
    live = apply(k8s, desired(namespace), dry_run=False)
    # Our manager then adds its finalizer and writes status, as it does.
    args = (GROUP, VERSION, namespace, "c3oscontrolplanes", "shop-cp")
    api.patch_namespaced_custom_object(
        *args, {"metadata": {"finalizers": ["c3oscontrolplane.controlplane.cluster.x-k8s.io"]}}
    )
    api.patch_namespaced_custom_object_status(*args, {"status": {"replicas": 3, "readyReplicas": 3}})
    live = api.get_namespaced_custom_object(*args)

    intent = desired(namespace)
    intent["metadata"]["annotations"] = {"topology.cluster.x-k8s.io/dry-run": ""}
    dry = apply(k8s, intent, dry_run=True)
    assert dry["spec"] == live["spec"]
    assert dry["metadata"]["generation"] == live["metadata"]["generation"]
    # And a real change does show in the dry run (the comparison can fail).
    changed = apply(k8s, desired(namespace, version="v1.34.1+k3s1"), dry_run=True)
    assert changed["metadata"]["generation"] == live["metadata"]["generation"] + 1


@pytest.mark.parametrize(
    ("kind", "path", "value", "message"),
    [
        ("C3osControlPlane", ("replicas",), 2, "replicas must be 1, 3 or 5"),
        ("C3osControlPlane", ("replicas",), 7, "less than or equal to 5"),
        ("C3osControlPlane", ("rollout", "strategy", "rollingUpdate", "maxSurge"), 2, "maxSurge must be 0"),
        (
            "C3osControlPlaneTemplate",
            ("rollout", "strategy", "rollingUpdate", "maxSurge"),
            3,
            "maxSurge must be 0",
        ),
    ],
    ids=["even replicas", "seven replicas", "max surge 2", "template max surge 3"],
)
def test_bad_replicas_and_max_surge_are_refused_with_a_readable_message(
    k8s: Any, namespace: str, kind: str, path: tuple[str, ...], value: int, message: str
) -> None:
    body = desired(namespace)
    if kind == "C3osControlPlaneTemplate":
        body = {"apiVersion": body["apiVersion"], "kind": kind,
                "metadata": {"name": "c3os", "namespace": namespace},
                "spec": {"template": {"spec": copy.deepcopy(TEMPLATE_SPEC)}}}  # fmt: skip
        spec = body["spec"]["template"]["spec"]
    else:
        spec = body["spec"]
    for key in path[:-1]:
        spec = spec.setdefault(key, {})
    spec[path[-1]] = value
    with pytest.raises(ApiException) as refused:
        apply(k8s, body, dry_run=True)
    assert refused.value.status == 422
    assert message in str(refused.value.body)


def test_the_rollout_strategy_is_rolling_update_by_default_or_in_place(k8s: Any, namespace: str) -> None:
    body = desired(namespace)
    assert apply(k8s, body, dry_run=True)["spec"]["rollout"]["strategy"]["type"] == "RollingUpdate"
    body["spec"]["rollout"]["strategy"]["type"] = "InPlace"
    assert apply(k8s, body, dry_run=True)["spec"]["rollout"]["strategy"]["type"] == "InPlace"
    body["spec"]["rollout"]["strategy"]["type"] = "Recreate"
    with pytest.raises(ApiException) as refused:
        apply(k8s, body, dry_run=True)
    assert refused.value.status == 422
    causes = json.loads(refused.value.body)["details"]["causes"]
    assert {
        "reason": "FieldValueNotSupported",
        "message": 'Unsupported value: "Recreate": supported values: "RollingUpdate", "InPlace"',
        "field": "spec.rollout.strategy.type",
    } in causes
