"""A C3osMachine is only ever itself: its identity comes from its own namespace and name,
a providerID naming anything else is refused, and the site recorded on it counts only
when the manager signed it for this very object. The reconciler with plain objects and
a recording backend."""

from __future__ import annotations

import base64
import copy
from datetime import UTC, datetime
from typing import Any, cast

import pytest

from capi_c3os.api.infrastructure import C3osMachine, LibvirtSite, Site
from capi_c3os.backends.base import MachineIdentity, MachineIntent, Phase, Progress, SiteCredentials
from capi_c3os.backends.registry import Backends
from capi_c3os.capi.outcome import Outcome
from capi_c3os.reconcilers import c3osmachine
from capi_c3os.reconcilers.c3osmachine import FINALIZER
from capi_c3os.reconcilers.kube import SECRETS, ConflictError, Kube, Resource
from capi_c3os.reconcilers.site_record import (
    SITE_ANNOTATION,
    ensure_record_key,
    signed_annotations,
    verified_site,
)

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
NOW = datetime(2026, 1, 1, tzinfo=UTC)
C3OS_MACHINES = Resource("infrastructure.cluster.x-k8s.io", "v1alpha1", "c3osmachines", "C3osMachine")
LAB = Site(name="lab", libvirt=LibvirtSite(uri="test:///default"))
ELSEWHERE = Site(name="lab", libvirt=LibvirtSite(uri="qemu+ssh://victim-host/system"))


