"""C3osControlPlane: k3s servers with embedded etcd (CAPI v1beta2 control-plane contract).

    paused?                       -> report Paused, touch nothing else
    deleting?                     -> delete our Machines, release the finalizer when none is left
    await the owner Cluster, its infrastructure and control-plane endpoint
    ensure the cluster CAs + token (shared with the bootstrap provider), the admin kubeconfig
    finish Machine creations a crash interrupted
    read the workload cluster: initialised (k3s-serving, or a Ready server), Node readiness
    judge the in-place upgrade of a server in flight; bring its objects up to date when done
    let Machines being deleted go once k3s removed their etcd member
    scale one Machine at a time: the first server initialises, the others join once the
      control plane is initialised; outdated servers (version, infrastructure template,
      server config, rollout.after) are replaced with surge 1 or 0, or (strategy InPlace,
      only image and version differ) upgraded in place one at a time
    write status (replica counts, versions, selector, conditions) in one patch

One Machine changes at a time and only when every other server is healthy, so etcd
keeps quorum. Everything we create carries our name in a label and a controller
ownerReference, and has a name chosen before the first create, so a reconcile that dies
at any line is finished by the next one instead of leaking or duplicating.

This module is the orchestrator; each concern has its module (as Cluster API's
KubeadmControlPlane splits its controller):

    controlplane_context      the context of one reconcile, reading Machines and Nodes
    controlplane_workload     the admin kubeconfig, the workload client, Node readiness
    controlplane_creation     making a server Machine, finishing interrupted creations
    controlplane_rollout      what is outdated and why, what stops or schedules a rollout
    controlplane_scaling      the one Machine change per reconcile (scale, replace, upgrade)
    controlplane_inplace      in-place A/B upgrades: what may change in place, the one in flight
    controlplane_remediation  replacing a server a MachineHealthCheck marked unhealthy
    controlplane_etcd         our pre-terminate hook: etcd member removal before deletion
    controlplane_status       replica counts, versions and conditions
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from capi_c3os.api.controlplane import C3osControlPlaneSpec
from capi_c3os.capi import conditions as cond
from capi_c3os.capi.outcome import Outcome
from capi_c3os.capi.owners import owner_cluster_name
from capi_c3os.capi.pause import is_paused, paused_condition
from capi_c3os.capi.status import status_patch
from capi_c3os.reconcilers.cluster_secrets import ClusterSecretsError, ensure_cluster_secrets
from capi_c3os.reconcilers.controlplane_context import (
    SHORT_WAIT,
    ControlPlaneContext,
    active_machines,
    deleting_machines,
    read_machines,
)
from capi_c3os.reconcilers.controlplane_creation import resume_interrupted_creations
from capi_c3os.reconcilers.controlplane_etcd import release_hooks, remove_hook
from capi_c3os.reconcilers.controlplane_inplace import continue_in_place_upgrade
from capi_c3os.reconcilers.controlplane_rollout import (
    check_node_versions,
    propagate_metadata,
    report_up_to_date,
)
from capi_c3os.reconcilers.controlplane_scaling import scale
from capi_c3os.reconcilers.controlplane_status import conditions, status_fields
from capi_c3os.reconcilers.controlplane_workload import WORKLOADS, ensure_kubeconfig, read_workload
from capi_c3os.reconcilers.kube import CLUSTERS, MACHINES, ConflictError, Kube, Resource
from capi_c3os.reconcilers.view import ClusterView

FINALIZER = "c3oscontrolplane.controlplane.cluster.x-k8s.io"

_LOCKS: dict[tuple[str, str], threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def _lock_for(namespace: str, name: str) -> threading.Lock:
    # kopf handlers and the Machine watch may both wake one object; machine creation
    # must never run twice at once for it.
    with _LOCKS_GUARD:
        return _LOCKS.setdefault((namespace, name), threading.Lock())


def reconcile(
    kube: Kube,
    resource: Resource,
    obj: dict[str, Any],
    now: datetime | None = None,
    view: ClusterView | None = None,
    *,
    record_key: bytes,
) -> Outcome:
    """`view`: the manager's watch-fed view of cluster Secrets, control-plane Machines and
    Clusters (None: every read goes to the API server). `record_key`: the manager's key,
    which signs in-place upgrade targets (controlplane_context.IN_PLACE_ANNOTATION)."""
    meta = obj["metadata"]
    with _lock_for(meta["namespace"], meta["name"]):
        try:
            return _reconcile(kube, resource, obj, now or datetime.now(UTC), view, record_key)
        except ConflictError:
            # A write based on the view found the object changed: list afresh next time.
            if view is not None:
                view.invalidate(MACHINES, meta["namespace"])
            raise


def _owner_cluster(kube: Kube, obj: dict[str, Any], view: ClusterView | None) -> dict[str, Any] | None:
    name = owner_cluster_name(obj)
    if not name:
        return None
    namespace = obj["metadata"]["namespace"]
    return view.get(kube, CLUSTERS, namespace, name) if view else kube.get(CLUSTERS, namespace, name)


def _reconcile(
    kube: Kube,
    resource: Resource,
    obj: dict[str, Any],
    now: datetime,
    view: ClusterView | None,
    record_key: bytes,
) -> Outcome:
    meta = obj["metadata"]
    cluster = _owner_cluster(kube, obj, view)
    paused = is_paused(obj, cluster)
    pause = paused_condition(obj, cluster, now)
    if paused:
        patch = status_patch(obj, [pause])
        if patch:
            kube.patch_status(resource, meta["namespace"], meta["name"], patch)
        return Outcome.paused(pause["message"])
    try:
        spec = C3osControlPlaneSpec.model_validate(obj.get("spec") or {})
    except ValidationError as exc:
        return Outcome.error("InvalidSpec", str(exc))
    generation = meta.get("generation")
    if cluster is None:
        if meta.get("deletionTimestamp"):
            return Outcome.ready("Deleted", "no Cluster")
        outcome = Outcome.wait("WaitingForCluster", "no owner Cluster yet", SHORT_WAIT)
        waiting = cond.new_condition(
            "Ready", cond.FALSE, outcome.reason, outcome.message, generation=generation, now=now
        )
        patch = status_patch(obj, [pause, waiting], generation)
        if patch:
            kube.patch_status(resource, meta["namespace"], meta["name"], patch)
        return outcome
    ctx = ControlPlaneContext(
        kube=kube, resource=resource, obj=obj, spec=spec, cluster=cluster, now=now, view=view,
        record_key=record_key,
    )  # fmt: skip
    ctx.last_remediation = (obj.get("status") or {}).get("lastRemediation")
    if meta.get("deletionTimestamp"):
        # The finalizer goes once no Machine is left: never on the view's word.
        read_machines(ctx, fresh=True)
        return _delete(ctx)
    _set_finalizer(ctx, present=True)
    outcome = _run(ctx)
    patch = status_patch(
        ctx.obj, [pause, *conditions(ctx, outcome, generation)], generation, fields=status_fields(ctx)
    )
    if patch:
        kube.patch_status(resource, ctx.namespace, ctx.name, patch)
    return outcome


def _run(ctx: ControlPlaneContext) -> Outcome:
    status = ctx.cluster.get("status") or {}
    if not (status.get("initialization") or {}).get("infrastructureProvisioned"):
        return Outcome.wait(
            "WaitingForInfrastructure", "the Cluster's infrastructure is not provisioned yet", SHORT_WAIT
        )
    if not (ctx.cluster.get("spec") or {}).get("controlPlaneEndpoint", {}).get("host"):
        return Outcome.wait(
            "WaitingForControlPlaneEndpoint", "the Cluster has no control-plane endpoint yet", SHORT_WAIT
        )
    try:
        cluster_secrets = ensure_cluster_secrets(ctx.kube, ctx.cluster, ctx.view)
    except ClusterSecretsError as exc:
        return Outcome.error("ClusterSecretsInvalid", str(exc))
    ensure_kubeconfig(ctx, cluster_secrets.cas.server.cert_pem, cluster_secrets.cas.client)
    read_machines(ctx)
    resume_interrupted_creations(ctx)
    propagate_metadata(ctx)
    read_workload(ctx)
    continue_in_place_upgrade(ctx)
    check_node_versions(ctx)
    report_up_to_date(ctx)
    release_hooks(ctx)
    return scale(ctx)


def _delete(ctx: ControlPlaneContext) -> Outcome:
    """Delete our Machines (CAPI tears each down, our hook is released at once because
    the Cluster is going); the finalizer goes when none is left."""
    for machine in active_machines(ctx.machines):
        ctx.kube.delete(MACHINES, ctx.namespace, machine["metadata"]["name"])
    for machine in deleting_machines(ctx.machines):
        # The whole control plane goes: no etcd member needs removing first.
        remove_hook(ctx, machine)
    if ctx.machines:
        return Outcome.wait(
            "Deleting", f"waiting for {len(ctx.machines)} server Machine(s) to go", SHORT_WAIT
        )
    _set_finalizer(ctx, present=False)
    WORKLOADS.forget(ctx.namespace, ctx.cluster_name)
    return Outcome.ready("Deleted", "all server Machines are gone")


def _set_finalizer(ctx: ControlPlaneContext, *, present: bool) -> None:
    finalizers = list(ctx.obj["metadata"].get("finalizers") or [])
    if (FINALIZER in finalizers) == present:
        return
    finalizers = [*finalizers, FINALIZER] if present else [f for f in finalizers if f != FINALIZER]
    body = {**ctx.obj, "metadata": {**ctx.obj["metadata"], "finalizers": finalizers}}
    body.pop("status", None)
    updated = ctx.kube.replace(ctx.resource, ctx.namespace, ctx.name, body)
    ctx.obj["metadata"]["resourceVersion"] = updated["metadata"]["resourceVersion"]
    ctx.obj["metadata"]["finalizers"] = finalizers
