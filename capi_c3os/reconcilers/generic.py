"""The part of reconciling that is the same for every kind of ours, and for now the
whole of it: find the owner Cluster, decide pause, report it.

Level-triggered: it reads the object and its Cluster afresh and writes the status they
imply, whatever woke it up (create, update, resume, resync, a Cluster change). The
providers' own steps (later issues) run after the pause check, only when not paused.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from capi_c3os.capi.outcome import Outcome
from capi_c3os.capi.owners import owner_cluster_name
from capi_c3os.capi.pause import is_paused, paused_condition
from capi_c3os.capi.status import status_patch
from capi_c3os.reconcilers.kube import CLUSTERS, Kube, Resource
from capi_c3os.reconcilers.view import Reader

log = logging.getLogger(__name__)


def fetch_owner_cluster(kube: Reader, obj: dict[str, Any]) -> dict[str, Any] | None:
    """The Cluster the object belongs to, or None when it has none yet or it is gone
    (then only the object's own pause annotation counts)."""
    name = owner_cluster_name(obj)
    if not name:
        return None
    return kube.get(CLUSTERS, obj["metadata"]["namespace"], name)


def reconcile(kube: Kube, resource: Resource, obj: dict[str, Any], now: datetime | None = None) -> Outcome:
    """Write `Paused` (and, when not paused, `status.observedGeneration`) in at most one
    status patch. Raises `ConflictError` when the object changed since `obj` was read."""
    now = now or datetime.now(UTC)
    meta = obj["metadata"]
    cluster = fetch_owner_cluster(kube, obj)
    paused = is_paused(obj, cluster)
    condition = paused_condition(obj, cluster, now)
    # Like CAPI's EnsurePausedCondition: while paused only the Paused condition changes;
    # observedGeneration claims "this spec was acted on", which a paused object was not.
    generation = None if paused else meta.get("generation")
    patch = status_patch(obj, [condition], observed_generation=generation)
    if patch is not None:
        kube.patch_status(resource, meta["namespace"], meta["name"], patch)
    if paused:
        return Outcome.paused(condition["message"])
    return Outcome.ready()
