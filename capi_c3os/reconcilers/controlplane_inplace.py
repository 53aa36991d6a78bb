"""In-place A/B upgrades of servers (`rollout.strategy.type: InPlace`): a server whose only
difference from the spec is its OS image (the new template's `image.oci`) and the k3s
version that image ships is upgraded on its own machine by the upgrade Job of
workload/upgrade.py (`kairos-agent upgrade` into the other slot, then a reboot) instead
of being replaced. Anything else still replaces it, with the reason in `RollingOut`.

    continue_in_place_upgrade   every reconcile, before the Machines' status is written:
        the server whose Machine carries IN_PLACE_ANNOTATION: judge its upgrade; done ->
        its C3osMachine and Machine are brought up to date (the annotation goes in the
        same write); failed -> the rollout stops, the server keeps its old version
    start_in_place_upgrade      from the scaling step, when nothing else changes:
        the oldest outdated server an A/B upgrade brings up to date, only while every
        server is Ready (etcd keeps quorum while it reboots): the target goes into its
        annotation first, then the Job is made

One server at a time. The annotation is written before the Job is made, and the Job's
name comes from (node, image): a reconcile that dies at any line is continued by the
next one, which finds both. The annotation carries the manager's signature of the target
for that Machine: one that does not verify (written or altered by hand, copied from
another Machine) is removed with a Warning Event on the Machine, never acted on.
"""

from __future__ import annotations

import logging
from typing import Any

from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from capi_c3os.api.controlplane import IN_PLACE, C3osControlPlaneSpec
from capi_c3os.api.infrastructure import C3osMachineSpec
from capi_c3os.capi.metadata import CLONED_FROM_NAME_ANNOTATION, INFRASTRUCTURE_GROUP
from capi_c3os.capi.outcome import Outcome
from capi_c3os.capi.versions import VERSION_MISMATCH, matches, version_from_image_name
from capi_c3os.reconcilers.controlplane_context import (
    IN_PLACE_ANNOTATION,
    LONG_WAIT,
    SHORT_WAIT,
    ControlPlaneContext,
    InPlaceTarget,
    active_machines,
    confirmed,
    healthy,
    in_place_annotated,
    in_place_target,
    infra_resources,
    node_of,
)
from capi_c3os.reconcilers.controlplane_rollout import (
    IN_PLACE_UPGRADE_FAILED,
    INFRA_TEMPLATE_ANNOTATION,
    SERVER_CONFIG_ANNOTATION,
    UPGRADING_IN_PLACE,
    rollout_after_passed,
    server_config_hash,
)
from capi_c3os.reconcilers.kube import MACHINES, Resource, warning_event
from capi_c3os.workload.client import WorkloadUnreachableError
from capi_c3os.workload.upgrade import UpgradeProgress, advance_upgrade

log = logging.getLogger(__name__)

C3OS_MACHINE = "C3osMachine"
C3OS_MACHINE_TEMPLATE = "C3osMachineTemplate"
_SAME_IN_PLACE = ("provider_id", "image")
"""C3osMachine spec fields an A/B upgrade may differ in (the identity is never compared)."""


# ------------------------------------------------------------------ what can change in place


def in_place_blocker(
    spec: C3osControlPlaneSpec,
    machine: dict[str, Any],
    infra: dict[str, Any] | None,
    template: dict[str, Any] | None,
) -> str | None:
    """Why the outdated server `machine` (its infrastructure machine `infra`) is replaced
    rather than upgraded in place to the infrastructure template `template`; None when an
    A/B upgrade to the template's image makes it equal to `spec`. An A/B upgrade changes
    the OS image and with it k3s: nothing that needs a new disk, NIC, site or k3s config."""
    annotations = machine["metadata"].get("annotations") or {}
    if annotations.get(SERVER_CONFIG_ANNOTATION, server_config_hash(spec)) != server_config_hash(spec):
        return "its server config changed (k3s is configured when a machine is installed)"
    after = rollout_after_passed(spec, machine)
    if after:
        return f"rollout.after {after.isoformat()} passed (a rollout restart replaces servers)"
    ref = (machine.get("spec") or {}).get("infrastructureRef") or {}
    if (ref.get("apiGroup"), ref.get("kind")) != (INFRASTRUCTURE_GROUP, C3OS_MACHINE):
        return f"its infrastructure machine is a {ref.get('kind')}, not a {C3OS_MACHINE}"
    if infra is None:
        return f"its {C3OS_MACHINE} {ref.get('name')} was not found"
    wanted = spec.machine_template.spec.infrastructure_ref
    if (wanted.api_group, wanted.kind) != (INFRASTRUCTURE_GROUP, C3OS_MACHINE_TEMPLATE):
        return f"the machine template is a {wanted.kind}, not a {C3OS_MACHINE_TEMPLATE}"
    if template is None:
        return f"{C3OS_MACHINE_TEMPLATE} {wanted.name} was not found"
    try:
        current = C3osMachineSpec.model_validate(infra.get("spec") or {})
        desired = C3osMachineSpec.model_validate(_template_machine_spec(template))
    except ValidationError as exc:
        return (
            f"its {C3OS_MACHINE} or template {wanted.name} does not validate ({exc.error_count()} error(s))"
        )
    differ = [
        str(field.alias or name)
        for name, field in C3osMachineSpec.model_fields.items()
        if name not in _SAME_IN_PLACE and getattr(current, name) != getattr(desired, name)
    ]
    if differ:
        return (
            f"{', '.join(differ)} of template {wanted.name} differ from its {C3OS_MACHINE}'s "
            "(in place only the image and the version change)"
        )
    if not desired.image.oci:
        return (
            f"the image of template {wanted.name} has no oci reference (image.oci), which an "
            "in-place upgrade installs"
        )
    if desired.image.oci == current.image.oci:
        return f"it runs the image of template {wanted.name} ({desired.image.oci}) already"
    return None


