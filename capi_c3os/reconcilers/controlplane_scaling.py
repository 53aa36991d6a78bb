"""The one change per reconcile: remediate, scale up or down, upgrade an outdated server
in place (strategy InPlace) or replace it (surge 1 or 0), each only while every other
server is healthy.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from capi_c3os.capi.metadata import DELETE_MACHINE_ANNOTATION
from capi_c3os.capi.outcome import Outcome
from capi_c3os.capi.versions import VERSION_MISMATCH
from capi_c3os.reconcilers.controlplane_context import (
    LONG_WAIT,
    SHORT_WAIT,
    ControlPlaneContext,
    active_machines,
    confirmed,
    deleting_machines,
    healthy,
)
from capi_c3os.reconcilers.controlplane_creation import create_machine, new_name, pick_failure_domain
from capi_c3os.reconcilers.controlplane_inplace import (
    continue_in_place_upgrade,
    in_place_candidate,
    in_place_strategy,
    start_in_place_upgrade,
)
from capi_c3os.reconcilers.controlplane_remediation import remediate
from capi_c3os.reconcilers.controlplane_rollout import (
    IN_PLACE_UPGRADE_FAILED,
    outdated_machines,
    rollout_blocked,
    rollout_scheduled,
    template_mismatch,
)
from capi_c3os.reconcilers.kube import MACHINES


def scale(ctx: ControlPlaneContext) -> Outcome:
    if ctx.in_place is not None:
        return ctx.in_place  # an upgrade in flight: nothing else changes meanwhile
    remedy = remediate(ctx)
    if remedy is not None:
        return remedy
    active = active_machines(ctx.machines)
    if deleting_machines(ctx.machines):
        return Outcome.wait("ScalingDown", "waiting for a server Machine to be deleted", SHORT_WAIT)
    outdated = outdated_machines(ctx, active)
    blocked = rollout_blocked(ctx, active)
    if outdated and blocked and len(active) == ctx.spec.replicas:
        return blocked
    if outdated or len(active) < ctx.spec.replicas:
        # Before a server is removed (surge 0) or made: an image that says it ships
        # another version would only be found out after the first replacement.
        ctx.template_mismatch = template_mismatch(ctx)
        if ctx.template_mismatch:
            return Outcome.wait(VERSION_MISMATCH, ctx.template_mismatch, LONG_WAIT)
    if outdated and len(active) == ctx.spec.replicas:
        if ctx.in_place_failure and in_place_strategy(ctx):
            return Outcome.error(IN_PLACE_UPGRADE_FAILED, ctx.in_place_failure)
        candidate = in_place_candidate(ctx, outdated)
        if candidate is not None:
            started = start_in_place_upgrade(ctx, active, candidate)
            if started is None:  # listed afresh: an upgrade in flight shows now, if any
                continue_in_place_upgrade(ctx)
                return scale(ctx)
            return started
    strategy = ctx.spec.rollout.strategy if ctx.spec.rollout else None
    surge = strategy.rolling_update.max_surge if strategy and strategy.rolling_update else 1
    unhealthy = [m["metadata"]["name"] for m in active if not healthy(ctx, m)]

    want_more = len(active) < ctx.spec.replicas or (outdated and surge and len(active) == ctx.spec.replicas)
    if want_more:
        if active and not ctx.initialized:
            return Outcome.wait(
                "WaitingForControlPlaneInitialized",
                "the first server has not initialised the cluster yet",
                SHORT_WAIT,
            )
        if unhealthy:
            return Outcome.wait(
                "WaitingForHealthyServers",
                f"not adding a server while {', '.join(unhealthy)} is not Ready",
                SHORT_WAIT,
            )
        if not confirmed(ctx):
            return scale(ctx)
        name = new_name(ctx)
        blocked = create_machine(ctx, name, pick_failure_domain(ctx))
        if blocked:
            return blocked
        reason = "ScalingUp" if len(active) < ctx.spec.replicas else "RollingOut"
        return Outcome.wait(reason, f"created server Machine {name}", SHORT_WAIT)

    if len(active) > ctx.spec.replicas or outdated:
        candidates = outdated if len(active) <= ctx.spec.replicas else active
        victim = _pick_for_deletion(ctx, candidates)
        others_unhealthy = [n for n in unhealthy if n != victim["metadata"]["name"]]
        if others_unhealthy:
            return Outcome.wait(
                "WaitingForHealthyServers",
                f"not removing a server while {', '.join(others_unhealthy)} is not Ready",
                SHORT_WAIT,
            )
        if not confirmed(ctx):
            return scale(ctx)
        ctx.kube.delete(MACHINES, ctx.namespace, victim["metadata"]["name"], uid=victim["metadata"]["uid"])
        return Outcome.wait(
            "ScalingDown", f"deleting server Machine {victim['metadata']['name']}", SHORT_WAIT
        )
    if unhealthy:
        return Outcome.wait("WaitingForHealthyServers", f"{', '.join(unhealthy)} not Ready yet", SHORT_WAIT)
    scheduled = rollout_scheduled(ctx, active)
    if scheduled is not None:
        return scheduled
    return Outcome.ready("Available", f"{len(active)} of {ctx.spec.replicas} servers Ready")


def _pick_for_deletion(ctx: ControlPlaneContext, candidates: list[dict[str, Any]]) -> dict[str, Any]:
    """Marked for deletion first, then outdated, then the oldest in the failure domain
    with the most servers."""
    marked = [m for m in candidates if DELETE_MACHINE_ANNOTATION in (m["metadata"].get("annotations") or {})]
    if marked:
        return marked[0]
    outdated = outdated_machines(ctx, candidates)
    if outdated:
        return outdated[0]
    per_domain = Counter(m["spec"].get("failureDomain") for m in candidates)
    crowded = max(per_domain.values())
    return next(m for m in candidates if per_domain[m["spec"].get("failureDomain")] == crowded)
