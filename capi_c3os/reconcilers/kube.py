"""Blocking access to the management cluster with plain dicts, for reconcilers.

Objects go in and come out exactly as the API server speaks them (JSON as dicts), so
the pure helpers in `capi_c3os.capi` work on them directly. Every call blocks: call it
from a worker thread (kopf runs sync handlers in its thread pool), never from an
event loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from capi_c3os.capi.metadata import CORE_GROUP, CORE_VERSION

MERGE_PATCH = "application/merge-patch+json"


@dataclass(frozen=True)
class Resource:
    """A namespaced API resource served under /apis/<group>/<version>/.../<plural>."""

    group: str
    version: str
    plural: str
    kind: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"

    def __str__(self) -> str:
        return f"{self.plural}.{self.version}.{self.group}"


CLUSTERS = Resource(CORE_GROUP, CORE_VERSION, "clusters", "Cluster")
MACHINES = Resource(CORE_GROUP, CORE_VERSION, "machines", "Machine")


class ConflictError(Exception):
    """The object changed (or appeared) since it was read: re-read and try again."""


class Kube:
    """Thin, typed wrapper over the generic custom-objects endpoints (they serve any
    group, ours, CAPI's and coordination.k8s.io alike, without model classes)."""

    def __init__(self, api_client: k8s.ApiClient, request_timeout: float = 30.0) -> None:
        self._api = k8s.CustomObjectsApi(api_client)
        # Without a timeout a half-dead connection blocks a worker thread forever.
        self._timeout = request_timeout

    def get(self, resource: Resource, namespace: str, name: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        try:
            obj = self._api.get_namespaced_custom_object(
                resource.group,
                resource.version,
                namespace,
                resource.plural,
                name,
                _request_timeout=self._timeout,
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return cast(dict[str, Any], obj)

    def list(
        self, resource: Resource, namespace: str | None = None, label_selector: str | None = None
    ) -> list[dict[str, Any]]:
        """Objects in `namespace` (all namespaces when None), optionally by label selector."""
        if namespace is None:
            result = self._api.list_cluster_custom_object(
                resource.group,
                resource.version,
                resource.plural,
                label_selector=label_selector,
                _request_timeout=self._timeout,
            )
        else:
            result = self._api.list_namespaced_custom_object(
                resource.group,
                resource.version,
                namespace,
                resource.plural,
                label_selector=label_selector,
                _request_timeout=self._timeout,
            )
        items = cast(dict[str, Any], result).get("items") or []
        # List items come without apiVersion/kind; put them back so each item reads
        # like an object fetched on its own.
        return [{"apiVersion": resource.api_version, "kind": resource.kind, **item} for item in items]

    def create(self, resource: Resource, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        """Create; ConflictError when an object of that name exists already."""
        try:
            obj = self._api.create_namespaced_custom_object(
                resource.group,
                resource.version,
                namespace,
                resource.plural,
                body,
                _request_timeout=self._timeout,
            )
        except ApiException as exc:
            if exc.status == 409:
                raise ConflictError(f"{resource.kind} {namespace}/{body['metadata']['name']} exists") from exc
            raise
        return cast(dict[str, Any], obj)

    def replace(self, resource: Resource, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """Replace (PUT) with the body's resourceVersion as precondition; ConflictError on 409."""
        try:
            obj = self._api.replace_namespaced_custom_object(
                resource.group,
                resource.version,
                namespace,
                resource.plural,
                name,
                body,
                _request_timeout=self._timeout,
            )
        except ApiException as exc:
            if exc.status == 409:
                raise ConflictError(f"{resource.kind} {namespace}/{name} changed meanwhile") from exc
            raise
        return cast(dict[str, Any], obj)

    def patch_status(
        self, resource: Resource, namespace: str, name: str, patch: dict[str, Any]
    ) -> dict[str, Any]:
        """JSON merge patch of the status subresource; ConflictError on 409 (a resourceVersion
        in the patch is a precondition)."""
        try:
            obj = self._api.patch_namespaced_custom_object_status(
                resource.group,
                resource.version,
                namespace,
                resource.plural,
                name,
                patch,
                _content_type=MERGE_PATCH,
                _request_timeout=self._timeout,
            )
        except ApiException as exc:
            if exc.status == 409:
                raise ConflictError(f"{resource.kind} {namespace}/{name} changed meanwhile") from exc
            raise
        return cast(dict[str, Any], obj)
