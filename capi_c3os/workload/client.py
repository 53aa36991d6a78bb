"""A small, cached client for one workload cluster.

Built from the kubeconfig Secret the control plane wrote; cached per cluster and rebuilt
when that Secret changes (rotation). Every request has a short timeout, and callers run
it off the event loop: an unreachable edge site must never stall the manager.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
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
    labels: dict[str, str] = field(default_factory=dict)
    boot_id: str | None = None
    """status.nodeInfo.bootID: the kubelet reports a new one after every boot."""


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
        self._batch = kc.BatchV1Api(self._api)

    def close(self) -> None:
        self._api.close()

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, _request_timeout=REQUEST_TIMEOUT, **kwargs)
        except ApiException as exc:
            # Answers of a reachable API server that retrying does not change (409: exists
            # already, 422: invalid): the caller decides.
            if exc.status in (401, 403, 404, 409, 422):
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
        return [_node_state(node) for node in self._call(self._core.list_node).items]

    def node(self, name: str) -> NodeState | None:
        try:
            return _node_state(self._call(self._core.read_node, name))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def job(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A batch/v1 Job as its JSON (camelCase keys), or None."""
        try:
            job = self._call(self._batch.read_namespaced_job, name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return dict(self._api.sanitize_for_serialization(job))

    def jobs(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        listed = self._call(self._batch.list_namespaced_job, namespace, label_selector=label_selector)
        return [dict(self._api.sanitize_for_serialization(job)) for job in listed.items]

    def create_job(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        """Create a Job; raises ApiException 409 when one of that name exists."""
        return dict(self._api.sanitize_for_serialization(
            self._call(self._batch.create_namespaced_job, namespace, body)
        ))  # fmt: skip

    def delete_job(self, namespace: str, name: str) -> None:
        """Delete a Job and (in the background) its Pods; gone already is fine."""
        try:
            self._call(self._batch.delete_namespaced_job, name, namespace, propagation_policy="Background")
        except ApiException as exc:
            if exc.status != 404:
                raise

    def annotate_node(self, name: str, annotations: dict[str, str]) -> None:
        self._call(self._core.patch_node, name, {"metadata": {"annotations": annotations}})


def _node_state(node: Any) -> NodeState:
    conditions = (node.status.conditions or []) if node.status else []
    ready = any(c.type == "Ready" and c.status == "True" for c in conditions)
    info = node.status.node_info if node.status else None
    return NodeState(
        name=node.metadata.name, provider_id=node.spec.provider_id if node.spec else None,
        ready=ready, annotations=dict(node.metadata.annotations or {}),
        kubelet_version=(info.kubelet_version or None) if info else None,
        labels=dict(node.metadata.labels or {}),
        boot_id=(info.boot_id or None) if info else None,
    )  # fmt: skip


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
