"""`capi-c3os run` as a real process against the real management plane: leadership,
probes, metrics, the generic reconcile (Paused + observedGeneration), hand-over between
replicas, clean shutdown and scoping by namespace and provider.

Every wait polls the API server or the manager's endpoints until a deadline; no test
relies on how long anything takes.
"""

from __future__ import annotations

import copy
import functools
import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest
from kubernetes import client as kc
from kubernetes.client.exceptions import ApiException

from capi_c3os.dev.manager import Manager
from capi_c3os.dev.mgmt import ManagementPlane
from tests.conftest import RunManager, provider_identity
from tests.support import eventually

pytestmark = pytest.mark.integration

T = TypeVar("T")

INFRA = "infrastructure.cluster.x-k8s.io"
BOOTSTRAP = "bootstrap.cluster.x-k8s.io"
CONTROL_PLANE = "controlplane.cluster.x-k8s.io"
PAUSED = "cluster.x-k8s.io/paused"
CLUSTER_NAME = "cluster.x-k8s.io/cluster-name"

PLURALS = {
    "C3osMachine": (INFRA, "c3osmachines"),
    "C3osCluster": (INFRA, "c3osclusters"),
    "C3osConfig": (BOOTSTRAP, "c3osconfigs"),
    "C3osControlPlane": (CONTROL_PLANE, "c3oscontrolplanes"),
}

KOPF_FINALIZER = "kopf.zalando.org/KopfFinalizerMarker"
LEGACY_DIFF_BASE = "kopf.zalando.org/last-handled-configuration"

# The smallest specs the CRDs accept; the models' own tests cover the fields.
SPECS: dict[str, dict[str, Any]] = {
    "C3osMachine": {"backend": {"libvirt": {}}, "image": {"volume": "base"}},
    "C3osCluster": {"sites": [{"name": "lab", "libvirt": {"uri": "qemu:///system"}}]},
    "C3osConfig": {},
    "C3osControlPlane": {
        "version": "v1.33.4+k3s1",
        "machineTemplate": {
            "spec": {"infrastructureRef": {"apiGroup": INFRA, "kind": "C3osMachineTemplate", "name": "cp"}}
        },
    },
}


# ------------------------------------------------------------------ helpers


@pytest.fixture
def start_manager(mgmt: ManagementPlane, run_manager: RunManager) -> Callable[..., Manager]:
    """`capi-c3os run` with the admin kubeconfig and whatever flags a test gives."""

    def start(name: str, *flags: str) -> Manager:
        return run_manager(name, mgmt.kubeconfig, *flags)

    return start


@pytest.fixture
def new_namespace(k8s: Any) -> Iterator[Callable[[], str]]:
    core = kc.CoreV1Api(k8s)
    names: list[str] = []

    def create() -> str:
        name = f"mgr-{uuid.uuid4().hex[:8]}"
        core.create_namespace(kc.V1Namespace(metadata=kc.V1ObjectMeta(name=name)))
        names.append(name)
        return name

    yield create
    for name in names:
        core.delete_namespace(name)


@pytest.fixture
def namespace(new_namespace: Callable[[], str]) -> str:
    return new_namespace()


