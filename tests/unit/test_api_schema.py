"""The generated CRDs: structural, carrying every CAPI v1beta2 contract field with the
right type, with the CEL rules, markers and subresources we rely on."""

from __future__ import annotations

import json
import re

import pytest

from capi_c3os.api import KINDS, Kind, crd, crds
from capi_c3os.api.infrastructure import ONE_OF_THREE
from capi_c3os.api.schema import Schema, walk

CRDS = {kind.model.KIND: crd(kind) for kind in KINDS}


def schema_of(kind_name: str) -> Schema:
    schema: Schema = CRDS[kind_name]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def nodes_of(kind_name: str) -> dict[str, Schema]:
    return dict(walk(schema_of(kind_name)))


def all_nodes() -> list[tuple[str, str, Schema]]:
    return [(name, path, node) for name in CRDS for path, node in walk(schema_of(name))]


def test_all_nine_kinds_have_a_crd_named_plural_dot_group() -> None:
    assert sorted(CRDS) == sorted(
        [
            "C3osCluster",
            "C3osClusterTemplate",
            "C3osMachine",
            "C3osMachineTemplate",
            "C3osHost",
            "C3osConfig",
            "C3osConfigTemplate",
            "C3osControlPlane",
            "C3osControlPlaneTemplate",
        ]
    )
    for kind in KINDS:
        obj = CRDS[kind.model.KIND]
        assert obj["metadata"]["name"] == f"{kind.model.PLURAL}.{kind.model.GROUP}"
        assert obj["spec"]["names"]["plural"] == kind.model.PLURAL
        assert obj["spec"]["scope"] == "Namespaced"


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.model.KIND)
def test_crd_carries_the_v1beta2_contract_label_and_one_storage_version(kind: Kind) -> None:
    obj = CRDS[kind.model.KIND]
    assert obj["metadata"]["labels"]["cluster.x-k8s.io/v1beta2"] == "v1alpha1"
    (version,) = obj["spec"]["versions"]
    assert version["name"] == "v1alpha1"
    assert version["served"] is True
    assert version["storage"] is True
    assert obj["spec"]["group"].endswith(".cluster.x-k8s.io")


def test_no_ref_defs_title_or_type_inside_any_of() -> None:
    text = json.dumps(crds())
    assert "$ref" not in text
    assert "$defs" not in text
    for kind, path, node in all_nodes():
        assert "title" not in node, f"{kind}{path}"
        for branch in node.get("anyOf", []):
            assert set(branch) <= {"type"}, f"{kind}{path}: {branch}"
            assert node.get("x-kubernetes-int-or-string"), f"{kind}{path}: anyOf outside int-or-string"


def test_every_node_is_structural() -> None:
    for kind, path, node in all_nodes():
        assert (
            "type" in node
            or node.get("x-kubernetes-int-or-string")
            or node.get("x-kubernetes-preserve-unknown-fields")
        ), f"{kind}{path} has no type"
        assert not ("properties" in node and "additionalProperties" in node), f"{kind}{path}"
        assert node.get("additionalProperties") is not True, f"{kind}{path}"
        assert "uniqueItems" not in node and "nullable" not in node, f"{kind}{path}"
        if node.get("type") == "array":
            assert "items" in node, f"{kind}{path}"


def test_root_metadata_is_left_to_the_api_server() -> None:
    for kind in CRDS:
        assert schema_of(kind)["properties"]["metadata"] == {"type": "object"}


def test_every_field_has_a_description() -> None:
    # They are what `kubectl explain` shows.
    for kind, path, node in all_nodes():
        if path in ("", ".metadata") or path.endswith(("[]", "{}")):
            continue  # list items and map values are not fields
        assert node.get("description"), f"{kind}{path} has no description"
        assert "\n" not in node["description"].strip("\n").replace("\n\n", ""), f"{kind}{path}"


def test_preserve_unknown_fields_only_on_yip_stage_steps() -> None:
    free_form = sorted(
        f"{kind}{path}"
        for kind, path, node in all_nodes()
        if node.get("x-kubernetes-preserve-unknown-fields")
    )
    assert free_form == [
        "C3osConfig.spec.stages{}[]",
        "C3osConfigTemplate.spec.template.spec.stages{}[]",
        "C3osControlPlane.spec.serverConfig.stages{}[]",
        "C3osControlPlaneTemplate.spec.template.spec.serverConfig.stages{}[]",
    ]


def test_patterns_are_re2_compatible() -> None:
    # RE2 has no look-around or back-references; Python's re accepts both.
    for kind, path, node in all_nodes():
        pattern = node.get("pattern")
        if pattern is None:
            continue
        re.compile(pattern)
        assert not re.search(r"\(\?[=!<]|\\[1-9]", pattern), f"{kind}{path}: {pattern}"


# --- contract fields --------------------------------------------------------------------

