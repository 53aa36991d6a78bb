"""infrastructure-c3os: C3osCluster and C3osMachine (templates need no handlers)."""

from __future__ import annotations

import kopf

from capi_c3os.capi.metadata import INFRASTRUCTURE_GROUP
from capi_c3os.operator.handlers.common import register_kind
from capi_c3os.operator.runtime import Kind, Runtime
from capi_c3os.reconcilers import generic
from capi_c3os.reconcilers.kube import Resource

C3OS_CLUSTER = Resource(INFRASTRUCTURE_GROUP, "v1alpha1", "c3osclusters", "C3osCluster")
C3OS_MACHINE = Resource(INFRASTRUCTURE_GROUP, "v1alpha1", "c3osmachines", "C3osMachine")

KINDS = (Kind(C3OS_CLUSTER, generic.reconcile), Kind(C3OS_MACHINE, generic.reconcile))


def register(registry: kopf.OperatorRegistry, runtime: Runtime) -> None:
    for kind in KINDS:
        register_kind(registry, kind, runtime)