class Objects:
    def __init__(self, api: Any) -> None:
        self.api = kc.CustomObjectsApi(api)

    def create(self, kind: str, namespace: str, name: str, **metadata: Any) -> dict[str, Any]:
        group, plural = PLURALS[kind]
        body = {
            "apiVersion": f"{group}/v1alpha1",
            "kind": kind,
            "metadata": {"name": name, **metadata},
            "spec": copy.deepcopy(SPECS[kind]),
        }
        return cast(
            dict[str, Any],
            self.api.create_namespaced_custom_object(group, "v1alpha1", namespace, plural, body),
        )

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        group, plural = PLURALS[kind]
        return cast(
            dict[str, Any], self.api.get_namespaced_custom_object(group, "v1alpha1", namespace, plural, name)
        )

    def patch(self, kind: str, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        group, plural = PLURALS[kind]
        return cast(
            dict[str, Any],
            self.api.patch_namespaced_custom_object(
                group,
                "v1alpha1",
                namespace,
                plural,
                name,
                patch,
                _content_type="application/merge-patch+json",
            ),
        )

    def paused_condition(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        obj = self.get(kind, namespace, name)
        for condition in (obj.get("status") or {}).get("conditions") or []:
            if condition["type"] == "Paused":
                result: dict[str, Any] = condition
                return result
        return None

    def lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return cast(
                dict[str, Any],
                self.api.get_namespaced_custom_object("coordination.k8s.io", "v1", namespace, "leases", name),
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def holder(self, namespace: str, name: str) -> str | None:
        lease = self.lease(namespace, name)
        return ((lease or {}).get("spec") or {}).get("holderIdentity")


@pytest.fixture
def objects(k8s: Any) -> Objects:
    return Objects(k8s)


def reconciled(objects: Objects, kind: str, namespace: str, name: str, *, status: str, reason: str) -> bool:
    """The object carries a Paused condition in that state, computed from its current
    generation."""
    obj = objects.get(kind, namespace, name)
    condition = objects.paused_condition(kind, namespace, name)
    return bool(
        condition
        and condition["status"] == status
        and condition["reason"] == reason
        and condition.get("observedGeneration") == obj["metadata"]["generation"]
    )


def lease_flags(namespace: str) -> tuple[list[str], str]:
    lease = f"lease-{uuid.uuid4().hex[:8]}"
    return ["--leader-elect", "--leader-election-namespace", namespace, "--leader-election-id", lease], lease


# ------------------------------------------------------------------ tests


def test_manager_leads_serves_probes_and_metrics_and_releases_the_lease_on_sigterm(
    start_manager: Callable[..., Manager], objects: Objects, namespace: str
) -> None:
    flags, lease = lease_flags(namespace)
    manager = start_manager("manager", *flags)
    manager.wait_ready()
    assert manager.status("/healthz") == 200

    assert objects.holder(namespace, lease) == manager.identity()
    assert manager.metric_sum("capi_c3os_leader") == 1
    assert manager.metric_sum("capi_c3os_ready") == 1

    objects.create("C3osConfig", namespace, "cfg")
    eventually(
        lambda: reconciled(objects, "C3osConfig", namespace, "cfg", status="False", reason="NotPaused"),
        "C3osConfig status",
    )
    # A C3osConfig without a Machine waits for one (bootstrap provider): counted as "wait".
    assert manager.metric_sum("capi_c3os_reconcile_total", kind="C3osConfig", result="wait") >= 1
    assert manager.metric_sum("capi_c3os_reconcile_duration_seconds_count", kind="C3osConfig") >= 1
    assert manager.metric_sum("capi_c3os_leader_election_attempts_total", result="renewed") >= 0

    assert manager.stop() == 0
    lease_after = objects.lease(namespace, lease)
    assert lease_after is not None
    assert lease_after["spec"].get("holderIdentity") in ("", None)
    assert "released leader lease" in manager.process.tail(5)


def test_a_waiting_object_is_retried_in_memory_without_kopf_progress_writes(
    start_manager: Callable[..., Manager], objects: Objects, namespace: str
) -> None:
    """A C3osConfig without a Machine waits (5 s at a time). kopf's own retries would
    record each attempt in a `kopf.zalando.org/reconcile-*` annotation, an API write per
    wait; the manager's in-memory requeue retries without writing anything."""
    manager = start_manager("manager")
    manager.wait_ready()
    objects.create("C3osConfig", namespace, "cfg")
    eventually(
        lambda: reconciled(objects, "C3osConfig", namespace, "cfg", status="False", reason="NotPaused"),
        "C3osConfig status",
    )

    def requeued() -> float:
        return manager.metric_sum("capi_c3os_reconcile_total", kind="C3osConfig", trigger="requeue")

    eventually(lambda: requeued() >= 1, "a requeued reconcile")
    settled = objects.get("C3osConfig", namespace, "cfg")["metadata"]["resourceVersion"]
    before = requeued()
    eventually(lambda: requeued() >= before + 2, "two more requeued reconciles")
    obj = objects.get("C3osConfig", namespace, "cfg")
    annotations = obj["metadata"].get("annotations") or {}
    progress = [k for k in annotations if k.startswith("kopf.zalando.org/reconcile")]
    assert progress == []
    assert obj["metadata"]["resourceVersion"] == settled  # waiting again wrote nothing
    assert manager.metric_sum("capi_c3os_reconcile_total", kind="C3osConfig", result="wait") >= 3


def test_kopf_diff_base_is_kept_in_memory_and_never_written_to_the_objects(
    start_manager: Callable[..., Manager], objects: Objects, namespace: str
) -> None:
    """kopf wrote the last handled spec into an annotation after every change: one API
    write per change and a copy of the spec on every object. Kept in memory, changes are
    still told from no-ops, a restarted manager takes every object for new, and the
    annotation an earlier release left is removed."""
    objects.create("C3osMachine", namespace, "old", annotations={LEGACY_DIFF_BASE: '{"spec":{}}\n'})
    manager = start_manager("manager")
    manager.wait_ready()
    objects.create("C3osMachine", namespace, "new")
    for name in ("old", "new"):
        eventually(
            functools.partial(
                reconciled, objects, "C3osMachine", namespace, name, status="False", reason="NotPaused"
            ),
            f"{name} reconciled",
        )

    def kopf_annotations(name: str) -> list[str]:
        annotations = objects.get("C3osMachine", namespace, name)["metadata"].get("annotations") or {}
        return [key for key in annotations if key.startswith("kopf.zalando.org/")]

    eventually(lambda: kopf_annotations("old") == [], "the earlier release's annotation removed")

    def reconciles(manager: Manager, trigger: str) -> float:
        return manager.metric_sum("capi_c3os_reconcile_total", kind="C3osMachine", trigger=trigger)

    updates = reconciles(manager, "update")
    objects.patch("C3osMachine", namespace, "new", {"spec": {"cpus": 3}})
    eventually(lambda: reconciles(manager, "update") > updates, "the spec change handled as an update")
    eventually(
        lambda: objects.get("C3osMachine", namespace, "new")["status"].get("observedGeneration") == 2,
        "observedGeneration 2",
    )
    assert kopf_annotations("new") == kopf_annotations("old") == []

    assert manager.stop() == 0
    objects.patch("C3osMachine", namespace, "new", {"metadata": {"annotations": {PAUSED: ""}}})
    restarted = start_manager("restarted")
    restarted.wait_ready()
    eventually(
        lambda: reconciled(objects, "C3osMachine", namespace, "new", status="True", reason="Paused"),
        "the change made while no manager ran",
    )
    assert reconciles(restarted, "create") >= 2  # both objects, new to this manager
    assert kopf_annotations("new") == []


def test_every_kind_gets_paused_condition_and_observed_generation_and_follows_pause(
    start_manager: Callable[..., Manager], objects: Objects, namespace: str, k8s: Any
) -> None:
    manager = start_manager("manager", "--log-format", "json")
    manager.wait_ready()

    for kind in PLURALS:
        objects.create(kind, namespace, "obj")
    for kind in PLURALS:

        def not_paused(kind: str = kind) -> bool:
            return reconciled(objects, kind, namespace, "obj", status="False", reason="NotPaused")

        eventually(not_paused, kind)
        obj = objects.get(kind, namespace, "obj")
        assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
        # kopf keeps its bookkeeping out of our status; finalizers are only the kind's own
        # (CAPI style, `<kind>.<group>`) and kopf's, for kinds with a delete handler.
        assert set(obj["status"]) <= {"conditions", "observedGeneration", "initialization", "failureDomains"}
        own = f"{kind.lower()}.{PLURALS[kind][0]}"
        assert set(obj["metadata"].get("finalizers") or []) <= {own, KOPF_FINALIZER}

    # A spec change moves observedGeneration.
    changed = objects.patch("C3osMachine", namespace, "obj", {"spec": {"cpus": 3}})
    assert changed["metadata"]["generation"] == 2
    eventually(
        lambda: objects.get("C3osMachine", namespace, "obj")["status"].get("observedGeneration") == 2,
        "observedGeneration 2",
    )

    # The pause annotation flips the condition, with CAPI's message; removing it flips back.
    before = objects.paused_condition("C3osMachine", namespace, "obj")
    assert before is not None
    objects.patch("C3osMachine", namespace, "obj", {"metadata": {"annotations": {PAUSED: ""}}})
    eventually(
        lambda: reconciled(objects, "C3osMachine", namespace, "obj", status="True", reason="Paused"),
        "Paused=True",
    )
    paused = objects.paused_condition("C3osMachine", namespace, "obj")
    assert paused is not None
    assert paused["message"] == "C3osMachine has the cluster.x-k8s.io/paused annotation"
    objects.patch("C3osMachine", namespace, "obj", {"metadata": {"annotations": {PAUSED: None}}})
    eventually(
        lambda: reconciled(objects, "C3osMachine", namespace, "obj", status="False", reason="NotPaused"),
        "unpaused",
    )

    # JSON logs: every line one JSON object, object named where kopf knows it.
    lines = [line for line in manager.process.log_path.read_text().splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]
    assert all({"time", "level", "logger", "message"} <= set(e) for e in entries)
    assert any(e.get("namespace") == namespace and e.get("name") == "obj" for e in entries)


def test_cluster_spec_paused_pauses_its_objects_and_unpausing_wakes_them(
    start_manager: Callable[..., Manager], objects: Objects, namespace: str, k8s: Any
) -> None:
    clusters = kc.CustomObjectsApi(k8s)
    cluster = {
        "apiVersion": "cluster.x-k8s.io/v1beta2",
        "kind": "Cluster",
        "metadata": {"name": "edge"},
        "spec": {
            "paused": True,
            "infrastructureRef": {"apiGroup": INFRA, "kind": "C3osCluster", "name": "edge"},
        },
    }
    clusters.create_namespaced_custom_object("cluster.x-k8s.io", "v1beta2", namespace, "clusters", cluster)
    objects.create("C3osCluster", namespace, "edge", labels={CLUSTER_NAME: "edge"})
    manager = start_manager("manager")
    manager.wait_ready()

    eventually(
        lambda: reconciled(objects, "C3osCluster", namespace, "edge", status="True", reason="Paused"),
        "Paused by Cluster",
    )
    condition = objects.paused_condition("C3osCluster", namespace, "edge")
    assert condition is not None
    assert condition["message"] == "Cluster spec.paused is set to true"
    # Paused: the condition is reported, but the generation is not claimed as handled.
    assert "observedGeneration" not in objects.get("C3osCluster", namespace, "edge")["status"]

    clusters.patch_namespaced_custom_object(
        "cluster.x-k8s.io", "v1beta2", namespace, "clusters", "edge", {"spec": {"paused": False}},
        _content_type="application/merge-patch+json",
    )  # fmt: skip
    # Nothing about the C3osCluster changed: only the Cluster watch can wake it this soon
    # (the periodic resync is 10 minutes away).
    eventually(
        lambda: reconciled(objects, "C3osCluster", namespace, "edge", status="False", reason="NotPaused"),
        "unpaused by Cluster",
    )
    # A requeue of the paused reconcile may write NotPaused first on a busy machine; the
    # Cluster watch's own reconcile still comes (queued behind it).
    eventually(
        lambda: manager.metric_sum("capi_c3os_reconcile_total", kind="C3osCluster", trigger="cluster") >= 1,
        "a reconcile woken by the Cluster watch",
    )


def test_standby_replica_stays_idle_until_the_leader_stops_then_takes_over(
    start_manager: Callable[..., Manager], objects: Objects, namespace: str
) -> None:
    flags, lease = lease_flags(namespace)
    first = start_manager("first", *flags)
    first.wait_ready()
    first_id = first.identity()
    assert objects.holder(namespace, lease) == first_id

    second = start_manager("second", *flags)
    # The standby has read the lease and found it held: from here on it is waiting.
    second.process.wait_until(
        lambda: second.metric_sum("capi_c3os_leader_election_attempts_total", result="held_by_other") >= 2,
        "standby to observe the held lease",
    )
    assert second.status("/healthz") == 200
    assert second.status("/readyz") == 200  # ready to take over: rolling updates must not stall
    assert second.metric_sum("capi_c3os_leader") == 0

    objects.create("C3osConfig", namespace, "during-first")
    eventually(
        lambda: reconciled(
            objects, "C3osConfig", namespace, "during-first", status="False", reason="NotPaused"
        ),
        "leader reconciles",
    )
    assert first.metric_sum("capi_c3os_reconcile_total") >= 1
    assert second.metric_sum("capi_c3os_reconcile_total") == 0
    assert second.metric_sum("capi_c3os_leader") == 0
    assert objects.holder(namespace, lease) == first_id

    assert first.stop() == 0
    second.process.wait_until(lambda: second.metric_sum("capi_c3os_leader") == 1, "standby to take the lease")
    second.wait_ready()
    assert objects.holder(namespace, lease) == second.identity() != first_id
    lease_obj = objects.lease(namespace, lease)
    assert lease_obj is not None
    assert lease_obj["spec"]["leaseTransitions"] >= 1
    # The new leader picks up existing objects (resume) and new ones.
    # kopf resumes a finished object as "resume" and one whose handler was still retrying
    # (a C3osConfig waiting for its Machine) as its unfinished "create".
    eventually(lambda: second.metric_sum("capi_c3os_reconcile_total", kind="C3osConfig") >= 1, "pick-up")
    objects.create("C3osConfig", namespace, "during-second")
    eventually(
        lambda: reconciled(
            objects, "C3osConfig", namespace, "during-second", status="False", reason="NotPaused"
        ),
        "new leader reconciles",
    )

    assert second.stop() == 0
    assert objects.holder(namespace, lease) in ("", None)


def test_namespace_and_providers_flags_restrict_what_is_reconciled(
    start_manager: Callable[..., Manager], objects: Objects, new_namespace: Callable[[], str]
) -> None:
    watched, other = new_namespace(), new_namespace()
    # Created before the manager starts, so its first listing would include them.
    objects.create("C3osConfig", other, "elsewhere")
    objects.create("C3osMachine", watched, "not-my-provider")
    objects.create("C3osConfig", watched, "first")

    manager = start_manager(
        "manager", "--namespace", watched, "--providers", "bootstrap", "--sync-period", "1"
    )
    manager.wait_ready()
    eventually(
        lambda: reconciled(objects, "C3osConfig", watched, "first", status="False", reason="NotPaused"),
        "first",
    )
    # A later object in the watched namespace is reconciled too; by then the earlier
    # objects outside the manager's scope would long have been handled if it saw them.
    objects.create("C3osConfig", watched, "second")
    eventually(
        lambda: reconciled(objects, "C3osConfig", watched, "second", status="False", reason="NotPaused"),
        "second",
    )
    # The periodic resync (every second here) keeps to the same scope.
    eventually(
        lambda: manager.metric_sum("capi_c3os_reconcile_total", kind="C3osConfig", trigger="resync") >= 4,
        "two resyncs of both objects",
    )

    for kind, namespace, name in (
        ("C3osConfig", other, "elsewhere"),
        ("C3osMachine", watched, "not-my-provider"),
    ):
        obj = objects.get(kind, namespace, name)
        assert "status" not in obj or not obj["status"].get("conditions"), (kind, namespace, name)
        assert not any(k.startswith("kopf.") for k in (obj["metadata"].get("annotations") or {}))
    assert manager.metric_sum("capi_c3os_reconcile_total", kind="C3osMachine") == 0
    assert manager.stop() == 0


def test_leader_that_loses_its_lease_stops_at_once_with_an_error(
    start_manager: Callable[..., Manager], objects: Objects, namespace: str, k8s: Any
) -> None:
    flags, lease = lease_flags(namespace)
    manager = start_manager("manager", *flags)
    manager.wait_ready()

    # Another candidate takes the lease behind our back (as after a network partition
    # that outlasted the lease): the manager must notice at its next renewal and quit.
    stolen = objects.lease(namespace, lease)
    assert stolen is not None
    stolen["spec"]["holderIdentity"] = "thief"
    kc.CustomObjectsApi(k8s).replace_namespaced_custom_object(
        "coordination.k8s.io", "v1", namespace, "leases", lease, stolen
    )
    eventually(lambda: not manager.process.alive(), "the manager to exit")
    assert manager.stop() == 1
    assert objects.holder(namespace, lease) == "thief"  # it did not "release" someone else's lease
    assert "leadership lost" in manager.process.tail(10)


PROVIDER_KINDS = {
    "infrastructure": ("C3osCluster", "C3osMachine"),
    "bootstrap": ("C3osConfig",),
    "control-plane": ("C3osControlPlane",),
}


@pytest.mark.parametrize("provider", list(PROVIDER_KINDS))
def test_each_provider_runs_with_only_the_rbac_its_components_grant(
    mgmt: ManagementPlane,
    start_manager: Callable[..., Manager],
    objects: Objects,
    namespace: str,
    tmp_path: Path,
    provider: str,
) -> None:
    """The manager authenticates as the components' ServiceAccount, so the API server
    enforces exactly the generated ClusterRole and Role (no admin rights)."""
    kubeconfig, components = provider_identity(mgmt, provider, tmp_path)
    account = next(d for d in components if d["kind"] == "ServiceAccount")["metadata"]
    lease_role = next(d for d in components if d["kind"] == "Role")
    lease = next(r["resourceNames"][0] for r in lease_role["rules"] if r.get("resourceNames"))

    manager = start_manager(
        f"rbac-{provider}",
        "--kubeconfig", str(kubeconfig),
        f"--providers={provider}",
        "--leader-elect",
        f"--leader-election-namespace={account['namespace']}",
        f"--leader-election-id={lease}",
    )  # fmt: skip
    manager.wait_ready()
    for kind in PROVIDER_KINDS[provider]:
        objects.create(kind, namespace, "least")
        eventually(
            functools.partial(
                reconciled, objects, kind, namespace, "least", status="False", reason="NotPaused"
            ),
            f"{kind} reconciled under the provider's own RBAC",
        )
    assert manager.stop() == 0
    log = manager.process.log_path.read_text()
    assert "Forbidden" not in log and " 403" not in log, manager.process.tail(40)
