"""UpdateMachine's checks before it touches a workload cluster (runtime/hooks.py): it
acts only on the Machine the request names, in a namespace the manager serves, while
CAPI has its in-place update pending, and reads everything else from the API server
(here: plain objects standing in for what the API server holds)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from capi_c3os.runtime.hooks import update_machine
from capi_c3os.workload.client import WorkloadClient

NS = "shop"
OCI = "registry.c3os.test/c3os-standin:k3sv1.34.1-k3s1"
PENDING = {
    "in-place-updates.internal.cluster.x-k8s.io/update-in-progress": "",
    "runtime.cluster.x-k8s.io/pending-hooks": "UpdateMachine",
}


def machine(**changes: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Machine",
        "metadata": {"name": "md-0-abc", "namespace": NS, "annotations": dict(PENDING),
                     "ownerReferences": [{"apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "MachineSet",
                                          "name": "md-0", "uid": "ms-uid", "controller": True}]},
        "spec": {"clusterName": "shop", "version": "v1.34.1+k3s1", "providerID": "c3os://shop/md-0-abc",
                 "infrastructureRef": {"apiGroup": "infrastructure.cluster.x-k8s.io", "kind": "C3osMachine",
                                       "name": "md-0-abc"}},
        "status": {"nodeRef": {"name": "md-0-abc"}},
    }  # fmt: skip
    obj.update(changes)
    return obj


def c3os_machine(oci: str | None = OCI) -> dict[str, Any]:
    image: dict[str, Any] = {"volume": "c3os-k3sv1.34.1-k3s1"}
    if oci:
        image["oci"] = oci
    return {"apiVersion": "infrastructure.cluster.x-k8s.io/v1alpha1", "kind": "C3osMachine",
            "metadata": {"name": "md-0-abc", "namespace": NS},
            "spec": {"providerID": "c3os://shop/md-0-abc", "backend": {"libvirt": {}},
                     "image": image}}  # fmt: skip


def machine_set(template: str = "md-new") -> dict[str, Any]:
    return {"apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "MachineSet",
            "metadata": {"name": "md-0", "namespace": NS, "uid": "ms-uid"},
            "spec": {"template": {"spec": {"infrastructureRef": {
                "apiGroup": "infrastructure.cluster.x-k8s.io", "kind": "C3osMachineTemplate",
                "name": template}}}}}  # fmt: skip


def template(name: str = "md-new", oci: str = OCI) -> dict[str, Any]:
    return {"apiVersion": "infrastructure.cluster.x-k8s.io/v1alpha1", "kind": "C3osMachineTemplate",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"template": {"spec": {"image": {"volume": "v", "oci": oci}}}}}  # fmt: skip


class Held:
    """What the management API server holds (by default the MachineSet of the Machine
    and its template, which names the C3osMachine's image)."""

    def __init__(
        self,
        machines: list[dict[str, Any]],
        c3os: list[dict[str, Any]],
        kubeconfig: bool = False,
        sets: tuple[dict[str, Any], ...] = (machine_set(),),
        templates: tuple[dict[str, Any], ...] = (template(),),
    ):
        def by_key(objs: Any) -> dict[tuple[str, str], dict[str, Any]]:
            return {(m["metadata"]["namespace"], m["metadata"]["name"]): m for m in objs}

        self.machines, self.c3os = by_key(machines), by_key(c3os)
        self.sets, self.templates = by_key(sets), by_key(templates)
        self.has_kubeconfig = kubeconfig
        self.reads: list[tuple[str, str, str]] = []

    def machine(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.reads.append(("Machine", namespace, name))
        return self.machines.get((namespace, name))

    def c3os_machine(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.reads.append(("C3osMachine", namespace, name))
        return self.c3os.get((namespace, name))

    def machine_set(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.reads.append(("MachineSet", namespace, name))
        return self.sets.get((namespace, name))

    def c3os_machine_template(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.reads.append(("C3osMachineTemplate", namespace, name))
        return self.templates.get((namespace, name))

    def kubeconfig(self, namespace: str, cluster: str) -> str | None:
        self.reads.append(("Secret", namespace, f"{cluster}-kubeconfig"))
        return "kubeconfig" if self.has_kubeconfig else None


def never(namespace: str, cluster: str, kubeconfig: str) -> WorkloadClient:
    raise AssertionError("must not reach the workload cluster")


def request(
    namespace: str = NS, name: str = "md-0-abc", infra: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {"apiVersion": "hooks.runtime.cluster.x-k8s.io/v1alpha1", "kind": "UpdateMachineRequest",
            "desired": {"machine": {"metadata": {"namespace": namespace, "name": name},
                                    "spec": {"version": "x"}},
                        "infrastructureMachine": infra or c3os_machine()}}  # fmt: skip


def test_a_machine_in_another_namespace_than_the_request_says_is_never_touched() -> None:
    # The request names shop-b; only shop holds such a Machine: nothing is found, nothing read elsewhere.
    held = Held([machine()], [c3os_machine()])
    answer = update_machine(request(namespace="shop-b"), held, never)
    assert (answer["status"], answer["message"]) == ("Failure", "Machine shop-b/md-0-abc not found")
    assert all(ns == "shop-b" for _, ns, _ in held.reads)


def test_a_request_pairing_a_machine_with_another_infrastructure_machine_is_refused() -> None:
    other = c3os_machine()
    other["metadata"] = {"namespace": "victim", "name": "db-0"}
    held = Held([machine()], [c3os_machine()])
    answer = update_machine(request(infra=other), held, never)
    assert (answer["status"], answer["message"]) == (
        "Failure",
        "the request's infrastructureMachine victim/db-0 is not "
        "Machine shop/md-0-abc's C3osMachine shop/md-0-abc",
    )  # fmt: skip
    assert ("C3osMachine", "victim", "db-0") not in held.reads


def test_a_namespace_the_manager_does_not_serve_is_refused_before_any_read() -> None:
    held = Held([machine()], [c3os_machine()])
    answer = update_machine(request(), held, never, namespaces=("other",))
    assert answer["message"] == "Machine shop/md-0-abc is outside the namespaces this manager serves"
    assert held.reads == []


def test_without_a_pending_in_place_update_nothing_starts() -> None:
    idle = machine()
    idle["metadata"]["annotations"] = {}
    answer = update_machine(request(), Held([idle], [c3os_machine()]), never)
    assert (answer["status"], answer["message"]) == (
        "Failure",
        "Machine shop/md-0-abc has no in-place update pending",
    )


@pytest.mark.parametrize(
    ("held", "status", "message"),
    [
        (Held([machine()], [c3os_machine(oci=None)]), "Failure",
         "C3osMachine shop/md-0-abc has no spec.image.oci to upgrade to"),
        (Held([machine()], []), "Failure", "C3osMachine shop/md-0-abc of Machine shop/md-0-abc not found"),
        (Held([machine(status={})], [c3os_machine()]), "Success", "Machine shop/md-0-abc has no Node yet"),
        (Held([machine()], [c3os_machine()]), "Success",
         "the kubeconfig Secret of cluster shop/shop is missing"),
    ],
    ids=["no-oci", "no-c3os-machine", "no-node", "no-kubeconfig"],
)  # fmt: skip
def test_what_is_missing_is_said(held: Held, status: str, message: str) -> None:
    answer = update_machine(request(), held, never)
    assert (answer["status"], answer["message"]) == (status, message)
    # Success with a retry: still in progress, CAPI asks again.
    assert (answer["retryAfterSeconds"] > 0) is (status == "Success")


@pytest.mark.parametrize(
    ("held", "message"),
    [
        (Held([machine()], [c3os_machine(oci="registry.evil.test/root:1")]),
         "the image of Machine shop/md-0-abc's C3osMachine, registry.evil.test/root:1, is not the image of "
         f"C3osMachineTemplate shop/md-new of its MachineSet md-0 ({OCI}): not installing an image no "
         "template of the machine names"),
        (Held([machine(metadata={**machine()["metadata"], "ownerReferences": []})], [c3os_machine()]),
         "Machine shop/md-0-abc is not controlled by a MachineSet (but nothing): the extension upgrades "
         "machines of MachineDeployments only"),
        (Held([machine()], [c3os_machine()], sets=({**machine_set(), "metadata": {
            "name": "md-0", "namespace": NS, "uid": "another"}},)),
         "MachineSet shop/md-0 controlling Machine shop/md-0-abc not found"),
        (Held([machine()], [c3os_machine()], templates=()),
         "the image of Machine shop/md-0-abc's C3osMachine, " + OCI + ", is not the image of "
         "C3osMachineTemplate shop/md-new of its MachineSet md-0 (none): not installing an image no "
         "template of the machine names"),
    ],
    ids=["hand-edited-image", "no-machineset", "machineset-recreated", "no-template"],
)  # fmt: skip
def test_only_the_image_of_the_machine_sets_template_is_installed(held: Held, message: str) -> None:
    answer = update_machine(request(), held, never)
    assert (answer["status"], answer["message"]) == ("Failure", message)


@pytest.mark.parametrize(
    "body",
    [None, [], {"desired": []}, {"desired": {"machine": {"metadata": {"name": "x"}}}},
     {"desired": {"machine": {"metadata": {"namespace": "../etc", "name": "x"}}}}],
)  # fmt: skip
def test_a_bogus_body_is_a_failure(body: Any) -> None:
    held = Held([machine()], [c3os_machine()])
    answer = update_machine(copy.deepcopy(body), held, never)
    assert answer["status"] == "Failure" and answer["message"].startswith("bad UpdateMachine request: ")
    assert held.reads == []


def test_only_a_pending_update_that_failed_is_reported_on_its_machine() -> None:
    reported: list[tuple[str, str]] = []

    def report(machine: dict[str, Any], message: str) -> None:
        reported.append((machine["metadata"]["name"], message))

    idle = machine()
    idle["metadata"]["annotations"] = {}
    # A request for a Machine CAPI is not updating: the caller's mistake, nothing on the Machine.
    update_machine(request(), Held([idle], [c3os_machine()]), never, report=report)
    update_machine(request(namespace="shop-b"), Held([machine()], [c3os_machine()]), never, report=report)
    assert reported == []
    update_machine(request(), Held([machine()], [c3os_machine(oci=None)]), never, report=report)
    assert reported == [("md-0-abc", "C3osMachine shop/md-0-abc has no spec.image.oci to upgrade to")]
