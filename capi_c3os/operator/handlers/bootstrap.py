"""bootstrap-c3os: C3osConfig (templates need no handlers: ClusterClass clones them)."""

from __future__ import annotations

import kopf

from capi_c3os.capi.metadata import BOOTSTRAP_GROUP
from capi_c3os.operator.handlers.common import register_kind
from capi_c3os.operator.runtime import Kind, Runtime
from capi_c3os.reconcilers import c3osconfig
from capi_c3os.reconcilers.kube import Resource

C3OS_CONFIG = Resource(BOOTSTRAP_GROUP, "v1alpha1", "c3osconfigs", "C3osConfig")

KINDS = (Kind(C3OS_CONFIG, c3osconfig.reconcile, reads_view=True),)


def register(registry: kopf.OperatorRegistry, runtime: Runtime) -> None:
    for kind in KINDS:
        register_kind(registry, kind, runtime)