CONDITIONS = {
    ".status.conditions": "array",
    ".status.conditions[].type": "string",
    ".status.conditions[].status": "string",
    ".status.conditions[].reason": "string",
    ".status.conditions[].message": "string",
    ".status.conditions[].lastTransitionTime": "string",
    ".status.conditions[].observedGeneration": "integer",
    ".status.observedGeneration": "integer",
}

CONTRACT_FIELDS: dict[str, dict[str, str]] = {
    "C3osCluster": {
        ".spec.controlPlaneEndpoint": "object",
        ".spec.controlPlaneEndpoint.host": "string",
        ".spec.controlPlaneEndpoint.port": "integer",
        ".status.initialization.provisioned": "boolean",
        ".status.failureDomains": "array",
        ".status.failureDomains[].name": "string",
        ".status.failureDomains[].controlPlane": "boolean",
        ".status.failureDomains[].attributes": "object",
        ".status.failureDomains[].attributes{}": "string",
        **CONDITIONS,
    },
    "C3osMachine": {
        ".spec.providerID": "string",
        ".status.initialization.provisioned": "boolean",
        ".status.addresses": "array",
        ".status.addresses[].type": "string",
        ".status.addresses[].address": "string",
        ".status.failureDomain": "string",
        **CONDITIONS,
    },
    "C3osMachineTemplate": {
        ".spec.template.metadata.labels": "object",
        ".spec.template.metadata.annotations": "object",
        ".spec.template.spec.backend": "object",
        ".status.capacity": "object",
        ".status.nodeInfo.architecture": "string",
        ".status.nodeInfo.operatingSystem": "string",
    },
    "C3osClusterTemplate": {
        ".spec.template.metadata.labels": "object",
        ".spec.template.spec.sites": "array",
    },
    "C3osConfig": {
        ".status.dataSecretName": "string",
        ".status.initialization.dataSecretCreated": "boolean",
        **CONDITIONS,
    },
    "C3osConfigTemplate": {
        ".spec.template.metadata.labels": "object",
        ".spec.template.spec.k3s": "object",
    },
    "C3osControlPlane": {
        ".spec.replicas": "integer",
        ".spec.version": "string",
        ".spec.rollout.after": "string",
        ".spec.machineTemplate.metadata.labels": "object",
        ".spec.machineTemplate.metadata.annotations": "object",
        ".spec.machineTemplate.spec.infrastructureRef.apiGroup": "string",
        ".spec.machineTemplate.spec.infrastructureRef.kind": "string",
        ".spec.machineTemplate.spec.infrastructureRef.name": "string",
        ".spec.machineTemplate.spec.deletion.nodeDrainTimeoutSeconds": "integer",
        ".spec.machineTemplate.spec.deletion.nodeVolumeDetachTimeoutSeconds": "integer",
        ".spec.machineTemplate.spec.deletion.nodeDeletionTimeoutSeconds": "integer",
        ".status.selector": "string",
        ".status.replicas": "integer",
        ".status.readyReplicas": "integer",
        ".status.availableReplicas": "integer",
        ".status.upToDateReplicas": "integer",
        ".status.versions": "array",
        ".status.versions[].version": "string",
        ".status.versions[].replicas": "integer",
        ".status.initialization.controlPlaneInitialized": "boolean",
        **CONDITIONS,
    },
    "C3osControlPlaneTemplate": {
        ".spec.template.metadata.labels": "object",
        ".spec.template.spec.machineTemplate.spec.deletion.nodeDrainTimeoutSeconds": "integer",
        ".spec.template.spec.serverConfig.k3s.server": "object",
    },
}


@pytest.mark.parametrize("kind_name", sorted(CONTRACT_FIELDS))
def test_contract_fields_are_present_with_the_right_type(kind_name: str) -> None:
    nodes = nodes_of(kind_name)
    for path, expected in CONTRACT_FIELDS[kind_name].items():
        assert path in nodes, f"{kind_name}{path} missing"
        assert nodes[path].get("type") == expected, (
            f"{kind_name}{path}: {nodes[path].get('type')} != {expected}"
        )


