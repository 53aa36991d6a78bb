"""control-plane-c3os: C3osControlPlane (templates need no handlers)."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable
from typing import Any

import kopf

from capi_c3os.capi.metadata import (
    CLUSTER_NAME_LABEL,
    CLUSTER_SECRET_TYPE,
    CONTROL_PLANE_GROUP,
    MACHINE_CONTROL_PLANE_LABEL,
)
from capi_c3os.capi.owners import owner_references
from capi_c3os.operator.handlers.common import register_kind
from capi_c3os.operator.runtime import Kind, Runtime
from capi_c3os.reconcilers import c3oscontrolplane
from capi_c3os.reconcilers.kube import MACHINES, ConflictError, Resource

log = logging.getLogger(__name__)


class Coalescer:
    """At most one wake-up per key waits while another runs: a burst of Machine events
    (CAPI writes a Machine several times as it provisions) becomes one more reconcile,
    not one each. Dropping is safe because the waiting one starts after the dropped
    event was seen (the view is fed before this handler runs) and reads from scratch."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._waiting: set[tuple[str, str]] = set()
        self._running: dict[tuple[str, str], threading.Lock] = {}

    def run(self, key: tuple[str, str], wake: Callable[[], None]) -> None:
        with self._guard:
            if key in self._waiting:
                return
            self._waiting.add(key)
            lock = self._running.setdefault(key, threading.Lock())
        with lock:
            with self._guard:
                self._waiting.discard(key)
            wake()


C3OS_CONTROL_PLANE = Resource(CONTROL_PLANE_GROUP, "v1alpha1", "c3oscontrolplanes", "C3osControlPlane")

KINDS = (Kind(C3OS_CONTROL_PLANE, c3oscontrolplane.reconcile, reads_view=True, signs_records=True),)


def machine_essence(machine: dict[str, Any]) -> str:
    """What of a server Machine the control plane acts on: metadata it reads, spec,
    nodeRef, phase, initialization and each condition's status. CAPI rewrites condition
    reasons, messages and times often; those alone need no reconcile."""
    meta = machine.get("metadata") or {}
    status = machine.get("status") or {}
    conditions = sorted((str(c.get("type")), str(c.get("status"))) for c in status.get("conditions") or [])
    return json.dumps(
        [meta.get("labels"), meta.get("annotations"), meta.get("deletionTimestamp"),
         meta.get("ownerReferences"), machine.get("spec"), status.get("nodeRef"), status.get("phase"),
         status.get("initialization"), conditions],
        sort_keys=True,
    )  # fmt: skip


class Changes:
    """The last essence seen per object uid: tells an event that matters from one that
    does not. First sight (kopf's listing after a start) always matters."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._seen: dict[str, str] = {}

    def matters(self, event_type: str | None, obj: dict[str, Any], essence: str) -> bool:
        uid = str((obj.get("metadata") or {}).get("uid"))
        with self._guard:
            if event_type == "DELETED":
                self._seen.pop(uid, None)
                return True
            before = self._seen.get(uid)
            self._seen[uid] = essence
        return before != essence


def register(registry: kopf.OperatorRegistry, runtime: Runtime) -> None:
    for kind in KINDS:
        register_kind(registry, kind, runtime, deletion=True)

    wakeups = Coalescer()
    machine_changes = Changes()

    # A server Machine's progress (provisioned, nodeRef, Node health, deletion) shows on
    # the Machine, and a kubeconfig Secret can be changed by hand: wake the owning
    # control plane when either changes.
    def owned_object_changed(body: kopf.Body, **_: Any) -> None:
        owned = dict(body)
        owner = next((r for r in owner_references(owned) if r.get("kind") == "C3osControlPlane"), None)
        if owner is None:
            return
        namespace = owned["metadata"]["namespace"]

        def wake() -> None:
            obj = runtime.kube.get(C3OS_CONTROL_PLANE, namespace, owner["name"])
            if obj is None:
                return
            # A conflict means our object changed meanwhile: its own handler runs next.
            with contextlib.suppress(ConflictError):
                runtime.reconcile(KINDS[0], obj, trigger="machine")

        wakeups.run((namespace, owner["name"]), wake)

    def machine_changed(type: str | None, body: kopf.Body, **_: Any) -> None:
        machine = dict(body)
        if machine_changes.matters(type, machine, machine_essence(machine)):
            owned_object_changed(body)

    kopf.on.event(
        MACHINES.group,
        MACHINES.version,
        MACHINES.plural,
        labels={MACHINE_CONTROL_PLANE_LABEL: kopf.PRESENT},
        registry=registry,
        id="control-plane-machines",
    )(machine_changed)
    kopf.on.event(
        "",
        "v1",
        "secrets",
        labels={CLUSTER_NAME_LABEL: kopf.PRESENT},
        field="type",
        value=CLUSTER_SECRET_TYPE,
        registry=registry,
        id="control-plane-secrets",
    )(owned_object_changed)
