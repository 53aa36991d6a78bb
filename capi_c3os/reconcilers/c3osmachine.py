"""C3osMachine: one reconciler for every backend (CAPI v1beta2 InfraMachine contract).

    paused?                      -> report Paused, touch nothing else
    spec.providerID not its own? -> InvalidProviderID; nothing created, deletion removes nothing
    being deleted?               -> backend deprovision until DELETED, then drop our finalizer
                                    (at the site recorded and signed on the machine: works
                                    without the C3osCluster)
    await owner Machine, its Cluster, infrastructure provisioned, bootstrap data
    resolve the site             (Machine.spec.failureDomain, else the cluster's default)
    ensure finalizer + providerID + signed site record
                                 (one write, before the backend creates anything; a
                                  machine that never got this far deletes freely; a record
                                  that does not verify is signed again from the C3osCluster)
    provision                    -> intent to the backend; its Progress becomes conditions
    report                       -> providerID, addresses, failureDomain, provisioned

The machine's identity is `c3os://<namespace>/<name>`, from the object's own name, never
from what its spec says: every backend resource is named from it, so a providerID
written by someone else must not make the machine another's. The reconciler writes it
into spec.providerID once (CAPI matches the Node by it; it survives `clusterctl move`,
which keeps names but not UIDs or status) and refuses any other value (InvalidProviderID;
a deletion then removes nothing). On an enrolled host the providerID also names the host
(`c3os://<namespace>/<host>/<name>`): it is written once the claim is made, after the
finalizer, and one naming another host is refused. Status is written once per reconcile, and one
reconcile of a machine runs at a time (kopf's handlers and the backend's events both
start them).
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from capi_c3os.api.infrastructure import (
    PROVIDER_ID_SCHEME,
    C3osClusterSpec,
    C3osMachineSpec,
    Site,
    host_provider_id,
    own_provider_id,
)
from capi_c3os.backends.base import (
    BackendError,
    MachineIdentity,
    MachineIntent,
    Phase,
    Progress,
    SiteCredentials,
)
from capi_c3os.backends.registry import BACKENDS, Backends, site_kind
from capi_c3os.capi import conditions as cond
from capi_c3os.capi.metadata import (
    IN_PLACE_UPDATE_IN_PROGRESS_ANNOTATION,
    INFRASTRUCTURE_GROUP,
    is_control_plane_machine,
)
from capi_c3os.capi.outcome import Outcome
from capi_c3os.capi.owners import owner_machine_name, references
from capi_c3os.capi.pause import is_paused, paused_condition
from capi_c3os.capi.status import status_patch
from capi_c3os.reconcilers import node_version
from capi_c3os.reconcilers.generic import fetch_owner_cluster
from capi_c3os.reconcilers.keyed_lock import KeyedLocks
from capi_c3os.reconcilers.kube import CLUSTERS, MACHINES, SECRETS, ConflictError, Kube, Resource
from capi_c3os.reconcilers.site_record import SITE_ANNOTATION, signed_annotations, verified_site
from capi_c3os.reconcilers.view import ClusterView, Reader, reader

log = logging.getLogger(__name__)

FINALIZER = "c3osmachine.infrastructure.cluster.x-k8s.io"
READY = "Ready"
WAIT = 5.0
"""Seconds between looks while waiting for CAPI objects."""
WAIT_FOR_USER = 30.0
"""Seconds between looks while waiting for something a person must fix."""
HEALTH_POLL = 60.0
"""Seconds between looks at a machine that is not running (it may come back)."""
PROVISION_POLL = 10.0
NODE_VERSION_POLL = 30.0
"""Seconds between looks at a running machine's Machine until its Node reported a version,
and while it is updated in place."""
PAUSED_DELETION_POLL = 30.0

C3OS_CLUSTERS = Resource(INFRASTRUCTURE_GROUP, "v1alpha1", "c3osclusters", "C3osCluster")


def provider_id_for(namespace: str, name: str) -> str:
    return own_provider_id(namespace, name)


def hostname_for(name: str) -> str:
    """A DNS label: object names may be 253 characters and hold dots."""
    label = name.replace(".", "-")[:63].strip("-")
    return label or "c3os"


@dataclass
class Report:
    """What this reconcile learned, written as one status patch at the end."""

    ready: cond.Condition | None = None
    version: cond.Condition | None = None
    """VersionMismatch, once the machine runs (node_version.py)."""
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass
class MachineContext:
    kube: Kube
    resource: Resource
    obj: dict[str, Any]
    backends: Backends
    now: datetime
    record_key: bytes = field(repr=False)
    """Signs and verifies the site record (site_record.py); the manager's alone."""
    cluster: dict[str, Any] | None = None
    machine: dict[str, Any] | None = None
    report: Report = field(default_factory=Report)
    reads: Reader | None = None
    """Where the Cluster, Machine, C3osCluster and Secrets are read while provisioning:
    the manager's watch-fed view (reconcilers/view.py) or, without one, the API server."""

    @property
    def reader(self) -> Reader:
        return self.reads or self.kube

    @property
    def namespace(self) -> str:
        return str(self.obj["metadata"]["namespace"])

    @property
    def name(self) -> str:
        return str(self.obj["metadata"]["name"])

    @property
    def generation(self) -> int | None:
        value = self.obj["metadata"].get("generation")
        return int(value) if value is not None else None

    @property
    def deleting(self) -> bool:
        return bool(self.obj["metadata"].get("deletionTimestamp"))

    @property
    def identity(self) -> MachineIdentity:
        """Who the machine is: from its own namespace and name, whatever its spec says."""
        return MachineIdentity(self.namespace, self.name, provider_id_for(self.namespace, self.name))

    @property
    def foreign_provider_id(self) -> str | None:
        """spec.providerID when it names anything but this machine (hand-written). The
        enrolled-host form `c3os://<namespace>/host-<uuid>/<name>` is written by the
        reconciler once the machine claimed its host, so it is the machine's only with our
        finalizer on it; the host it names is then checked against the claim
        (`_settle_host_provider_id`)."""
        written = (self.obj.get("spec") or {}).get("providerID")
        if written is None or written == self.identity.provider_id:
            return None
        if (
            str(written).startswith(f"{PROVIDER_ID_SCHEME}{self.namespace}/host-")
            and str(written).endswith(f"/{self.name}")
            and FINALIZER in _finalizers(self.obj)
        ):
            return None
        return str(written)

    def condition(self, status: str, reason: str, message: str) -> None:
        self.report.ready = cond.new_condition(
            READY, status, reason, message, generation=self.generation, now=self.now
        )