def oci_version_mismatch(version: str, template: dict[str, Any] | None) -> str | None:
    """The message when the name of the template's OCI image says (Kairos style,
    `...:…-k3sv1.34.1-k3s1`) it ships another k3s than `version`, else None (also for
    names that say nothing, such as digests: the node tells after the upgrade then)."""
    oci = str((_template_machine_spec(template or {}).get("image") or {}).get("oci") or "")
    ships = version_from_image_name(oci)
    if ships is None or matches(version, ships):
        return None
    name = ((template or {}).get("metadata") or {}).get("name")
    return (
        f"the oci image of template {name}, {oci}, ships {ships} by its name, the version is "
        f"{version}: no server is upgraded in place until the template names an image of {version}"
    )


def _template_machine_spec(template: dict[str, Any]) -> dict[str, Any]:
    return dict((((template.get("spec") or {}).get("template") or {}).get("spec")) or {})


# ------------------------------------------------------------------ the upgrade in flight


def continue_in_place_upgrade(ctx: ControlPlaneContext) -> None:
    """Judge the in-place upgrade a server is in, if any; record what the scaling step
    returns (ctx.in_place) and what the status says (ctx.upgrading, ctx.in_place_failure).
    An upgrade once started is seen to its end whatever the strategy is now: stopping a
    node half-way is worse than finishing."""
    _drop_unsigned_targets(ctx)
    marked = [
        (m, t) for m in active_machines(ctx.machines) if (t := in_place_target(m, ctx.record_key)) is not None
    ]
    if not marked:
        return
    machine, target = marked[0]
    name = machine["metadata"]["name"]
    progress = _advance(ctx, machine, target)
    if isinstance(progress, Outcome):
        ctx.upgrading = (name, progress.message)
        ctx.in_place = progress
        return
    ctx.upgrading = (name, f"upgrading {name} in place to {target.image}: {progress.message}")
    if progress.failed:
        if (target.version, target.template) != (ctx.spec.version, _template_name(ctx)):
            # The spec moved on (another image, or back to what the server runs): the
            # failed target is history; the server is judged afresh against the spec.
            _drop_annotation(ctx, machine)
            ctx.upgrading = None
            return
        ctx.in_place_failure = (
            f"rollout stopped: {name} was not upgraded in place and keeps its version: {progress.message}; "
            "give the machine template another image, or set rollout.strategy.type RollingUpdate "
            "to replace it"
        )
        return
    if not progress.done:
        ctx.in_place = Outcome.wait(UPGRADING_IN_PLACE, ctx.upgrading[1], SHORT_WAIT)
        return
    _bring_up_to_date(ctx, machine, target)
    ctx.upgrading = None
    ctx.in_place = Outcome.wait("RollingOut", f"upgraded {name} in place: {progress.message}", SHORT_WAIT)


def _template_name(ctx: ControlPlaneContext) -> str:
    return ctx.spec.machine_template.spec.infrastructure_ref.name


def _node_name(ctx: ControlPlaneContext, machine: dict[str, Any]) -> str | None:
    ref = (machine.get("status") or {}).get("nodeRef") or {}
    if ref.get("name"):
        return str(ref["name"])
    node = node_of(ctx, machine)
    return node.name if node else None


