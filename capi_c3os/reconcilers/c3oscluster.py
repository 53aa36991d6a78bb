"""C3osCluster: the cluster's sites and API endpoint (CAPI v1beta2 InfraCluster contract).

    paused or externally managed -> report Paused, touch nothing else
    being deleted?               -> wait until no C3osMachine of the cluster remains,
                                    then drop our finalizer
    ensure finalizer
    validate sites and controlPlaneEndpoint
    report sites as failureDomains, provisioned
    check every site's Secrets (present, the keys its transport needs, parseable)
                                 -> SitesReady; Ready is False while a site is broken,
                                    rechecked every SITE_RECHECK seconds until fixed
    sweep: remove backend machines tagged for this cluster whose C3osMachine is gone
           (a finalizer removed by hand), and volumes a crash left without a domain;
           never blocks the cluster; skips broken sites

A broken site does not withdraw `initialization.provisioned`: CAPI treats it as a
one-way latch, and the cluster's other sites (and the machines already running on the
broken one) must go on. Ready=False (mirrored to the Cluster's InfrastructureReady) and
SitesReady name the site, the Secret and the key; machines sent there wait with their
own condition.

Status is written once per reconcile.
"""

from __future__ import annotations

import copy
import ipaddress
import logging
import re
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from capi_c3os.api.infrastructure import C3osClusterSpec, Site
from capi_c3os.backends.base import BackendError, SiteCredentials
from capi_c3os.backends.credentials import credential_problems
from capi_c3os.backends.registry import BACKENDS, Backends, FindsOrphans
from capi_c3os.capi import conditions as cond
from capi_c3os.capi.metadata import CLUSTER_NAME_LABEL, INFRASTRUCTURE_GROUP, is_externally_managed
from capi_c3os.capi.outcome import Outcome
from capi_c3os.capi.owners import owner_cluster_name
from capi_c3os.capi.pause import is_paused, paused_condition
from capi_c3os.capi.status import status_patch
from capi_c3os.reconcilers.c3osmachine import paused_outcome, secret_data, site_credentials
from capi_c3os.reconcilers.enrollment import token_problems
from capi_c3os.reconcilers.generic import fetch_owner_cluster
from capi_c3os.reconcilers.kube import Kube, Resource

log = logging.getLogger(__name__)

FINALIZER = "c3oscluster.infrastructure.cluster.x-k8s.io"
READY = "Ready"
SITES_READY = "SitesReady"
SITE_RECHECK = 30.0
"""Seconds between checks of a broken site's Secrets (one GET per Secret): no Secret
watch wakes us, and a fixed Secret should show within a minute. Healthy sites are
rechecked at every reconcile, at the latest by the periodic resync."""
WAIT_FOR_MACHINES = 5.0
C3OS_MACHINES = Resource(INFRASTRUCTURE_GROUP, "v1alpha1", "c3osmachines", "C3osMachine")

_DNS_NAME = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?)*$"
)


