"""C3osConfig: render the machine's bootstrap data into a Secret (CAPI v1beta2
bootstrap contract).

    paused?                     -> report Paused, touch nothing else
    data Secret exists (ours)?  -> report it (also heals a crash between create and status)
    await owner Machine, its Cluster, infrastructure provisioned, controlPlaneEndpoint
    decide the role: control-plane label -> server; before the control plane is
      initialised one server takes the init lock, every other config waits
    ensure the cluster CAs + token, read referenced Secrets, render, create the Secret

Level-triggered: each reconcile reads the world afresh; waiting points requeue after a
few seconds and say why in the `Ready` condition. Once written, the data is never
re-rendered (a machine may already have booted with it), as with CAPI's kubeadm
provider. The Secret has a controller ownerReference to the config, so it goes when
the config goes (CAPI deletes the config with its Machine).
"""

from __future__ import annotations

import base64
import logging
import re
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from capi_c3os.api.bootstrap import C3osConfigSpec
from capi_c3os.api.common import DNS_LABEL
from capi_c3os.bootstrap.cloudconfig import (
    FORMAT,
    RenderError,
    RenderInput,
    Role,
    referenced_secrets,
    render_cloud_config,
)
from capi_c3os.capi import conditions as cond
from capi_c3os.capi.metadata import CLUSTER_NAME_LABEL, CLUSTER_SECRET_TYPE, is_control_plane_machine
from capi_c3os.capi.outcome import Outcome
from capi_c3os.capi.owners import owner_machine_name, owner_references
from capi_c3os.capi.pause import is_paused, paused_condition
from capi_c3os.capi.status import status_patch
from capi_c3os.reconcilers import init_lock
from capi_c3os.reconcilers.cluster_secrets import ClusterSecretsError, ensure_cluster_secrets
from capi_c3os.reconcilers.generic import fetch_owner_cluster
from capi_c3os.reconcilers.kube import CLUSTERS, MACHINES, SECRETS, ConflictError, Kube, Resource
from capi_c3os.reconcilers.view import ClusterView

log = logging.getLogger(__name__)

READY = "Ready"
DATA_SECRET_AVAILABLE = "DataSecretAvailable"
WAIT = 5.0
"""Seconds between looks while waiting for CAPI objects (cheap GETs)."""
WAIT_FOR_USER = 30.0
"""Seconds between looks while waiting for something a person must fix."""


_DNS_LABEL = re.compile(DNS_LABEL)


def data_secret_name(config: dict[str, Any]) -> str:
    """Deterministic: the config's own name (as CAPI's kubeadm provider does)."""
    return str(config["metadata"]["name"])


def _controlled_by(obj: dict[str, Any], owner: dict[str, Any]) -> bool:
    uid = owner["metadata"].get("uid")
    return any(ref.get("controller") and ref.get("uid") == uid for ref in owner_references(obj))


def _ready_true(name: str) -> Outcome:
    return Outcome.ready(DATA_SECRET_AVAILABLE, f"bootstrap data is in Secret {name}")


def _cluster_flag(cluster: dict[str, Any], field: str, condition: str) -> bool:
    status = cluster.get("status") or {}
    if (status.get("initialization") or {}).get(field) is True:
        return True
    return cond.is_true(cluster, condition)


class _Context:
    def __init__(self, kube: Kube, config: dict[str, Any], cluster: dict[str, Any] | None) -> None:
        self.kube = kube
        self.config = config
        self.namespace: str = config["metadata"]["namespace"]
        self.cluster = cluster
        self.machine: dict[str, Any] | None = None
        self.view: ClusterView | None = None


def _existing_data(ctx: _Context) -> Outcome | None:
    name = data_secret_name(ctx.config)
    secret = ctx.kube.get(SECRETS, ctx.namespace, name)
    if secret is None:
        return None
    if not _controlled_by(secret, ctx.config):
        return Outcome.error(
            "DataSecretNameTaken",
            f"Secret {name} exists and is not controlled by this C3osConfig; "
            "rename or delete it so the bootstrap data can be written",
        )
    return _ready_true(name)


