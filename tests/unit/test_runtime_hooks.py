"""The in-place update hooks' decisions (runtime/hooks.py): which differences an A/B
upgrade covers, the patches that make current equal desired, and what is refused, on
requests shaped as CAPI v1.14 sends them."""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import pytest

from capi_c3os.runtime.hooks import (
    DISCOVERY_PATH,
    HANDLERS,
    can_update_machine,
    can_update_machine_set,
    discovery,
    hook_path,
)

INFRA = "infrastructure.cluster.x-k8s.io/v1alpha1"
OLD_OCI = "registry.c3os.test/c3os-standin:k3sv1.33.4-k3s1"
NEW_OCI = "registry.c3os.test/c3os-standin:k3sv1.34.1-k3s1"
CHECKSUM = "a" * 64


def infra_spec(oci: str | None = OLD_OCI, url: str = "https://images.test/c3os-k3sv1.33.4-k3s1.qcow2",
               **changes: Any) -> dict[str, Any]:  # fmt: skip
    image: dict[str, Any] = {
        "url": url,
        "checksum": CHECKSUM,
        "checksumAlgorithm": "sha256",
        "format": "qcow2",
    }
    if oci:
        image["oci"] = oci
    spec = {"backend": {"libvirt": {"firmware": "bios"}}, "image": image, "cpus": 2, "memoryMiB": 4096,
            "diskGiB": 20}  # fmt: skip
    spec.update(changes)
    return spec


NEW_IMAGE = infra_spec(NEW_OCI, url="https://images.test/c3os-k3sv1.34.1-k3s1.qcow2")["image"]


def machine_set(name: str, version: str, **changes: Any) -> dict[str, Any]:
    spec = {"clusterName": "shop", "version": version, "failureDomain": "site-a",
            "bootstrap": {"configRef": {"apiGroup": "bootstrap.cluster.x-k8s.io",
                                        "kind": "C3osConfigTemplate", "name": name}},
            "infrastructureRef": {"apiGroup": "infrastructure.cluster.x-k8s.io",
                                  "kind": "C3osMachineTemplate", "name": name}}  # fmt: skip
    spec.update(changes)
    return {"apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "MachineSet",
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {"clusterName": "shop", "replicas": 1, "template": {"spec": spec}}}  # fmt: skip


def template(kind: str, api_version: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": api_version, "kind": kind, "metadata": {"name": name, "namespace": "shop"},
            "spec": {"template": {"spec": spec}}}  # fmt: skip


def set_request(*, desired_version: str = "v1.34.1+k3s1", desired_infra: dict[str, Any] | None = None,
                desired_boot: dict[str, Any] | None = None, **ms_changes: Any) -> dict[str, Any]:  # fmt: skip
    boot = {"config": {"k3s": {"args": ["--disable=traefik"]}}}
    return {
        "apiVersion": "hooks.runtime.cluster.x-k8s.io/v1alpha1", "kind": "CanUpdateMachineSetRequest",
        "current": {
            "machineSet": machine_set("md-old", "v1.33.4+k3s1"),
            "infrastructureMachineTemplate": template("C3osMachineTemplate", INFRA, "md-old", infra_spec()),
            "bootstrapConfigTemplate": template("C3osConfigTemplate", "bootstrap.cluster.x-k8s.io/v1alpha1",
                                                "md-old", boot),
        },
        "desired": {
            "machineSet": machine_set("md-new", desired_version, **ms_changes),
            "infrastructureMachineTemplate": template(
                "C3osMachineTemplate", INFRA, "md-new",
                desired_infra if desired_infra is not None else infra_spec(NEW_OCI, url=NEW_IMAGE["url"])),
            "bootstrapConfigTemplate": template("C3osConfigTemplate", "bootstrap.cluster.x-k8s.io/v1alpha1",
                                                "md-new", desired_boot if desired_boot is not None else boot),
        },
    }  # fmt: skip


def patch_ops(response: dict[str, Any], key: str) -> list[dict[str, Any]]:
    patch = response[key]
    assert patch["patchType"] == "JSONPatch"
    return list(json.loads(base64.b64decode(patch["patch"])))


