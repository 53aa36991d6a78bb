"""The generic reconcile and its kopf translation, against an in-memory Kube."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any, cast

import kopf
import pytest

from capi_c3os.capi.metadata import CLUSTER_NAME_LABEL, PAUSED_ANNOTATION
from capi_c3os.capi.outcome import Outcome
from capi_c3os.operator.handlers import PROVIDERS, kinds_of
from capi_c3os.operator.handlers.clusters import PauseWatch
from capi_c3os.operator.handlers.common import CONFLICT_RETRY_DELAY, handle, to_kopf
from capi_c3os.operator.handlers.infrastructure import C3OS_MACHINE
from capi_c3os.operator.runtime import Kind, Runtime, result_label
from capi_c3os.reconcilers import generic
from capi_c3os.reconcilers.kube import CLUSTERS, ConflictError, Kube, Resource

NOW = datetime(2026, 11, 26, 2, 0, 0, tzinfo=UTC)


class FakeKube:
    own_writes = None

    def __init__(self, *objects: dict[str, Any]) -> None:
        self.objects = {(o["kind"], o["metadata"]["namespace"], o["metadata"]["name"]): o for o in objects}
        self.patches: list[dict[str, Any]] = []

    def get(self, resource: Resource, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.objects.get((resource.kind, namespace, name)))

    def patch_status(
        self, resource: Resource, namespace: str, name: str, patch: dict[str, Any]
    ) -> dict[str, Any]:
        obj = self.objects[(resource.kind, namespace, name)]
        if patch.get("metadata", {}).get("resourceVersion") not in (None, obj["metadata"]["resourceVersion"]):
            raise ConflictError("changed")
        self.patches.append(patch)
        obj.setdefault("status", {}).update(patch["status"])
        obj["metadata"]["resourceVersion"] = str(int(obj["metadata"]["resourceVersion"]) + 1)
        return copy.deepcopy(obj)


def c3os_machine(
    labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None
) -> dict[str, Any]:
    return {
        "apiVersion": "infrastructure.cluster.x-k8s.io/v1alpha1",
        "kind": "C3osMachine",
        "metadata": {
            "name": "m",
            "namespace": "ns",
            "generation": 2,
            "resourceVersion": "10",
            "labels": labels or {},
            "annotations": annotations or {},
        },
    }


def capi_cluster(paused: bool) -> dict[str, Any]:
    return {
        "apiVersion": "cluster.x-k8s.io/v1beta2",
        "kind": "Cluster",
        "metadata": {"name": "c", "namespace": "ns", "resourceVersion": "1", "uid": "cu"},
        "spec": {"paused": paused},
    }


def reconcile(kube: FakeKube, obj: dict[str, Any]) -> Outcome:
    return generic.reconcile(cast(Kube, kube), C3OS_MACHINE, obj, now=NOW)


def test_unpaused_object_gets_not_paused_and_observed_generation() -> None:
    obj = c3os_machine()
    kube = FakeKube(obj)
    assert reconcile(kube, copy.deepcopy(obj)).done
    (patch,) = kube.patches
    assert patch["metadata"] == {"resourceVersion": "10"}
    assert patch["status"]["observedGeneration"] == 2
    (cond,) = patch["status"]["conditions"]
    assert (cond["type"], cond["status"], cond["reason"]) == ("Paused", "False", "NotPaused")


def test_second_reconcile_of_an_unchanged_object_writes_nothing() -> None:
    kube = FakeKube(c3os_machine())
    reconcile(kube, kube.get(C3OS_MACHINE, "ns", "m") or {})
    reconcile(kube, kube.get(C3OS_MACHINE, "ns", "m") or {})
    assert len(kube.patches) == 1


def test_paused_cluster_pauses_the_object_without_claiming_its_generation() -> None:
    obj = c3os_machine(labels={CLUSTER_NAME_LABEL: "c"})
    kube = FakeKube(obj, capi_cluster(paused=True))
    outcome = reconcile(kube, copy.deepcopy(obj))
    assert outcome.done
    assert outcome.reason == "Paused"
    (patch,) = kube.patches
    assert "observedGeneration" not in patch["status"]
    cond = patch["status"]["conditions"][0]
    assert (cond["status"], cond["reason"], cond["message"]) == (
        "True",
        "Paused",
        "Cluster spec.paused is set to true",
    )


def test_paused_annotation_pauses_without_any_cluster() -> None:
    obj = c3os_machine(annotations={PAUSED_ANNOTATION: ""})
    kube = FakeKube(obj)
    assert reconcile(kube, copy.deepcopy(obj)).reason == "Paused"


def test_missing_cluster_counts_as_not_paused() -> None:
    obj = c3os_machine(labels={CLUSTER_NAME_LABEL: "gone"})
    kube = FakeKube(obj)
    assert reconcile(kube, copy.deepcopy(obj)).reason == ""


def test_stale_read_raises_conflict() -> None:
    obj = c3os_machine()
    kube = FakeKube(obj)
    stale = copy.deepcopy(obj)
    stale["metadata"]["resourceVersion"] = "9"
    with pytest.raises(ConflictError):
        reconcile(kube, stale)


def test_runtime_counts_and_passes_through() -> None:
    obj = c3os_machine()
    runtime = Runtime(cast(Kube, FakeKube(obj)))
    kind = Kind(C3OS_MACHINE, generic.reconcile)
    assert runtime.reconcile(kind, copy.deepcopy(obj), "test").done


def test_result_labels() -> None:
    assert result_label(Outcome.ready()) == "done"
    assert result_label(Outcome.paused()) == "paused"
    assert result_label(Outcome.wait("Waiting", "x", after=1)) == "wait"
    assert result_label(Outcome.error("Broken", "x")) == "error"


def test_to_kopf_returns_none_when_done() -> None:
    to_kopf(Outcome.ready())  # must not raise, and handlers return None: no status written by kopf
    to_kopf(Outcome.paused())


def test_to_kopf_wait_is_a_temporary_error_with_the_delay() -> None:
    with pytest.raises(kopf.TemporaryError) as info:
        to_kopf(Outcome.wait("WaitingForCluster", "Cluster infrastructure is not provisioned", after=7))
    assert info.value.delay == 7
    assert "WaitingForCluster" in str(info.value)


def test_to_kopf_error_is_permanent() -> None:
    with pytest.raises(kopf.PermanentError):
        to_kopf(Outcome.error("InvalidSpec", "no site"))


def test_a_kopf_handler_hands_its_wait_to_the_requeue_except_for_deletion() -> None:
    """kopf would write a progress annotation per retry; the requeue writes nothing.
    Deletion keeps kopf's retries (its finalizer brings a restarted manager back)."""
    waiting = Outcome.wait("Deploying", "node is deploying", after=10)
    taken: list[tuple[str, float]] = []
    runtime = Runtime(cast(Kube, FakeKube()))
    runtime.reconcile = lambda kind, obj, trigger: waiting  # type: ignore[method-assign]
    kind = Kind(C3OS_MACHINE, generic.reconcile)

    def requeue(kind: Kind, obj: dict[str, Any], after: float) -> bool:
        taken.append((obj["metadata"]["name"], after))
        return True

    runtime.requeue = requeue
    for cause in ("create", "update", "resume"):
        handle(runtime, kind, c3os_machine(), cause)  # returns: kopf records success
    assert taken == [("m", 10.0)] * 3
    with pytest.raises(kopf.TemporaryError) as raised:
        handle(runtime, kind, c3os_machine(), "delete")
    assert raised.value.delay == 10
    assert len(taken) == 3

    runtime.requeue = lambda kind, obj, after: False  # the resync is not running yet
    with pytest.raises(kopf.TemporaryError):
        handle(runtime, kind, c3os_machine(), "update")

    runtime.reconcile = lambda kind, obj, trigger: Outcome.error("InvalidSpec", "no site")  # type: ignore[method-assign]
    runtime.requeue = requeue
    with pytest.raises(kopf.PermanentError):
        handle(runtime, kind, c3os_machine(), "update")
    assert len(taken) == 3


