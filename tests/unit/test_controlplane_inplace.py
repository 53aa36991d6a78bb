"""Which outdated servers a C3osControlPlane upgrades in place (A/B) and which it replaces,
and why (plain objects, no server)."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from capi_c3os.api.controlplane import C3osControlPlaneSpec
from capi_c3os.reconcilers.controlplane_context import IN_PLACE_ANNOTATION, InPlaceTarget, in_place_target
from capi_c3os.reconcilers.controlplane_inplace import in_place_blocker, oci_version_mismatch
from capi_c3os.reconcilers.controlplane_rollout import (
    INFRA_TEMPLATE_ANNOTATION,
    SERVER_CONFIG_ANNOTATION,
    outdated_because,
    server_config_hash,
)

VERSION, NEXT = "v1.33.4+k3s1", "v1.34.1+k3s1"
OLD_OCI = "registry.c3os.test/c3os-standin:k3sv1.33.4-k3s1"
NEW_OCI = "registry.c3os.test/c3os-standin:k3sv1.34.1-k3s1"


def image(tag: str, oci: str | None) -> dict[str, Any]:
    found: dict[str, Any] = {"url": f"https://images.example/c3os-{tag}.qcow2", "checksum": "a" * 64}
    if oci:
        found["oci"] = oci
    return found


def machine_spec(oci: str | None = OLD_OCI, tag: str = "k3sv1.33.4-k3s1", **changes: Any) -> dict[str, Any]:
    return {
        "backend": {"libvirt": {}},
        "image": image(tag, oci),
        "cpus": 2,
        "memoryMiB": 4096,
        "diskGiB": 20,
        **changes,
    }


def template(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"template": {"spec": spec}}}


TEMPLATE_REF = {"apiGroup": "infrastructure.cluster.x-k8s.io", "kind": "C3osMachineTemplate"}


def cp_spec(template_name: str = "cp-v2", version: str = NEXT, **changes: Any) -> C3osControlPlaneSpec:
    return C3osControlPlaneSpec.model_validate({
        "replicas": 3, "version": version,
        "machineTemplate": {"spec": {"infrastructureRef": {**TEMPLATE_REF, "name": template_name}}},
        "rollout": {"strategy": {"type": "InPlace"}},
        **changes,
    })  # fmt: skip


def server(made_with: C3osControlPlaneSpec, *, kind: str = "C3osMachine") -> dict[str, Any]:
    """A server Machine as the control plane made it from `made_with`."""
    return {
        "metadata": {
            "name": "shop-cp-abcde",
            "creationTimestamp": (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "annotations": {
                SERVER_CONFIG_ANNOTATION: server_config_hash(made_with),
                INFRA_TEMPLATE_ANNOTATION: made_with.machine_template.spec.infrastructure_ref.name,
            },
        },
        "spec": {
            "version": made_with.version,
            "infrastructureRef": {
                "apiGroup": "infrastructure.cluster.x-k8s.io", "kind": kind, "name": "shop-cp-abcde"},
        },
    }  # fmt: skip


OLD = cp_spec("cp-v1", VERSION)
INFRA = {
    "metadata": {"name": "shop-cp-abcde"},
    "spec": {**machine_spec(), "providerID": "c3os://ns/shop-cp-abcde"},
}
NEW_TEMPLATE = template("cp-v2", machine_spec(NEW_OCI, "k3sv1.34.1-k3s1"))


def test_a_new_version_and_image_with_an_oci_reference_is_upgraded_in_place() -> None:
    spec = cp_spec()
    machine = server(OLD)
    assert outdated_because(spec, machine)
    assert in_place_blocker(spec, machine, INFRA, NEW_TEMPLATE) is None


def test_a_new_image_of_the_same_version_is_upgraded_in_place() -> None:
    spec = cp_spec(version=VERSION)
    assert in_place_blocker(spec, server(OLD), INFRA, NEW_TEMPLATE) is None


def test_a_machine_made_before_images_named_an_oci_reference_is_upgraded_in_place() -> None:
    infra = {**INFRA, "spec": {**machine_spec(oci=None)}}
    assert in_place_blocker(cp_spec(), server(OLD), infra, NEW_TEMPLATE) is None


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"cpus": 4}, "cpus"),
        ({"diskGiB": 40}, "diskGiB"),
        ({"memoryMiB": 8192}, "memoryMiB"),
        ({"backend": {"libvirt": {"firmware": "uefi"}}}, "backend"),
        ({"backend": {"ironic": {}}}, "backend"),
        ({"network": {"interfaces": [{"dhcp4": True}], "nameservers": ["192.0.2.53"]}}, "network"),
    ],
    ids=["cpus", "disk", "memory", "firmware", "bare metal", "network"],
)
def test_anything_but_image_and_version_replaces_the_server_naming_what_differs(
    change: dict[str, Any], named: str
) -> None:
    desired = template("cp-v2", {**machine_spec(NEW_OCI, "k3sv1.34.1-k3s1"), **change})
    why = in_place_blocker(cp_spec(), server(OLD), INFRA, desired)
    assert why == (
        f"{named} of template cp-v2 differ from its C3osMachine's "
        "(in place only the image and the version change)"
    )


def test_a_template_image_without_an_oci_reference_replaces_the_server() -> None:
    desired = template("cp-v2", machine_spec(None, "k3sv1.34.1-k3s1"))
    why = in_place_blocker(cp_spec(), server(OLD), INFRA, desired)
    assert (
        why
        == "the image of template cp-v2 has no oci reference (image.oci), which an in-place upgrade installs"
    )


def test_a_new_version_on_the_image_the_server_runs_replaces_it() -> None:
    # Only the version changed: an A/B upgrade to the same release cannot change k3s.
    spec = cp_spec("cp-v1")
    why = in_place_blocker(spec, server(OLD), INFRA, template("cp-v1", machine_spec()))
    assert why == f"it runs the image of template cp-v1 ({OLD_OCI}) already"


def test_a_changed_server_config_replaces_the_server() -> None:
    spec = cp_spec(serverConfig={"k3s": {"args": ["--disable=traefik"]}})
    why = in_place_blocker(spec, server(OLD), INFRA, NEW_TEMPLATE)
    assert why == "its server config changed (k3s is configured when a machine is installed)"


def test_a_passed_rollout_after_replaces_the_server() -> None:
    after = datetime.now(UTC) - timedelta(minutes=1)
    spec = cp_spec(rollout={"after": after.isoformat(), "strategy": {"type": "InPlace"}})
    why = in_place_blocker(spec, server(OLD), INFRA, NEW_TEMPLATE)
    assert why is not None and why.startswith("rollout.after ") and "replaces servers" in why


def test_a_foreign_infrastructure_machine_is_replaced() -> None:
    why = in_place_blocker(cp_spec(), server(OLD, kind="DockerMachine"), INFRA, NEW_TEMPLATE)
    assert why == "its infrastructure machine is a DockerMachine, not a C3osMachine"


def test_missing_objects_replace_the_server_with_the_name_of_what_is_missing() -> None:
    assert in_place_blocker(cp_spec(), server(OLD), None, NEW_TEMPLATE) == (
        "its C3osMachine shop-cp-abcde was not found"
    )
    assert in_place_blocker(cp_spec(), server(OLD), INFRA, None) == "C3osMachineTemplate cp-v2 was not found"


def test_the_provider_id_is_no_difference() -> None:
    infra = copy.deepcopy(INFRA)
    infra["spec"].pop("providerID")
    assert in_place_blocker(cp_spec(), server(OLD), infra, NEW_TEMPLATE) is None


KEY = b"k" * 32


def annotated(value: str, name: str = "shop-cp-abcde", uid: str = "uid-1") -> dict[str, Any]:
    return {"metadata": {"namespace": "shop", "name": name, "uid": uid,
                         "annotations": {IN_PLACE_ANNOTATION: value}}}  # fmt: skip


def test_the_target_of_an_upgrade_survives_its_annotation() -> None:
    target = InPlaceTarget(image=NEW_OCI, version=NEXT, template="cp-v2")
    machine = annotated("")
    machine["metadata"]["annotations"][IN_PLACE_ANNOTATION] = target.to_annotation(KEY, machine)
    assert in_place_target(machine, KEY) == target


@pytest.mark.parametrize("value", ["", "not json", "[]", '{"image": "x"}'])
def test_an_annotation_not_ours_to_read_is_no_upgrade(value: str) -> None:
    assert in_place_target(annotated(value), KEY) is None


def test_a_target_not_signed_for_this_machine_by_this_key_is_no_upgrade() -> None:
    target = InPlaceTarget(image=NEW_OCI, version=NEXT, template="cp-v2")
    signed = target.to_annotation(KEY, annotated(""))
    altered = signed.replace(NEW_OCI, "registry.evil.test/root:latest")
    assert "registry.evil.test" in altered
    assert in_place_target(annotated(altered), KEY) is None
    assert in_place_target(annotated(signed, name="shop-cp-other"), KEY) is None
    assert in_place_target(annotated(signed, uid="uid-2"), KEY) is None, "a Machine recreated by name"
    assert in_place_target(annotated(signed), b"o" * 32) is None, "another manager's key"
    unsigned = json.dumps({"image": NEW_OCI, "template": "cp-v2", "version": NEXT})
    assert in_place_target(annotated(unsigned), KEY) is None


def test_the_strategy_type_defaults_to_rolling_update() -> None:
    spec = C3osControlPlaneSpec.model_validate({
        "version": VERSION, "rollout": {"strategy": {}},
        "machineTemplate": {"spec": {"infrastructureRef": {**TEMPLATE_REF, "name": "t"}}},
    })  # fmt: skip
    assert spec.rollout is not None and spec.rollout.strategy is not None
    assert spec.rollout.strategy.type == "RollingUpdate"


def test_an_oci_image_named_for_another_version_is_caught_before_any_upgrade() -> None:
    wrong = template("cp-v2", machine_spec("registry.c3os.test/c3os-standin:broken-k3sv1.35.0-k3s1"))
    assert oci_version_mismatch(NEXT, wrong) == (
        "the oci image of template cp-v2, registry.c3os.test/c3os-standin:broken-k3sv1.35.0-k3s1, ships "
        f"v1.35.0+k3s1 by its name, the version is {NEXT}: no server is upgraded in place until the "
        f"template names an image of {NEXT}"
    )
    assert oci_version_mismatch(NEXT, NEW_TEMPLATE) is None
    # A version without a k3s build accepts any build of it; a digest says nothing.
    assert oci_version_mismatch("v1.34.1", NEW_TEMPLATE) is None
    assert (
        oci_version_mismatch(NEXT, template("cp-v2", machine_spec("registry.c3os.test/c@sha256:" + "a" * 64)))
        is None
    )
