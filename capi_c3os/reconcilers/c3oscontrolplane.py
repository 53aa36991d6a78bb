"""C3osControlPlane: k3s servers with embedded etcd (CAPI v1beta2 control-plane contract).

    paused?                       -> report Paused, touch nothing else
    deleting?                     -> delete our Machines, release the finalizer when none is left
    await the owner Cluster, its infrastructure and control-plane endpoint
    ensure the cluster CAs + token (shared with the bootstrap provider), the admin kubeconfig
    finish Machine creations a crash interrupted
    read the workload cluster: initialised (k3s-serving, or a Ready server), Node readiness
    let Machines being deleted go once k3s removed their etcd member
    scale one Machine at a time: the first server initialises, the others join once the
      control plane is initialised; outdated servers (version, infrastructure template,
      server config, rollout.after) are replaced with surge 1 or 0
    write status (replica counts, versions, selector, conditions) in one patch

One Machine changes at a time and only when every other server is healthy, so etcd
keeps quorum. Everything we create carries our name in a label and a controller
ownerReference, and has a name chosen before the first create, so a reconcile that dies
at any line is finished by the next one instead of leaking or duplicating.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import secrets
import string
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError

from capi_c3os.api.controlplane import C3osControlPlaneSpec
from capi_c3os.bootstrap.kubeconfig import needs_rotation, render_admin_kubeconfig
from capi_c3os.capi import conditions as cond
from capi_c3os.capi.metadata import (
    BOOTSTRAP_GROUP,
    CLONED_FROM_GROUPKIND_ANNOTATION,
    CLONED_FROM_NAME_ANNOTATION,
    CLUSTER_NAME_LABEL,
    CLUSTER_SECRET_TYPE,
    CORE_API_VERSION,
    DELETE_MACHINE_ANNOTATION,
    MACHINE_CONTROL_PLANE_LABEL,
    MACHINE_CONTROL_PLANE_NAME_LABEL,
    PRE_TERMINATE_HOOK_PREFIX,
)
from capi_c3os.capi.outcome import Outcome
from capi_c3os.capi.owners import owner_cluster_name, owner_references
from capi_c3os.capi.pause import is_paused, paused_condition
from capi_c3os.capi.status import status_patch
from capi_c3os.capi.versions import VERSION_MATCHES, VERSION_MISMATCH, status_versions
from capi_c3os.reconcilers import contract, node_version
from capi_c3os.reconcilers.cluster_secrets import ClusterSecretsError, ensure_cluster_secrets
from capi_c3os.reconcilers.kube import CLUSTERS, MACHINES, SECRETS, ConflictError, Kube, Resource
from capi_c3os.reconcilers.view import ClusterView
from capi_c3os.workload.client import NodeState, WorkloadClient, WorkloadClients, WorkloadUnreachableError

log = logging.getLogger(__name__)

FINALIZER = "c3oscontrolplane.controlplane.cluster.x-k8s.io"
HOOK = f"{PRE_TERMINATE_HOOK_PREFIX}/c3os-control-plane"
"""Holds a server Machine after drain until k3s removed its etcd member."""
OWNER_REMEDIATED = "OwnerRemediated"
ETCD_REMOVE = "etcd.k3s.cattle.io/remove"
ETCD_REMOVED = "etcd.k3s.cattle.io/removed-node-name"
ETCD_NODE_NAME = "etcd.k3s.cattle.io/node-name"
"""k3s's metadata controller puts a server's etcd member name here (and its address in
`etcd.k3s.cattle.io/node-address`); its removal controller needs both."""
ETCD_REMOVAL_REQUESTED = "controlplane.cluster.x-k8s.io/c3os-etcd-removal-requested"
"""On a server Machine being deleted: when we asked k3s to remove its etcd member."""
ETCD_MEMBER_GRACE = timedelta(minutes=2)
"""How long a Node without etcd member annotations may take to get them before its
Machine is let go (its etcd never joined: there is nothing to remove)."""
ETCD_MEMBERS_REMOVED = "EtcdMembersRemoved"
"""Condition: no server Machine being deleted waits for its etcd member's removal."""
WAITING_FOR_ETCD_REMOVAL = "WaitingForEtcdMemberRemoval"
WAITING_FOR_ETCD_MEMBER = "WaitingForEtcdMemberAnnotation"
ETCD_REMOVAL_REFUSED = "EtcdMemberRemovalRefused"
C3OS_CONFIGS = Resource(BOOTSTRAP_GROUP, "v1alpha1", "c3osconfigs", "C3osConfig")