_LOCKS = KeyedLocks()


def reconcile(
    kube: Kube,
    resource: Resource,
    obj: dict[str, Any],
    backends: Backends | None = None,
    now: datetime | None = None,
    *,
    record_key: bytes,
    view: ClusterView | None = None,
) -> Outcome:
    """One at a time per machine: kopf's handler and the backend's event thread (a domain
    stopped, often by our own deprovision) may both start one, and two deprovisions at
    once trip over each other's deleted volumes. Who had to wait reads the object again:
    the one it was given predates the other's work (a released finalizer, a new status)."""
    meta = obj["metadata"]
    with _LOCKS.hold((meta["namespace"], meta["name"])) as waited:
        fresh = kube.get(resource, meta["namespace"], meta["name"]) if waited else obj
        if fresh is None:
            return Outcome.ready()  # gone meanwhile: nothing left to do or report
        try:
            return _reconcile(kube, resource, fresh, backends, now, record_key, view)
        except _NothingDoneYetError:
            # The body predates a change of the spec (typically our own claim: kopf hands
            # over the body of an event queued before it). Only reads happened: once more
            # on the object as it is now, instead of a conflict and a requeue.
            again = kube.get(resource, meta["namespace"], meta["name"])
            if again is None:
                return Outcome.ready()
            return _reconcile(kube, resource, again, backends, now, record_key, view)


class _NothingDoneYetError(ConflictError):
    """The claim met a conflict: nothing was written nor asked of the backend yet."""