def _await_owners(ctx: _Context) -> Outcome | None:
    machine_name = owner_machine_name(ctx.config)
    if not machine_name:
        return Outcome.wait(
            "WaitingForMachine", "waiting for a Machine to reference this C3osConfig as its bootstrap", WAIT
        )
    machine = ctx.kube.get(MACHINES, ctx.namespace, machine_name)
    if machine is None:
        return Outcome.wait("WaitingForMachine", f"owner Machine {machine_name} not found", WAIT)
    ctx.machine = machine
    if ctx.cluster is None:
        cluster_name = (machine.get("spec") or {}).get("clusterName")
        if cluster_name:
            ctx.cluster = ctx.kube.get(CLUSTERS, ctx.namespace, cluster_name)
    if ctx.cluster is None:
        return Outcome.wait("WaitingForCluster", "waiting for the owner Cluster", WAIT)
    if not _cluster_flag(ctx.cluster, "infrastructureProvisioned", "InfrastructureReady"):
        return Outcome.wait(
            "WaitingForClusterInfrastructure",
            f"waiting for Cluster {ctx.cluster['metadata']['name']} infrastructure to be provisioned",
            WAIT,
        )
    endpoint = (ctx.cluster.get("spec") or {}).get("controlPlaneEndpoint") or {}
    if not endpoint.get("host"):
        return Outcome.wait(
            "WaitingForControlPlaneEndpoint",
            f"waiting for Cluster {ctx.cluster['metadata']['name']} spec.controlPlaneEndpoint",
            WAIT,
        )
    return None


def _decide_role(ctx: _Context) -> Role | Outcome:
    assert ctx.cluster is not None and ctx.machine is not None
    initialized = _cluster_flag(ctx.cluster, "controlPlaneInitialized", "ControlPlaneInitialized")
    server = is_control_plane_machine(ctx.machine)
    if initialized:
        init_lock.release(ctx.kube, ctx.cluster)
        return Role.JOIN_SERVER if server else Role.AGENT
    if not server:
        return Outcome.wait(
            "WaitingForControlPlaneInitialized",
            "worker machines join once the control plane is initialised",
            WAIT,
        )
    state = init_lock.acquire(ctx.kube, ctx.cluster, ctx.machine)
    if state.held:
        # The lock is released only once the Cluster says initialised, and this reconcile's
        # Cluster read may predate that: a fresh read after taking the lock tells whether
        # this server really creates the cluster. Without it a second server could take a
        # just-released lock and render `--cluster-init` too (seen in a crash test).
        fresh = ctx.kube.get(CLUSTERS, ctx.namespace, ctx.cluster["metadata"]["name"])
        if fresh is not None and _cluster_flag(fresh, "controlPlaneInitialized", "ControlPlaneInitialized"):
            init_lock.release(ctx.kube, fresh)
            return Role.JOIN_SERVER
        return Role.INIT_SERVER
    lock = init_lock.lock_name(ctx.cluster["metadata"]["name"])
    return Outcome.wait(
        "WaitingForControlPlaneInitialized",
        f"Machine {state.holder} holds the init lock (ConfigMap {lock}) and initialises the control "
        "plane; this server joins once it is initialised",
        WAIT,
    )


def _read_secrets(ctx: _Context, spec: C3osConfigSpec) -> dict[str, dict[str, bytes]] | Outcome:
    found: dict[str, dict[str, bytes]] = {}
    for name in sorted(referenced_secrets(spec)):
        secret = ctx.kube.get(SECRETS, ctx.namespace, name)
        if secret is None:
            return Outcome.wait(
                "WaitingForReferencedSecret", f"Secret {name} referenced by the spec not found", WAIT_FOR_USER
            )
        found[name] = {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}
    return found