SERVER_CONFIG_ANNOTATION = "controlplane.cluster.x-k8s.io/c3os-server-config"
"""Hash of the server config a Machine was made with: a change means a rollout."""
INFRA_TEMPLATE_ANNOTATION = "controlplane.cluster.x-k8s.io/c3os-infrastructure-template"
"""The infrastructure template a Machine was cloned from: a new template means a rollout."""

SHORT_WAIT = 5.0
ROLLOUT_SCHEDULED = "RolloutScheduled"
UP_TO_DATE = "UpToDate"
"""Ready, with a rollout.after ahead: a wait that is no trouble."""
LONG_WAIT = 30.0

WORKLOADS = WorkloadClients()
_LOCKS: dict[tuple[str, str], threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def _lock_for(namespace: str, name: str) -> threading.Lock:
    # kopf handlers and the Machine watch may both wake one object; machine creation
    # must never run twice at once for it.
    with _LOCKS_GUARD:
        return _LOCKS.setdefault((namespace, name), threading.Lock())


@dataclass
class _Ctx:
    kube: Kube
    resource: Resource
    obj: dict[str, Any]
    spec: C3osControlPlaneSpec
    cluster: dict[str, Any]
    now: datetime
    machines: list[dict[str, Any]] = field(default_factory=list)
    nodes: dict[str, NodeState] = field(default_factory=dict)
    """By providerID."""
    initialized: bool = False
    workload_error: str | None = None
    last_remediation: dict[str, Any] | None = None
    workload: WorkloadClient | None = None
    view: ClusterView | None = None
    """The manager's watch-fed view (None: read everything from the API server)."""
    machines_fresh: bool = False
    """ctx.machines came from the API server in this reconcile, not from the view."""
    kubeconfig: dict[str, Any] | None = None
    etcd_waits: list[tuple[str, str]] = field(default_factory=list)
    """(reason, message) per server Machine held at our hook for its etcd member."""
    mismatches: dict[str, str] = field(default_factory=dict)
    """Machine name -> why its Node runs another version than it wants (node_version.py)."""
    template_mismatch: str | None = None
    """Why the infrastructure template's image (by its name) does not ship spec.version."""

    @property
    def namespace(self) -> str:
        return str(self.obj["metadata"]["namespace"])

    @property
    def name(self) -> str:
        return str(self.obj["metadata"]["name"])

    @property
    def cluster_name(self) -> str:
        return str(self.cluster["metadata"]["name"])

    @property
    def selector(self) -> str:
        return f"{CLUSTER_NAME_LABEL}={self.cluster_name},{MACHINE_CONTROL_PLANE_LABEL}"

    def controller_ref(self) -> dict[str, Any]:
        meta = self.obj["metadata"]
        return {
            "apiVersion": self.obj["apiVersion"],
            "kind": self.obj["kind"],
            "name": meta["name"],
            "uid": meta["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }


# ------------------------------------------------------------------ reading the world


def _active(machines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in machines if not m["metadata"].get("deletionTimestamp")]


def _deleting(machines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in machines if m["metadata"].get("deletionTimestamp")]


def _owned(ctx: _Ctx, obj: dict[str, Any]) -> bool:
    uid = ctx.obj["metadata"]["uid"]
    return any(ref.get("uid") == uid and ref.get("controller") for ref in owner_references(obj))


def _read_machines(ctx: _Ctx, *, fresh: bool = False) -> None:
    """Our server Machines, oldest first: from the view, or (`fresh`, or no view) listed."""
    if ctx.view is not None:
        found = ctx.view.list(ctx.kube, MACHINES, ctx.namespace, ctx.selector, fresh=fresh)
    else:
        found, fresh = ctx.kube.list(MACHINES, ctx.namespace, ctx.selector), True
    ctx.machines_fresh = fresh
    ctx.machines = sorted(
        (m for m in found if _owned(ctx, m)),
        key=lambda m: (m["metadata"].get("creationTimestamp") or "", m["metadata"]["name"]),
    )


def _confirmed(ctx: _Ctx) -> bool:
    """Before creating or deleting a Machine: True when ctx.machines are the API server's
    answer from this reconcile. Otherwise read them now and return False, so the
    caller decides again on fresh data (the view may lag behind our own last write)."""
    if ctx.machines_fresh:
        return True
    # The Cluster came from the view too: a pause (clusterctl move) must stop this write.
    cluster = ctx.kube.get(CLUSTERS, ctx.namespace, ctx.cluster_name)
    if cluster is None or is_paused(ctx.obj, cluster):
        raise ConflictError(f"Cluster {ctx.namespace}/{ctx.cluster_name} changed meanwhile")
    ctx.cluster = cluster
    _read_machines(ctx, fresh=True)
    return False


def _get(ctx: _Ctx, resource: Resource, name: str) -> dict[str, Any] | None:
    if ctx.view is not None:
        return ctx.view.get(ctx.kube, resource, ctx.namespace, name)
    return ctx.kube.get(resource, ctx.namespace, name)


def _node_of(ctx: _Ctx, machine: dict[str, Any]) -> NodeState | None:
    provider_id = machine.get("spec", {}).get("providerID")
    return ctx.nodes.get(provider_id) if provider_id else None


def _healthy(ctx: _Ctx, machine: dict[str, Any]) -> bool:
    node = _node_of(ctx, machine)
    return node is not None and node.ready


def _node_version(ctx: _Ctx, machine: dict[str, Any]) -> str | None:
    """What the Machine's Node reports: read from the workload cluster, else what CAPI
    copied to the Machine (the workload cluster may be unreachable right now)."""
    node = _node_of(ctx, machine)
    if node is not None and node.kubelet_version:
        return node.kubelet_version
    return node_version.reported_version(machine)


def _check_node_versions(ctx: _Ctx) -> None:
    """Which servers run another k3s version than their Machine wants (their image
    ships another one). The image is read only for those, to name it."""
    for machine in _active(ctx.machines):
        running = _node_version(ctx, machine)
        if node_version.mismatch(machine, running, "") is None:
            continue
        ctx.mismatches[machine["metadata"]["name"]] = str(
            node_version.mismatch(machine, running, _image_of(ctx, machine))
        )


def _image_of(ctx: _Ctx, machine: dict[str, Any]) -> str:
    ref = (machine.get("spec") or {}).get("infrastructureRef") or {}
    try:
        resource = contract.resource_for(ctx.kube, str(ref.get("apiGroup")), str(ref.get("kind")))
    except contract.ContractError:
        return node_version.describe_image(None)
    infra = ctx.kube.get(resource, ctx.namespace, str(ref.get("name")))
    return node_version.describe_image((infra or {}).get("spec"))


def _read_workload(ctx: _Ctx) -> None:
    status = ctx.obj.get("status") or {}
    ctx.initialized = bool((status.get("initialization") or {}).get("controlPlaneInitialized"))
    if not ctx.machines:
        return
    client = ctx.workload = _workload(ctx)
    if client is None:
        ctx.workload_error = "the kubeconfig Secret is missing"
        return
    try:
        nodes = client.nodes()
        ctx.nodes = {n.provider_id: n for n in nodes if n.provider_id}
        if not ctx.initialized:
            ctx.initialized = client.secret_exists("kube-system", "k3s-serving") or any(
                n.ready for n in ctx.nodes.values()
            )
    except WorkloadUnreachableError as exc:
        ctx.workload_error = str(exc)


# ------------------------------------------------------------------ secrets


def _ensure_kubeconfig(ctx: _Ctx, server_ca: bytes, client_ca: Any) -> None:
    endpoint = ctx.cluster["spec"]["controlPlaneEndpoint"]
    host, port = endpoint["host"], int(endpoint.get("port") or 6443)
    name = f"{ctx.cluster_name}-kubeconfig"
    # A stale view is safe here: the replacement below carries its resourceVersion.
    existing = ctx.kubeconfig = _get(ctx, SECRETS, name)
    if existing is not None:
        stored = base64.b64decode((existing.get("data") or {}).get("value", "")).decode(errors="replace")
        why = needs_rotation(
            stored, host=host, port=port, server_ca_pem=server_ca, client_ca=client_ca, now=ctx.now
        )
        if why is None:
            return
        log.info("rewriting Secret %s/%s: %s", ctx.namespace, name, why)
    value = render_admin_kubeconfig(ctx.cluster_name, host, port, server_ca, client_ca)
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": CLUSTER_SECRET_TYPE,
        "metadata": {
            "name": name,
            "namespace": ctx.namespace,
            "labels": {CLUSTER_NAME_LABEL: ctx.cluster_name},
            "ownerReferences": [ctx.controller_ref()],
        },
        "data": {"value": base64.b64encode(value.encode()).decode()},
    }
    if existing is None:
        ctx.kubeconfig = ctx.kube.create(SECRETS, ctx.namespace, body)
    else:
        body["metadata"]["resourceVersion"] = existing["metadata"]["resourceVersion"]
        ctx.kubeconfig = ctx.kube.replace(SECRETS, ctx.namespace, name, body)


# ------------------------------------------------------------------ what is outdated


def server_config_hash(spec: C3osControlPlaneSpec) -> str:
    canonical = json.dumps(spec.server_config.to_wire(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def outdated_because(spec: C3osControlPlaneSpec, machine: dict[str, Any]) -> str | None:
    """Why a server Machine must be replaced (None: it is up to date). The reasons of
    CAPI's own control planes: version, infrastructure template, server config, rollout.after."""
    annotations = machine["metadata"].get("annotations") or {}
    if machine.get("spec", {}).get("version") != spec.version:
        return f"version {machine.get('spec', {}).get('version')} is not {spec.version}"
    template = spec.machine_template.spec.infrastructure_ref.name
    if annotations.get(INFRA_TEMPLATE_ANNOTATION, template) != template:
        return f"infrastructure template changed to {template}"
    if annotations.get(SERVER_CONFIG_ANNOTATION, server_config_hash(spec)) != server_config_hash(spec):
        return "server config changed"
    after = spec.rollout.after if spec.rollout else None
    created = machine["metadata"].get("creationTimestamp")
    if (
        after
        and created
        and datetime.fromisoformat(created.replace("Z", "+00:00")) < after <= datetime.now(UTC)
    ):
        return f"rollout.after {after.isoformat()} passed"
    return None


def _created(machine: dict[str, Any]) -> datetime:
    stamp = machine["metadata"].get("creationTimestamp")
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")) if stamp else datetime.min.replace(tzinfo=UTC)


def _outdated(ctx: _Ctx, machines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in machines if outdated_because(ctx.spec, m)]


def _report_up_to_date(ctx: _Ctx) -> None:
    """Set each server Machine's `UpToDate` condition: in the v1beta2 contract the owner of
    a Machine reports it (CAPI's Machine controller only reads it, and the Cluster's
    ControlPlaneMachinesUpToDate summarises it). Written only when it changes."""
    for machine in _active(ctx.machines):
        why = outdated_because(ctx.spec, machine)
        reason = "NotUpToDate" if why else "UpToDate"
        if not why and machine["metadata"]["name"] in ctx.mismatches:
            # Replacing it would not help (the same image again): not up to date, but
            # not outdated either; the VersionMismatch condition says what to change.
            why, reason = ctx.mismatches[machine["metadata"]["name"]], VERSION_MISMATCH
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


def _propagate_in_place(ctx: _Ctx) -> None:
    """Labels, annotations and deletion timeouts reach existing Machines without a
    rollout (CAPI's contract for control planes)."""
    meta = ctx.spec.machine_template.metadata
    want_labels = (meta.labels or {}) if meta else {}
    want_annotations = (meta.annotations or {}) if meta else {}
    deletion = ctx.spec.machine_template.spec.deletion
    want_deletion = deletion.to_wire() if deletion else None
    for machine in _active(ctx.machines):
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


# ------------------------------------------------------------------ creating a machine


def _new_name(ctx: _Ctx) -> str:
    suffix = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(5))
    return f"{ctx.name}-{suffix}"[:63]


def _failure_domain(ctx: _Ctx) -> str | None:
    """The control-plane failure domain with the fewest of our Machines (CAPI spreads by
    the same rule)."""
    domains = [
        d["name"]
        for d in (ctx.cluster.get("status") or {}).get("failureDomains") or []
        if d.get("controlPlane", True)
    ]
    if not domains:
        return None
    used = Counter(m.get("spec", {}).get("failureDomain") for m in _active(ctx.machines))
    return str(min(sorted(domains), key=lambda d: used[d]))


def _labels(ctx: _Ctx) -> dict[str, str]:
    template_meta = ctx.spec.machine_template.metadata
    return {
        **((template_meta.labels or {}) if template_meta else {}),
        CLUSTER_NAME_LABEL: ctx.cluster_name,
        MACHINE_CONTROL_PLANE_LABEL: "",
        MACHINE_CONTROL_PLANE_NAME_LABEL: ctx.name,
    }


def _infra_resource(ctx: _Ctx) -> tuple[Resource, Resource] | Outcome:
    """The template kind and the machine kind cloned from it, at the API version the
    template's CRD names for CAPI's contract (the clone keeps the template's version,
    as CAPI's own cloning does)."""
    ref = ctx.spec.machine_template.spec.infrastructure_ref
    try:
        template = contract.resource_for(ctx.kube, ref.api_group, ref.kind)
    except contract.ContractError as exc:
        return Outcome.wait("InfrastructureTemplateUnusable", str(exc), LONG_WAIT)
    kind = ref.kind.removesuffix("Template")
    return template, Resource(ref.api_group, template.version, contract.plural(kind), kind)


def _create_if_absent(kube: Kube, resource: Resource, namespace: str, body: dict[str, Any]) -> None:
    # Exists already: an earlier (interrupted) reconcile created it.
    with contextlib.suppress(ConflictError):
        kube.create(resource, namespace, body)


def _create_machine(ctx: _Ctx, name: str, failure_domain: str | None) -> Outcome | None:
    """Infrastructure machine, then C3osConfig, then the Machine that ties them together;
    each create tolerates "exists", so a crash in between is finished by the next run."""
    ref = ctx.spec.machine_template.spec.infrastructure_ref
    resources = _infra_resource(ctx)
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


def _no_partial_creation(ctx: _Ctx) -> str:
    return f"no-partial-creation/{ctx.obj['metadata']['uid']}"


def _resume_interrupted_creations(ctx: _Ctx) -> None:
    """Infrastructure machines or C3osConfigs of ours whose Machine was never created: a
    reconcile died half-way. Finish it (the same names) when a Machine is still wanted,
    else remove the parts. Looked for on this process's first reconcile of the control
    plane and after a creation that did not finish; a crash means a new process, so
    nothing is missed. (Parts of the current infrastructure kind only: after a change of
    kind, older parts stay until the control plane is deleted, their owner.)"""
    if ctx.view is not None and ctx.view.knows(_no_partial_creation(ctx)):
        return
    resources = _infra_resource(ctx)
    if isinstance(resources, Outcome):
        return  # the scale step reports why; look again next time
    infra = resources[1]
    # The parts are listed from the API server; the Machines must be as recent.
    if not ctx.machines_fresh:
        _read_machines(ctx, fresh=True)
    have = {m["metadata"]["name"] for m in ctx.machines}
    selector = f"{MACHINE_CONTROL_PLANE_NAME_LABEL}={ctx.name}"
    parts = [
        *ctx.kube.list(infra, ctx.namespace, selector),
        *ctx.kube.list(C3OS_CONFIGS, ctx.namespace, selector),
    ]
    for name in sorted({p["metadata"]["name"] for p in parts if _owned(ctx, p)} - have):
        if len(_active(ctx.machines)) < ctx.spec.replicas:
            log.info("finishing the creation of control-plane Machine %s/%s", ctx.namespace, name)
            if _create_machine(ctx, name, _failure_domain(ctx)) is not None:
                return  # blocked (the scale step says why); look again next time
            _read_machines(ctx, fresh=True)
        else:
            ctx.kube.delete(infra, ctx.namespace, name)
            ctx.kube.delete(C3OS_CONFIGS, ctx.namespace, name)
    if ctx.view is not None:
        ctx.view.learn(_no_partial_creation(ctx))


# ------------------------------------------------------------------ scaling down


def _release_hooks(ctx: _Ctx) -> None:
    """A server Machine being deleted waits at our pre-terminate hook until k3s removed
    its etcd member; the last server, and a cluster being deleted, need no removal.

    k3s (`pkg/etcd/member_controller.go`) acts on `remove=true` only for a Node carrying
    its etcd member annotations (node-name, node-address), and refuses the only voting
    member by deleting `remove` without setting `removed-node-name`. So: a Node without
    member annotations is let go after ETCD_MEMBER_GRACE (k3s's metadata controller
    annotates a server within seconds of its start; none means its etcd never joined);
    a refused last member is held, never let go silently, and asked again once another
    server's etcd has joined. No Node at all: k3s never registered, nothing to remove."""
    cluster_deleting = bool(ctx.cluster["metadata"].get("deletionTimestamp"))
    for machine in _deleting(ctx.machines):
        annotations = machine["metadata"].get("annotations") or {}
        if HOOK not in annotations:
            continue
        name = machine["metadata"]["name"]
        others = [m for m in ctx.machines if m is not machine]
        if cluster_deleting or not others:
            _remove_hook(ctx, machine)
            continue
        if ctx.workload is None or ctx.workload_error:
            # Without the Nodes we cannot tell whether it still holds an etcd member.
            ctx.etcd_waits.append(
                (WAITING_FOR_ETCD_REMOVAL, f"{name}: the workload cluster's Nodes cannot be read")
            )
            continue
        node = _node_of(ctx, machine)
        if node is None or ETCD_REMOVED in node.annotations:
            _remove_hook(ctx, machine)
            continue
        try:
            if not _etcd_member_gone(ctx, machine, node):
                continue
        except WorkloadUnreachableError as exc:
            ctx.workload_error = str(exc)
            continue
        _remove_hook(ctx, machine)


def _etcd_member_gone(ctx: _Ctx, machine: dict[str, Any], node: NodeState) -> bool:
    """Ask k3s to remove the etcd member of `machine`'s Node (once), then judge k3s's
    answer; True when the hook may go. Records why it waits in ctx.etcd_waits."""
    assert ctx.workload is not None
    name = machine["metadata"]["name"]
    requested = _removal_requested_at(machine)
    if requested is None:
        # Remember the request first: a crash between the two writes then reads as a
        # request k3s dropped, which is asked again (or reported) below.
        _mark_removal_requested(ctx, machine)
        ctx.workload.annotate_node(node.name, {ETCD_REMOVE: "true"})
        ctx.etcd_waits.append(
            (WAITING_FOR_ETCD_REMOVAL, f"{name}: asked k3s to remove node {node.name}'s etcd member")
        )
        return False
    member = node.annotations.get(ETCD_NODE_NAME)
    if member is None:
        # k3s ignores a removal request for a Node without its etcd member annotations.
        deadline = requested + ETCD_MEMBER_GRACE
        if ctx.now >= deadline:
            log.warning(
                "releasing %s/%s: node %s never carried an etcd member annotation (%s) within %ds "
                "of the removal request, so its etcd never joined",
                ctx.namespace, name, node.name, ETCD_NODE_NAME, ETCD_MEMBER_GRACE.total_seconds(),
            )  # fmt: skip
            return True
        ctx.etcd_waits.append((
            WAITING_FOR_ETCD_MEMBER,
            f"{name}: node {node.name} has no etcd member annotation ({ETCD_NODE_NAME}), which k3s needs "
            f"to remove it; let go at {deadline.strftime('%Y-%m-%dT%H:%M:%SZ')} if none appears",
        ))  # fmt: skip
        return False
    if node.annotations.get(ETCD_REMOVE) == "true":
        ctx.etcd_waits.append((WAITING_FOR_ETCD_REMOVAL, f"{name}: k3s is removing etcd member {member}"))
        return False
    # Asked, and k3s dropped the request without removing: the only voting member.
    members = [n for n in ctx.nodes.values() if n.name != node.name and ETCD_NODE_NAME in n.annotations]
    if members:
        ctx.workload.annotate_node(node.name, {ETCD_REMOVE: "true"})  # k3s: ask again once there are more
        ctx.etcd_waits.append(
            (WAITING_FOR_ETCD_REMOVAL, f"{name}: asked k3s again to remove etcd member {member}")
        )
        return False
    ctx.etcd_waits.append((
        ETCD_REMOVAL_REFUSED,
        f"{name}: k3s refused to remove etcd member {member} of node {node.name}: it is the only "
        "voting member, no other server's etcd has joined; the Machine is held so the cluster's "
        "data is not lost (it is asked again once another server joins etcd)",
    ))  # fmt: skip
    return False


def _removal_requested_at(machine: dict[str, Any]) -> datetime | None:
    value = (machine["metadata"].get("annotations") or {}).get(ETCD_REMOVAL_REQUESTED)
    if not value:
        return None
    try:
        return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None  # not ours to trust: ask again and restart the clock


def _mark_removal_requested(ctx: _Ctx, machine: dict[str, Any]) -> None:
    annotations = {
        **(machine["metadata"].get("annotations") or {}),
        ETCD_REMOVAL_REQUESTED: ctx.now.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    body = {**machine, "metadata": {**machine["metadata"], "annotations": annotations}}
    updated = ctx.kube.replace(MACHINES, ctx.namespace, machine["metadata"]["name"], body)
    machine["metadata"] = updated["metadata"]


def _remove_hook(ctx: _Ctx, machine: dict[str, Any]) -> None:
    annotations = machine["metadata"].get("annotations") or {}
    if HOOK not in annotations:
        return
    rest = {k: v for k, v in annotations.items() if k != HOOK}
    body = {**machine, "metadata": {**machine["metadata"], "annotations": rest}}
    ctx.kube.replace(MACHINES, ctx.namespace, machine["metadata"]["name"], body)


def _workload(ctx: _Ctx) -> WorkloadClient | None:
    """The cached client for the workload cluster, from the kubeconfig Secret we wrote."""
    secret = ctx.kubeconfig
    if secret is None:
        return None
    return WORKLOADS.get(ctx.namespace, ctx.cluster_name, base64.b64decode(secret["data"]["value"]).decode())


def _pick_for_deletion(ctx: _Ctx, candidates: list[dict[str, Any]]) -> dict[str, Any]:
    """Marked for deletion first, then outdated, then the oldest in the failure domain
    with the most servers."""
    marked = [m for m in candidates if DELETE_MACHINE_ANNOTATION in (m["metadata"].get("annotations") or {})]
    if marked:
        return marked[0]
    outdated = _outdated(ctx, candidates)
    if outdated:
        return outdated[0]
    per_domain = Counter(m["spec"].get("failureDomain") for m in candidates)
    crowded = max(per_domain.values())
    return next(m for m in candidates if per_domain[m["spec"].get("failureDomain")] == crowded)


# ------------------------------------------------------------------ remediation


def _marked_for_remediation(machine: dict[str, Any]) -> bool:
    """A MachineHealthCheck found it unhealthy and left the remedy to us, its owner."""
    return cond.is_false(machine, OWNER_REMEDIATED)


def _remediate(ctx: _Ctx) -> Outcome | None:
    """Replace one server a MachineHealthCheck marked unhealthy: only with more than one
    server, nothing else changing, etcd quorum kept without it, and within the retry
    budget (`spec.remediation`). None when there is nothing to remediate."""
    active = _active(ctx.machines)
    marked = [m for m in active if _marked_for_remediation(m)]
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
    if _deleting(ctx.machines) or len(active) > ctx.spec.replicas:
        return Outcome.wait(
            "RemediationBlocked", f"{name} waits for another server change to finish", SHORT_WAIT
        )
    others = [m for m in active if m is not victim]
    healthy_others = sum(1 for m in others if _healthy(ctx, m))
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
    if not _confirmed(ctx):
        return _remediate(ctx)
    ctx.kube.delete(MACHINES, ctx.namespace, name, uid=victim["metadata"]["uid"])
    ctx.last_remediation = {"machine": name, "time": cond.format_time(ctx.now), "retryCount": retry}
    return Outcome.wait("Remediating", f"deleting unhealthy server {name}; a new one replaces it", SHORT_WAIT)


# ------------------------------------------------------------------ the steps


def _scale(ctx: _Ctx) -> Outcome:
    remedy = _remediate(ctx)
    if remedy is not None:
        return remedy
    active = _active(ctx.machines)
    if _deleting(ctx.machines):
        return Outcome.wait("ScalingDown", "waiting for a server Machine to be deleted", SHORT_WAIT)
    outdated = _outdated(ctx, active)
    blocked = _rollout_blocked(ctx, active)
    if outdated and blocked and len(active) == ctx.spec.replicas:
        return blocked
    if outdated or len(active) < ctx.spec.replicas:
        # Before a server is removed (surge 0) or made: an image that says it ships
        # another version would only be found out after the first replacement.
        ctx.template_mismatch = _template_mismatch(ctx)
        if ctx.template_mismatch:
            return Outcome.wait(VERSION_MISMATCH, ctx.template_mismatch, LONG_WAIT)
    strategy = ctx.spec.rollout.strategy if ctx.spec.rollout else None
    surge = strategy.rolling_update.max_surge if strategy and strategy.rolling_update else 1
    unhealthy = [m["metadata"]["name"] for m in active if not _healthy(ctx, m)]

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
        if not _confirmed(ctx):
            return _scale(ctx)
        name = _new_name(ctx)
        blocked = _create_machine(ctx, name, _failure_domain(ctx))
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
        if not _confirmed(ctx):
            return _scale(ctx)
        ctx.kube.delete(MACHINES, ctx.namespace, victim["metadata"]["name"], uid=victim["metadata"]["uid"])
        return Outcome.wait(
            "ScalingDown", f"deleting server Machine {victim['metadata']['name']}", SHORT_WAIT
        )
    if unhealthy:
        return Outcome.wait("WaitingForHealthyServers", f"{', '.join(unhealthy)} not Ready yet", SHORT_WAIT)
    scheduled = _rollout_scheduled(ctx, active)
    if scheduled is not None:
        return scheduled
    return Outcome.ready("Available", f"{len(active)} of {ctx.spec.replicas} servers Ready")


def _template_mismatch(ctx: _Ctx) -> str | None:
    resources = _infra_resource(ctx)
    if isinstance(resources, Outcome):
        return None  # reported where the template is used
    template = _get(ctx, resources[0], ctx.spec.machine_template.spec.infrastructure_ref.name)
    return node_version.template_mismatch(ctx.spec.version, template)


def _rollout_blocked(ctx: _Ctx, active: list[dict[str, Any]]) -> Outcome | None:
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


def _rollout_scheduled(ctx: _Ctx, active: list[dict[str, Any]]) -> Outcome | None:
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


def _delete(ctx: _Ctx) -> Outcome:
    """Delete our Machines (CAPI tears each down, our hook is released at once because
    the Cluster is going); the finalizer goes when none is left."""
    for machine in _active(ctx.machines):
        ctx.kube.delete(MACHINES, ctx.namespace, machine["metadata"]["name"])
    for machine in _deleting(ctx.machines):
        # The whole control plane goes: no etcd member needs removing first.
        _remove_hook(ctx, machine)
    if ctx.machines:
        return Outcome.wait(
            "Deleting", f"waiting for {len(ctx.machines)} server Machine(s) to go", SHORT_WAIT
        )
    _set_finalizer(ctx, present=False)
    WORKLOADS.forget(ctx.namespace, ctx.cluster_name)
    return Outcome.ready("Deleted", "all server Machines are gone")


def _set_finalizer(ctx: _Ctx, *, present: bool) -> None:
    finalizers = list(ctx.obj["metadata"].get("finalizers") or [])
    if (FINALIZER in finalizers) == present:
        return
    finalizers = [*finalizers, FINALIZER] if present else [f for f in finalizers if f != FINALIZER]
    body = {**ctx.obj, "metadata": {**ctx.obj["metadata"], "finalizers": finalizers}}
    body.pop("status", None)
    updated = ctx.kube.replace(ctx.resource, ctx.namespace, ctx.name, body)
    ctx.obj["metadata"]["resourceVersion"] = updated["metadata"]["resourceVersion"]
    ctx.obj["metadata"]["finalizers"] = finalizers


def _run(ctx: _Ctx) -> Outcome:
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
    _ensure_kubeconfig(ctx, cluster_secrets.cas.server.cert_pem, cluster_secrets.cas.client)
    _read_machines(ctx)
    _resume_interrupted_creations(ctx)
    _propagate_in_place(ctx)
    _read_workload(ctx)
    _check_node_versions(ctx)
    _report_up_to_date(ctx)
    _release_hooks(ctx)
    return _scale(ctx)


# ------------------------------------------------------------------ status


def _status_fields(ctx: _Ctx) -> dict[str, Any]:
    active = _active(ctx.machines)
    ready = [m for m in active if _healthy(ctx, m)]
    # CAPI v1.14: what each server runs (its Node's kubelet version, else the version
    # its Machine wants while no Node reported one), oldest first. The topology
    # controller reads it to tell when the control plane is upgraded.
    versions = status_versions(
        _node_version(ctx, m) or str(m["spec"].get("version") or "") for m in ctx.machines
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


def _conditions(ctx: _Ctx, outcome: Outcome, generation: int | None) -> list[cond.Condition]:
    active = _active(ctx.machines)
    ready = sum(1 for m in active if _healthy(ctx, m))
    quorum = ctx.spec.replicas // 2 + 1
    available = ctx.initialized and ready >= min(quorum, max(len(active), 1))
    outdated = len(_outdated(ctx, active))
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
            f"{outdated} server(s) to replace" if outdated else "",
        ),
        c(
            "ScalingUp",
            len(active) < ctx.spec.replicas,
            "ScalingUp" if len(active) < ctx.spec.replicas else "NotScalingUp",
            f"{len(active)} of {ctx.spec.replicas} servers" if len(active) < ctx.spec.replicas else "",
        ),
        c(
            "ScalingDown",
            len(active) > ctx.spec.replicas or bool(_deleting(ctx.machines)),
            "ScalingDown" if len(active) > ctx.spec.replicas or _deleting(ctx.machines) else "NotScalingDown",
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


def _version_condition(ctx: _Ctx, generation: int | None) -> cond.Condition:
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


def _etcd_condition(ctx: _Ctx, c: Callable[[str, bool, str, str], cond.Condition]) -> cond.Condition:
    if not ctx.etcd_waits:
        return c(ETCD_MEMBERS_REMOVED, True, "NoneWaiting", "")
    reasons = [reason for reason, _ in ctx.etcd_waits]
    # The worst first: a refusal needs a person, a missing annotation ends by itself.
    reason = next(
        r for r in (ETCD_REMOVAL_REFUSED, WAITING_FOR_ETCD_MEMBER, WAITING_FOR_ETCD_REMOVAL) if r in reasons
    )
    return c(ETCD_MEMBERS_REMOVED, False, reason, "; ".join(message for _, message in ctx.etcd_waits))


def reconcile(
    kube: Kube,
    resource: Resource,
    obj: dict[str, Any],
    now: datetime | None = None,
    view: ClusterView | None = None,
) -> Outcome:
    """`view`: the manager's watch-fed view of cluster Secrets, control-plane Machines and
    Clusters (None: every read goes to the API server)."""
    meta = obj["metadata"]
    with _lock_for(meta["namespace"], meta["name"]):
        try:
            return _reconcile(kube, resource, obj, now or datetime.now(UTC), view)
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
    kube: Kube, resource: Resource, obj: dict[str, Any], now: datetime, view: ClusterView | None
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
    ctx = _Ctx(kube=kube, resource=resource, obj=obj, spec=spec, cluster=cluster, now=now, view=view)
    ctx.last_remediation = (obj.get("status") or {}).get("lastRemediation")
    if meta.get("deletionTimestamp"):
        # The finalizer goes once no Machine is left: never on the view's word.
        _read_machines(ctx, fresh=True)
        return _delete(ctx)
    _set_finalizer(ctx, present=True)
    outcome = _run(ctx)
    patch = status_patch(
        ctx.obj, [pause, *_conditions(ctx, outcome, generation)], generation, fields=_status_fields(ctx)
    )
    if patch:
        kube.patch_status(resource, ctx.namespace, ctx.name, patch)
    return outcome
