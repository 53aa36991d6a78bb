"""The generated CRDs on a real kube-apiserver: every kind round-trips, the server rejects
what the models reject (same table of bad objects), identity fields cannot change, and the
scale subresource works on C3osControlPlane."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from kubernetes import client as kc
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient

from capi_c3os.api import C3osCluster, C3osConfig, C3osControlPlane, C3osMachine, KubeObject
from tests.examples import BAD, ENROLLED_MACHINE, ENROLLED_SITE, GOOD, GOOD_LABELS, wire, with_change
from tests.support import condition, eventually

pytestmark = pytest.mark.integration


def _create(k8s: Any, namespace: str, obj: dict[str, Any], dry_run: bool = False) -> dict[str, Any]:
    model = _model_of(obj)
    body = copy.deepcopy(obj)
    body["metadata"]["namespace"] = namespace
    result: dict[str, Any] = kc.CustomObjectsApi(k8s).create_namespaced_custom_object(
        model.GROUP, model.VERSION, namespace, model.PLURAL, body, dry_run="All" if dry_run else None
    )
    return result


def _model_of(obj: dict[str, Any]) -> type[KubeObject]:
    return next(m for m in GOOD if obj["kind"] == m.KIND)


def _subset(given: Any, stored: Any) -> bool:
    """Everything we sent is stored as sent (the server may add defaults)."""
    if isinstance(given, dict):
        return isinstance(stored, dict) and all(_subset(v, stored.get(k)) for k, v in given.items())
    if isinstance(given, list):
        return (
            isinstance(stored, list)
            and len(given) == len(stored)
            and all(_subset(a, b) for a, b in zip(given, stored, strict=True))
        )
    return bool(given == stored)


@pytest.mark.parametrize("model", list(GOOD), ids=lambda m: m.KIND)
def test_every_kind_round_trips_through_the_server(k8s: Any, namespace: str, model: type[KubeObject]) -> None:
    sent = wire(model, GOOD[model])
    created = _create(k8s, namespace, sent)
    stored = kc.CustomObjectsApi(k8s).get_namespaced_custom_object(
        model.GROUP, model.VERSION, namespace, model.PLURAL, sent["metadata"]["name"]
    )
    assert stored["metadata"]["uid"] == created["metadata"]["uid"]
    assert _subset(sent["spec"], stored["spec"]), (sent["spec"], stored["spec"])
    # What the server holds (with its defaults) parses back into the model unchanged.
    assert _subset(model.model_validate(stored).to_wire()["spec"], stored["spec"])


@pytest.mark.parametrize("model", [m for m in GOOD if m.KIND.endswith("Template")], ids=lambda m: m.KIND)
def test_templates_accept_server_side_apply_dry_run(
    k8s: Any, namespace: str, model: type[KubeObject]
) -> None:
    # The ClusterClass topology controller dry-runs templates with server-side apply.
    body = wire(model, GOOD[model])
    body["metadata"]["namespace"] = namespace
    resource = DynamicClient(k8s).resources.get(api_version=body["apiVersion"], kind=body["kind"])
    result = resource.server_side_apply(
        body=body, namespace=namespace, field_manager="capi-topology", force_conflicts=True, dry_run="All"
    ).to_dict()
    assert result["spec"]["template"]["spec"]


@pytest.mark.parametrize(("what", "model", "path", "value"), BAD, ids=[case[0] for case in BAD])
def test_server_rejects_what_the_models_reject(
    k8s: Any, namespace: str, what: str, model: type[KubeObject], path: str, value: Any
) -> None:
    bad = with_change(wire(model, GOOD[model]), path, value)
    with pytest.raises(ApiException) as rejected:
        _create(k8s, namespace, bad, dry_run=True)
    assert rejected.value.status == 422, rejected.value.body
    assert "is invalid" in str(rejected.value.body)


@pytest.mark.parametrize("labels", GOOD_LABELS)
def test_server_accepts_kubernetes_node_labels_at_their_limits(
    k8s: Any, namespace: str, labels: dict[str, str]
) -> None:
    _create(
        k8s, namespace, with_change(wire(C3osConfig, GOOD[C3osConfig]), "spec.k3s.nodeLabels", labels), True
    )


def test_a_control_character_in_a_file_path_is_named_in_the_rejection(k8s: Any, namespace: str) -> None:
    bad = with_change(wire(C3osConfig, GOOD[C3osConfig]), "spec.files.0.path", "/etc/motd\n/etc/shadow")
    with pytest.raises(ApiException) as rejected:
        _create(k8s, namespace, bad, dry_run=True)
    assert "path must not contain control characters" in str(rejected.value.body)


@pytest.mark.parametrize(
    "value", ["--node-label=a=b c", "--node-name=$x", "--node-name=%H", "--x='y'", "--x=a\\b"]
)
def test_a_k3s_arg_systemd_would_split_or_expand_is_refused_with_the_reason(
    k8s: Any, namespace: str, value: str
) -> None:
    bad = with_change(wire(C3osConfig, GOOD[C3osConfig]), "spec.k3s.args", [value])
    with pytest.raises(ApiException) as rejected:
        _create(k8s, namespace, bad, dry_run=True)
    assert "unquoted in a systemd ExecStart= line" in str(rejected.value.body)
    _create(k8s, namespace, with_change(bad, "spec.k3s.args", ["--node-name=a.b-c_d:e/f"]), dry_run=True)


def test_provider_id_cannot_change_once_set(k8s: Any, namespace: str) -> None:
    api = kc.CustomObjectsApi(k8s)
    args = (C3osMachine.GROUP, C3osMachine.VERSION, namespace, C3osMachine.PLURAL, "x")
    _create(k8s, namespace, wire(C3osMachine, GOOD[C3osMachine]))
    api.patch_namespaced_custom_object(*args, {"spec": {"providerID": "c3os://default/x"}})
    with pytest.raises(ApiException) as rejected:
        api.patch_namespaced_custom_object(*args, {"spec": {"providerID": "c3os://default/y"}})
    assert rejected.value.status == 422
    assert "providerID" in str(rejected.value.body)
    assert api.get_namespaced_custom_object(*args)["spec"]["providerID"] == "c3os://default/x"


def test_provider_id_must_name_the_machine_itself(k8s: Any, namespace: str) -> None:
    # Issue 13: a providerID naming another object made the machine that object. CEL
    # sees the name (not the namespace, which the reconciler checks).
    victim = copy.deepcopy(wire(C3osMachine, GOOD[C3osMachine]))
    victim["metadata"]["name"] = "attacker"
    victim["spec"]["providerID"] = "c3os://badin/victim"
    with pytest.raises(ApiException) as rejected:
        _create(k8s, namespace, victim)
    assert rejected.value.status == 422
    assert "leave it unset, the controller sets it" in str(rejected.value.body)
    generated = copy.deepcopy(wire(C3osMachine, GOOD[C3osMachine]))
    generated["metadata"] = {"generateName": "victim-"}
    generated["spec"]["providerID"] = "c3os://badin/victim-"
    with pytest.raises(ApiException) as rejected:
        _create(k8s, namespace, generated)
    assert rejected.value.status == 422
    own = copy.deepcopy(wire(C3osMachine, GOOD[C3osMachine]))
    own["spec"]["providerID"] = f"c3os://{namespace}/{own['metadata']['name']}"
    assert _create(k8s, namespace, own)["spec"]["providerID"] == own["spec"]["providerID"]


def test_a_foreign_provider_id_stored_before_the_rule_can_still_be_removed(k8s: Any, namespace: str) -> None:
    # An object of an older release (or an attack planted before the upgrade) must not
    # be stuck: its finalizers have to come off (the reconciler releases it unharmed).
    ext = kc.ApiextensionsV1Api(k8s)
    crd_name = f"{C3osMachine.PLURAL}.{C3osMachine.GROUP}"
    args = (C3osMachine.GROUP, C3osMachine.VERSION, namespace, C3osMachine.PLURAL)
    api = kc.CustomObjectsApi(k8s)
    body = copy.deepcopy(wire(C3osMachine, GOOD[C3osMachine]))
    body["metadata"] = {"name": "planted", "namespace": namespace, "finalizers": ["example.com/hold"]}
    body["spec"]["providerID"] = "c3os://badin/victim"

    def set_root_rules(rules: Any) -> None:
        crd = ext.read_custom_resource_definition(crd_name)
        crd.spec.versions[0].schema.open_apiv3_schema.x_kubernetes_validations = rules
        ext.replace_custom_resource_definition(crd_name, crd)

    def accepted(dry_run: bool) -> bool:
        # The dry-run probe has a name of its own: once "planted" exists, a probe under that
        # name would meet AlreadyExists (409) whenever the rule is not in force yet.
        probe = copy.deepcopy(body)
        if dry_run:
            probe["metadata"]["name"] = "probe"
        try:
            api.create_namespaced_custom_object(*args, probe, dry_run="All" if dry_run else None)
        except ApiException as exc:
            assert exc.status == 422, exc.body
            return False
        return True

    rules = ext.read_custom_resource_definition(crd_name).spec.versions[0].schema.open_apiv3_schema
    rules = rules.x_kubernetes_validations
    set_root_rules(None)
    try:
        eventually(lambda: accepted(dry_run=False), "the object stored without the rule")
    finally:
        set_root_rules(rules)
    eventually(lambda: not accepted(dry_run=True), "the rule back")
    api.delete_namespaced_custom_object(*args, "planted")
    held = api.get_namespaced_custom_object(*args, "planted")
    held["metadata"]["finalizers"] = []
    api.replace_namespaced_custom_object(*args, "planted", held)
    eventually(lambda: not _exists(api, args, "planted"), "the planted object gone")


def _exists(api: kc.CustomObjectsApi, args: tuple[str, ...], name: str) -> bool:
    try:
        api.get_namespaced_custom_object(*args, name)
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


def test_scale_subresource_on_the_control_plane(k8s: Any, namespace: str) -> None:
    api = kc.CustomObjectsApi(k8s)
    m = C3osControlPlane
    args = (m.GROUP, m.VERSION, namespace, m.PLURAL, "x")
    _create(k8s, namespace, wire(m, GOOD[m]))
    selector = "cluster.x-k8s.io/cluster-name=c1,cluster.x-k8s.io/control-plane"
    api.patch_namespaced_custom_object_status(*args, {"status": {"replicas": 3, "selector": selector}})

    api.patch_namespaced_custom_object_scale(*args, {"spec": {"replicas": 5}})
    scale = api.get_namespaced_custom_object_scale(*args)
    assert scale["spec"]["replicas"] == 5
    assert scale["status"] == {"replicas": 3, "selector": selector}
    assert api.get_namespaced_custom_object(*args)["spec"]["replicas"] == 5

    with pytest.raises(ApiException) as rejected:  # etcd quorum: odd counts only
        api.patch_namespaced_custom_object_scale(*args, {"spec": {"replicas": 4}})
    assert rejected.value.status == 422
    assert api.get_namespaced_custom_object(*args)["spec"]["replicas"] == 5


def test_status_is_a_subresource(k8s: Any, namespace: str) -> None:
    api = kc.CustomObjectsApi(k8s)
    m = C3osMachine
    args = (m.GROUP, m.VERSION, namespace, m.PLURAL, "x")
    _create(k8s, namespace, wire(m, GOOD[m]))
    api.patch_namespaced_custom_object(*args, {"status": {"initialization": {"provisioned": True}}})
    assert "status" not in api.get_namespaced_custom_object(*args)
    status = {
        "initialization": {"provisioned": True},
        "addresses": [{"type": "InternalIP", "address": "192.0.2.10"}],
        "failureDomain": "lab",
        "conditions": [condition("Ready", "True", "Provisioned")],
    }
    api.patch_namespaced_custom_object_status(*args, {"status": status})
    assert _subset(status, api.get_namespaced_custom_object(*args)["status"])


def test_a_template_dry_run_does_not_create_anything(k8s: Any, namespace: str) -> None:
    m = next(m for m in GOOD if m.KIND == "C3osMachineTemplate")
    _create(k8s, namespace, wire(m, GOOD[m]), dry_run=True)
    assert (
        kc.CustomObjectsApi(k8s).list_namespaced_custom_object(m.GROUP, m.VERSION, namespace, m.PLURAL)[
            "items"
        ]
        == []
    )


def test_an_enrolled_site_and_machine_round_trip(k8s: Any, namespace: str) -> None:
    cluster = wire(C3osCluster, GOOD[C3osCluster])
    cluster["spec"]["sites"].append(ENROLLED_SITE)
    machine = with_change(
        wire(C3osMachine, GOOD[C3osMachine]), "spec.backend", {"enrolled": ENROLLED_MACHINE}
    )
    for obj in (cluster, machine):
        stored = _create(k8s, namespace, obj)
        assert _subset(obj["spec"], stored["spec"]), (obj["spec"], stored["spec"])