def apply_ops(obj: dict[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    """RFC 6902 `add` on object members: all our patches use."""
    obj = copy.deepcopy(obj)
    for op in ops:
        assert op["op"] == "add"
        *parents, last = op["path"].lstrip("/").split("/")
        target = obj
        for key in parents:
            target = target[key]
        target[last] = op["value"]
    return obj


def test_discovery_lists_the_three_in_place_hooks_at_capi_paths() -> None:
    answer = discovery({})
    assert answer["status"] == "Success" and answer["kind"] == "DiscoveryResponse"
    assert [(h["name"], h["requestHook"]["hook"], h["failurePolicy"]) for h in answer["handlers"]] == [
        ("can-update-machineset", "CanUpdateMachineSet", "Ignore"),
        ("can-update-machine", "CanUpdateMachine", "Ignore"),
        ("update-machine", "UpdateMachine", "Fail"),
    ]
    assert all(0 < h["timeoutSeconds"] <= 30 for h in answer["handlers"])
    assert DISCOVERY_PATH == "/hooks.runtime.cluster.x-k8s.io/v1alpha1/discovery"
    assert hook_path("UpdateMachine", "update-machine") == (
        "/hooks.runtime.cluster.x-k8s.io/v1alpha1/updatemachine/update-machine"
    )
    assert len(HANDLERS) == 3


def test_a_new_image_with_oci_and_its_version_are_patched_in_place() -> None:
    request = set_request()
    answer = can_update_machine_set(request)
    assert answer["status"] == "Success" and "message" not in answer
    current, desired = request["current"], request["desired"]
    # CAPI applies the patches to the current objects and compares spec.template.spec.
    patched_ms = apply_ops(current["machineSet"], patch_ops(answer, "machineSetPatch"))
    assert patched_ms["spec"]["template"]["spec"]["version"] == "v1.34.1+k3s1"
    patched_infra = apply_ops(current["infrastructureMachineTemplate"],
                              patch_ops(answer, "infrastructureMachineTemplatePatch"))  # fmt: skip
    assert (
        patched_infra["spec"]["template"]["spec"]
        == desired["infrastructureMachineTemplate"]["spec"]["template"]["spec"]
    )
    assert "bootstrapConfigTemplatePatch" not in answer
    # Same request, same bytes.
    assert can_update_machine_set(copy.deepcopy(request)) == answer


def test_an_os_only_upgrade_keeps_the_version() -> None:
    same_k3s = infra_spec("registry.c3os.test/c3os:k3sv1.33.4-k3s1-r2")
    answer = can_update_machine_set(set_request(desired_version="v1.33.4+k3s1", desired_infra=same_k3s))
    assert answer["status"] == "Success" and "message" not in answer
    assert "machineSetPatch" not in answer and patch_ops(answer, "infrastructureMachineTemplatePatch")


@pytest.mark.parametrize(
    ("request_changes", "message"),
    [
        ({"desired_infra": infra_spec(NEW_OCI, diskGiB=40)},
         "C3osMachineTemplate spec.diskGiB changes from 20 to 40: "
         "only the version and the image change in place"),
        ({"desired_infra": infra_spec(NEW_OCI, cpus=4)},
         "C3osMachineTemplate spec.cpus changes from 2 to 4: only the version and the image change in place"),
        ({"desired_infra": infra_spec(NEW_OCI, backend={"ironic": {}})},
         "C3osMachineTemplate spec.backend.ironic changes: only the version and the image change in place; "
         "C3osMachineTemplate spec.backend.libvirt changes: only the version and the image change in place"),
        ({"desired_infra": infra_spec(NEW_OCI, network={"interfaces": [{"name": "eth0", "dhcp4": True}]})},
         "C3osMachineTemplate spec.network changes: only the version and the image change in place"),
        ({"failureDomain": "site-b"},
         'the site (failureDomain) changes from "site-a" to "site-b": a machine cannot move to another site'),
        ({"desired_infra": infra_spec(None, url="https://images.test/c3os-k3sv1.34.1-k3s1.qcow2")},
         "the new image of C3osMachineTemplate has no image.oci: an in-place upgrade installs the release "
         "from its OCI image"),
        ({"desired_infra": infra_spec()},
         "the version changes from v1.33.4+k3s1 to v1.34.1+k3s1 but the image does not: "
         "k3s ships in the image"),
        ({"desired_infra": infra_spec("registry.c3os.test/c3os-standin:k3sv1.35.0-k3s1")},
         "image registry.c3os.test/c3os-standin:k3sv1.35.0-k3s1 ships v1.35.0+k3s1 by its name, "
         "the version is v1.34.1+k3s1"),
        ({"desired_boot": {"config": {"k3s": {"args": []}}}},
         "C3osConfigTemplate spec.config.k3s.args changes: a node's configuration is written only when it is "
         "installed"),
    ],
    ids=["disk", "cpus", "backend", "network", "site", "no-oci", "version-without-image",
         "image-of-another-version", "bootstrap"],
)  # fmt: skip
def test_what_an_upgrade_cannot_do_is_refused_without_patches(
    request_changes: dict[str, Any], message: str
) -> None:
    answer = can_update_machine_set(set_request(**request_changes))
    # Success without patches: CAPI falls back to replacing the machines.
    assert answer == {
        "apiVersion": "hooks.runtime.cluster.x-k8s.io/v1alpha1", "kind": "CanUpdateMachineSetResponse",
        "status": "Success", "message": f"cannot upgrade in place: {message}",
    }  # fmt: skip


def test_changes_capi_itself_ignores_need_no_patch() -> None:
    request = set_request(minReadySeconds=30, readinessGates=[{"conditionType": "X"}],
                          deletion={"nodeDrainTimeoutSeconds": 60})  # fmt: skip
    answer = can_update_machine_set(request)
    assert "message" not in answer
    assert patch_ops(answer, "machineSetPatch") == [
        {"op": "add", "path": "/spec/template/spec/version", "value": "v1.34.1+k3s1"}
    ]


def test_other_providers_machines_are_not_ours() -> None:
    request = set_request()
    for side in ("current", "desired"):
        request[side]["infrastructureMachineTemplate"]["apiVersion"] = (
            "infrastructure.cluster.x-k8s.io/v1beta1"
        )
        request[side]["infrastructureMachineTemplate"]["kind"] = "Metal3MachineTemplate"
    answer = can_update_machine_set(request)
    assert answer["status"] == "Success" and "machineSetPatch" not in answer
    assert answer["message"] == (
        "Metal3MachineTemplate (infrastructure.cluster.x-k8s.io) is not a c3os machine: "
        "not upgraded in place by capi-c3os"
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "bad CanUpdateMachineSet request: request must be an object"),
        ({}, "bad CanUpdateMachineSet request: current must be an object"),
        ({"current": {}, "desired": {}},
         "bad CanUpdateMachineSet request: current.infrastructureMachineTemplate must be an object"),
        ({"current": {"infrastructureMachineTemplate": {"spec": "x"}, "machineSet": {}},
          "desired": {"infrastructureMachineTemplate": {}, "machineSet": {}}},
         "bad CanUpdateMachineSet request: current.infrastructureMachineTemplate.spec must be an object"),
    ],
)  # fmt: skip
def test_a_bogus_body_is_a_failure_naming_what_is_wrong(body: Any, message: str) -> None:
    answer = can_update_machine_set(body)
    assert (answer["status"], answer["message"]) == ("Failure", message)


