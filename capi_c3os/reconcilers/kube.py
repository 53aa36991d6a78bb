"""Blocking access to the management cluster with plain dicts, for reconcilers.

Objects go in and come out exactly as the API server speaks them (JSON as dicts), so
the pure helpers in `capi_c3os.capi` work on them directly. Every call blocks: call it
from a worker thread (kopf runs sync handlers in its thread pool), never from an
event loop.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from capi_c3os.capi.metadata import CORE_GROUP, CORE_VERSION

log = logging.getLogger(__name__)

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
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def core(self) -> bool:
        """In the core group (served under /api/v1, not /apis/...)."""
        return not self.group

    def __str__(self) -> str:
        return f"{self.plural}.{self.version}.{self.group}"


CLUSTERS = Resource(CORE_GROUP, CORE_VERSION, "clusters", "Cluster")
MACHINES = Resource(CORE_GROUP, CORE_VERSION, "machines", "Machine")
MACHINE_SETS = Resource(CORE_GROUP, CORE_VERSION, "machinesets", "MachineSet")
SECRETS = Resource("", "v1", "secrets", "Secret")
EVENTS = Resource("", "v1", "events", "Event")
CONFIG_MAPS = Resource("", "v1", "configmaps", "ConfigMap")


class ConflictError(Exception):
    """The object changed (or appeared) since it was read: re-read and try again."""


@contextmanager
def _changed_meanwhile(resource: Resource, namespace: str, name: str) -> Iterator[None]:
    """A 409 on a write with a resourceVersion precondition: the object changed since read."""
    try:
        yield
    except ApiException as exc:
        if exc.status == 409:
            raise ConflictError(f"{resource.kind} {namespace}/{name} changed meanwhile") from exc
        raise


class OwnWrites:
    """The versions of objects that our own reconciles wrote, so that a watch event
    carrying one of them is known to hold nothing a reconcile has not acted on already.

    kopf hands a handler the body of the event our own write caused (the claim, a status
    patch), often after that same reconcile wrote again: reconciling it costs a status
    patch refused with 409, a GET and the patch again. A version counts as ours only when
    the write that produced it was conditional on a version the same reconcile started
    from or produced itself (every write here carries the resourceVersion it was computed
    from as a precondition): then nobody else changed the object in between, and the
    reconcile went on from that version and arranged its own next run (or failed, which
    its caller retries). A write computed on a body read afresh after a 409 (another
    writer's change that reconcile did not decide on) breaks the chain, so the event of
    that change still starts a reconcile. Memory only (a new process knows none, and
    reconciles every event); a few versions per object, forgotten with `retain`."""

    KEEP = 8
    """Versions kept per object: more than one reconcile writes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._versions: dict[str, deque[str]] = {}
        self._written_at: dict[str, float] = {}
        """uid -> when (monotonic) the last of those versions was written."""
        self._local = threading.local()

    @contextmanager
    def reconciling(self, obj: dict[str, Any]) -> Iterator[None]:
        """Writes in this thread inside the block chain onto `obj`'s version."""
        meta = obj.get("metadata") or {}
        outer = getattr(self._local, "chain", None)
        self._local.chain = {(meta.get("uid"), meta.get("resourceVersion"))}
        try:
            yield
        finally:
            self._local.chain = outer

    def wrote(self, precondition: str | None, result: dict[str, Any]) -> None:
        """A write conditional on `precondition` returned `result`."""
        chain: set[tuple[Any, Any]] | None = getattr(self._local, "chain", None)
        meta = result.get("metadata") or {}
        uid, version = meta.get("uid"), meta.get("resourceVersion")
        if chain is None or not (precondition and uid and version) or (uid, precondition) not in chain:
            return
        chain.add((uid, version))
        with self._lock:
            self._versions.setdefault(uid, deque(maxlen=self.KEEP)).append(version)
            self._written_at[uid] = time.monotonic()

    def produced(self, obj: dict[str, Any]) -> bool:
        """`obj` is a version one of our reconciles wrote (and went on from)."""
        meta = obj.get("metadata") or {}
        with self._lock:
            return meta.get("resourceVersion") in self._versions.get(meta.get("uid") or "", ())

    def wrote_since(self, obj: dict[str, Any], since: float) -> bool:
        """One of our reconciles wrote the object (and went on from there) after `since`
        (monotonic): a body read before then (a resync's listing) holds nothing that
        reconcile did not see, since its write was conditional on the version it read."""
        with self._lock:
            return self._written_at.get((obj.get("metadata") or {}).get("uid") or "", since) > since

    def retain(self, uids: Collection[str]) -> None:
        """Forget every object not among `uids` (all objects that exist)."""
        keep = set(uids)
        with self._lock:
            for uid in [uid for uid in self._versions if uid not in keep]:
                del self._versions[uid]
                self._written_at.pop(uid, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._versions)


class Kube:
    """Thin, typed wrapper over the generic custom-objects endpoints (they serve any
    group, ours, CAPI's and coordination.k8s.io alike, without model classes); core
    resources (`Resource.core`: Secrets, ConfigMaps) take the same calls (get, list,
    create, replace, delete), served by the generated CoreV1Api with raw JSON kept.

    Errors about core objects carry only the status code and reason: an API server's
    error body can echo the object, and a Secret's data must never reach a log."""

    def __init__(
        self, api_client: k8s.ApiClient, request_timeout: float = 30.0, own_writes: OwnWrites | None = None
    ) -> None:
        self._client = api_client
        self._api = k8s.CustomObjectsApi(api_client)
        # Without a timeout a half-dead connection blocks a worker thread forever.
        self._timeout = request_timeout
        self.own_writes = own_writes
        """Told of every conditional write (replace, status patch or replace) when set."""

    def _wrote(self, precondition: Any, result: Any) -> None:
        if self.own_writes is not None and isinstance(result, dict):
            self.own_writes.wrote(precondition, result)

    def get(self, resource: Resource, namespace: str, name: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        try:
            if resource.core:
                return self._core("GET", resource, namespace, name)
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
        if resource.core:
            query = [("label_selector", label_selector)] if label_selector else []
            result: Any = self._core("GET", resource, namespace, query=query)
        elif namespace is None:
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
            if resource.core:
                return self._core("POST", resource, namespace, body=body)
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
        with _changed_meanwhile(resource, namespace, name):
            if resource.core:
                obj: Any = self._core("PUT", resource, namespace, name, body=body)
            else:
                obj = self._api.replace_namespaced_custom_object(
                    resource.group,
                    resource.version,
                    namespace,
                    resource.plural,
                    name,
                    body,
                    _request_timeout=self._timeout,
                )
        self._wrote(_precondition(body), obj)
        return cast(dict[str, Any], obj)

    def patch_status(
        self, resource: Resource, namespace: str, name: str, patch: dict[str, Any]
    ) -> dict[str, Any]:
        """JSON merge patch of the status subresource; ConflictError on 409 (a resourceVersion
        in the patch is a precondition)."""
        with _changed_meanwhile(resource, namespace, name):
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
        self._wrote(_precondition(patch), obj)
        return cast(dict[str, Any], obj)

    def replace_status(
        self, resource: Resource, namespace: str, name: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        """Replace (PUT) the status subresource with the body's resourceVersion as
        precondition; ConflictError on 409 (the object changed since it was read)."""
        with _changed_meanwhile(resource, namespace, name):
            obj = self._api.replace_namespaced_custom_object_status(
                resource.group,
                resource.version,
                namespace,
                resource.plural,
                name,
                body,
                _request_timeout=self._timeout,
            )
        self._wrote(_precondition(body), obj)
        return cast(dict[str, Any], obj)

    def delete(
        self,
        resource: Resource,
        namespace: str,
        name: str,
        *,
        uid: str | None = None,
        resource_version: str | None = None,
    ) -> bool:
        """Delete, optionally only that incarnation (`uid`) or exact version
        (`resource_version`); False when it was gone already, ConflictError when the
        precondition failed (it changed meanwhile)."""
        preconditions = {k: v for k, v in (("uid", uid), ("resourceVersion", resource_version)) if v}
        body: dict[str, Any] = {"apiVersion": "v1", "kind": "DeleteOptions"}
        if preconditions:
            body["preconditions"] = preconditions
        try:
            if resource.core:
                self._core("DELETE", resource, namespace, name, body=body)
            else:
                self._api.delete_namespaced_custom_object(
                    resource.group, resource.version, namespace, resource.plural, name,
                    body=body, _request_timeout=self._timeout,
                )  # fmt: skip
        except ApiException as exc:
            if exc.status == 404:
                return False
            if exc.status == 409:
                raise ConflictError(f"{resource.kind} {namespace}/{name} changed meanwhile") from None
            raise
        return True

    def _core(
        self,
        method: str,
        resource: Resource,
        namespace: str | None,
        name: str | None = None,
        *,
        body: dict[str, Any] | None = None,
        query: Sequence[tuple[str, str]] | None = None,
    ) -> dict[str, Any]:
        """A core-group call through the generated CoreV1Api (`<verb>_namespaced_<kind>`),
        with the raw JSON kept as a dict (no model classes)."""
        singular = re.sub(r"(?<!^)(?=[A-Z])", "_", resource.kind).lower()
        verb = {"GET": "read" if name else "list", "POST": "create", "PUT": "replace", "DELETE": "delete"}[
            method
        ]
        scope = "namespaced_" if namespace is not None else ""
        if verb == "list" and namespace is None:
            scope, singular = "", f"{singular}_for_all_namespaces"
        call = getattr(k8s.CoreV1Api(self._client), f"{verb}_{scope}{singular}")
        args: list[Any] = [a for a in (name, namespace) if a is not None]
        kwargs: dict[str, Any] = dict(query or ())
        if body is not None:
            kwargs["body"] = body
        try:
            response = call(*args, **kwargs, _preload_content=False, _request_timeout=self._timeout)
        except ApiException as exc:
            # Drop the body (it may echo Secret data) and the chained exception.
            raise ApiException(status=exc.status, reason=exc.reason) from None
        return cast(dict[str, Any], json.loads(response.data))

    def get_cluster_scoped(self, resource: Resource, name: str) -> dict[str, Any] | None:
        """A cluster-scoped custom object (e.g. a CRD), or None when it does not exist."""
        try:
            obj = self._api.get_cluster_custom_object(
                resource.group, resource.version, resource.plural, name, _request_timeout=self._timeout
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return cast(dict[str, Any], obj)

    def apply_cluster_scoped(
        self, resource: Resource, body: dict[str, Any], field_manager: str
    ) -> dict[str, Any]:
        """Server-side apply of a cluster-scoped custom object (forced: the fields in
        `body` are ours)."""
        obj = self._api.patch_cluster_custom_object(
            resource.group, resource.version, resource.plural, body["metadata"]["name"], body,
            field_manager=field_manager, force=True,
            _content_type="application/apply-patch+yaml", _request_timeout=self._timeout,
        )  # fmt: skip
        return cast(dict[str, Any], obj)


def _precondition(body: dict[str, Any]) -> str | None:
    """The resourceVersion a write carries (the API server refuses it, 409, unless current)."""
    version = (body.get("metadata") or {}).get("resourceVersion")
    return str(version) if version else None


def ensure_secret(
    kube: Kube, namespace: str, name: str, make: Callable[[], dict[str, bytes]]
) -> dict[str, bytes]:
    """The data of the manager's own Secret `name`, made from `make()` and stored when
    absent. Crash-safe: the name is fixed, so two managers starting at once (or one
    restarted half-way) end up with the data that won the create."""
    for _ in range(3):
        secret = kube.get(SECRETS, namespace, name)
        if secret is not None:
            return {key: base64.b64decode(value) for key, value in (secret.get("data") or {}).items()}
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": {"app.kubernetes.io/managed-by": "capi-c3os"},
            },
            "type": "Opaque",
            "data": {key: base64.b64encode(value).decode() for key, value in make().items()},
        }
        try:
            kube.create(SECRETS, namespace, body)
        except ConflictError:
            continue  # another manager made it first: read theirs
        log.info("created the Secret %s/%s", namespace, name)
    raise RuntimeError(f"cannot read or create the Secret {namespace}/{name}")


def warning_event(kube: Kube, obj: dict[str, Any], reason: str, message: str) -> None:
    """A Warning Event on `obj` (`kubectl describe`), best effort: the work it reports on
    matters more than the Event. `message` must hold nothing secret."""
    meta = obj["metadata"]
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    body = {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"),
                           "name": meta["name"], "namespace": meta["namespace"], "uid": meta.get("uid")},
        "type": "Warning", "reason": reason, "message": message[:1024],
        "source": {"component": "capi-c3os"}, "reportingComponent": "capi-c3os",
        "firstTimestamp": now, "lastTimestamp": now, "count": 1,
    }  # fmt: skip
    try:
        kube.create(EVENTS, str(meta["namespace"]), body)
    except Exception as exc:
        log.warning("cannot post the %s Event of %s %s/%s: %s", reason, obj.get("kind"),
                    meta["namespace"], meta["name"], exc)  # fmt: skip
