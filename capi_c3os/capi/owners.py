"""Who owns an object: its Cluster and its Machine.

CAPI links objects two ways: the `cluster.x-k8s.io/cluster-name` label (set by CAPI on
everything it clones, and the only link CAPI's own watches use) and ownerReferences
(set by the owner's controller, followed by `clusterctl move` and the garbage
collector). The label wins when both exist: ownerReferences may lag behind — CAPI sets
the Machine -> InfraMachine ownerRef only after it first reconciles the Machine.
"""

from __future__ import annotations

from typing import Any

from capi_c3os.capi.metadata import CLUSTER_NAME_LABEL, CORE_GROUP, api_group, labels_of


def owner_references(obj: dict[str, Any]) -> list[dict[str, Any]]:
    refs: list[dict[str, Any]] = (obj.get("metadata") or {}).get("ownerReferences") or []
    return refs


def owner_reference(obj: dict[str, Any], kind: str, group: str = CORE_GROUP) -> dict[str, Any] | None:
    """The ownerReference of `kind` in API `group` (any version: an object written
    under v1beta1 keeps that apiVersion in its refs until rewritten); the controller
    reference first when several match."""
    matches = [
        ref
        for ref in owner_references(obj)
        if ref.get("kind") == kind and api_group(str(ref.get("apiVersion", ""))) == group
    ]
    matches.sort(key=lambda ref: not ref.get("controller", False))
    return matches[0] if matches else None


def owner_cluster_name(obj: dict[str, Any]) -> str | None:
    """Name of the Cluster the object belongs to (same namespace), or None while CAPI
    has not linked it yet."""
    label = labels_of(obj).get(CLUSTER_NAME_LABEL)
    if label:
        return label
    ref = owner_reference(obj, "Cluster")
    name = ref.get("name") if ref else None
    return str(name) if name else None


def references(machine: dict[str, Any], infra: dict[str, Any]) -> bool:
    """Whether the Machine's spec.infrastructureRef names `infra`. CAPI adopts (owns) only
    the infrastructure machine its Machine references; an ownerReference alone is
    metadata anyone who edits the infrastructure machine can write, and must not hand it
    another Machine's bootstrap data."""
    ref = (machine.get("spec") or {}).get("infrastructureRef") or {}
    group = str(infra.get("apiVersion") or "").rpartition("/")[0]
    return (ref.get("apiGroup"), ref.get("kind"), ref.get("name")) == (
        group,
        infra.get("kind"),
        (infra.get("metadata") or {}).get("name"),
    )


def owner_machine_name(obj: dict[str, Any]) -> str | None:
    """Name of the Machine that owns an InfraMachine or BootstrapConfig (same namespace),
    or None while the Machine controller has not adopted it yet."""
    ref = owner_reference(obj, "Machine")
    name = ref.get("name") if ref else None
    return str(name) if name else None