def _reconcile(
    kube: Kube,
    resource: Resource,
    obj: dict[str, Any],
    backends: Backends | None,
    now: datetime | None,
    record_key: bytes,
    view: ClusterView | None,
) -> Outcome:
    ctx = MachineContext(kube, resource, obj, backends or BACKENDS, now or datetime.now(UTC), record_key)
    ctx.reads = reader(kube, view)
    ctx.cluster = fetch_owner_cluster(ctx.reader, obj)
    if is_paused(obj, ctx.cluster):
        return _write(ctx, paused=True, outcome=paused_outcome(ctx.deleting))
    outcome = _delete(ctx) if ctx.deleting else _provision(ctx)
    if outcome.done and not outcome.reason:
        return outcome  # the object is gone (finalizer released): nothing to report
    if ctx.report.ready is None:
        status = cond.TRUE if outcome.done else cond.FALSE
        ctx.condition(status, outcome.reason or "Ready", outcome.message)
    return _write(ctx, paused=False, outcome=outcome)


def paused_outcome(deleting: bool) -> Outcome:
    """Nothing happens while paused; a deletion keeps asking (kopf's delete handler
    would otherwise count it as done and stop calling)."""
    if deleting:
        return Outcome.wait("Paused", "deletion waits until reconciliation is unpaused", PAUSED_DELETION_POLL)
    return Outcome.paused()


def _write(ctx: MachineContext, paused: bool, outcome: Outcome) -> Outcome:
    conditions = [paused_condition(ctx.obj, ctx.cluster, ctx.now)]
    if ctx.report.ready is not None:
        conditions.append(ctx.report.ready)
    if ctx.report.version is not None:
        conditions.append(ctx.report.version)
    generation = None if paused else ctx.generation
    patch = status_patch(ctx.obj, conditions, observed_generation=generation, fields=ctx.report.fields)
    if patch is None:
        return outcome
    try:
        ctx.kube.patch_status(ctx.resource, ctx.namespace, ctx.name, patch)
    except ConflictError:
        # Only we write this status, one reconcile of a machine at a time: a status that
        # changed meanwhile is an earlier reconcile's (typically the one whose write woke
        # kopf with the body this one started from). What this one saw is newer; it is
        # merged into the fresh status, as long as what the backend was told from the
        # status (provisioned, the placement) is still what the status says.
        fresh = _changed_beside_us(ctx)
        if fresh is None or _status_inputs(fresh, ctx.deleting) != _status_inputs(ctx.obj, ctx.deleting):
            raise
        patch = status_patch(fresh, conditions, observed_generation=generation, fields=ctx.report.fields)
        if patch is not None:
            ctx.kube.patch_status(ctx.resource, ctx.namespace, ctx.name, patch)
    return outcome


def _status_inputs(obj: dict[str, Any], deleting: bool) -> tuple[Any, ...]:
    """What a reconcile takes from the status and not only reports there: provisioned
    (the backend never deploys a machine that ran anew), and for a deletion the placement
    (status.failureDomain, where no signed site record says)."""
    status = obj.get("status") or {}
    return (_was_provisioned(obj), status.get("failureDomain") if deleting else None)


def _changed_beside_us(ctx: MachineContext) -> dict[str, Any] | None:
    """After a 409: the object as it is now when only its metadata changed since it was
    read (CAPI's Machine controller sets owner references and labels as it goes, often
    right between our read and our write). Its spec (generation) and deletion are
    unchanged, so what this reconcile decided still holds: the write is retried once on
    the fresh object instead of throwing the whole reconcile (and its backend calls)
    away. Whatever the metadata change means is seen by the reconcile its own event
    starts. None when more than that changed: the caller raises the conflict."""
    fresh = ctx.kube.get(ctx.resource, ctx.namespace, ctx.name)
    if fresh is None:
        return None
    meta, before = fresh["metadata"], ctx.obj["metadata"]
    if meta.get("generation") != before.get("generation") or meta.get("uid") != before.get("uid"):
        return None
    if meta.get("deletionTimestamp") != before.get("deletionTimestamp"):
        return None
    return fresh


