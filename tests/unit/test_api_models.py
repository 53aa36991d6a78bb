"""The models parse what the API server holds, dump it back in wire form, and reject
what the CRD's validation rejects."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from capi_c3os.api import (
    KINDS,
    C3osCluster,
    C3osConfig,
    C3osControlPlane,
    C3osMachine,
    KubeObject,
)
from capi_c3os.api.base import ApiModel, camel
from capi_c3os.api.common import Condition
from tests.examples import (
    BAD,
    CONFIG_SPEC,
    CONTROL_PLANE_SPEC,
    ENROLLED_MACHINE,
    ENROLLED_SITE,
    GOOD,
    GOOD_LABELS,
    MACHINE_SPEC,
    wire,
    with_change,
)


def test_every_kind_has_a_good_example() -> None:
    assert set(GOOD) == {kind.model for kind in KINDS}


@pytest.mark.parametrize("model", list(GOOD), ids=lambda m: m.KIND)
def test_good_examples_parse_and_dump_back_unchanged(model: type[KubeObject]) -> None:
    obj = wire(model, GOOD[model])
    parsed = model.model_validate(obj)
    dumped = parsed.to_wire()
    assert dumped["apiVersion"] == obj["apiVersion"]
    assert dumped["kind"] == obj["kind"]
    assert dumped["metadata"] == obj["metadata"]
    assert _subset(obj["spec"], dumped["spec"]), "every field given comes back under the same name"


def _subset(given: Any, dumped: Any) -> bool:
    if isinstance(given, dict):
        return isinstance(dumped, dict) and all(
            k in dumped and _subset(v, dumped[k]) for k, v in given.items()
        )
    if isinstance(given, list):
        return isinstance(dumped, list) and len(given) == len(dumped) and all(map(_subset, given, dumped))
    return bool(given == dumped)


def test_objects_read_from_the_server_keep_unknown_metadata() -> None:
    obj = wire(C3osMachine, GOOD[C3osMachine])
    obj["metadata"].update(
        {
            "uid": "1234",
            "resourceVersion": "7",
            "generation": 2,
            "creationTimestamp": "2025-01-01T00:00:00Z",
            "managedFields": [{"manager": "kubectl"}],
            "ownerReferences": [
                {"apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Machine", "name": "m", "uid": "u"}
            ],
        }
    )
    obj["status"] = {
        "initialization": {"provisioned": True},
        "addresses": [{"type": "InternalIP", "address": "10.0.0.5"}],
        "failureDomain": "lab",
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "Provisioned",
                "lastTransitionTime": "2025-01-01T00:00:00Z",
            }
        ],
        "observedGeneration": 2,
    }
    parsed = C3osMachine.model_validate(obj)
    assert parsed.metadata.generation == 2
    assert parsed.status is not None and parsed.status.initialization is not None
    assert parsed.status.initialization.provisioned is True
    dumped = parsed.to_wire()
    assert dumped["metadata"] == obj["metadata"]
    assert dumped["status"]["conditions"][0]["lastTransitionTime"] == "2025-01-01T00:00:00Z"
    assert dumped["status"]["conditions"][0]["message"] == ""


def test_wire_names_are_kubernetes_camel_case() -> None:
    assert camel("k3s") == "k3s"
    assert camel("p2p") == "p2p"
    assert camel("up_to_date_replicas") == "upToDateReplicas"
    machine = C3osMachine.model_validate(wire(C3osMachine, GOOD[C3osMachine])).to_wire()
    assert {"memoryMiB", "diskGiB"} <= set(machine["spec"])
    machine_with_id = C3osMachine.model_validate(
        wire(C3osMachine, {"spec": {**MACHINE_SPEC, "providerID": "c3os://default/x"}})
    )
    assert machine_with_id.spec.provider_id == "c3os://default/x"
    assert machine_with_id.to_wire()["spec"]["providerID"] == "c3os://default/x"


def test_models_accept_python_names_too() -> None:
    condition = Condition(type="Ready", status="True", reason="Done", last_transition_time=datetime.now(UTC))
    assert condition.to_wire()["lastTransitionTime"].endswith("Z")


def test_all_wire_names_look_like_kubernetes_fields() -> None:
    seen: set[type[ApiModel]] = set()

    def visit(model: type[ApiModel]) -> None:
        if model in seen:
            return
        seen.add(model)
        for name, field in model.model_fields.items():
            alias = field.alias or name
            assert re.fullmatch(r"[a-z][A-Za-z0-9]*", alias), f"{model.__name__}.{name} -> {alias}"
            for arg in _model_args(field.annotation):
                visit(arg)

    for kind in KINDS:
        visit(kind.model)
    assert len(seen) > 40


def _model_args(annotation: Any) -> list[type[ApiModel]]:
    if isinstance(annotation, type) and issubclass(annotation, ApiModel):
        return [annotation]
    found: list[type[ApiModel]] = []
    for arg in getattr(annotation, "__args__", ()):
        found.extend(_model_args(arg))
    return found


# --- what must be rejected ----------------------------------------------------------------


@pytest.mark.parametrize(("what", "model", "path", "value"), BAD, ids=[case[0] for case in BAD])
def test_models_reject_invalid_objects(what: str, model: type[KubeObject], path: str, value: Any) -> None:
    obj = with_change(wire(model, GOOD[model]), path, value)
    with pytest.raises(ValidationError):
        model.model_validate(obj)


def test_user_passwords_cannot_be_stored() -> None:
    spec = with_change(CONFIG_SPEC, "users.0.passwd", "secret")
    parsed = C3osConfig.model_validate(wire(C3osConfig, {"spec": spec}))
    assert "passwd" not in parsed.to_wire()["spec"]["users"][0]
    assert "passwd" not in C3osConfig.model_json_schema(by_alias=True)["$defs"]["User"]["properties"]


def test_defaults_match_the_documented_ones() -> None:
    machine = C3osMachine.model_validate(
        wire(C3osMachine, {"spec": {"backend": {"ironic": {}}, "image": {"volume": "base"}}})
    )
    assert machine.spec.backend.ironic is not None
    assert machine.spec.backend.ironic.automated_cleaning is True
    assert machine.spec.backend.ironic.resource_class == "baremetal"
    assert machine.spec.image.format == "qcow2"
    assert (machine.spec.cpus, machine.spec.memory_mib, machine.spec.disk_gib) == (2, 4096, 20)
    cluster = C3osCluster.model_validate(
        wire(C3osCluster, {"spec": {"sites": [{"name": "a", "ironic": {"endpoint": "https://i"}}]}})
    )
    site = cluster.spec.site(None)
    assert site is not None and site.ironic is not None
    assert site.ironic.insecure_skip_verify is False
    assert site.control_plane is True
    assert cluster.spec.site("missing") is None
    control_plane = C3osControlPlane.model_validate(
        wire(C3osControlPlane, {"spec": with_change(CONTROL_PLANE_SPEC, "replicas", None)})
    )
    assert control_plane.spec.replicas == 1


def test_the_config_spec_is_shared_by_the_control_plane() -> None:
    control_plane = C3osControlPlane.model_validate(wire(C3osControlPlane, GOOD[C3osControlPlane]))
    config = C3osConfig.model_validate(wire(C3osConfig, {"spec": control_plane.spec.server_config.to_wire()}))
    assert config.spec == control_plane.spec.server_config


@pytest.mark.parametrize("labels", GOOD_LABELS)
def test_kubernetes_label_keys_and_values_are_accepted(labels: dict[str, str]) -> None:
    spec = with_change(CONFIG_SPEC, "k3s.nodeLabels", labels)
    parsed = C3osConfig.model_validate(wire(C3osConfig, {"spec": spec}))
    assert parsed.spec.k3s is not None and parsed.spec.k3s.node_labels == labels


@pytest.mark.parametrize(
    "ref",
    [
        "quay.io/kairos/ubuntu:24.04-standard-amd64-generic-v3.5.0-k3sv1.34.1-k3s1",
        "registry.example:5000/edge/c3os@sha256:" + "a" * 64,
        "registry.example/edge/c3os:v1@sha256:" + "b" * 64,
        "c3os:v1",
    ],
)
def test_an_oci_image_reference_with_a_tag_or_digest_is_accepted(ref: str) -> None:
    image = {"volume": "base", "oci": ref}
    machine = C3osMachine.model_validate(
        wire(C3osMachine, {"spec": {"backend": {"libvirt": {}}, "image": image}})
    )
    assert machine.spec.image.oci == ref


@pytest.mark.parametrize(
    "ref",
    [
        "quay.io/kairos/ubuntu",  # no tag: an implied :latest changes under the machine
        "Quay.io/kairos/ubuntu:v1",
        "quay.io/kairos/ubuntu:v1 --debug",
        "oci:quay.io/kairos/ubuntu:v1",
        "quay.io/kairos/ubuntu@sha256:abc",
    ],
)
def test_an_oci_image_reference_without_tag_or_malformed_is_refused(ref: str) -> None:
    image = {"volume": "base", "oci": ref}
    with pytest.raises(ValidationError):
        C3osMachine.model_validate(wire(C3osMachine, {"spec": {"backend": {"libvirt": {}}, "image": image}}))


def test_an_enrolled_site_and_machine_parse() -> None:
    cluster = wire(C3osCluster, GOOD[C3osCluster])
    cluster["spec"]["sites"].append(ENROLLED_SITE)
    site = C3osCluster.model_validate(cluster).spec.site("shop")
    assert site is not None and site.enrolled is not None and site.enrolled.acceptance == "Token"
    machine = with_change(
        wire(C3osMachine, GOOD[C3osMachine]), "spec.backend", {"enrolled": ENROLLED_MACHINE}
    )
    enrolled = C3osMachine.model_validate(machine).spec.backend.enrolled
    assert enrolled is not None and enrolled.host_selector is not None
    labels = {"host.c3os.io/arch": "amd64", "host.c3os.io/memory-gib": "16", "host.c3os.io/tpm": "true"}
    assert enrolled.host_selector.matches(labels)
    assert not enrolled.host_selector.matches({**labels, "host.c3os.io/memory-gib": "8"})
    assert not enrolled.host_selector.matches({k: v for k, v in labels.items() if k != "host.c3os.io/tpm"})


def test_a_providerid_may_name_an_enrolled_host_of_the_machines_own_namespace() -> None:
    host = "host-4c4c4544-0031-4a10-8044-b4c04f4a3032"
    own = wire(C3osMachine, {"spec": {**MACHINE_SPEC, "providerID": f"c3os://default/{host}/x"}})
    assert C3osMachine.model_validate(own).spec.provider_id == f"c3os://default/{host}/x"
    with pytest.raises(ValidationError, match="providerID"):
        C3osMachine.model_validate(with_change(own, "spec.providerID", f"c3os://other/{host}/x"))