def _advance(
    ctx: ControlPlaneContext, machine: dict[str, Any], target: InPlaceTarget
) -> UpgradeProgress | Outcome:
    """Start (once) and judge the upgrade Job; an Outcome when it cannot be judged now."""
    name = machine["metadata"]["name"]
    node = _node_name(ctx, machine)
    if ctx.workload is None or ctx.workload_error:
        why = ctx.workload_error or "no workload cluster client"
        return Outcome.wait(UPGRADING_IN_PLACE, f"upgrading {name} in place: {why}", SHORT_WAIT)
    if node is None:
        return Outcome.wait(
            UPGRADING_IN_PLACE, f"upgrading {name} in place: its Node is not known", SHORT_WAIT
        )
    try:
        return advance_upgrade(ctx.workload, node, target.image, target.version)
    except WorkloadUnreachableError as exc:
        ctx.workload_error = str(exc)
        return Outcome.wait(UPGRADING_IN_PLACE, f"upgrading {name} in place: {exc}", SHORT_WAIT)
    except ApiException as exc:
        return Outcome.wait(
            UPGRADING_IN_PLACE,
            f"upgrading {name} in place: the workload API refused the upgrade job "
            f"({exc.status} {exc.reason})",
            LONG_WAIT,
        )


def _bring_up_to_date(ctx: ControlPlaneContext, machine: dict[str, Any], target: InPlaceTarget) -> None:
    """The node runs the target: its C3osMachine names the template's image, then its
    Machine the version and template, and the annotation goes (one write, the last: a
    crash before it repeats this step, which changes nothing the second time)."""
    resources = infra_resources(ctx)
    if not isinstance(resources, Outcome):
        template_resource, infra_resource = resources
        ref = machine["spec"]["infrastructureRef"]
        infra = ctx.kube.get(infra_resource, ctx.namespace, ref["name"])
        if infra is not None:
            image = _target_image(ctx, template_resource, infra, target)
            if infra["spec"].get("image") != image or _cloned_from(infra) != target.template:
                annotations = {**(infra["metadata"].get("annotations") or {})}
                annotations[CLONED_FROM_NAME_ANNOTATION] = target.template
                body = {**infra, "spec": {**infra["spec"], "image": image},
                        "metadata": {**infra["metadata"], "annotations": annotations}}  # fmt: skip
                body.pop("status", None)
                ctx.kube.replace(infra_resource, ctx.namespace, ref["name"], body)
    annotations = {
        k: v for k, v in (machine["metadata"].get("annotations") or {}).items() if k != IN_PLACE_ANNOTATION
    }
    annotations[INFRA_TEMPLATE_ANNOTATION] = target.template
    body = {**machine, "spec": {**machine["spec"], "version": target.version},
            "metadata": {**machine["metadata"], "annotations": annotations}}  # fmt: skip
    updated = ctx.kube.replace(MACHINES, ctx.namespace, machine["metadata"]["name"], body)
    machine["metadata"], machine["spec"] = updated["metadata"], updated["spec"]
    ctx.mismatches.pop(machine["metadata"]["name"], None)
    log.info(
        "upgraded control-plane Machine %s/%s in place to %s",
        ctx.namespace,
        machine["metadata"]["name"],
        target.image,
    )


def _target_image(
    ctx: ControlPlaneContext, template_resource: Resource, infra: dict[str, Any], target: InPlaceTarget
) -> dict[str, Any]:
    """The image of the target's template; when that template is gone (replaced
    meanwhile), the current image with the installed OCI reference."""
    template = ctx.kube.get(template_resource, ctx.namespace, target.template)
    image = _template_machine_spec(template or {}).get("image")
    if isinstance(image, dict) and image.get("oci") == target.image:
        return dict(image)
    return {**(infra["spec"].get("image") or {}), "oci": target.image}


def _cloned_from(obj: dict[str, Any]) -> str | None:
    return (obj["metadata"].get("annotations") or {}).get(CLONED_FROM_NAME_ANNOTATION)


IGNORED_TARGET = "InPlaceTargetIgnored"


def _drop_unsigned_targets(ctx: ControlPlaneContext) -> None:
    """Remove every in-place target this manager did not sign for its Machine: its image
    would run privileged on the node. The Event comes first (a crash between the two
    repeats it, rather than losing it)."""
    for machine in active_machines(ctx.machines):
        if not in_place_annotated(machine) or in_place_target(machine, ctx.record_key) is not None:
            continue
        name = machine["metadata"]["name"]
        message = (
            f"ignored and removed the annotation {IN_PLACE_ANNOTATION} of Machine {name}: it is not "
            "an in-place upgrade target this manager signed for this Machine (edited by hand, copied "
            "from another Machine, or written before a clusterctl move); the server is judged afresh"
        )
        log.warning("%s/%s: %s", ctx.namespace, name, message)
        warning_event(ctx.kube, machine, IGNORED_TARGET, message)
        _drop_annotation(ctx, machine)