def _replace_unless_changed(
    ctx: MachineContext, change: Callable[[dict[str, Any]], dict[str, Any] | None]
) -> dict[str, Any] | None:
    """Replace the object with `change(obj)` (None: nothing to write); after a 409 on a
    metadata-only change (`_changed_beside_us`), once more with `change(fresh)`."""
    body = change(ctx.obj)
    if body is None:
        return None
    try:
        return ctx.kube.replace(ctx.resource, ctx.namespace, ctx.name, body)
    except ConflictError:
        fresh = _changed_beside_us(ctx)
        if fresh is None:
            raise
        body = change(fresh)
        if body is None:
            return fresh
        return ctx.kube.replace(ctx.resource, ctx.namespace, ctx.name, body)


def _claim(ctx: MachineContext, obj: dict[str, Any], site: Site) -> dict[str, Any] | None:
    """`obj` with our finalizer, the providerID and a signed site record, or None when it
    has them all."""
    signed = verified_site(obj, ctx.record_key) is not None
    finalizers = _finalizers(obj)
    # On an enrolled host the providerID names the host, so it is written once the
    # machine claimed one (_settle_host_provider_id); the finalizer still comes first.
    sets_provider_id = site.enrolled is None and not (obj.get("spec") or {}).get("providerID")
    if FINALIZER in finalizers and not sets_provider_id and signed:
        return None
    body = _copy(obj)
    body["metadata"]["finalizers"] = [*finalizers, *([] if FINALIZER in finalizers else [FINALIZER])]
    if sets_provider_id:
        body["spec"]["providerID"] = ctx.identity.provider_id
    if not signed:
        body["metadata"]["annotations"] = {
            **(obj["metadata"].get("annotations") or {}),
            **signed_annotations(ctx.record_key, ctx.namespace, ctx.name, site),
        }
    body.pop("status", None)
    return body


# ---------------------------------------------------------------- provisioning


def _provision(ctx: MachineContext) -> Outcome:
    foreign = ctx.foreign_provider_id
    if foreign is not None:
        return Outcome.error(
            "InvalidProviderID",
            f"spec.providerID {foreign[:512]!r} is not this machine's identity "
            f"{ctx.identity.provider_id!r}: a C3osMachine's providerID is always "
            "c3os://<its namespace>/<its name>, set by the controller. Nothing was created; "
            "delete this C3osMachine and create it without spec.providerID",
        )
    spec = _parse_spec(ctx)
    if isinstance(spec, Outcome):
        return spec
    for step in (_await_machine, _await_cluster_infrastructure, _await_bootstrap_data):
        outcome = step(ctx)
        if outcome is not None:
            return outcome
    assert ctx.machine is not None and ctx.cluster is not None
    placed = _resolve_site(ctx, spec)
    if isinstance(placed, Outcome):
        return placed
    site = placed
    ctx.report.fields["failureDomain"] = site.name
    credentials = _site_credentials(ctx, site)
    if isinstance(credentials, Outcome):
        return credentials
    user_data = _bootstrap_data(ctx)
    if isinstance(user_data, Outcome):
        return user_data

    # One write before anything exists anywhere: our finalizer (so deletion waits for
    # the backend), the providerID, and where the machine goes, signed (its deletion
    # must find the backend even when the C3osCluster is gone). A record that does not
    # verify (hand-written, or signed by the manager before a `clusterctl move`) is
    # replaced by the current site; one that does stays (the machine stays there).
    identity = ctx.identity
    provider_id = identity.provider_id
    try:
        claimed = _replace_unless_changed(ctx, lambda obj: _claim(ctx, obj, site))
    except ConflictError as exc:
        raise _NothingDoneYetError(str(exc)) from None
    if claimed is not None:
        ctx.obj = {**claimed, "status": ctx.obj.get("status")}

    hostname = hostname_for(ctx.name)
    intent = MachineIntent(
        identity=identity,
        site=site,
        credentials=credentials,
        image=spec.image,
        cpus=spec.cpus,
        memory_mib=spec.memory_mib,
        disk_gib=spec.disk_gib,
        hostname=hostname,
        user_data=user_data,
        meta_data={"instance-id": identity.uuid, "local-hostname": hostname, "provider-id": provider_id},
        network=spec.network,
        libvirt=spec.backend.libvirt,
        ironic=spec.backend.ironic,
        enrolled=spec.backend.enrolled,
        cluster=f"{ctx.namespace}/{ctx.cluster['metadata']['name']}",
        provisioned=_was_provisioned(ctx.obj),
    )
    try:
        progress = ctx.backends.for_site(site).provision(intent)
    except BackendError as exc:
        return _backend_error(exc)
    if site.enrolled is not None:
        refused = _settle_host_provider_id(ctx, progress)
        if refused is not None:
            return refused
    return _report_progress(ctx, site, progress)


