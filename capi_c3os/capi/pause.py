"""CAPI's pause rule and the `Paused` condition.

Rule (cluster-api v1.14 `util/paused` and `util/annotations.IsPaused`): an object is
paused when its Cluster has `spec.paused: true` or the object itself carries the
`cluster.x-k8s.io/paused` annotation (any value). The annotation on the *Cluster* pauses
only CAPI's Cluster controller, not the objects that belong to the Cluster; we follow
CAPI so that `clusterctl move` (which sets `Cluster.spec.paused`) and users who
annotate one object see the same behaviour as with every other provider.

While paused a controller does nothing but report `Paused=True`; CAPI's `clusterctl
describe` and move tooling read that condition.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from capi_c3os.capi.conditions import FALSE, TRUE, Condition, new_condition
from capi_c3os.capi.metadata import PAUSED_ANNOTATION, annotations_of

PAUSED_CONDITION = "Paused"
PAUSED_REASON = "Paused"
NOT_PAUSED_REASON = "NotPaused"


def cluster_paused(cluster: dict[str, Any] | None) -> bool:
    return bool(cluster and (cluster.get("spec") or {}).get("paused") is True)


def has_paused_annotation(obj: dict[str, Any]) -> bool:
    return PAUSED_ANNOTATION in annotations_of(obj)


def is_paused(obj: dict[str, Any], cluster: dict[str, Any] | None) -> bool:
    """`cluster` is the owner Cluster, or None when the object has none (yet): then only
    the object's own annotation counts."""
    return cluster_paused(cluster) or has_paused_annotation(obj)


def paused_condition(obj: dict[str, Any], cluster: dict[str, Any] | None, now: datetime) -> Condition:
    """The `Paused` condition for `obj`, with CAPI's reasons and messages."""
    generation = (obj.get("metadata") or {}).get("generation")
    reasons = []
    if cluster_paused(cluster):
        reasons.append("Cluster spec.paused is set to true")
    if has_paused_annotation(obj):
        reasons.append(f"{obj.get('kind') or 'Object'} has the {PAUSED_ANNOTATION} annotation")
    if reasons:
        return new_condition(
            PAUSED_CONDITION, TRUE, PAUSED_REASON, ", ".join(reasons), generation=generation, now=now
        )
    return new_condition(PAUSED_CONDITION, FALSE, NOT_PAUSED_REASON, "", generation=generation, now=now)
