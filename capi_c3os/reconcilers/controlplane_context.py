"""What every part of the C3osControlPlane reconciler shares: the context of one
reconcile, the waits, and reading our server Machines and their Nodes.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from capi_c3os.api.controlplane import C3osControlPlaneSpec
from capi_c3os.capi.metadata import BOOTSTRAP_GROUP, CLUSTER_NAME_LABEL, MACHINE_CONTROL_PLANE_LABEL
from capi_c3os.capi.outcome import Outcome
from capi_c3os.capi.owners import owner_references
from capi_c3os.capi.pause import is_paused
from capi_c3os.reconcilers import contract, node_version
from capi_c3os.reconcilers.kube import CLUSTERS, MACHINES, ConflictError, Kube, Resource
from capi_c3os.reconcilers.view import ClusterView
from capi_c3os.workload.client import NodeState, WorkloadClient

SHORT_WAIT = 5.0
LONG_WAIT = 30.0
C3OS_CONFIGS = Resource(BOOTSTRAP_GROUP, "v1alpha1", "c3osconfigs", "C3osConfig")

IN_PLACE_ANNOTATION = "controlplane.cluster.x-k8s.io/c3os-in-place-upgrade"
"""On a server Machine being upgraded in place: its target as JSON (InPlaceTarget) and the
manager's signature of it. Written before the upgrade starts, removed in the write that
makes the Machine up to date.

Whoever may edit Machines may edit this annotation, and its image is what a privileged
Job runs on the node: only a target the manager's key (site_record.ensure_record_key)
signed for this very Machine (namespace, name, UID) is acted on."""
_SIGNATURE_VERSION = "v1:"
_PURPOSE = "c3os-in-place-upgrade"


@dataclass(frozen=True)
class InPlaceTarget:
    """What a server is being upgraded to in place."""

    image: str
    """The OCI reference the upgrade Job installs."""
    version: str
    """The k3s version that image ships: the upgrade is done when the Node runs it."""
    template: str
    """The infrastructure template the image comes from (the Machine's new template)."""

    def to_annotation(self, key: bytes, machine: dict[str, Any]) -> str:
        """The annotation value for `machine`, signed with the manager's `key`."""
        return json.dumps(
            {"image": self.image, "version": self.version, "template": self.template,
             "signature": self.signature(key, machine)},
            sort_keys=True,
        )  # fmt: skip

    def signature(self, key: bytes, machine: dict[str, Any]) -> str:
        meta = machine["metadata"]
        # JSON framing and a purpose: no choice of fields imitates another message, nor a
        # site record signed with the same key (site_record.sign).
        message = json.dumps(
            [_PURPOSE, str(meta.get("namespace")), str(meta.get("name")), str(meta.get("uid")),
             self.image, self.version, self.template],
            separators=(",", ":"),
        ).encode()  # fmt: skip
        return _SIGNATURE_VERSION + hmac.new(key, message, hashlib.sha256).hexdigest()


def in_place_annotated(machine: dict[str, Any]) -> bool:
    return IN_PLACE_ANNOTATION in (machine["metadata"].get("annotations") or {})


def in_place_target(machine: dict[str, Any], key: bytes) -> InPlaceTarget | None:
    """The in-place upgrade the Machine is in: None when there is none, or when the
    annotation is unreadable or not signed by `key` for this Machine (written by hand,
    copied from another Machine, or signed before a `clusterctl move`)."""
    raw = (machine["metadata"].get("annotations") or {}).get(IN_PLACE_ANNOTATION)
    if not raw:
        return None
    try:
        data = json.loads(raw)
        target = InPlaceTarget(str(data["image"]), str(data["version"]), str(data["template"]))
        signature = str(data["signature"])
    except (ValueError, KeyError, TypeError):
        return None
    if not hmac.compare_digest(target.signature(key, machine).encode(), signature.encode()):
        return None
    return target


@dataclass
class ControlPlaneContext:
    """One reconcile of one C3osControlPlane: what it read, and what the steps found
    for the status written at its end."""

    kube: Kube
    resource: Resource
    obj: dict[str, Any]
    spec: C3osControlPlaneSpec
    cluster: dict[str, Any]
    now: datetime
    record_key: bytes = field(repr=False)
    """The manager's key: signs the in-place upgrade targets it writes (IN_PLACE_ANNOTATION)."""
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
    in_place: Outcome | None = None
    """What the in-place upgrade in flight says this reconcile (in progress, just done):
    the scaling step returns it before any other change."""
    upgrading: tuple[str, str] | None = None
    """(Machine name, how far it got): the server being upgraded in place."""
    in_place_failure: str | None = None
    """Why the in-place upgrade of that server failed: the rollout stops there."""
    replacing: dict[str, str] = field(default_factory=dict)
    """Machine name -> why it is replaced rather than upgraded in place (strategy InPlace)."""

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


def active_machines(machines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in machines if not m["metadata"].get("deletionTimestamp")]


def deleting_machines(machines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in machines if m["metadata"].get("deletionTimestamp")]


def owned(ctx: ControlPlaneContext, obj: dict[str, Any]) -> bool:
    uid = ctx.obj["metadata"]["uid"]
    return any(ref.get("uid") == uid and ref.get("controller") for ref in owner_references(obj))


def read_machines(ctx: ControlPlaneContext, *, fresh: bool = False) -> None:
    """Our server Machines, oldest first: from the view, or (`fresh`, or no view) listed."""
    if ctx.view is not None:
        found = ctx.view.list(ctx.kube, MACHINES, ctx.namespace, ctx.selector, fresh=fresh)
    else:
        found, fresh = ctx.kube.list(MACHINES, ctx.namespace, ctx.selector), True
    ctx.machines_fresh = fresh
    ctx.machines = sorted(
        (m for m in found if owned(ctx, m)),
        key=lambda m: (m["metadata"].get("creationTimestamp") or "", m["metadata"]["name"]),
    )


def confirmed(ctx: ControlPlaneContext) -> bool:
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
    read_machines(ctx, fresh=True)
    return False


def get_object(ctx: ControlPlaneContext, resource: Resource, name: str) -> dict[str, Any] | None:
    if ctx.view is not None:
        return ctx.view.get(ctx.kube, resource, ctx.namespace, name)
    return ctx.kube.get(resource, ctx.namespace, name)


def node_of(ctx: ControlPlaneContext, machine: dict[str, Any]) -> NodeState | None:
    provider_id = machine.get("spec", {}).get("providerID")
    return ctx.nodes.get(provider_id) if provider_id else None


def healthy(ctx: ControlPlaneContext, machine: dict[str, Any]) -> bool:
    node = node_of(ctx, machine)
    return node is not None and node.ready


def running_version(ctx: ControlPlaneContext, machine: dict[str, Any]) -> str | None:
    """What the Machine's Node reports: read from the workload cluster, else what CAPI
    copied to the Machine (the workload cluster may be unreachable right now)."""
    node = node_of(ctx, machine)
    if node is not None and node.kubelet_version:
        return node.kubelet_version
    return node_version.reported_version(machine)


def infra_resources(ctx: ControlPlaneContext) -> tuple[Resource, Resource] | Outcome:
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
