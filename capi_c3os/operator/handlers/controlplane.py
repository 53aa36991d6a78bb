"""control-plane-c3os: C3osControlPlane (templates need no handlers)."""

from __future__ import annotations

import contextlib
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

KINDS = (Kind(C3OS_CONTROL_PLANE, c3oscontrolplane.reconcile, reads_view=True),)


def register(registry: kopf.OperatorRegistry, runtime: Runtime) -> None:
    for kind in KINDS:
        register_kind(registry, kind, runtime, deletion=True)

    wakeups = Coalescer()

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

    kopf.on.event(
        MACHINES.group,
        MACHINES.version,
        MACHINES.plural,
        labels={MACHINE_CONTROL_PLANE_LABEL: kopf.PRESENT},
        registry=registry,
        id="control-plane-machines",
    )(owned_object_changed)
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
