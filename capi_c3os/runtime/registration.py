"""How CAPI finds the extension: the serving Secret and the ExtensionConfig (blocking
calls on the management cluster, from a worker thread).

The ExtensionConfig (runtime.cluster.x-k8s.io/v1beta2, the version CAPI v1.14 stores)
names our server by Service (in a cluster) or URL (a manager outside it) and carries
the annotation `runtime.cluster.x-k8s.io/inject-ca-from-secret: <ns>/<secret>`: CAPI
core copies that Secret's `ca.crt` into `spec.clientConfig.caBundle`, and again whenever
the Secret changes (core/reconcilers/extensionconfig reconcileCABundle). This works alike
for our own Secret and for one cert-manager writes; with our own we also write the
bundle ourselves, so discovery need not wait for CAPI's copy.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from capi_c3os.reconcilers import serving
from capi_c3os.reconcilers.kube import SECRETS, ConflictError, Kube, Resource
from capi_c3os.reconcilers.serving import ServingMaterial

log = logging.getLogger(__name__)

EXTENSION_CONFIGS = Resource("runtime.cluster.x-k8s.io", "v1beta2", "extensionconfigs", "ExtensionConfig")
INJECT_CA_ANNOTATION = "runtime.cluster.x-k8s.io/inject-ca-from-secret"
EXTENSION_CONFIG_NAME = "c3os"
"""CAPI names our handlers `<handler>.c3os`."""
FIELD_MANAGER = "capi-c3os"
MANAGED_BY = {"app.kubernetes.io/managed-by": "capi-c3os"}
SERVICE_PORT = 443
EXTENSION_CERT_SECRET = "c3os-extension-serving-cert"
EXTENSION_SERVICE = "c3os-infrastructure-extension"
"""The Service of the clusterctl components (manifests.py) in front of --extension-addr."""


@dataclass(frozen=True)
class Endpoint:
    """Where CAPI reaches the server: a URL, else a Service in `namespace`."""

    namespace: str
    service: str
    url: str | None = None

    def client_config(self) -> dict[str, Any]:
        if self.url:
            return {"url": self.url}
        return {"service": {"namespace": self.namespace, "name": self.service, "port": SERVICE_PORT}}


def ensure_serving_secret(
    kube: Kube, namespace: str, name: str, hosts: tuple[str, ...], now: dt.datetime | None = None
) -> ServingMaterial:
    """The serving material in Secret `namespace/name`, renewed first when it needs to
    be. Crash- and replica-safe: writes are create or replace-at-resourceVersion, and a
    loser of either race takes what the winner wrote."""
    for _ in range(5):
        now = now or dt.datetime.now(dt.UTC)
        secret = kube.get(SECRETS, namespace, name)
        current = serving.from_secret_data((secret or {}).get("data"))
        reason = serving.renewal_reason(current, hosts, now)
        if reason is None and current is not None:
            return current
        fresh = serving.renew(current, hosts, now)
        body: dict[str, Any] = {
            "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": name, "namespace": namespace, "labels": dict(MANAGED_BY)},
            "data": serving.to_secret_data(fresh),
        }  # fmt: skip
        try:
            if secret is None:
                kube.create(SECRETS, namespace, body)
            else:
                body["metadata"]["resourceVersion"] = secret["metadata"]["resourceVersion"]
                kube.replace(SECRETS, namespace, name, body)
        except ConflictError:
            continue  # another replica renewed it meanwhile: read theirs
        log.info("extension serving certificate in Secret %s/%s renewed: %s", namespace, name, reason)
        return fresh
    raise RuntimeError(f"Secret {namespace}/{name} keeps changing; cannot settle the serving certificate")


def extension_config(
    endpoint: Endpoint,
    ca_secret: tuple[str, str],
    ca_bundle: bytes | None,
    namespaces: Sequence[str] = (),
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Our ExtensionConfig. `ca_bundle` None: left to CAPI's injection from `ca_secret`.
    `namespaces`: the only namespaces CAPI calls us for (the manager's --namespace)."""
    client_config = endpoint.client_config()
    if ca_bundle is not None:
        client_config["caBundle"] = base64.b64encode(ca_bundle).decode()
    spec: dict[str, Any] = {"clientConfig": client_config}
    if namespaces:
        spec["namespaceSelector"] = {"matchExpressions": [
            {"key": "kubernetes.io/metadata.name", "operator": "In", "values": sorted(namespaces)},
        ]}  # fmt: skip
    return {
        "apiVersion": EXTENSION_CONFIGS.api_version,
        "kind": EXTENSION_CONFIGS.kind,
        "metadata": {
            "name": EXTENSION_CONFIG_NAME,
            "labels": {**MANAGED_BY, **(labels or {})},
            "annotations": {INJECT_CA_ANNOTATION: f"{ca_secret[0]}/{ca_secret[1]}"},
        },
        "spec": spec,
    }


def apply_extension_config(kube: Kube, body: dict[str, Any]) -> None:
    kube.apply_cluster_scoped(EXTENSION_CONFIGS, body, FIELD_MANAGER)


__all__ = [
    "EXTENSION_CONFIGS",
    "EXTENSION_CONFIG_NAME",
    "INJECT_CA_ANNOTATION",
    "Endpoint",
    "apply_extension_config",
    "ensure_serving_secret",
    "extension_config",
]