def _settle_host_provider_id(ctx: MachineContext, progress: Progress) -> Outcome | None:
    """Write `c3os://<namespace>/<host>/<name>` once the machine holds its host, and refuse
    a providerID naming any other host (hand-written: the machine is never provisioned
    under it; deleting the machine releases its host)."""
    host = progress.details.get("host")
    if not host:
        return None  # no host claimed yet: nothing to settle
    expected = host_provider_id(ctx.namespace, host, ctx.name)
    written = (ctx.obj.get("spec") or {}).get("providerID")
    if written == expected:
        return None
    if written is None:
        body = _copy(ctx.obj)
        body["spec"]["providerID"] = expected
        body.pop("status", None)
        ctx.obj = {
            **ctx.kube.replace(ctx.resource, ctx.namespace, ctx.name, body),
            "status": ctx.obj.get("status"),
        }
        return None
    return Outcome.error(
        "InvalidProviderID",
        f"spec.providerID {str(written)[:512]!r} does not name the host this machine claimed "
        f"({expected!r}): the provider sets it. Delete this C3osMachine (its host is released) "
        "and create it without spec.providerID",
    )


def _parse_spec(ctx: MachineContext) -> C3osMachineSpec | Outcome:
    try:
        return C3osMachineSpec.model_validate(ctx.obj.get("spec") or {})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return Outcome.error("InvalidSpec", f"spec is invalid: {problems}")


def _await_machine(ctx: MachineContext) -> Outcome | None:
    name = owner_machine_name(ctx.obj)
    if not name:
        return Outcome.wait("WaitingForMachine", "waiting for a Machine to own this C3osMachine", WAIT)
    ctx.machine = ctx.reader.get(MACHINES, ctx.namespace, name)
    if ctx.machine is None:
        return Outcome.wait("WaitingForMachine", f"owner Machine {name} not found", WAIT)
    if not references(ctx.machine, ctx.obj):
        return Outcome.error(
            "OwnerMachineMismatch",
            f"owner Machine {name} does not reference this C3osMachine (spec.infrastructureRef): "
            "its bootstrap data is not this machine's; fix the ownerReference",
        )
    if ctx.cluster is None:
        cluster_name = (ctx.machine.get("spec") or {}).get("clusterName")
        if cluster_name:
            ctx.cluster = ctx.reader.get(CLUSTERS, ctx.namespace, cluster_name)
    if ctx.cluster is None:
        return Outcome.wait("WaitingForCluster", "waiting for the owner Cluster", WAIT)
    return None


def _await_cluster_infrastructure(ctx: MachineContext) -> Outcome | None:
    assert ctx.cluster is not None
    status = ctx.cluster.get("status") or {}
    if (status.get("initialization") or {}).get("infrastructureProvisioned") is True:
        return None
    return Outcome.wait(
        "WaitingForClusterInfrastructure",
        f"waiting for Cluster {ctx.cluster['metadata']['name']} infrastructure to be provisioned",
        WAIT,
    )


def _await_bootstrap_data(ctx: MachineContext) -> Outcome | None:
    assert ctx.machine is not None
    bootstrap = (ctx.machine.get("spec") or {}).get("bootstrap") or {}
    if bootstrap.get("dataSecretName"):
        return None
    return Outcome.wait(
        "WaitingForBootstrapData",
        f"waiting for Machine {ctx.machine['metadata']['name']} spec.bootstrap.dataSecretName",
        WAIT,
    )


