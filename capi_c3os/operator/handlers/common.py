"""Handlers every kind gets, and turning an `Outcome` into kopf's language."""

from __future__ import annotations

from typing import Any

import kopf

from capi_c3os.capi.outcome import Outcome
from capi_c3os.operator.runtime import Kind, Runtime
from capi_c3os.operator.settings import HANDLER_BACKOFF
from capi_c3os.reconcilers.kube import ConflictError

CONFLICT_RETRY_DELAY = 1.0
"""Seconds before reconciling again when the object changed under us: short, because
the change itself is no error, only a reason to re-read."""


def to_kopf(outcome: Outcome) -> None:
    """done -> return None (kopf must not write a handler result into our status);
    wait -> TemporaryError with its delay; error -> PermanentError (stop retrying until
    the object changes)."""
    if outcome.waiting:
        raise kopf.TemporaryError(f"{outcome.reason}: {outcome.message}", delay=outcome.after or 0)
    if outcome.failed:
        raise kopf.PermanentError(f"{outcome.reason}: {outcome.message}")


def handle(runtime: Runtime, kind: Kind, obj: dict[str, Any], cause: str) -> None:
    """One kopf handler call: reconcile, then answer kopf (None, or its exceptions).
    An event of a version our own reconcile wrote (and went on from) needs none; never
    skipped for a deletion, where kopf's finalizer waits for the handler to be done."""
    if cause != "delete" and runtime.superseded(kind, obj):
        return
    try:
        outcome = runtime.reconcile(kind, obj, trigger=cause)
    except ConflictError as exc:
        # Common when a requeued run and this handler meet on one object.
        if _requeued(runtime, kind, obj, cause, CONFLICT_RETRY_DELAY):
            return
        raise kopf.TemporaryError(f"{exc}; reconciling again", delay=CONFLICT_RETRY_DELAY) from exc
    if outcome.waiting and _requeued(runtime, kind, obj, cause, outcome.after or 0.0):
        return
    to_kopf(outcome)


def _requeued(runtime: Runtime, kind: Kind, obj: dict[str, Any], cause: str, after: float) -> bool:
    """Hand a retry to the in-memory requeue rather than to kopf, whose retries cost an
    annotation write each. Not for deletion: there kopf's finalizer is what brings a
    restarted manager back to the object, and it stays only while the handler retries."""
    return cause != "delete" and runtime.requeue is not None and runtime.requeue(kind, obj, after)


def register_kind(
    registry: kopf.OperatorRegistry, kind: Kind, runtime: Runtime, deletion: bool = False
) -> None:
    """create, update and resume all run the same level-triggered reconcile: kopf's idea
    of "what changed" is only a wake-up call (after a restart or `clusterctl move` it
    has none). No timer: kopf's timers add kopf's finalizer to every object, which
    would block deletion whenever this manager is down; the periodic resync
    (resync.py) takes their place. With `deletion`, also a delete handler (and with it
    kopf's finalizer) for kinds whose deletion must wait for cleanup."""
    resource = kind.resource

    def reconcile(body: kopf.Body, reason: str, **_: Any) -> None:
        # dict(body) is a plain dict of the object as the API server sent it.
        handle(runtime, kind, dict(body), str(reason))

    causes = [(kopf.on.create, "create"), (kopf.on.update, "update"), (kopf.on.resume, "resume")]
    if deletion:
        # For kinds whose deletion must wait for cleanup: kopf runs no handler once
        # deletionTimestamp is set unless its own finalizer is on the object (an
        # `optional` delete handler is never called when only ours is there). So kopf's
        # finalizer is the wake-up and retry machinery for deletion; ours (named, CAPI
        # style) still says what guards the cleanup. Both block deletion while no manager
        # runs, which is what such kinds want anyway.
        causes.append((kopf.on.delete, "delete"))
    for on, cause in causes:
        on(
            resource.group,
            resource.version,
            resource.plural,
            registry=registry,
            id=f"reconcile-{cause}",
            backoff=HANDLER_BACKOFF,
        )(reconcile)
