"""Which servers are outdated and why (version, infrastructure template, server config,
rollout.after), what stops or schedules a rollout, and reporting it on the Machines
(`UpToDate`) and in place (labels, annotations, deletion timeouts without a rollout).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from capi_c3os.api.controlplane import C3osControlPlaneSpec
from capi_c3os.capi import conditions as cond
from capi_c3os.capi.outcome import Outcome
from capi_c3os.capi.status import status_patch
from capi_c3os.capi.versions import VERSION_MISMATCH, matches
from capi_c3os.reconcilers import contract, node_version
from capi_c3os.reconcilers.controlplane_context import (
    LONG_WAIT,
    ControlPlaneContext,
    active_machines,
    get_object,
    in_place_target,
    infra_resources,
    running_version,
)
from capi_c3os.reconcilers.kube import MACHINES, ConflictError

SERVER_CONFIG_ANNOTATION = "controlplane.cluster.x-k8s.io/c3os-server-config"
"""Hash of the server config a Machine was made with: a change means a rollout."""
INFRA_TEMPLATE_ANNOTATION = "controlplane.cluster.x-k8s.io/c3os-infrastructure-template"
"""The infrastructure template a Machine was cloned from: a new template means a rollout."""

ROLLOUT_SCHEDULED = "RolloutScheduled"
"""Ready, with a rollout.after ahead: a wait that is no trouble."""
UP_TO_DATE = "UpToDate"
UPGRADING_IN_PLACE = "UpgradingInPlace"
"""A server is being upgraded in place (Ready of the control plane, UpToDate of its Machine)."""
IN_PLACE_UPGRADE_FAILED = "InPlaceUpgradeFailed"
"""The in-place upgrade of a server failed: it keeps its version, the rollout stops."""


def server_config_hash(spec: C3osControlPlaneSpec) -> str:
    canonical = json.dumps(spec.server_config.to_wire(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def outdated_because(spec: C3osControlPlaneSpec, machine: dict[str, Any]) -> str | None:
    """Why a server Machine must be replaced or upgraded in place (None: it is up to date).
    The reasons of CAPI's own control planes: version, infrastructure template, server
    config, rollout.after."""
    annotations = machine["metadata"].get("annotations") or {}
    if machine.get("spec", {}).get("version") != spec.version:
        return f"version {machine.get('spec', {}).get('version')} is not {spec.version}"
    template = spec.machine_template.spec.infrastructure_ref.name
    if annotations.get(INFRA_TEMPLATE_ANNOTATION, template) != template:
        return f"infrastructure template changed to {template}"
    if annotations.get(SERVER_CONFIG_ANNOTATION, server_config_hash(spec)) != server_config_hash(spec):
        return "server config changed"
    after = rollout_after_passed(spec, machine)
    if after:
        return f"rollout.after {after.isoformat()} passed"
    return None


def rollout_after_passed(spec: C3osControlPlaneSpec, machine: dict[str, Any]) -> datetime | None:
    """`rollout.after` when it has passed since the Machine was made (a rollout restart)."""
    after = spec.rollout.after if spec.rollout else None
    created = machine["metadata"].get("creationTimestamp")
    if (
        after
        and created
        and datetime.fromisoformat(created.replace("Z", "+00:00")) < after <= datetime.now(UTC)
    ):
        return after
    return None


def _created(machine: dict[str, Any]) -> datetime:
    stamp = machine["metadata"].get("creationTimestamp")
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")) if stamp else datetime.min.replace(tzinfo=UTC)


def outdated_machines(ctx: ControlPlaneContext, machines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in machines if outdated_because(ctx.spec, m)]


def check_node_versions(ctx: ControlPlaneContext) -> None:
    """Which servers run another k3s version than their Machine wants (their image
    ships another one). The image is read only for those, to name it."""
    for machine in active_machines(ctx.machines):
        running = running_version(ctx, machine)
        if node_version.mismatch(machine, running, "") is None:
            continue
        target = in_place_target(machine, ctx.record_key)
        if target is not None and running and matches(target.version, running):
            # Upgraded in place, its Machine not yet brought up to date: not a mismatch.
            continue
        ctx.mismatches[machine["metadata"]["name"]] = str(
            node_version.mismatch(machine, running, _image_of(ctx, machine))
        )


def _image_of(ctx: ControlPlaneContext, machine: dict[str, Any]) -> str:
    ref = (machine.get("spec") or {}).get("infrastructureRef") or {}
    try:
        resource = contract.resource_for(ctx.kube, str(ref.get("apiGroup")), str(ref.get("kind")))
    except contract.ContractError:
        return node_version.describe_image(None)
    infra = ctx.kube.get(resource, ctx.namespace, str(ref.get("name")))
    return node_version.describe_image((infra or {}).get("spec"))


def report_up_to_date(ctx: ControlPlaneContext) -> None:
    """Set each server Machine's `UpToDate` condition: in the v1beta2 contract the owner of
    a Machine reports it (CAPI's Machine controller only reads it, and the Cluster's
    ControlPlaneMachinesUpToDate summarises it). Written only when it changes."""
    for machine in active_machines(ctx.machines):
        why = outdated_because(ctx.spec, machine)
        reason = "NotUpToDate" if why else "UpToDate"
        if not why and machine["metadata"]["name"] in ctx.mismatches:
            # Replacing it would not help (the same image again): not up to date, but
            # not outdated either; the VersionMismatch condition says what to change.
            why, reason = ctx.mismatches[machine["metadata"]["name"]], VERSION_MISMATCH
        if ctx.upgrading and ctx.upgrading[0] == machine["metadata"]["name"]:
            why = ctx.in_place_failure or ctx.upgrading[1]
            reason = IN_PLACE_UPGRADE_FAILED if ctx.in_place_failure else UPGRADING_IN_PLACE
        wanted = cond.new_condition(
            UP_TO_DATE,
            cond.FALSE if why else cond.TRUE,
            reason,
            why or "",
            generation=machine["metadata"].get("generation"),
            now=ctx.now,
        )
        patch = status_patch(machine, [wanted])
        if patch:
            # CAPI rewrites Machine status often: a conflict means a newer Machine that
            # the next reconcile reports on; it must not stop this one.
            with contextlib.suppress(ConflictError):
                ctx.kube.patch_status(MACHINES, ctx.namespace, machine["metadata"]["name"], patch)


def propagate_metadata(ctx: ControlPlaneContext) -> None:
    """Labels, annotations and deletion timeouts reach existing Machines without a
    rollout (CAPI's contract for control planes)."""
    meta = ctx.spec.machine_template.metadata
    want_labels = (meta.labels or {}) if meta else {}
    want_annotations = (meta.annotations or {}) if meta else {}
    deletion = ctx.spec.machine_template.spec.deletion
    want_deletion = deletion.to_wire() if deletion else None
    for machine in active_machines(ctx.machines):
        labels = machine["metadata"].get("labels") or {}
        annotations = machine["metadata"].get("annotations") or {}
        current_deletion = machine["spec"].get("deletion") or {}
        if (
            all(labels.get(k) == v for k, v in want_labels.items())
            and all(annotations.get(k) == v for k, v in want_annotations.items())
            and all(current_deletion.get(k) == v for k, v in (want_deletion or {}).items())
        ):
            continue
        spec = dict(machine["spec"])
        if want_deletion is not None:
            spec["deletion"] = {**current_deletion, **want_deletion}
        body = {**machine, "spec": spec, "metadata": {
            **machine["metadata"], "labels": {**labels, **want_labels},
            "annotations": {**annotations, **want_annotations}}}  # fmt: skip
        ctx.kube.replace(MACHINES, ctx.namespace, machine["metadata"]["name"], body)


def template_mismatch(ctx: ControlPlaneContext) -> str | None:
    resources = infra_resources(ctx)
    if isinstance(resources, Outcome):
        return None  # reported where the template is used
    template = get_object(ctx, resources[0], ctx.spec.machine_template.spec.infrastructure_ref.name)
    return node_version.template_mismatch(ctx.spec.version, template)


def rollout_blocked(ctx: ControlPlaneContext, active: list[dict[str, Any]]) -> Outcome | None:
    """A server made from the current spec whose Node runs another version: each further
    replacement would boot the same image, so the rollout stops here until the template
    names an image of the wanted version (which outdates that server too, lifting this)."""
    current = [
        m for m in active if m["metadata"]["name"] in ctx.mismatches and not outdated_because(ctx.spec, m)
    ]
    if not current:
        return None
    name = current[0]["metadata"]["name"]
    return Outcome.wait(
        VERSION_MISMATCH,
        f"rollout stopped: {name}: {ctx.mismatches[name]}; give the machine template an image "
        "of that version",
        LONG_WAIT,
    )


def rollout_scheduled(ctx: ControlPlaneContext, active: list[dict[str, Any]]) -> Outcome | None:
    """A `rollout.after` still ahead that will outdate some server: nothing else would
    wake us when it passes, so come back then (as CAPI's control planes do)."""
    after = ctx.spec.rollout.after if ctx.spec.rollout else None
    if after is None or after <= ctx.now:
        return None
    older = [m for m in active if _created(m) < after]
    if not older:
        return None
    return Outcome.wait(
        ROLLOUT_SCHEDULED,
        f"{len(active)} of {ctx.spec.replicas} servers Ready; {len(older)} to be replaced "
        f"after {cond.format_time(after)} (rollout.after)",
        (after - ctx.now).total_seconds() + 1,
    )
