"""A control plane whose servers come from another infrastructure provider's template.

The test makes up that provider: CRDs `FooMachineTemplate` and `FooMachine` in group
`infra.example.test`, served at v1alpha3 and v1beta1 and labelled for CAPI's contract
(`cluster.x-k8s.io/v1beta2: v1alpha3_v1beta1`), as any provider's CRDs are. The control
plane must clone the template at the version the label names as newest (as CAPI does),
and the real CAPI Machine controller must accept the result (it resolves the same
label to adopt the FooMachine)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client as kc

from capi_c3os.dev.manager import Manager
from capi_c3os.dev.mgmt import ManagementPlane, api_client, apply, wait_for_crds_established
from capi_c3os.dev.processes import free_port
from capi_c3os.dev.workload import create_cluster
from tests.support import eventually

pytestmark = pytest.mark.integration

GROUP = "infra.example.test"
CAPI = ("cluster.x-k8s.io", "v1beta2")


def foo_crd(kind: str) -> dict[str, Any]:
    plural = kind.lower() + "s"
    schema = {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}", "labels": {"cluster.x-k8s.io/v1beta2": "v1alpha3_v1beta1"}},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"kind": kind, "plural": plural, "singular": kind.lower(), "listKind": f"{kind}List"},
            "versions": [
                {"name": name, "served": True, "storage": name == "v1beta1", "schema": schema,
                 "subresources": {"status": {}}}
                for name in ("v1alpha3", "v1beta1")
            ],
        },
    }  # fmt: skip


@pytest.fixture
def foo_provider(mgmt: ManagementPlane) -> Iterator[None]:
    crds = [foo_crd("FooMachineTemplate"), foo_crd("FooMachine")]
    apply(mgmt.kubeconfig, crds)
    wait_for_crds_established(mgmt.kubeconfig, crds)
    yield
    with api_client(mgmt.kubeconfig) as client:
        ext = kc.ApiextensionsV1Api(client)
        for crd in crds:
            ext.delete_custom_resource_definition(crd["metadata"]["name"])


def test_servers_are_cloned_from_a_foreign_template_at_its_contract_version(
    k8s: Any, namespace: str, foo_provider: None, manager: Manager
) -> None:
    api = kc.CustomObjectsApi(k8s)
    api.create_namespaced_custom_object(GROUP, "v1alpha3", namespace, "foomachinetemplates", {
        "apiVersion": f"{GROUP}/v1alpha3", "kind": "FooMachineTemplate", "metadata": {"name": "foo-cp"},
        "spec": {"template": {"metadata": {"labels": {"foo": "bar"}}, "spec": {"flavour": "large"}}},
    })  # fmt: skip
    create_cluster(
        api, namespace, free_port(),
        machineTemplate={"spec": {"infrastructureRef": {
            "apiGroup": GROUP, "kind": "FooMachineTemplate", "name": "foo-cp"}}},
    )  # fmt: skip

    def foo_machines() -> list[dict[str, Any]]:
        return list(api.list_namespaced_custom_object(GROUP, "v1beta1", namespace, "foomachines")["items"])

    [foo] = eventually(foo_machines, "a FooMachine cloned from the template", timeout=120)
    meta = foo["metadata"]
    assert foo["spec"] == {"flavour": "large"}
    assert meta["labels"]["foo"] == "bar"
    assert meta["labels"]["cluster.x-k8s.io/control-plane"] == ""
    assert meta["annotations"]["cluster.x-k8s.io/cloned-from-name"] == "foo-cp"
    assert meta["annotations"]["cluster.x-k8s.io/cloned-from-groupkind"] == f"FooMachineTemplate.{GROUP}"
    # Created at the newest version the contract label names, not at ours (v1alpha1,
    # which this CRD does not even serve) nor at the older v1alpha3.
    [create] = [f for f in meta["managedFields"] if f["operation"] == "Update" or f["operation"] == "Create"][
        :1
    ]
    assert create["apiVersion"] == f"{GROUP}/v1beta1"

    [machine] = api.list_namespaced_custom_object(*CAPI, namespace, "machines")["items"]
    assert machine["spec"]["infrastructureRef"] == {
        "apiGroup": GROUP,
        "kind": "FooMachine",
        "name": meta["name"],
    }

    # The real CAPI Machine controller resolved the same contract and adopted the FooMachine.
    def adopted() -> bool:
        owners = api.get_namespaced_custom_object(GROUP, "v1beta1", namespace, "foomachines", meta["name"])[
            "metadata"].get("ownerReferences") or []  # fmt: skip
        return any(o["kind"] == "Machine" and o["name"] == machine["metadata"]["name"] for o in owners)

    eventually(adopted, "CAPI's Machine controller owning the FooMachine", timeout=120)