def valid_host(host: str) -> bool:
    """An IP address or a DNS name (what a kubeconfig's server URL can hold)."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return bool(_DNS_NAME.match(host))


def reconcile(
    kube: Kube,
    resource: Resource,
    obj: dict[str, Any],
    backends: Backends | None = None,
    now: datetime | None = None,
) -> Outcome:
    now = now or datetime.now(UTC)
    backends = backends or BACKENDS
    meta = obj["metadata"]
    cluster = fetch_owner_cluster(kube, obj)
    paused = is_paused(obj, cluster)
    conditions = [paused_condition(obj, cluster, now)]
    generation = meta.get("generation")
    fields: dict[str, Any] = {}

    if paused:
        outcome = paused_outcome(bool(meta.get("deletionTimestamp")))
    elif is_externally_managed(obj):
        outcome = Outcome.ready("ExternallyManaged", "managed by someone else; only observed")
    elif meta.get("deletionTimestamp"):
        outcome = _delete(kube, resource, obj)
        if outcome.done:
            return outcome  # released: the object is going away
    else:
        obj = _ensure_finalizer(kube, resource, obj)
        outcome, fields = _settle(obj)
        if outcome.done:
            spec = C3osClusterSpec.model_validate(obj.get("spec") or {})
            problems = {site.name: site_problems(kube, meta["namespace"], site) for site in spec.sites}
            broken = {name: found for name, found in problems.items() if found}
            conditions.append(_sites_condition(spec, broken, generation, now))
            _sweep_orphans(kube, obj, backends, skip=set(broken))
            if broken:
                outcome = Outcome.wait("SiteCredentialsInvalid", _describe(broken), SITE_RECHECK)

    if not paused:
        if outcome.done:
            ready = cond.new_condition(
                READY, cond.TRUE, "Provisioned", outcome.message, generation=generation, now=now
            )
        else:
            ready = cond.new_condition(
                READY, cond.FALSE, outcome.reason, outcome.message, generation=generation, now=now
            )
        conditions.append(ready)
    patch = status_patch(obj, conditions, observed_generation=None if paused else generation, fields=fields)
    if patch is not None:
        kube.patch_status(resource, meta["namespace"], meta["name"], patch)
    return outcome


def _ensure_finalizer(kube: Kube, resource: Resource, obj: dict[str, Any]) -> dict[str, Any]:
    finalizers = list(obj["metadata"].get("finalizers") or [])
    if FINALIZER in finalizers:
        return obj
    body = copy.deepcopy(obj)
    body["metadata"]["finalizers"] = [*finalizers, FINALIZER]
    body.pop("status", None)
    updated = kube.replace(resource, obj["metadata"]["namespace"], obj["metadata"]["name"], body)
    return {**updated, "status": obj.get("status")}


def _settle(obj: dict[str, Any]) -> tuple[Outcome, dict[str, Any]]:
    try:
        spec = C3osClusterSpec.model_validate(obj.get("spec") or {})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return Outcome.error("InvalidSpec", f"spec is invalid: {problems}"), {}
    endpoint = spec.control_plane_endpoint
    if endpoint is not None and not valid_host(endpoint.host):
        return (
            Outcome.error(
                "InvalidControlPlaneEndpoint",
                f"controlPlaneEndpoint.host {endpoint.host!r} is neither an IP address nor a DNS name",
            ),
            {},
        )
    domains = []
    for site in spec.sites:
        domain: dict[str, Any] = {"name": site.name, "controlPlane": site.control_plane}
        if site.attributes:
            domain["attributes"] = dict(site.attributes)
        domains.append(domain)
    fields = {"failureDomains": domains, "initialization": {"provisioned": True}}
    where = f"{len(spec.sites)} site(s): {', '.join(s.name for s in spec.sites)}"
    return Outcome.ready("Provisioned", where), fields


def site_problems(kube: Kube, namespace: str, site: Site) -> list[str]:
    """What is wrong with the Secrets the site refers to (read here, never logged)."""
    if site.enrolled is not None:
        return token_problems(kube, namespace, site.enrolled)
    place = site.libvirt or site.ironic
    problems: list[str] = []
    data: dict[str, bytes] = {}
    ref = getattr(place, "credentials_secret_ref", None)
    if ref is not None:
        found = secret_data(kube, namespace, ref.name)
        if found is None:
            problems.append(f"credentials Secret {ref.name} not found")
        data = found or {}
    ca_bundle = None
    ca_ref = getattr(place, "ca_bundle_secret_ref", None)
    if ca_ref is not None:
        found = secret_data(kube, namespace, ca_ref.name)
        if found is None:
            problems.append(f"CA bundle Secret {ca_ref.name} not found")
        elif not found.get(ca_ref.key):
            problems.append(f"CA bundle Secret {ca_ref.name} lacks key {ca_ref.key}")
        else:
            ca_bundle = found[ca_ref.key]
    if problems:
        return problems  # a missing Secret would otherwise also be reported as missing keys
    return credential_problems(site, SiteCredentials(data=data, ca_bundle=ca_bundle))


def _sites_condition(
    spec: C3osClusterSpec, broken: dict[str, list[str]], generation: int | None, now: datetime
) -> cond.Condition:
    if broken:
        return cond.new_condition(
            SITES_READY,
            cond.FALSE,
            "SiteCredentialsInvalid",
            _describe(broken),
            generation=generation,
            now=now,
        )
    names = ", ".join(site.name for site in spec.sites)
    return cond.new_condition(
        SITES_READY, cond.TRUE, "SiteCredentialsValid", f"credentials of {names} are valid",
        generation=generation, now=now,
    )  # fmt: skip


def _describe(broken: dict[str, list[str]]) -> str:
    return "; ".join(f"site {name}: {', '.join(found)}" for name, found in broken.items())


def _machines_of(kube: Kube, obj: dict[str, Any]) -> list[dict[str, Any]]:
    namespace = obj["metadata"]["namespace"]
    cluster_name = owner_cluster_name(obj)
    if cluster_name is None:
        return []
    return kube.list(C3OS_MACHINES, namespace, label_selector=f"{CLUSTER_NAME_LABEL}={cluster_name}")


def _delete(kube: Kube, resource: Resource, obj: dict[str, Any]) -> Outcome:
    finalizers = list(obj["metadata"].get("finalizers") or [])
    if FINALIZER not in finalizers:
        return Outcome.ready()
    remaining = _machines_of(kube, obj)
    if remaining:
        names = ", ".join(sorted(m["metadata"]["name"] for m in remaining)[:5])
        return Outcome.wait(
            "WaitingForMachines",
            f"{len(remaining)} C3osMachine(s) of the cluster still exist ({names})",
            WAIT_FOR_MACHINES,
        )
    body = copy.deepcopy(obj)
    body["metadata"]["finalizers"] = [f for f in finalizers if f != FINALIZER]
    body.pop("status", None)
    kube.replace(resource, obj["metadata"]["namespace"], obj["metadata"]["name"], body)
    return Outcome.ready()


def _sweep_orphans(kube: Kube, obj: dict[str, Any], backends: Backends, skip: set[str]) -> None:
    """Remove backend machines tagged for this cluster whose C3osMachine no longer exists,
    on every site but the broken ones in `skip`. Failures are logged only: the next
    reconcile sweeps again."""
    cluster_name = owner_cluster_name(obj)
    if cluster_name is None:
        return
    namespace = obj["metadata"]["namespace"]
    spec = C3osClusterSpec.model_validate(obj.get("spec") or {})
    tag = f"{namespace}/{cluster_name}"
    for site in spec.sites:
        if site.name in skip:
            continue
        try:
            backend = backends.for_site(site)
        except BackendError:
            continue
        if not isinstance(backend, FindsOrphans):
            continue
        credentials = site_credentials(kube, namespace, site)
        if isinstance(credentials, Outcome):
            continue
        try:
            identities = backend.tagged_identities(site, credentials, tag)
            if not identities:
                continue
            existing = {m["metadata"]["name"] for m in kube.list(C3OS_MACHINES, namespace)}
            for identity in identities:
                if identity.namespace == namespace and identity.name not in existing:
                    log.info(
                        "removing orphan machine %s of cluster %s from site %s", identity.name, tag, site.name
                    )
                    backend.deprovision(identity, site, credentials)
        except BackendError as exc:
            log.warning("orphan sweep of site %s for %s: %s (%s)", site.name, tag, exc.message, exc.reason)
