"""Replacing a server a MachineHealthCheck marked unhealthy, within quorum and the retry budget."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from capi_c3os.capi import conditions as cond
from capi_c3os.capi.outcome import Outcome
from capi_c3os.reconcilers.controlplane_context import (
    LONG_WAIT,
    SHORT_WAIT,
    ControlPlaneContext,
    active_machines,
    confirmed,
    deleting_machines,
    healthy,
    in_place_target,
)
from capi_c3os.reconcilers.kube import MACHINES

OWNER_REMEDIATED = "OwnerRemediated"


def _marked_for_remediation(machine: dict[str, Any]) -> bool:
    """A MachineHealthCheck found it unhealthy and left the remedy to us, its owner."""
    return cond.is_false(machine, OWNER_REMEDIATED)


def remediate(ctx: ControlPlaneContext) -> Outcome | None:
    """Replace one server a MachineHealthCheck marked unhealthy: only with more than one
    server, nothing else changing, etcd quorum kept without it, and within the retry
    budget (`spec.remediation`). None when there is nothing to remediate."""
    active = active_machines(ctx.machines)
    # A server in an in-place upgrade is not Ready while it reboots; a failed one keeps
    # running its old version and is not replaced automatically.
    marked = [m for m in active if _marked_for_remediation(m) and in_place_target(m, ctx.record_key) is None]
    if not marked:
        return None
    victim = marked[0]
    name = victim["metadata"]["name"]
    if len(active) <= 1 or ctx.spec.replicas <= 1:
        return Outcome.wait(
            "RemediationBlocked",
            f"{name} is unhealthy but is the only server; remediation needs replicas > 1",
            LONG_WAIT,
        )
    if deleting_machines(ctx.machines) or len(active) > ctx.spec.replicas:
        return Outcome.wait(
            "RemediationBlocked", f"{name} waits for another server change to finish", SHORT_WAIT
        )
    others = [m for m in active if m is not victim]
    healthy_others = sum(1 for m in others if healthy(ctx, m))
    if healthy_others < len(others) // 2 + 1:
        return Outcome.wait(
            "RemediationBlocked",
            f"removing {name} would lose etcd quorum ({healthy_others} of {len(others)} others Ready)",
            LONG_WAIT,
        )
    policy = ctx.spec.remediation
    last = ctx.last_remediation or {}
    retry = 0
    if last:
        since = ctx.now - datetime.fromisoformat(str(last["time"]).replace("Z", "+00:00"))
        min_healthy = policy.min_healthy_period_seconds if policy else 3600
        if since.total_seconds() < min_healthy:
            retry = int(last.get("retryCount", 0)) + 1
            period = policy.retry_period_seconds if policy else 0
            if since.total_seconds() < period:
                return Outcome.wait(
                    "RemediationBlocked",
                    f"retryPeriod: next remediation of a server after {period - int(since.total_seconds())}s",
                    SHORT_WAIT,
                )
            if policy and policy.max_retry is not None and retry > policy.max_retry:
                return Outcome.error(
                    "RemediationFailed",
                    f"{name} is unhealthy and {policy.max_retry} "
                    "remediation(s) did not help; fix the cause, then delete the Machine",
                )
    if not confirmed(ctx):
        return remediate(ctx)
    ctx.kube.delete(MACHINES, ctx.namespace, name, uid=victim["metadata"]["uid"])
    ctx.last_remediation = {"machine": name, "time": cond.format_time(ctx.now), "retryCount": retry}
    return Outcome.wait("Remediating", f"deleting unhealthy server {name}; a new one replaces it", SHORT_WAIT)
