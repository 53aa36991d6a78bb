"""Feed the reconcilers' ClusterView from kopf's watches: cluster Secrets (CAs, token,
kubeconfig, bootstrap data), control-plane Machines and Clusters; with the infrastructure
provider also every Machine and the C3osClusters (what a C3osMachine reads each time).

The handlers are async and only store the object, so the view is current before any
other handler of the same event runs (kopf runs an object's handlers in registration
order, and these are registered first) and never waits for a free worker thread.
They take every event of the resource and let the view decide what is in scope, so an
object that leaves the scope (a label removed) leaves the view too.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import kopf

from capi_c3os.capi.metadata import CLUSTER_NAME_LABEL, CLUSTER_SECRET_TYPE, MACHINE_CONTROL_PLANE_LABEL
from capi_c3os.reconcilers.c3osmachine import C3OS_CLUSTERS
from capi_c3os.reconcilers.kube import CLUSTERS, MACHINES, SECRETS, Resource
from capi_c3os.reconcilers.view import ClusterView, Scope

SCOPES: dict[Resource, Scope] = {
    SECRETS: Scope(CLUSTER_NAME_LABEL, keep=lambda s: s.get("type") == CLUSTER_SECRET_TYPE),
    MACHINES: Scope(MACHINE_CONTROL_PLANE_LABEL),
    CLUSTERS: Scope(),
}


INFRASTRUCTURE_SCOPES: dict[Resource, Scope] = {MACHINES: Scope(), C3OS_CLUSTERS: Scope()}
"""A C3osMachine reads its own Machine (any, not only control-plane ones) and the
C3osCluster; only the infrastructure provider's RBAC may watch C3osClusters."""


def register(registry: kopf.OperatorRegistry, view: ClusterView, providers: Collection[str]) -> None:
    scopes = {**SCOPES, **(INFRASTRUCTURE_SCOPES if "infrastructure" in providers else {})}
    for resource, scope in scopes.items():
        view.watch(resource, scope)
        kopf.on.event(
            resource.group, resource.version, resource.plural, registry=registry, id=f"view-{resource.plural}"
        )(_feeder(view, resource))


def _feeder(view: ClusterView, resource: Resource) -> Any:
    async def feed(type: str | None, body: kopf.Body, **_: Any) -> None:
        view.observe(resource, type, dict(body))

    return feed