def test_can_update_machine_patches_the_machine_and_its_c3os_machine() -> None:
    def machine(version: str) -> dict[str, Any]:
        return {"apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Machine",
                "metadata": {"name": "cp-1", "namespace": "shop"},
                "spec": {"clusterName": "shop", "version": version,
                         "providerID": "c3os://shop/cp-1"}}  # fmt: skip

    def infra(spec: dict[str, Any]) -> dict[str, Any]:
        return {"apiVersion": INFRA, "kind": "C3osMachine", "metadata": {"name": "cp-1", "namespace": "shop"},
                "spec": spec}  # fmt: skip

    current_infra = infra({**infra_spec(), "providerID": "c3os://shop/cp-1"})
    request = {
        "current": {"machine": machine("v1.33.4+k3s1"), "infrastructureMachine": current_infra},
        "desired": {"machine": machine("v1.34.1+k3s1"),
                    "infrastructureMachine": infra(infra_spec(NEW_OCI, url=NEW_IMAGE["url"]))},
    }  # fmt: skip
    answer = can_update_machine(request)
    assert answer["status"] == "Success" and "message" not in answer
    assert patch_ops(answer, "machinePatch") == [
        {"op": "add", "path": "/spec/version", "value": "v1.34.1+k3s1"}
    ]
    assert patch_ops(answer, "infrastructureMachinePatch") == [
        {"op": "add", "path": "/spec/image", "value": NEW_IMAGE}
    ]
    # A desired machine with another identity is not an upgrade.
    request["desired"]["infrastructureMachine"]["spec"]["providerID"] = "c3os://other/cp-1"
    assert can_update_machine(request)["message"].startswith(
        "cannot upgrade in place: C3osMachine spec.providerID"
    )