@pytest.mark.parametrize("kind_name", ["C3osCluster", "C3osMachine", "C3osConfig", "C3osControlPlane"])
def test_conditions_are_a_list_map_keyed_by_type_in_capi_shape(kind_name: str) -> None:
    conditions = nodes_of(kind_name)[".status.conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    item = conditions["items"]
    assert set(item["required"]) == {"type", "status", "lastTransitionTime", "reason"}
    assert item["properties"]["status"]["enum"] == ["True", "False", "Unknown"]
    assert item["properties"]["lastTransitionTime"]["format"] == "date-time"


def test_failure_domains_are_a_list_map_keyed_by_name() -> None:
    domains = nodes_of("C3osCluster")[".status.failureDomains"]
    assert domains["x-kubernetes-list-type"] == "map"
    assert domains["x-kubernetes-list-map-keys"] == ["name"]
    assert domains["items"]["required"] == ["name"]


def test_address_types_are_capis() -> None:
    address_type = nodes_of("C3osMachine")[".status.addresses[].type"]
    assert address_type["enum"] == ["Hostname", "ExternalIP", "InternalIP", "ExternalDNS", "InternalDNS"]


def test_capacity_values_are_int_or_string_quantities() -> None:
    value = nodes_of("C3osMachineTemplate")[".status.capacity{}"]
    assert value["x-kubernetes-int-or-string"] is True
    assert value["anyOf"] == [{"type": "integer"}, {"type": "string"}]
    assert "type" not in value


def test_status_subresource_on_every_kind_with_status_and_scale_on_the_control_plane() -> None:
    for kind in KINDS:
        subresources = CRDS[kind.model.KIND]["spec"]["versions"][0].get("subresources", {})
        is_template = kind.model.KIND.endswith("Template")
        if not is_template:
            assert subresources.get("status") == {}, kind.model.KIND
        has_status = "status" in schema_of(kind.model.KIND)["properties"]
        assert ("status" in subresources) == has_status, kind.model.KIND
        assert ("scale" in subresources) == (kind.model.KIND == "C3osControlPlane")
    scale = CRDS["C3osControlPlane"]["spec"]["versions"][0]["subresources"]["scale"]
    assert scale == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }


def test_printer_columns_point_at_existing_fields() -> None:
    for kind_name, obj in CRDS.items():
        nodes = nodes_of(kind_name)
        columns = obj["spec"]["versions"][0]["additionalPrinterColumns"]
        assert columns[-1]["name"] == "Age"
        for column in columns:
            path = column["jsonPath"]
            if path.startswith(".metadata"):
                continue
            plain = re.sub(r"\[\?\(.*?\)\]", "[]", path)
            assert plain in nodes, f"{kind_name}: column {column['name']} -> {path}"


# --- CEL --------------------------------------------------------------------------------


def rules_at(kind_name: str, path: str) -> list[str]:
    return [rule["rule"] for rule in nodes_of(kind_name)[path].get("x-kubernetes-validations", [])]


def test_backend_and_site_kind_are_one_of() -> None:
    assert ONE_OF_THREE in rules_at("C3osMachine", ".spec.backend")
    assert ONE_OF_THREE in rules_at("C3osMachineTemplate", ".spec.template.spec.backend")
    assert ONE_OF_THREE in rules_at("C3osCluster", ".spec.sites[]")


def test_provider_id_is_immutable_once_set() -> None:
    rule = "!has(oldSelf.providerID) || (has(self.providerID) && self.providerID == oldSelf.providerID)"
    assert rule in rules_at("C3osMachine", ".spec")


def test_control_plane_replicas_must_be_odd() -> None:
    replicas = nodes_of("C3osControlPlane")[".spec.replicas"]
    assert replicas["minimum"] == 1 and replicas["maximum"] == 5
    assert "self % 2 == 1" in rules_at("C3osControlPlane", ".spec.replicas")


def _touched_fields(rule: str) -> set[str]:
    return set(re.findall(r"(?:self|oldSelf|[a-z])\.([A-Za-z]+)", rule))


def test_everything_cel_touches_is_bounded() -> None:
    # The API server estimates rule cost from maxLength/maxItems; unbounded strings or
    # lists in a rule can push a CRD over the cost budget.
    for kind, path, node in all_nodes():
        for validation in node.get("x-kubernetes-validations", []):
            rule = validation["rule"]
            assert validation["message"], f"{kind}{path}"
            target = node["items"] if node.get("type") == "array" and "self.all(" in rule else node
            for field in _touched_fields(rule):
                child = _find_field(target, field)
                if child is None:
                    continue
                if child.get("type") == "string" and "enum" not in child:
                    assert "maxLength" in child, f"{kind}{path}: {field} in {rule!r} has no maxLength"
                if child.get("type") == "array":
                    assert "maxItems" in child, f"{kind}{path}: {field} in {rule!r} has no maxItems"
            if node.get("type") == "array":
                assert "maxItems" in node, f"{kind}{path}: rule on an unbounded list"
                if node["items"].get("type") == "string":
                    assert "maxLength" in node["items"], f"{kind}{path}[]"


def _find_field(node: Schema, field: str) -> Schema | None:
    properties: dict[str, Schema] = node.get("properties", {})
    if field in properties:
        return properties[field]
    item_properties: dict[str, Schema] = node.get("items", {}).get("properties", {})
    return item_properties.get(field)


def test_no_clusterctl_variables_in_crds() -> None:
    # clusterctl substitutes ${VAR} (and turns $$ into $) in whole components files.
    text = json.dumps(crds())
    assert "${" not in text
    assert "$$" not in text
