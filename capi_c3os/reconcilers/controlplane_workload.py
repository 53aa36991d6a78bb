"""The workload cluster as the control plane sees it: the admin kubeconfig Secret we
write (and rotate), the client made from it, and what its Nodes report.
"""

from __future__ import annotations

import base64
import logging
from typing import Any

from capi_c3os.bootstrap.kubeconfig import needs_rotation, render_admin_kubeconfig
from capi_c3os.capi.metadata import CLUSTER_NAME_LABEL, CLUSTER_SECRET_TYPE
from capi_c3os.reconcilers.controlplane_context import ControlPlaneContext, get_object
from capi_c3os.reconcilers.kube import SECRETS
from capi_c3os.workload.client import WorkloadClient, WorkloadClients, WorkloadUnreachableError

log = logging.getLogger(__name__)

WORKLOADS = WorkloadClients()


def ensure_kubeconfig(ctx: ControlPlaneContext, server_ca: bytes, client_ca: Any) -> None:
    endpoint = ctx.cluster["spec"]["controlPlaneEndpoint"]
    host, port = endpoint["host"], int(endpoint.get("port") or 6443)
    name = f"{ctx.cluster_name}-kubeconfig"
    # A stale view is safe here: the replacement below carries its resourceVersion.
    existing = ctx.kubeconfig = get_object(ctx, SECRETS, name)
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


def workload_client(ctx: ControlPlaneContext) -> WorkloadClient | None:
    """The cached client for the workload cluster, from the kubeconfig Secret we wrote."""
    secret = ctx.kubeconfig
    if secret is None:
        return None
    return WORKLOADS.get(ctx.namespace, ctx.cluster_name, base64.b64decode(secret["data"]["value"]).decode())


def read_workload(ctx: ControlPlaneContext) -> None:
    status = ctx.obj.get("status") or {}
    ctx.initialized = bool((status.get("initialization") or {}).get("controlPlaneInitialized"))
    if not ctx.machines:
        return
    client = ctx.workload = workload_client(ctx)
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
