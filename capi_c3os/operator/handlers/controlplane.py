"""control-plane-c3os: C3osControlPlane (templates need no handlers)."""

from __future__ import annotations

import kopf

from capi_c3os.capi.metadata import CONTROL_PLANE_GROUP
from capi_c3os.operator.handlers.common import register_kind
from capi_c3os.operator.runtime import Kind, Runtime
from capi_c3os.reconcilers import generic
from capi_c3os.reconcilers.kube import Resource

C3OS_CONTROL_PLANE = Resource(CONTROL_PLANE_GROUP, "v1alpha1", "c3oscontrolplanes", "C3osControlPlane")

KINDS = (Kind(C3OS_CONTROL_PLANE, generic.reconcile),)


def register(registry: kopf.OperatorRegistry, runtime: Runtime) -> None:
    for kind in KINDS:
        register_kind(registry, kind, runtime)