def _c3os_cluster_spec(kube: Reader, namespace: str, cluster: dict[str, Any]) -> C3osClusterSpec | Outcome:
    ref = (cluster.get("spec") or {}).get("infrastructureRef") or {}
    name = ref.get("name")
    if not name or ref.get("kind") != "C3osCluster":
        return Outcome.error(
            "UnsupportedClusterInfrastructure",
            f"Cluster {cluster['metadata']['name']} infrastructure is not a C3osCluster",
        )
    c3os_cluster = kube.get(C3OS_CLUSTERS, namespace, name)
    if c3os_cluster is None:
        return Outcome.wait("WaitingForC3osCluster", f"C3osCluster {name} not found", WAIT)
    try:
        return C3osClusterSpec.model_validate(c3os_cluster.get("spec") or {})
    except ValidationError as exc:
        return Outcome.wait(
            "InvalidC3osCluster", f"C3osCluster {name} is invalid: {exc.errors()[0]['msg']}", WAIT_FOR_USER
        )


def _resolve_site(ctx: MachineContext, spec: C3osMachineSpec) -> Site | Outcome:
    assert ctx.machine is not None and ctx.cluster is not None
    cluster_spec = _c3os_cluster_spec(ctx.reader, ctx.namespace, ctx.cluster)
    if isinstance(cluster_spec, Outcome):
        return cluster_spec
    wanted = (ctx.machine.get("spec") or {}).get("failureDomain") or None
    site = cluster_spec.site(wanted)
    if site is None:
        return Outcome.wait(
            "UnknownFailureDomain",
            f"Machine failure domain {wanted!r} is not a site of the C3osCluster "
            f"(sites: {', '.join(s.name for s in cluster_spec.sites)})",
            WAIT_FOR_USER,
        )
    if is_control_plane_machine(ctx.machine) and not site.control_plane:
        return Outcome.wait(
            "SiteNotForControlPlane", f"site {site.name} does not allow control-plane machines", WAIT_FOR_USER
        )
    kind = site_kind(site)
    if getattr(spec.backend, kind, None) is None:
        return Outcome.wait(
            "BackendMismatch",
            f"site {site.name} is a {kind} site but spec.backend does not set {kind}",
            WAIT_FOR_USER,
        )
    if spec.network is not None and kind != "libvirt":
        return Outcome.wait(
            "NetworkConfigUnsupported",
            f"spec.network is applied on libvirt sites only; site {site.name} is a {kind} site "
            "(remove spec.network)",
            WAIT_FOR_USER,
        )
    return site


def secret_data(kube: Reader, namespace: str, name: str) -> dict[str, bytes] | None:
    secret = kube.get(SECRETS, namespace, name)
    if secret is None:
        return None
    return {key: base64.b64decode(value) for key, value in (secret.get("data") or {}).items()}


def _site_credentials(ctx: MachineContext, site: Site) -> SiteCredentials | Outcome:
    return site_credentials(ctx.reader, ctx.namespace, site)


def site_credentials(kube: Reader, namespace: str, site: Site) -> SiteCredentials | Outcome:
    """The site's Secret material (never logged: SiteCredentials hides it in repr)."""
    place = site.libvirt or site.ironic
    data: dict[str, bytes] = {}
    ref = getattr(place, "credentials_secret_ref", None)
    if ref is not None:
        found = secret_data(kube, namespace, ref.name)
        if found is None:
            return Outcome.wait(
                "WaitingForCredentials",
                f"credentials Secret {ref.name} of site {site.name} not found",
                WAIT_FOR_USER,
            )
        data = found
    ca_bundle = None
    ca_ref = getattr(place, "ca_bundle_secret_ref", None)
    if ca_ref is not None:
        found = secret_data(kube, namespace, ca_ref.name)
        if found is None or ca_ref.key not in found:
            return Outcome.wait(
                "WaitingForCredentials",
                f"CA bundle key {ca_ref.key} of Secret {ca_ref.name} (site {site.name}) not found",
                WAIT_FOR_USER,
            )
        ca_bundle = found[ca_ref.key]
    return SiteCredentials(data=data, ca_bundle=ca_bundle)


def _bootstrap_data(ctx: MachineContext) -> bytes | Outcome:
    assert ctx.machine is not None
    name = ctx.machine["spec"]["bootstrap"]["dataSecretName"]
    data = secret_data(ctx.reader, ctx.namespace, name)
    if data is None:
        return Outcome.wait("WaitingForBootstrapData", f"bootstrap data Secret {name} not found", WAIT)
    if "value" not in data:
        # A hand-made or half-written Secret: "not found" would send the user looking for
        # the wrong thing.
        keys = ", ".join(sorted(data)) or "none"
        return Outcome.wait(
            "WaitingForBootstrapData",
            f"bootstrap data Secret {name} exists but lacks key value (keys: {keys})",
            WAIT,
        )
    return data["value"]