def test_a_conflict_in_a_kopf_handler_is_retried_by_the_requeue_except_for_deletion() -> None:
    taken: list[float] = []
    runtime = Runtime(cast(Kube, FakeKube()))

    def conflicting(kind: Kind, obj: dict[str, Any], trigger: str) -> Outcome:
        raise ConflictError("C3osMachine ns/m changed meanwhile")

    def requeue(kind: Kind, obj: dict[str, Any], after: float) -> bool:
        taken.append(after)
        return True

    runtime.reconcile = conflicting  # type: ignore[method-assign]
    runtime.requeue = requeue
    kind = Kind(C3OS_MACHINE, generic.reconcile)
    handle(runtime, kind, c3os_machine(), "update")
    assert taken == [CONFLICT_RETRY_DELAY]
    with pytest.raises(kopf.TemporaryError):
        handle(runtime, kind, c3os_machine(), "delete")
    assert taken == [CONFLICT_RETRY_DELAY]


def test_each_provider_handles_its_own_kinds() -> None:
    assert [k.resource.kind for k in kinds_of(["infrastructure"])] == [
        "C3osCluster",
        "C3osMachine",
        "C3osMachineTemplate",
    ]
    assert [k.resource.kind for k in kinds_of(["bootstrap"])] == ["C3osConfig"]
    assert [k.resource.kind for k in kinds_of(["control-plane"])] == ["C3osControlPlane"]
    assert set(PROVIDERS) == {"infrastructure", "bootstrap", "control-plane"}
    groups = {k.resource.group for k in kinds_of(PROVIDERS)}
    assert groups == {
        "infrastructure.cluster.x-k8s.io",
        "bootstrap.cluster.x-k8s.io",
        "controlplane.cluster.x-k8s.io",
    }


def test_pause_watch_reacts_only_to_a_change_of_spec_paused() -> None:
    calls: list[tuple[str, str]] = []
    watch = PauseWatch(lambda ns, name: calls.append((ns, name)))
    watch.on_event(None, capi_cluster(paused=False))  # initial listing: only remembered
    watch.on_event("MODIFIED", capi_cluster(paused=False))  # status churn: nothing to do
    assert calls == []
    watch.on_event("MODIFIED", capi_cluster(paused=True))
    assert calls == [("ns", "c")]
    watch.on_event("DELETED", capi_cluster(paused=True))
    watch.on_event("ADDED", capi_cluster(paused=False))  # a new Cluster of that name
    assert calls == [("ns", "c")]
    assert CLUSTERS.plural == "clusters"
