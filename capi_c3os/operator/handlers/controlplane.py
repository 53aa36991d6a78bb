"""control-plane-c3os: C3osControlPlane (templates need no handlers)."""

from __future__ import annotations

import contextlib
import logging
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

C3OS_CONTROL_PLANE = Resource(CONTROL_PLANE_GROUP, "v1alpha1", "c3oscontrolplanes", "C3osControlPlane")

KINDS = (Kind(C3OS_CONTROL_PLANE, c3oscontrolplane.reconcile, reads_view=True),)


def register(registry: kopf.OperatorRegistry, runtime: Runtime) -> None:
    for kind in KINDS:
        register_kind(registry, kind, runtime, deletion=True)

    # A server Machine's progress (provisioned, nodeRef, Node health, deletion) shows on
    # the Machine, and a kubeconfig Secret can be changed by hand: wake the owning
    # control plane when either changes.
    def owned_object_changed(body: kopf.Body, **_: Any) -> None:
        owned = dict(body)
        owner = next((r for r in owner_references(owned) if r.get("kind") == "C3osControlPlane"), None)
        if owner is None:
            return
        obj = runtime.kube.get(C3OS_CONTROL_PLANE, owned["metadata"]["namespace"], owner["name"])
        if obj is None:
            return
        # A conflict means our object changed meanwhile: its own handler runs next.
        with contextlib.suppress(ConflictError):
            runtime.reconcile(KINDS[0], obj, trigger="machine")

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