def _was_provisioned(obj: dict[str, Any]) -> bool:
    status = obj.get("status") or {}
    return (status.get("initialization") or {}).get("provisioned") is True


def _backend_error(exc: BackendError) -> Outcome:
    if exc.retry_after is None:
        return Outcome.error(exc.reason, exc.message)
    return Outcome.wait(exc.reason, exc.message, exc.retry_after)


def _report_progress(ctx: MachineContext, site: Site, progress: Progress) -> Outcome:
    kind = site_kind(site)
    if progress.details:
        ctx.report.fields["backend"] = {kind: dict(progress.details)}
    if progress.phase is Phase.RUNNING:
        ctx.report.fields["initialization"] = {"provisioned": True}
        ctx.report.fields["addresses"] = [a.model_dump(by_alias=True) for a in progress.addresses]
        ctx.condition(cond.TRUE, progress.reason, progress.message)
        after = progress.requeue_after
        if _report_node_version(ctx):
            # Nothing wakes us when CAPI copies the Node's nodeInfo to the Machine.
            after = min(after or NODE_VERSION_POLL, NODE_VERSION_POLL)
        if after:
            return Outcome.wait(progress.reason, progress.message, after)
        return Outcome.ready(progress.reason, progress.message)
    ctx.condition(cond.FALSE, progress.reason, progress.message)
    if progress.phase is Phase.FAILED:
        return Outcome.error(progress.reason, progress.message)
    if progress.phase in (Phase.STOPPED, Phase.MISSING):
        return Outcome.wait(progress.reason, progress.message, progress.requeue_after or HEALTH_POLL)
    return Outcome.wait(progress.reason, progress.message, progress.requeue_after or PROVISION_POLL)


def _report_node_version(ctx: MachineContext) -> bool:
    """Compare the version the Machine wants with the kubelet version its Node reports
    (k3s comes with the image: a new Machine on the old image still runs the old one).
    True while either may change soon: no Node version to compare yet, or CAPI is
    updating the machine in place (it changes the Machine's version after our spec, and
    the Node reboots into the new version minutes later)."""
    assert ctx.machine is not None
    running = node_version.reported_version(ctx.machine)
    image = node_version.describe_image(ctx.obj.get("spec"))
    ctx.report.version = node_version.condition(ctx.machine, running, image, ctx.generation, ctx.now)
    updating = any(
        IN_PLACE_UPDATE_IN_PROGRESS_ANNOTATION in ((obj.get("metadata") or {}).get("annotations") or {})
        for obj in (ctx.obj, ctx.machine)
    )
    return updating or (running is None and node_version.wanted_version(ctx.machine) is not None)


# ---------------------------------------------------------------- deletion


def _delete(ctx: MachineContext) -> Outcome:
    if FINALIZER not in _finalizers(ctx.obj):
        return Outcome.ready()
    foreign = ctx.foreign_provider_id
    if foreign is not None:
        # Refused before anything was created under this machine's identity; what that
        # providerID names belongs to whoever it names, and is left alone.
        log.warning(
            "releasing %s/%s without deprovisioning: its spec.providerID %r is not its own",
            ctx.namespace,
            ctx.name,
            foreign[:512],
        )
    else:
        # Our finalizer came with the providerID, or (enrolled hosts) before the claim.
        site = _site_for_deletion(ctx)
        if isinstance(site, Outcome):
            return site
        credentials = _site_credentials(ctx, site)
        if isinstance(credentials, Outcome):
            return Outcome.wait(
                credentials.reason,
                f"{credentials.message}: the machine's resources cannot be removed without it. "
                f"Recreate the Secret, or remove them by hand and then the finalizer {FINALIZER}",
                WAIT_FOR_USER,
            )
        try:
            progress = ctx.backends.for_site(site).deprovision(ctx.identity, site, credentials)
        except BackendError as exc:
            return _backend_error(exc)
        if progress.phase is not Phase.DELETED:
            ctx.condition(cond.FALSE, progress.reason or "Deleting", progress.message)
            return Outcome.wait(
                progress.reason or "Deleting", progress.message, progress.requeue_after or PROVISION_POLL
            )
    _replace_unless_changed(ctx, _release)
    log.info("released %s/%s: its backend resources are gone", ctx.namespace, ctx.name)
    return Outcome.ready()


