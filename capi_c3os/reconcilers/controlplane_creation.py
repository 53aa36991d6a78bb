"""Making a server Machine (infrastructure machine, C3osConfig, Machine, names chosen
before the first create) and finishing creations a crash interrupted.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import string
from collections import Counter
from typing import Any

from capi_c3os.capi.metadata import (
    BOOTSTRAP_GROUP,
    CLONED_FROM_GROUPKIND_ANNOTATION,
    CLONED_FROM_NAME_ANNOTATION,
    CLUSTER_NAME_LABEL,
    CORE_API_VERSION,
    MACHINE_CONTROL_PLANE_LABEL,
    MACHINE_CONTROL_PLANE_NAME_LABEL,
)
from capi_c3os.capi.outcome import Outcome
from capi_c3os.reconcilers.controlplane_context import (
    C3OS_CONFIGS,
    LONG_WAIT,
    ControlPlaneContext,
    active_machines,
    infra_resources,
    owned,
    read_machines,
)
from capi_c3os.reconcilers.controlplane_etcd import HOOK
from capi_c3os.reconcilers.controlplane_rollout import (
    INFRA_TEMPLATE_ANNOTATION,
    SERVER_CONFIG_ANNOTATION,
    server_config_hash,
)
from capi_c3os.reconcilers.kube import MACHINES, ConflictError, Kube, Resource

log = logging.getLogger(__name__)


def new_name(ctx: ControlPlaneContext) -> str:
    suffix = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(5))
    return f"{ctx.name}-{suffix}"[:63]


def pick_failure_domain(ctx: ControlPlaneContext) -> str | None:
    """The control-plane failure domain with the fewest of our Machines (CAPI spreads by
    the same rule)."""
    domains = [
        d["name"]
        for d in (ctx.cluster.get("status") or {}).get("failureDomains") or []
        if d.get("controlPlane", True)
    ]
    if not domains:
        return None
    used = Counter(m.get("spec", {}).get("failureDomain") for m in active_machines(ctx.machines))
    return str(min(sorted(domains), key=lambda d: used[d]))


def _labels(ctx: ControlPlaneContext) -> dict[str, str]:
    template_meta = ctx.spec.machine_template.metadata
    return {
        **((template_meta.labels or {}) if template_meta else {}),
        CLUSTER_NAME_LABEL: ctx.cluster_name,
        MACHINE_CONTROL_PLANE_LABEL: "",
        MACHINE_CONTROL_PLANE_NAME_LABEL: ctx.name,
    }


def _create_if_absent(kube: Kube, resource: Resource, namespace: str, body: dict[str, Any]) -> None:
    # Exists already: an earlier (interrupted) reconcile created it.
    with contextlib.suppress(ConflictError):
        kube.create(resource, namespace, body)


def create_machine(ctx: ControlPlaneContext, name: str, failure_domain: str | None) -> Outcome | None:
    """Infrastructure machine, then C3osConfig, then the Machine that ties them together;
    each create tolerates "exists", so a crash in between is finished by the next run."""
    ref = ctx.spec.machine_template.spec.infrastructure_ref
    resources = infra_resources(ctx)
    if isinstance(resources, Outcome):
        return resources
    template_resource, infra_resource = resources
    template = ctx.kube.get(template_resource, ctx.namespace, ref.name)
    if template is None:
        return Outcome.wait(
            "InfrastructureTemplateNotFound",
            f"{ref.kind} {ctx.namespace}/{ref.name} does not exist",
            LONG_WAIT,
        )
    labels = _labels(ctx)
    template_meta = template["spec"]["template"].get("metadata") or {}
    owner = [ctx.controller_ref()]
    # Until the Machine exists, a crash leaves parts behind for the next run to finish.
    if ctx.view is not None:
        ctx.view.unlearn(_no_partial_creation(ctx))
    _create_if_absent(
        ctx.kube,
        infra_resource,
        ctx.namespace,
        {
            "apiVersion": infra_resource.api_version,
            "kind": infra_resource.kind,
            "metadata": {
                "name": name,
                "namespace": ctx.namespace,
                "ownerReferences": owner,
                "labels": {**(template_meta.get("labels") or {}), **labels},
                "annotations": {
                    **(template_meta.get("annotations") or {}),
                    CLONED_FROM_NAME_ANNOTATION: ref.name,
                    CLONED_FROM_GROUPKIND_ANNOTATION: f"{ref.kind}.{ref.api_group}",
                },
            },
            "spec": template["spec"]["template"]["spec"],
        },
    )
    _create_if_absent(
        ctx.kube,
        C3OS_CONFIGS,
        ctx.namespace,
        {
            "apiVersion": f"{BOOTSTRAP_GROUP}/v1alpha1",
            "kind": "C3osConfig",
            "metadata": {
                "name": name,
                "namespace": ctx.namespace,
                "ownerReferences": owner,
                "labels": labels,
            },
            "spec": ctx.spec.server_config.to_wire(),
        },
    )
    template_annotations = (
        (ctx.spec.machine_template.metadata.annotations or {}) if ctx.spec.machine_template.metadata else {}
    )
    machine_spec: dict[str, Any] = {
        "clusterName": ctx.cluster_name,
        "version": ctx.spec.version,
        "bootstrap": {"configRef": {"apiGroup": BOOTSTRAP_GROUP, "kind": "C3osConfig", "name": name}},
        "infrastructureRef": {"apiGroup": ref.api_group, "kind": infra_resource.kind, "name": name},
    }
    if failure_domain:
        machine_spec["failureDomain"] = failure_domain
    deletion = ctx.spec.machine_template.spec.deletion
    if deletion:
        machine_spec["deletion"] = deletion.to_wire()
    _create_if_absent(
        ctx.kube,
        MACHINES,
        ctx.namespace,
        {
            "apiVersion": CORE_API_VERSION,
            "kind": "Machine",
            "metadata": {
                "name": name,
                "namespace": ctx.namespace,
                "ownerReferences": owner,
                "labels": labels,
                "annotations": {
                    **template_annotations,
                    HOOK: "",
                    SERVER_CONFIG_ANNOTATION: server_config_hash(ctx.spec),
                    INFRA_TEMPLATE_ANNOTATION: ref.name,
                },
            },
            "spec": machine_spec,
        },
    )
    if ctx.view is not None:
        ctx.view.learn(_no_partial_creation(ctx))
    return None


def _no_partial_creation(ctx: ControlPlaneContext) -> str:
    return f"no-partial-creation/{ctx.obj['metadata']['uid']}"


def resume_interrupted_creations(ctx: ControlPlaneContext) -> None:
    """Infrastructure machines or C3osConfigs of ours whose Machine was never created: a
    reconcile died half-way. Finish it (the same names) when a Machine is still wanted,
    else remove the parts. Looked for on this process's first reconcile of the control
    plane and after a creation that did not finish; a crash means a new process, so
    nothing is missed. (Parts of the current infrastructure kind only: after a change of
    kind, older parts stay until the control plane is deleted, their owner.)"""
    if ctx.view is not None and ctx.view.knows(_no_partial_creation(ctx)):
        return
    resources = infra_resources(ctx)
    if isinstance(resources, Outcome):
        return  # the scale step reports why; look again next time
    infra = resources[1]
    # The parts are listed from the API server; the Machines must be as recent.
    if not ctx.machines_fresh:
        read_machines(ctx, fresh=True)
    have = {m["metadata"]["name"] for m in ctx.machines}
    selector = f"{MACHINE_CONTROL_PLANE_NAME_LABEL}={ctx.name}"
    parts = [
        *ctx.kube.list(infra, ctx.namespace, selector),
        *ctx.kube.list(C3OS_CONFIGS, ctx.namespace, selector),
    ]
    for name in sorted({p["metadata"]["name"] for p in parts if owned(ctx, p)} - have):
        if len(active_machines(ctx.machines)) < ctx.spec.replicas:
            log.info("finishing the creation of control-plane Machine %s/%s", ctx.namespace, name)
            if create_machine(ctx, name, pick_failure_domain(ctx)) is not None:
                return  # blocked (the scale step says why); look again next time
            read_machines(ctx, fresh=True)
        else:
            ctx.kube.delete(infra, ctx.namespace, name)
            ctx.kube.delete(C3OS_CONFIGS, ctx.namespace, name)
    if ctx.view is not None:
        ctx.view.learn(_no_partial_creation(ctx))
