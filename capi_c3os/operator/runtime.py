"""One place where every reconcile runs, whoever triggered it (a kopf handler, the
periodic resync, a Cluster change): metrics, logs, and the call into the reconcilers.
Blocking: called on worker threads only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from capi_c3os.capi.outcome import Outcome
from capi_c3os.operator import metrics
from capi_c3os.operator.logs import object_ref
from capi_c3os.reconcilers.kube import ConflictError, Kube, Resource
from capi_c3os.reconcilers.view import ClusterView

log = logging.getLogger(__name__)

ReconcileFn = Callable[..., Outcome]
"""(kube, resource, obj) -> Outcome; with `view=` too for kinds that read the view."""


@dataclass(frozen=True)
class Kind:
    """A kind we reconcile and the function that does it."""

    resource: Resource
    reconcile: ReconcileFn
    reads_view: bool = False
    """`reconcile` takes `view=`: the watch-fed ClusterView, when the manager keeps one."""
    signs_records: bool = False
    """`reconcile` takes `record_key=`: the manager's site record key (site_record.py)."""


def result_label(outcome: Outcome) -> str:
    if outcome.done and outcome.reason == "Paused":
        return "paused"
    return outcome.kind.value


Requeue = Callable[[Kind, dict[str, Any], float], bool]
"""(kind, obj, after) -> whether a re-run of `obj` after `after` seconds was taken on."""


class Runtime:
    def __init__(self, kube: Kube, view: ClusterView | None = None, record_key: bytes | None = None) -> None:
        self.kube = kube
        self.view = view
        self.record_key = record_key
        """Set when the manager runs a kind that `signs_records`."""
        self.requeue: Requeue | None = None
        """Set by the manager once the resync runs: kopf handlers hand their waits to it."""

    def superseded(self, kind: Kind, obj: dict[str, Any]) -> bool:
        """`obj` is a version our own reconcile wrote and went on from (see
        `OwnWrites`): an event of it needs no reconcile. Counted."""
        if self.kube.own_writes is None or not self.kube.own_writes.produced(obj):
            return False
        metrics.SUPERSEDED.labels(kind.resource.kind).inc()
        log.debug("event of our own write: nothing to reconcile", extra=object_ref(obj))
        return True

    def reconcile(self, kind: Kind, obj: dict[str, Any], trigger: str) -> Outcome:
        """Run `kind.reconcile` on `obj`; `ConflictError` and unexpected exceptions propagate
        (the caller decides how to retry) after being counted."""
        name = kind.resource.kind
        started = time.perf_counter()
        result = "exception"
        try:
            extra: dict[str, Any] = {}
            if kind.reads_view and self.view is not None:
                extra["view"] = self.view
            if kind.signs_records:
                if self.record_key is None:  # a wiring bug: never reconcile unsigned
                    raise RuntimeError(f"{name} needs the record key, and the manager has none")
                extra["record_key"] = self.record_key
            if self.kube.own_writes is not None:
                with self.kube.own_writes.reconciling(obj):
                    outcome = kind.reconcile(self.kube, kind.resource, obj, **extra)
            else:
                outcome = kind.reconcile(self.kube, kind.resource, obj, **extra)
            result = result_label(outcome)
        except ConflictError:
            result = "conflict"
            raise
        finally:
            metrics.RECONCILE_SECONDS.labels(name).observe(time.perf_counter() - started)
            metrics.RECONCILES.labels(name, trigger, result).inc()
        if not outcome.done:
            log.info(
                "%s %s: %s (%s)", trigger, result, outcome.message, outcome.reason, extra=object_ref(obj)
            )
        else:
            log.debug("%s %s", trigger, result, extra=object_ref(obj))
        return outcome
