"""Feed the reconcilers' ClusterView from kopf's watches: cluster Secrets (CAs, token,
kubeconfig), control-plane Machines and Clusters.

The handlers are async and only store the object, so the view is current before any
other handler of the same event runs (kopf runs an object's handlers in registration
order, and these are registered first) and never waits for a free worker thread.
They take every event of the resource and let the view decide what is in scope, so an
object that leaves the scope (a label removed) leaves the view too.
"""

from __future__ import annotations

from typing import Any

import kopf

from capi_c3os.capi.metadata import CLUSTER_NAME_LABEL, CLUSTER_SECRET_TYPE, MACHINE_CONTROL_PLANE_LABEL
from capi_c3os.reconcilers.kube import CLUSTERS, MACHINES, SECRETS, Resource
from capi_c3os.reconcilers.view import ClusterView, Scope

SCOPES: dict[Resource, Scope] = {
    SECRETS: Scope(CLUSTER_NAME_LABEL, keep=lambda s: s.get("type") == CLUSTER_SECRET_TYPE),
    MACHINES: Scope(MACHINE_CONTROL_PLANE_LABEL),
    CLUSTERS: Scope(),
}


def register(registry: kopf.OperatorRegistry, view: ClusterView) -> None:
    for resource, scope in SCOPES.items():
        view.watch(resource, scope)
        kopf.on.event(
            resource.group, resource.version, resource.plural, registry=registry, id=f"view-{resource.plural}"
        )(_feeder(view, resource))


def _feeder(view: ClusterView, resource: Resource) -> Any:
    async def feed(type: str | None, body: kopf.Body, **_: Any) -> None:
        view.observe(resource, type, dict(body))

    return feed
