"""How the manager reaches the management cluster: `--kubeconfig`, else the pod's
service account, else `$KUBECONFIG` / `~/.kube/config`. The same credentials feed both
the blocking `kubernetes` client (reconcilers, lease) and kopf's own aiohttp client.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kopf
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from capi_c3os.operator import metrics
from capi_c3os.scratch import KUBE_FILES_PREFIX, process_dir

_API_PATH = re.compile(
    r"^/(?:api|apis/[^/]+)/[^/]+/(?:namespaces/[^/]+/(?=[^/]+))?(?P<plural>[^/]+)"
    r"(?:/(?P<name>[^/]+))?(?:/(?P<sub>[^/]+))?"
)
_VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


def request_labels(method: str, url: str) -> tuple[str, str]:
    """(verb, resource) of a request to the API server, as the metric counts it."""
    found = _API_PATH.match(urlsplit(url).path)
    if found is None:
        return method.lower(), "other"
    verb = ("get" if found["name"] else "list") if method == "GET" else _VERBS.get(method, method.lower())
    return verb, found["plural"] + (f"/{found['sub']}" if found["sub"] else "")


class CountingApiClient(k8s.ApiClient):  # type: ignore[misc]
    """The blocking client, counting each request (`capi_c3os_api_requests`): what a
    reconcile costs the API server, readable from outside the process."""

    def call_api(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        metrics.API_REQUESTS.labels(*request_labels(method, url)).inc()
        return super().call_api(method, url, *args, **kwargs)


def load_configuration(kubeconfig: str | None) -> k8s.Configuration:
    """Blocking (reads files). A fresh object per call: in-cluster tokens rotate."""
    configuration = k8s.Configuration()
    if kubeconfig:
        # persist_config=False: never write refreshed tokens back into a mounted file.
        k8s_config.load_kube_config(
            config_file=kubeconfig,
            client_configuration=configuration,
            persist_config=False,
            temp_file_path=process_dir(KUBE_FILES_PREFIX),
        )
        return configuration
    try:
        k8s_config.load_incluster_config(client_configuration=configuration)
    except k8s_config.ConfigException:
        k8s_config.load_kube_config(
            client_configuration=configuration,
            persist_config=False,
            temp_file_path=process_dir(KUBE_FILES_PREFIX),
        )
    return configuration


def connection_info(configuration: k8s.Configuration) -> kopf.ConnectionInfo:
    """kopf's view of the same credentials (kopf talks to the API with aiohttp)."""
    header = configuration.get_api_key_with_prefix("BearerToken") or configuration.get_api_key_with_prefix(
        "authorization"
    )
    scheme: str | None = None
    token: str | None = None
    if header:
        parts = header.split(" ", 1)
        if len(parts) == 2:
            scheme, token = parts
        else:
            token = parts[0]
    return kopf.ConnectionInfo(
        server=configuration.host,
        ca_path=configuration.ssl_ca_cert,
        insecure=not configuration.verify_ssl,
        username=configuration.username or None,
        password=configuration.password or None,
        scheme=scheme,
        token=token,
        certificate_path=configuration.cert_file,
        private_key_path=configuration.key_file,
    )


_IN_CLUSTER_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def own_namespace(kubeconfig: str | None) -> str:
    """The manager's own namespace, as a pod or kubectl would see it: $POD_NAMESPACE,
    else the kubeconfig context's namespace, else the pod's service account's, else
    default."""
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    try:
        _, active = k8s_config.list_kube_config_contexts(config_file=kubeconfig)
        namespace = (active or {}).get("context", {}).get("namespace")
        if namespace:
            return str(namespace)
    except (k8s_config.ConfigException, OSError):
        pass
    try:
        return _IN_CLUSTER_NAMESPACE.read_text().strip() or "default"
    except OSError:
        return "default"
