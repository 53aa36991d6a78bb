"""A small, cached client for one workload cluster.

Built from the kubeconfig Secret the control plane wrote; cached per cluster and rebuilt
when that Secret changes (rotation). Every request has a short timeout, and callers run
it off the event loop: an unreachable edge site must never stall the manager.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from typing import Any

import yaml
from kubernetes import client as kc
from kubernetes import config as kconfig
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from capi_c3os.scratch import KUBE_FILES_PREFIX, process_dir

REQUEST_TIMEOUT = (3.0, 10.0)
"""(connect, read) seconds."""


class WorkloadUnreachableError(Exception):
    """The workload cluster did not answer (not up yet, network, TLS); retry later."""


@dataclass(frozen=True)
class NodeState:
    name: str
    provider_id: str | None
    ready: bool
    annotations: dict[str, str]
    kubelet_version: str | None = None
    """status.nodeInfo.kubeletVersion: with k3s, the k3s version the node's image ships."""


class WorkloadClient:
    def __init__(self, kubeconfig: str) -> None:
        configuration = kc.Configuration()
        # The client writes the kubeconfig's CA, certificate and key to files it keeps for
        # the life of the process: into our own directory, removed after a SIGKILL too.
        kconfig.load_kube_config_from_dict(
            yaml.safe_load(kubeconfig),
            client_configuration=configuration,
            temp_file_path=process_dir(KUBE_FILES_PREFIX),
        )
        # No urllib3 retries: an unreachable site must fail fast, the reconcile requeues.
        configuration.retries = False
        self._api = kc.ApiClient(configuration)
        self._core = kc.CoreV1Api(self._api)

    def close(self) -> None:
        self._api.close()

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, _request_timeout=REQUEST_TIMEOUT, **kwargs)
        except ApiException as exc:
            if exc.status in (401, 403, 404):
                raise
            raise WorkloadUnreachableError(f"workload API answered {exc.status} {exc.reason}") from exc
        except (HTTPError, OSError) as exc:
            raise WorkloadUnreachableError(f"workload API unreachable: {type(exc).__name__}") from exc

    def secret_exists(self, namespace: str, name: str) -> bool:
        try:
            self._call(self._core.read_namespaced_secret, name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def nodes(self) -> list[NodeState]:
        result = []
        for node in self._call(self._core.list_node).items:
            conditions = (node.status.conditions or []) if node.status else []
            ready = any(c.type == "Ready" and c.status == "True" for c in conditions)
            info = node.status.node_info if node.status else None
            result.append(NodeState(
                name=node.metadata.name, provider_id=node.spec.provider_id if node.spec else None,
                ready=ready, annotations=dict(node.metadata.annotations or {}),
                kubelet_version=(info.kubelet_version or None) if info else None,
            ))  # fmt: skip
        return result

    def annotate_node(self, name: str, annotations: dict[str, str]) -> None:
        self._call(self._core.patch_node, name, {"metadata": {"annotations": annotations}})


class WorkloadClients:
    """One client per (namespace, cluster), replaced when its kubeconfig changes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._clients: dict[tuple[str, str], tuple[str, WorkloadClient]] = {}

    def get(self, namespace: str, cluster: str, kubeconfig: str) -> WorkloadClient:
        digest = hashlib.sha256(kubeconfig.encode()).hexdigest()
        with self._lock:
            cached = self._clients.get((namespace, cluster))
            if cached and cached[0] == digest:
                return cached[1]
            if cached:
                cached[1].close()
            client = WorkloadClient(kubeconfig)
            self._clients[(namespace, cluster)] = (digest, client)
            return client

    def forget(self, namespace: str, cluster: str) -> None:
        with self._lock:
            cached = self._clients.pop((namespace, cluster), None)
        if cached:
            cached[1].close()