def _release(obj: dict[str, Any]) -> dict[str, Any] | None:
    """`obj` without our finalizer, or None when it has none."""
    if FINALIZER not in _finalizers(obj):
        return None
    body = _copy(obj)
    body["metadata"]["finalizers"] = [f for f in _finalizers(obj) if f != FINALIZER]
    body.pop("status", None)
    return body


def _site_for_deletion(ctx: MachineContext) -> Site | Outcome:
    """Where the machine was placed. The site recorded on the machine (only when the
    manager's signature verifies) says where its resources are, whatever became of the
    C3osCluster; if the C3osCluster still lists a site of that name at the same place,
    its current entry is used (a credentials Secret may have been renamed since).
    Without a verified record (placed by an older version, moved and deleted before a
    reconcile re-signed it, or written by hand) the C3osCluster says: status.failureDomain,
    the Machine's failure domain, or the default site."""
    recorded = verified_site(ctx.obj, ctx.record_key)
    current = _current_site(ctx, recorded.name if recorded else None)
    if recorded is None:
        return current
    if isinstance(current, Site) and _same_place(current, recorded):
        return current
    return recorded


def _current_site(ctx: MachineContext, name: str | None) -> Site | Outcome:
    cluster = ctx.cluster
    if cluster is None:
        machine_name = owner_machine_name(ctx.obj)
        ctx.machine = ctx.kube.get(MACHINES, ctx.namespace, machine_name) if machine_name else None
        cluster_name = ((ctx.machine or {}).get("spec") or {}).get("clusterName")
        cluster = ctx.kube.get(CLUSTERS, ctx.namespace, cluster_name) if cluster_name else None
    if cluster is None:
        return _lost("the Cluster is gone")
    spec = _c3os_cluster_spec(ctx.kube, ctx.namespace, cluster)
    if isinstance(spec, Outcome):
        return _lost(spec.message) if spec.reason == "WaitingForC3osCluster" else spec
    placed = name or (ctx.obj.get("status") or {}).get("failureDomain")
    if not placed:
        machine_name = owner_machine_name(ctx.obj)
        machine = ctx.machine or (
            ctx.kube.get(MACHINES, ctx.namespace, machine_name) if machine_name else None
        )
        placed = ((machine or {}).get("spec") or {}).get("failureDomain")
    site = spec.site(placed or None)
    if site is None:
        return Outcome.wait(
            "UnknownFailureDomain", f"site {placed!r} is no longer in the C3osCluster", WAIT_FOR_USER
        )
    return site


def _lost(why: str) -> Outcome:
    return Outcome.wait(
        "SiteUnknown",
        f"cannot tell where this machine's resources are: {why}, and the machine has no "
        f"{SITE_ANNOTATION} annotation signed by this manager (placed by an older version, "
        "moved by clusterctl and deleted before it was reconciled, or written by hand: such "
        "records are not trusted). Recreate the Cluster and C3osCluster with the same sites, "
        f"or remove the resources by hand and then the finalizer {FINALIZER}",
        WAIT_FOR_USER,
    )


def _same_place(a: Site, b: Site) -> bool:
    if a.libvirt is not None and b.libvirt is not None:
        return (a.libvirt.uri, a.libvirt.pool) == (b.libvirt.uri, b.libvirt.pool)
    if a.ironic is not None and b.ironic is not None:
        return a.ironic.endpoint == b.ironic.endpoint
    if a.enrolled is not None and b.enrolled is not None:
        return a.enrolled.pool == b.enrolled.pool
    return False


def _finalizers(obj: dict[str, Any]) -> list[str]:
    return list(obj["metadata"].get("finalizers") or [])


def _copy(obj: dict[str, Any]) -> dict[str, Any]:
    import copy  # noqa: PLC0415

    return copy.deepcopy(obj)