class Store:
    """Objects by (kind, namespace, name); replace bumps resourceVersion like a server."""

    def __init__(self, *objects: dict[str, Any]) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        for obj in objects:
            self.put(obj)
        self.replaced: list[dict[str, Any]] = []

    def put(self, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        meta.setdefault("resourceVersion", "1")
        self.objects[(obj["kind"], meta["namespace"], meta["name"])] = copy.deepcopy(obj)

    def get(self, resource: Resource, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.objects.get((resource.kind, namespace, name)))

    def create(self, resource: Resource, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        if (resource.kind, namespace, body["metadata"]["name"]) in self.objects:
            raise ConflictError("exists")
        self.put({**body, "kind": resource.kind})
        return copy.deepcopy(body)

    def replace(self, resource: Resource, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        self.replaced.append(copy.deepcopy(body))
        body = copy.deepcopy(body)
        body["metadata"]["resourceVersion"] = str(int(body["metadata"]["resourceVersion"]) + 1)
        self.objects[(resource.kind, namespace, name)] = body
        return copy.deepcopy(body)

    def patch_status(self, resource: Resource, namespace: str, name: str, patch: dict[str, Any]) -> None:
        obj = self.objects.get((resource.kind, namespace, name))
        if obj is not None:
            obj.setdefault("status", {}).update(patch.get("status") or {})


class Recorder:
    def __init__(self) -> None:
        self.provisioned: list[MachineIntent] = []
        self.deprovisioned: list[tuple[MachineIdentity, Site]] = []

    def provision(self, intent: MachineIntent) -> Progress:
        self.provisioned.append(intent)
        return Progress(Phase.RUNNING, "Running")

    def deprovision(self, identity: MachineIdentity, site: Site, credentials: SiteCredentials) -> Progress:
        self.deprovisioned.append((identity, site))
        return Progress(Phase.DELETED, "Deleted")


def world(namespace: str = "tenant-b", with_c3os_cluster: bool = True) -> list[dict[str, Any]]:
    """A provisioned Cluster with one libvirt site, and a Machine `m` with bootstrap data."""
    objects = [
        {"kind": "Cluster", "metadata": {"namespace": namespace, "name": "c"},
         "spec": {"infrastructureRef": {"kind": "C3osCluster", "name": "c"}},
         "status": {"initialization": {"infrastructureProvisioned": True}}},
        {"kind": "Machine", "metadata": {"namespace": namespace, "name": "m"},
         "spec": {"clusterName": "c", "bootstrap": {"dataSecretName": "m-boot"},
                  "infrastructureRef": {"apiGroup": "infrastructure.cluster.x-k8s.io", "kind": "C3osMachine",
                                        "name": "m"}}},
        {"kind": "Secret", "metadata": {"namespace": namespace, "name": "m-boot"},
         "data": {"value": base64.b64encode(b"#cloud-config\n").decode()}},
    ]  # fmt: skip
    if with_c3os_cluster:
        objects.append({"kind": "C3osCluster", "metadata": {"namespace": namespace, "name": "c"},
                        "spec": {"sites": [LAB.to_wire()]}})  # fmt: skip
    return objects


def c3os_machine(
    namespace: str = "tenant-b",
    name: str = "m",
    provider_id: str | None = None,
    annotations: dict[str, str] | None = None,
    deleting: bool = False,
    owned: bool = True,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"backend": {"libvirt": {}}, "image": {"volume": "base.qcow2"}}
    if provider_id is not None:
        spec["providerID"] = provider_id
    meta: dict[str, Any] = {
        "namespace": namespace, "name": name, "generation": 1, "annotations": annotations or {},
        "labels": {"cluster.x-k8s.io/cluster-name": "c"},
    }  # fmt: skip
    if owned:
        meta["ownerReferences"] = [{"apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Machine", "name": "m",
                                    "uid": "u", "controller": True}]  # fmt: skip
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
        meta["finalizers"] = [FINALIZER]
    return {"apiVersion": "infrastructure.cluster.x-k8s.io/v1alpha1", "kind": "C3osMachine",
            "metadata": meta, "spec": spec}  # fmt: skip


def run(store: Store, obj: dict[str, Any], key: bytes = KEY) -> tuple[Outcome, Recorder]:
    recorder = Recorder()
    store.put(obj)
    outcome = c3osmachine.reconcile(
        cast(Kube, store),
        C3OS_MACHINES,
        store.get(C3OS_MACHINES, obj["metadata"]["namespace"], obj["metadata"]["name"]) or obj,
        backends=Backends({"libvirt": lambda: recorder}),
        now=NOW,
        record_key=key,
    )
    return outcome, recorder


def ready(store: Store, namespace: str = "tenant-b", name: str = "m") -> dict[str, Any]:
    obj = store.get(C3OS_MACHINES, namespace, name) or {}
    return next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")


def test_a_machine_is_provisioned_as_itself_with_a_signed_site_record() -> None:
    store = Store(*world())
    outcome, backend = run(store, c3os_machine())
    assert outcome.done, outcome
    [intent] = backend.provisioned
    assert intent.identity == MachineIdentity("tenant-b", "m", "c3os://tenant-b/m")
    assert intent.meta_data["provider-id"] == "c3os://tenant-b/m"
    stored = store.get(C3OS_MACHINES, "tenant-b", "m") or {}
    assert stored["spec"]["providerID"] == "c3os://tenant-b/m"
    assert verified_site(stored, KEY) == LAB
    assert verified_site(stored, OTHER_KEY) is None


def test_a_providerid_naming_another_machine_is_refused_and_nothing_is_created() -> None:
    store = Store(*world())
    outcome, backend = run(store, c3os_machine(provider_id="c3os://badin/m"))
    assert outcome.failed and outcome.reason == "InvalidProviderID"
    assert backend.provisioned == [] and store.replaced == []  # not even our finalizer
    condition = ready(store)
    assert condition["status"] == "False" and condition["reason"] == "InvalidProviderID"
    assert "c3os://badin/m" in condition["message"] and "c3os://tenant-b/m" in condition["message"]


def test_deleting_a_machine_with_a_foreign_providerid_deprovisions_nothing() -> None:
    # (b) of issue 13: our finalizer, the victim's providerID, a copied site record.
    victim = c3os_machine(namespace="badin", provider_id="c3os://badin/m")
    victim["metadata"]["annotations"] = signed_annotations(KEY, "badin", "m", ELSEWHERE)
    attacker = c3os_machine(provider_id="c3os://badin/m", deleting=True, owned=False)
    attacker["metadata"]["annotations"] = dict(victim["metadata"]["annotations"])
    store = Store(*world())
    outcome, backend = run(store, attacker)
    assert outcome.done
    assert backend.deprovisioned == []
    assert store.replaced[-1]["metadata"]["finalizers"] == []


def test_a_hand_written_or_copied_site_record_is_not_trusted_at_deletion() -> None:
    copied = signed_annotations(KEY, "badin", "victim", ELSEWHERE)  # another object's
    unsigned = {SITE_ANNOTATION: copied[SITE_ANNOTATION]}
    foreign_key = signed_annotations(OTHER_KEY, "tenant-b", "m", ELSEWHERE)
    for record in (copied, unsigned, foreign_key):
        store = Store(*world(with_c3os_cluster=False))
        obj = c3os_machine(provider_id="c3os://tenant-b/m", deleting=True, annotations=record)
        outcome, backend = run(store, obj)
        assert outcome.waiting and outcome.reason == "SiteUnknown", record
        assert backend.deprovisioned == []


def test_deletion_removes_only_the_machine_itself_at_its_signed_site() -> None:
    store = Store(*world(with_c3os_cluster=False))
    annotations = signed_annotations(KEY, "tenant-b", "m", LAB)
    obj = c3os_machine(provider_id="c3os://tenant-b/m", deleting=True, annotations=annotations)
    outcome, backend = run(store, obj)
    assert outcome.done
    assert backend.deprovisioned == [(MachineIdentity("tenant-b", "m", "c3os://tenant-b/m"), LAB)]


def test_a_record_signed_by_another_manager_is_re_signed_from_the_c3os_cluster() -> None:
    # After `clusterctl move` the record carries the source manager's signature.
    store = Store(*world())
    moved = c3os_machine(provider_id="c3os://tenant-b/m")
    moved["metadata"]["finalizers"] = [FINALIZER]
    moved["metadata"]["annotations"] = signed_annotations(OTHER_KEY, "tenant-b", "m", ELSEWHERE)
    outcome, backend = run(store, moved)
    assert outcome.done
    assert backend.provisioned[0].site == LAB
    assert verified_site(store.get(C3OS_MACHINES, "tenant-b", "m") or {}, KEY) == LAB
    # Once signed, the record stays as it is: no write on the next reconcile.
    replaced = len(store.replaced)
    run(store, store.get(C3OS_MACHINES, "tenant-b", "m") or {})
    assert len(store.replaced) == replaced


def test_the_model_refuses_a_providerid_of_another_object() -> None:
    good = c3os_machine(provider_id="c3os://tenant-b/m")
    assert C3osMachine.model_validate(good).spec.provider_id == "c3os://tenant-b/m"
    for bad in ("c3os://badin/m", "c3os://tenant-b/victim", "c3os://tenant-b/x/m", "aws:///m"):
        with pytest.raises(ValueError, match="providerID"):
            C3osMachine.model_validate(c3os_machine(provider_id=bad))


def test_the_record_key_is_made_once_and_read_back() -> None:
    store = Store()
    key = ensure_record_key(cast(Kube, store), "capi-system", "key")
    assert len(key) == 32
    assert ensure_record_key(cast(Kube, store), "capi-system", "key") == key
    secret = store.get(SECRETS, "capi-system", "key") or {}
    assert base64.b64decode(secret["data"]["key"]) == key


def test_a_record_key_secret_without_a_usable_key_stops_the_manager() -> None:
    store = Store(
        {"kind": "Secret", "metadata": {"namespace": "ns", "name": "key"}, "data": {"key": "c2hvcnQ="}}
    )
    with pytest.raises(RuntimeError, match="delete it") as err:
        ensure_record_key(cast(Kube, store), "ns", "key")
    assert "c2hvcnQ" not in str(err.value) and "short" not in str(err.value)
