from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from capi_c3os.capi.metadata import (
    CLUSTER_NAME_LABEL,
    PAUSED_ANNOTATION,
    api_group,
    is_control_plane_machine,
    is_externally_managed,
)
from capi_c3os.capi.owners import owner_cluster_name, owner_machine_name, owner_reference
from capi_c3os.capi.pause import is_paused, paused_condition

NOW = datetime(2026, 11, 26, 2, 0, 0, tzinfo=UTC)


def machine(
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    owners: list[dict[str, Any]] | None = None,
    generation: int = 4,
) -> dict[str, Any]:
    return {
        "apiVersion": "infrastructure.cluster.x-k8s.io/v1alpha1",
        "kind": "C3osMachine",
        "metadata": {
            "name": "m-1",
            "namespace": "edge",
            "generation": generation,
            "labels": labels or {},
            "annotations": annotations or {},
            "ownerReferences": owners or [],
        },
    }


def ref(kind: str, name: str, api_version: str = "cluster.x-k8s.io/v1beta2", **extra: Any) -> dict[str, Any]:
    return {"apiVersion": api_version, "kind": kind, "name": name, "uid": f"uid-{name}", **extra}


def cluster(paused: bool | None) -> dict[str, Any]:
    spec = {} if paused is None else {"paused": paused}
    return {
        "apiVersion": "cluster.x-k8s.io/v1beta2",
        "kind": "Cluster",
        "metadata": {"name": "c"},
        "spec": spec,
    }


# ---------------------------------------------------------------- owners


def test_owner_cluster_comes_from_the_cluster_name_label() -> None:
    assert owner_cluster_name(machine(labels={CLUSTER_NAME_LABEL: "edge-1"})) == "edge-1"


def test_owner_cluster_falls_back_to_an_owner_reference_of_kind_cluster() -> None:
    assert owner_cluster_name(machine(owners=[ref("Machine", "m"), ref("Cluster", "edge-2")])) == "edge-2"


def test_label_wins_over_owner_reference() -> None:
    obj = machine(labels={CLUSTER_NAME_LABEL: "by-label"}, owners=[ref("Cluster", "by-ref")])
    assert owner_cluster_name(obj) == "by-label"


def test_a_cluster_of_another_api_group_is_not_the_owner_cluster() -> None:
    assert owner_cluster_name(machine(owners=[ref("Cluster", "x", "example.com/v1")])) is None


def test_owner_reference_accepts_any_version_of_the_group() -> None:
    obj = machine(owners=[ref("Cluster", "old", "cluster.x-k8s.io/v1beta1")])
    assert owner_cluster_name(obj) == "old"


def test_no_owner_cluster_yet() -> None:
    assert owner_cluster_name(machine()) is None
    assert owner_cluster_name({}) is None


def test_owner_machine_prefers_the_controller_reference() -> None:
    obj = machine(owners=[ref("Machine", "other"), ref("Machine", "mine", controller=True)])
    assert owner_machine_name(obj) == "mine"
    assert owner_reference(obj, "Machine") == ref("Machine", "mine", controller=True)


def test_no_owner_machine_until_capi_adopts_the_object() -> None:
    assert owner_machine_name(machine(owners=[ref("Cluster", "c")])) is None


# ---------------------------------------------------------------- metadata


def test_api_group_of_core_and_named_groups() -> None:
    assert api_group("cluster.x-k8s.io/v1beta2") == "cluster.x-k8s.io"
    assert api_group("v1") == ""


def test_externally_managed_is_an_annotation() -> None:
    assert is_externally_managed(machine(annotations={"cluster.x-k8s.io/managed-by": ""}))
    assert not is_externally_managed(machine(labels={"cluster.x-k8s.io/managed-by": ""}))


def test_control_plane_machine_has_the_label_with_empty_value() -> None:
    assert is_control_plane_machine(machine(labels={"cluster.x-k8s.io/control-plane": ""}))
    assert not is_control_plane_machine(machine())


# ---------------------------------------------------------------- pause


def test_not_paused_without_cluster_or_annotation() -> None:
    assert not is_paused(machine(), None)
    assert not is_paused(machine(), cluster(False))
    assert not is_paused(machine(), cluster(None))


def test_paused_by_cluster_spec() -> None:
    assert is_paused(machine(), cluster(True))


def test_paused_by_annotation_with_any_value() -> None:
    assert is_paused(machine(annotations={PAUSED_ANNOTATION: ""}), None)
    assert is_paused(machine(annotations={PAUSED_ANNOTATION: "false"}), cluster(False))


def test_paused_annotation_on_the_cluster_does_not_pause_its_objects() -> None:
    # CAPI's rule (util/paused): only Cluster.spec.paused or the object's own annotation.
    annotated = cluster(False)
    annotated["metadata"]["annotations"] = {PAUSED_ANNOTATION: ""}
    assert not is_paused(machine(), annotated)


def test_paused_condition_names_every_cause_like_capi() -> None:
    cond = paused_condition(machine(annotations={PAUSED_ANNOTATION: ""}), cluster(True), NOW)
    assert cond["status"] == "True"
    assert cond["reason"] == "Paused"
    assert cond["message"] == (
        "Cluster spec.paused is set to true, C3osMachine has the cluster.x-k8s.io/paused annotation"
    )
    assert cond["observedGeneration"] == 4


def test_not_paused_condition() -> None:
    cond = paused_condition(machine(generation=7), cluster(False), NOW)
    assert (cond["type"], cond["status"], cond["reason"], cond["message"]) == (
        "Paused",
        "False",
        "NotPaused",
        "",
    )
    assert cond["observedGeneration"] == 7
