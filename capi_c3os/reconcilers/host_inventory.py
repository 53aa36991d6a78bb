"""The enrolled hosts' inventory (C3osHost objects) over the Kubernetes API: what the
enrolled backend and the registration endpoint read and write. Every write of a host's
status carries the resourceVersion it was computed from, so two writers never both win."""

from __future__ import annotations

import logging
from typing import Any

from pydantic import ValidationError

from capi_c3os.api.hosts import C3osHost, C3osHostStatus
from capi_c3os.capi.metadata import INFRASTRUCTURE_GROUP
from capi_c3os.reconcilers.kube import ConflictError, Kube, Resource

log = logging.getLogger(__name__)

HOSTS = Resource(INFRASTRUCTURE_GROUP, "v1alpha1", "c3oshosts", "C3osHost")


def parse_host(obj: dict[str, Any]) -> C3osHost | None:
    try:
        return C3osHost.model_validate(obj)
    except ValidationError as exc:
        # Only a hand edit of the status can make one unreadable: leave it alone.
        meta = obj.get("metadata") or {}
        log.warning(
            "C3osHost %s/%s is unreadable, skipped: %s",
            meta.get("namespace"),
            meta.get("name"),
            exc.errors()[0]["msg"],
        )
        return None


class KubeInventory:
    def __init__(self, kube: Kube) -> None:
        self.kube = kube

    def hosts(self, namespace: str) -> list[C3osHost]:
        found = (parse_host(obj) for obj in self.kube.list(HOSTS, namespace))
        return [host for host in found if host is not None]

    def get(self, namespace: str, name: str) -> C3osHost | None:
        obj = self.kube.get(HOSTS, namespace, name)
        return parse_host(obj) if obj is not None else None

    def replace_status(self, host: C3osHost, status: C3osHostStatus) -> C3osHost | None:
        body = host.model_copy(update={"status": status}).to_wire()
        meta = host.metadata
        assert meta.namespace and meta.name and meta.resource_version
        try:
            written = self.kube.replace_status(HOSTS, meta.namespace, meta.name, body)
        except ConflictError:
            return None
        return parse_host(written)