def _write_data(ctx: _Context, cloud_config: str) -> Outcome:
    meta = ctx.config["metadata"]
    assert ctx.cluster is not None
    name = data_secret_name(ctx.config)
    body = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": CLUSTER_SECRET_TYPE,
        "metadata": {
            "name": name,
            "namespace": ctx.namespace,
            "labels": {CLUSTER_NAME_LABEL: ctx.cluster["metadata"]["name"]},
            "ownerReferences": [
                {
                    "apiVersion": ctx.config["apiVersion"],
                    "kind": ctx.config["kind"],
                    "name": meta["name"],
                    "uid": meta["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "data": {
            "value": base64.b64encode(cloud_config.encode()).decode(),
            "format": base64.b64encode(FORMAT.encode()).decode(),
        },
    }
    try:
        ctx.kube.create(SECRETS, ctx.namespace, body)
    except ConflictError:
        existing = _existing_data(ctx)  # a concurrent reconcile of the same config won
        if existing is None:
            raise
        return existing
    log.info("wrote bootstrap data Secret %s/%s", ctx.namespace, name)
    return _ready_true(name)


def _bootstrap(ctx: _Context) -> Outcome:
    existing = _existing_data(ctx)
    if existing is not None:
        return existing
    waiting = _await_owners(ctx)
    if waiting is not None:
        return waiting
    assert ctx.machine is not None and ctx.cluster is not None
    try:
        spec = C3osConfigSpec.model_validate(ctx.config.get("spec") or {})
    except ValidationError as exc:
        return Outcome.error("InvalidConfig", f"spec is invalid: {exc.error_count()} error(s): {exc}")
    hostname = spec.hostname or ctx.machine["metadata"]["name"]
    if len(hostname) > 63 or not _DNS_LABEL.match(hostname):
        return Outcome.error(
            "InvalidConfig",
            f"Machine name {hostname!r} is not a valid hostname (a DNS label of at most 63 characters); "
            "set spec.hostname",
        )
    role = _decide_role(ctx)
    if isinstance(role, Outcome):
        return role
    try:
        cluster_secrets = ensure_cluster_secrets(ctx.kube, ctx.cluster, ctx.view)
    except ClusterSecretsError as exc:
        return Outcome.error("ClusterSecretsInvalid", str(exc))
    secrets = _read_secrets(ctx, spec)
    if isinstance(secrets, Outcome):
        return secrets
    endpoint = ctx.cluster["spec"]["controlPlaneEndpoint"]
    inputs = RenderInput(
        role=role,
        spec=spec,
        hostname=hostname,
        endpoint_host=str(endpoint["host"]),
        endpoint_port=int(endpoint.get("port") or 6443),
        token=cluster_secrets.token,
        cas=cluster_secrets.cas if role is Role.INIT_SERVER else None,
        secrets=secrets,
    )
    try:
        cloud_config = render_cloud_config(inputs)
    except RenderError as exc:
        # Often fixed outside this object (a Secret key added), so look again later.
        return Outcome.wait("InvalidConfig", str(exc), WAIT_FOR_USER)
    return _write_data(ctx, cloud_config)


def _ready_condition(outcome: Outcome, generation: int | None, now: datetime) -> cond.Condition:
    if outcome.done:
        return cond.new_condition(
            READY, cond.TRUE, outcome.reason or DATA_SECRET_AVAILABLE, outcome.message,
            generation=generation, now=now,
        )  # fmt: skip
    return cond.new_condition(
        READY, cond.FALSE, outcome.reason, outcome.message, generation=generation, now=now
    )


def reconcile(
    kube: Kube,
    resource: Resource,
    obj: dict[str, Any],
    now: datetime | None = None,
    view: ClusterView | None = None,
) -> Outcome:
    """One level-triggered pass over a C3osConfig; at most one status patch. Raises
    `ConflictError` when something changed since it was read (run again). `view`: the
    manager's watch-fed view, for the cluster Secrets."""
    now = now or datetime.now(UTC)
    meta = obj["metadata"]
    cluster = fetch_owner_cluster(kube, obj)
    paused = paused_condition(obj, cluster, now)
    if is_paused(obj, cluster):
        patch = status_patch(obj, [paused])
        if patch is not None:
            kube.patch_status(resource, meta["namespace"], meta["name"], patch)
        return Outcome.paused(paused["message"])
    if meta.get("deletionTimestamp"):
        return Outcome.ready()  # the garbage collector takes the Secret with the config
    ctx = _Context(kube, obj, cluster)
    ctx.view = view
    outcome = _bootstrap(ctx)
    generation = meta.get("generation")
    fields: dict[str, Any] = {}
    if outcome.done:
        fields = {"dataSecretName": data_secret_name(obj), "initialization": {"dataSecretCreated": True}}
    patch = status_patch(obj, [paused, _ready_condition(outcome, generation, now)], generation, fields)
    if patch is not None:
        kube.patch_status(resource, meta["namespace"], meta["name"], patch)
    return outcome
