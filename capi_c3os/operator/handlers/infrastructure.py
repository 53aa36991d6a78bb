"""infrastructure-c3os: C3osCluster, C3osMachine and C3osMachineTemplate (whose status
tells the autoscaler what a machine offers; C3osClusterTemplate needs no handler).

C3osCluster and C3osMachine own a finalizer (the backend must be empty before a machine
goes, the machines before their cluster), so they get the deletion handler too.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import kopf

from capi_c3os.backends.registry import BACKENDS
from capi_c3os.capi.metadata import INFRASTRUCTURE_GROUP
from capi_c3os.operator.handlers.common import CONFLICT_RETRY_DELAY, register_kind
from capi_c3os.operator.runtime import Kind, Runtime
from capi_c3os.operator.settings import HANDLER_BACKOFF
from capi_c3os.reconcilers import c3oscluster, c3osmachine, c3osmachinetemplate
from capi_c3os.reconcilers.kube import ConflictError, Resource

log = logging.getLogger(__name__)

C3OS_CLUSTER = Resource(INFRASTRUCTURE_GROUP, "v1alpha1", "c3osclusters", "C3osCluster")
C3OS_MACHINE = Resource(INFRASTRUCTURE_GROUP, "v1alpha1", "c3osmachines", "C3osMachine")
C3OS_MACHINE_TEMPLATE = Resource(
    INFRASTRUCTURE_GROUP, "v1alpha1", "c3osmachinetemplates", "C3osMachineTemplate"
)

KINDS = (
    Kind(C3OS_CLUSTER, c3oscluster.reconcile),
    Kind(C3OS_MACHINE, c3osmachine.reconcile, reads_view=True, signs_records=True),
    Kind(C3OS_MACHINE_TEMPLATE, c3osmachinetemplate.reconcile),
)
_WITH_CLEANUP = {C3OS_CLUSTER, C3OS_MACHINE}


def register(registry: kopf.OperatorRegistry, runtime: Runtime) -> None:
    for kind in KINDS:
        register_kind(registry, kind, runtime, deletion=kind.resource in _WITH_CLEANUP)
    BACKENDS.watch(functools.partial(_machine_changed, runtime))


def _machine_changed(runtime: Runtime, namespace: str, name: str) -> None:
    """A backend saw a machine change (a domain stopped): reconcile it now, on the
    backend's event thread (blocking is fine there). A failure is requeued: the event of
    a write it made before failing starts no reconcile (it is our own, see `OwnWrites`)."""
    obj = None
    try:
        obj = runtime.kube.get(C3OS_MACHINE, namespace, name)
        if obj is not None:
            runtime.reconcile(KINDS[1], obj, trigger="backend")
    except ConflictError:
        _requeue(runtime, obj, CONFLICT_RETRY_DELAY)  # it changed meanwhile
    except Exception as exc:
        log.info("reconcile after a backend event for %s/%s failed: %s", namespace, name, exc)
        _requeue(runtime, obj or {"metadata": {"namespace": namespace, "name": name}}, HANDLER_BACKOFF)


def _requeue(runtime: Runtime, obj: dict[str, Any] | None, after: float) -> None:
    if obj is not None and runtime.requeue is not None:
        runtime.requeue(KINDS[1], obj, after)