def _drop_annotation(ctx: ControlPlaneContext, machine: dict[str, Any]) -> None:
    annotations = {
        k: v for k, v in (machine["metadata"].get("annotations") or {}).items() if k != IN_PLACE_ANNOTATION
    }
    body = {**machine, "metadata": {**machine["metadata"], "annotations": annotations}}
    updated = ctx.kube.replace(MACHINES, ctx.namespace, machine["metadata"]["name"], body)
    machine["metadata"] = updated["metadata"]


# ------------------------------------------------------------------ starting one


def in_place_strategy(ctx: ControlPlaneContext) -> bool:
    strategy = ctx.spec.rollout.strategy if ctx.spec.rollout else None
    return strategy is not None and strategy.type == IN_PLACE


def in_place_candidate(ctx: ControlPlaneContext, outdated: list[dict[str, Any]]) -> dict[str, Any] | None:
    """With strategy InPlace: the oldest outdated server an A/B upgrade brings up to date
    (None: none; the others are replaced, each with its reason in ctx.replacing)."""
    if not in_place_strategy(ctx) or not outdated:
        return None
    resources = infra_resources(ctx)
    template = None if isinstance(resources, Outcome) else _desired_template(ctx, resources[0])
    found = None
    for machine in outdated:
        infra = None if isinstance(resources, Outcome) else _infra_of(ctx, machine, resources[1])
        why = in_place_blocker(ctx.spec, machine, infra, template)
        if why is not None:
            ctx.replacing[machine["metadata"]["name"]] = why
        elif found is None:
            found = machine
    return found


def start_in_place_upgrade(
    ctx: ControlPlaneContext, active: list[dict[str, Any]], machine: dict[str, Any]
) -> Outcome | None:
    """Start upgrading `machine` (an in_place_candidate) in place once every server is
    Ready. None: the Machines were stale and have been listed again; decide again."""
    name = machine["metadata"]["name"]
    resources = infra_resources(ctx)
    template = None if isinstance(resources, Outcome) else _desired_template(ctx, resources[0])
    # Caught before any node installs it (the judgement would only fail after the reboot).
    ctx.template_mismatch = oci_version_mismatch(ctx.spec.version, template)
    if ctx.template_mismatch:
        return Outcome.wait(VERSION_MISMATCH, ctx.template_mismatch, LONG_WAIT)
    unhealthy = [m["metadata"]["name"] for m in active if not healthy(ctx, m)]
    if unhealthy:
        return Outcome.wait(
            "WaitingForHealthyServers",
            f"not upgrading {name} in place while {', '.join(unhealthy)} is not Ready",
            SHORT_WAIT,
        )
    if ctx.workload is None or ctx.workload_error:
        return Outcome.wait(
            UPGRADING_IN_PLACE,
            f"not upgrading {name} in place: workload cluster: {ctx.workload_error or 'no client'}",
            SHORT_WAIT,
        )
    if not confirmed(ctx):
        return None
    image = _template_machine_spec(template or {}).get("image") or {}
    target = InPlaceTarget(
        image=str(image.get("oci")),
        version=ctx.spec.version,
        template=ctx.spec.machine_template.spec.infrastructure_ref.name,
    )
    # The target first: a crash after the Job's creation is then continued, never lost.
    annotations = {
        **(machine["metadata"].get("annotations") or {}),
        IN_PLACE_ANNOTATION: target.to_annotation(ctx.record_key, machine),
    }
    body = {**machine, "metadata": {**machine["metadata"], "annotations": annotations}}
    updated = ctx.kube.replace(MACHINES, ctx.namespace, name, body)
    machine["metadata"] = updated["metadata"]
    log.info("upgrading control-plane Machine %s/%s in place to %s", ctx.namespace, name, target.image)
    continue_in_place_upgrade(ctx)
    if ctx.in_place_failure:
        return Outcome.error(IN_PLACE_UPGRADE_FAILED, ctx.in_place_failure)
    return ctx.in_place or Outcome.wait(
        UPGRADING_IN_PLACE, f"upgrading {name} in place to {target.image}", SHORT_WAIT
    )


def _desired_template(ctx: ControlPlaneContext, resource: Resource) -> dict[str, Any] | None:
    return ctx.kube.get(resource, ctx.namespace, ctx.spec.machine_template.spec.infrastructure_ref.name)


def _infra_of(ctx: ControlPlaneContext, machine: dict[str, Any], resource: Resource) -> dict[str, Any] | None:
    ref = (machine.get("spec") or {}).get("infrastructureRef") or {}
    if ref.get("kind") != resource.kind:
        return None
    return ctx.kube.get(resource, ctx.namespace, str(ref.get("name")))
