"""The status of a C3osControlPlane: replica counts, versions, selector and conditions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from capi_c3os.capi import conditions as cond
from capi_c3os.capi.outcome import Outcome
from capi_c3os.capi.versions import VERSION_MATCHES, VERSION_MISMATCH, status_versions
from capi_c3os.reconcilers.controlplane_context import (
    ControlPlaneContext,
    active_machines,
    deleting_machines,
    healthy,
    running_version,
)
from capi_c3os.reconcilers.controlplane_etcd import (
    ETCD_MEMBERS_REMOVED,
    ETCD_REMOVAL_REFUSED,
    WAITING_FOR_ETCD_MEMBER,
    WAITING_FOR_ETCD_REMOVAL,
)
from capi_c3os.reconcilers.controlplane_rollout import ROLLOUT_SCHEDULED, outdated_because, outdated_machines


def status_fields(ctx: ControlPlaneContext) -> dict[str, Any]:
    active = active_machines(ctx.machines)
    ready = [m for m in active if healthy(ctx, m)]
    # CAPI v1.14: what each server runs (its Node's kubelet version, else the version
    # its Machine wants while no Node reported one), oldest first. The topology
    # controller reads it to tell when the control plane is upgraded.
    versions = status_versions(
        running_version(ctx, m) or str(m["spec"].get("version") or "") for m in ctx.machines
    )
    up_to_date = [
        m for m in active if not outdated_because(ctx.spec, m) and m["metadata"]["name"] not in ctx.mismatches
    ]
    fields: dict[str, Any] = {
        "selector": ctx.selector,
        "replicas": len(ctx.machines),
        "readyReplicas": len(ready),
        "availableReplicas": len(ready),
        "upToDateReplicas": len(up_to_date),
        "versions": versions,
    }
    if ctx.initialized:
        fields["initialization"] = {"controlPlaneInitialized": True}
    if ctx.last_remediation:
        fields["lastRemediation"] = ctx.last_remediation
    return fields


def conditions(ctx: ControlPlaneContext, outcome: Outcome, generation: int | None) -> list[cond.Condition]:
    active = active_machines(ctx.machines)
    ready = sum(1 for m in active if healthy(ctx, m))
    quorum = ctx.spec.replicas // 2 + 1
    available = ctx.initialized and ready >= min(quorum, max(len(active), 1))
    outdated = len(outdated_machines(ctx, active))
    detail = f"; workload cluster: {ctx.workload_error}" if ctx.workload_error else ""

    def c(type_: str, ok: bool, reason: str, message: str) -> cond.Condition:
        return cond.new_condition(
            type_, cond.TRUE if ok else cond.FALSE, reason, message, generation=generation, now=ctx.now
        )

    return [
        c(
            "Available",
            available,
            "Available" if available else "NotAvailable",
            f"{ready} of {len(active)} servers Ready{detail}",
        ),
        c(
            "RollingOut",
            outdated > 0,
            "RollingOut" if outdated else "NotRollingOut",
            _rolling_out_message(ctx, outdated),
        ),
        c(
            "ScalingUp",
            len(active) < ctx.spec.replicas,
            "ScalingUp" if len(active) < ctx.spec.replicas else "NotScalingUp",
            f"{len(active)} of {ctx.spec.replicas} servers" if len(active) < ctx.spec.replicas else "",
        ),
        c(
            "ScalingDown",
            len(active) > ctx.spec.replicas or bool(deleting_machines(ctx.machines)),
            "ScalingDown"
            if len(active) > ctx.spec.replicas or deleting_machines(ctx.machines)
            else "NotScalingDown",
            outcome.message if outcome.reason == "ScalingDown" else "",
        ),
        _etcd_condition(ctx, c),
        _version_condition(ctx, generation),
        c(
            "Ready",
            outcome.done or outcome.reason == ROLLOUT_SCHEDULED,
            outcome.reason or "Ready",
            outcome.message,
        ),
    ]


def _rolling_out_message(ctx: ControlPlaneContext, outdated: int) -> str:
    """How many servers are outdated; with strategy InPlace also which one is being
    upgraded (and how far it got) and why the others are replaced instead."""
    if not outdated:
        return ""
    if ctx.upgrading is None and not ctx.replacing:
        return f"{outdated} server(s) to replace"
    parts = [f"{outdated} server(s) outdated"]
    if ctx.upgrading is not None:
        parts.append(ctx.in_place_failure or ctx.upgrading[1])
    parts += [
        f"{name} is replaced, not upgraded in place: {why}" for name, why in sorted(ctx.replacing.items())
    ]
    return "; ".join(parts)


def _version_condition(ctx: ControlPlaneContext, generation: int | None) -> cond.Condition:
    if ctx.template_mismatch:
        return cond.new_condition(
            VERSION_MISMATCH,
            cond.TRUE,
            "ImageVersionMismatch",
            ctx.template_mismatch,
            generation=generation,
            now=ctx.now,
        )
    if not ctx.mismatches:
        return cond.new_condition(
            VERSION_MISMATCH, cond.FALSE, VERSION_MATCHES, "", generation=generation, now=ctx.now
        )
    message = "; ".join(f"{name}: {why}" for name, why in sorted(ctx.mismatches.items()))
    return cond.new_condition(
        VERSION_MISMATCH, cond.TRUE, VERSION_MISMATCH, message, generation=generation, now=ctx.now
    )


def _etcd_condition(
    ctx: ControlPlaneContext, c: Callable[[str, bool, str, str], cond.Condition]
) -> cond.Condition:
    if not ctx.etcd_waits:
        return c(ETCD_MEMBERS_REMOVED, True, "NoneWaiting", "")
    reasons = [reason for reason, _ in ctx.etcd_waits]
    # The worst first: a refusal needs a person, a missing annotation ends by itself.
    reason = next(
        r for r in (ETCD_REMOVAL_REFUSED, WAITING_FOR_ETCD_MEMBER, WAITING_FOR_ETCD_REMOVAL) if r in reasons
    )
    return c(ETCD_MEMBERS_REMOVED, False, reason, "; ".join(message for _, message in ctx.etcd_waits))
