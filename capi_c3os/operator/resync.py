"""Periodic resync: every `period` seconds, reconcile every object of ours again.

This is the level-triggered safety net that kopf's timers would be (they would add
kopf's finalizer to every object, see handlers/common.py): a missed watch event, a
Cluster change we did not map, or time itself (a lease, a certificate) all heal at
the next resync. It also serves `PauseWatch`: reconcile the objects of one Cluster.

Reconciles run on the same executor as kopf's sync handlers, so stopping that
executor waits for every in-flight write before the lease is released.

A reconcile that answers "wait" is run again after the delay it asked for, here, in
memory (`requeue`). That serves reconciles started here (a config woken by unpausing
its Cluster: kopf already counted that object as handled) and kopf's own handlers,
which hand their waits over instead of raising kopf's TemporaryError: kopf records
every retry in a progress annotation, one API write per wait (most of the writes per
machine during a long deploy). A requeue lost to a restart is found again by kopf's
resume handlers and the periodic resync.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import Executor
from typing import Any

from capi_c3os.capi.metadata import CLUSTER_NAME_LABEL
from capi_c3os.operator import metrics
from capi_c3os.operator.logs import object_ref
from capi_c3os.operator.runtime import Kind, Runtime
from capi_c3os.operator.settings import HANDLER_BACKOFF
from capi_c3os.reconcilers.kube import ConflictError

log = logging.getLogger(__name__)

CONFLICT_RETRY_DELAY = 1.0
"""Seconds before a requeued reconcile whose write met a newer object runs again."""


class Resync:
    def __init__(
        self,
        runtime: Runtime,
        kinds: Sequence[Kind],
        namespaces: Sequence[str],
        listed: Callable[[Collection[str]], None] | None = None,
    ) -> None:
        """`namespaces` empty = all namespaces. `listed` is told the uids of all objects
        after each resync's listing (what exists, for bookkeeping to forget the rest)."""
        self._runtime = runtime
        self._listed = listed
        self._kinds = list(kinds)
        self._namespaces: list[str | None] = list(namespaces) or [None]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor: Executor | None = None
        self._pending: dict[tuple[str, str, str], asyncio.TimerHandle] = {}
        """The one pending re-run per object (by resource plural, namespace, name)."""

    def requeue(self, kind: Kind, obj: dict[str, Any], after: float) -> bool:
        """Any thread: reconcile `obj` again (freshly read) after `after` seconds; one
        pending run per object. False when the resync is not running (the caller then
        retries its own way)."""
        meta = obj.get("metadata") or {}
        key = (kind.resource.plural, str(meta.get("namespace")), str(meta.get("name")))
        return self._requeue_key(kind, key, after)

    def _requeue_key(self, kind: Kind, key: tuple[str, str, str], after: float) -> bool:
        loop = self._loop
        if loop is None:
            return False
        try:
            loop.call_soon_threadsafe(self._schedule, kind, key, after)
        except RuntimeError:  # the loop is closed: shutting down
            return False
        return True

    def _reconcile_quietly(self, kind: Kind, obj: dict[str, Any], trigger: str) -> None:
        """Blocking. A failure is logged and the object requeued: nobody else may come
        soon (a write that met a newer object, e.g. CAPI adding an owner reference,
        wakes no kopf handler; the next resync may be minutes away)."""
        retry_after: float | None
        try:
            outcome = self._runtime.reconcile(kind, obj, trigger)
            retry_after = (outcome.after or 0.0) if outcome.waiting else None
        except ConflictError:
            retry_after = CONFLICT_RETRY_DELAY
        except Exception:
            log.exception("%s reconcile failed", trigger, extra=object_ref(obj))
            retry_after = HANDLER_BACKOFF
        if retry_after is not None:
            self.requeue(kind, obj, retry_after)

    def _schedule(self, kind: Kind, key: tuple[str, str, str], after: float) -> None:
        """On the manager's loop: one pending re-run per object, the earliest asked for."""
        if self._loop is None:
            return
        pending = self._pending.get(key)
        when = self._loop.time() + after
        if pending is not None:
            if pending.when() <= when:
                return
            pending.cancel()
        self._pending[key] = self._loop.call_at(when, self._rerun, kind, key)

    def _rerun(self, kind: Kind, key: tuple[str, str, str]) -> None:
        self._pending.pop(key, None)
        if self._loop is None or self._executor is None:
            return
        with contextlib.suppress(RuntimeError):  # the executor is shutting down
            self._loop.run_in_executor(self._executor, self._reconcile_fresh, kind, key)

    def _reconcile_fresh(self, kind: Kind, key: tuple[str, str, str]) -> None:
        """Blocking: read the object again (it may have changed or gone) and reconcile."""
        _, namespace, name = key
        try:
            obj = self._runtime.kube.get(kind.resource, namespace, name)
        except Exception as exc:
            log.warning("requeue could not read %s %s/%s: %s", kind.resource.kind, namespace, name, exc)
            self._requeue_key(kind, key, HANDLER_BACKOFF)
            return
        if obj is not None:
            self._reconcile_quietly(kind, obj, "requeue")

    def all_objects(self) -> list[tuple[Kind, dict[str, Any]]]:
        """Blocking."""
        found = []
        for kind in self._kinds:
            for namespace in self._namespaces:
                for obj in self._runtime.kube.list(kind.resource, namespace):
                    found.append((kind, obj))
        return found

    def reconcile_dependents(self, namespace: str, cluster_name: str) -> None:
        """Blocking: reconcile our objects labelled as belonging to one Cluster."""
        if self._namespaces != [None] and namespace not in self._namespaces:
            return
        selector = f"{CLUSTER_NAME_LABEL}={cluster_name}"
        for kind in self._kinds:
            for obj in self._runtime.kube.list(kind.resource, namespace, label_selector=selector):
                self._reconcile_quietly(kind, obj, "cluster")

    async def run_forever(self, period: float, executor: Executor) -> None:
        loop = asyncio.get_running_loop()
        self._loop, self._executor = loop, executor
        try:
            await self._resync_forever(loop, period, executor)
        finally:
            self._loop = None
            for handle in self._pending.values():
                handle.cancel()
            self._pending.clear()

    async def _resync_forever(
        self, loop: asyncio.AbstractEventLoop, period: float, executor: Executor
    ) -> None:
        while True:
            await asyncio.sleep(period)
            if self._runtime.view is not None:
                try:
                    await loop.run_in_executor(executor, self._runtime.view.refresh, self._runtime.kube)
                except Exception as exc:
                    log.warning("resync could not refresh the watch view: %s", exc)
            listed_at = time.monotonic()
            try:
                objects = await loop.run_in_executor(executor, self.all_objects)
            except Exception as exc:
                log.warning("resync could not list objects: %s", exc)
                continue
            log.debug("resync: %d objects", len(objects))
            if self._listed is not None:
                self._listed([obj["metadata"]["uid"] for _, obj in objects])
            for kind, obj in objects:
                await loop.run_in_executor(executor, self.reconcile_listed, kind, obj, listed_at)

    def reconcile_listed(self, kind: Kind, obj: dict[str, Any], listed_at: float) -> None:
        """Blocking: one object of a resync's listing (made at `listed_at`, monotonic).
        A pass over many objects takes a while; one that our own reconcile wrote since
        the listing is left out: its body is outdated (reconciling it would cost a write
        refused with 409 and a read), and that reconcile arranged its own next run."""
        own = self._runtime.kube.own_writes
        if own is not None and own.wrote_since(obj, listed_at):
            metrics.SUPERSEDED.labels(kind.resource.kind).inc()
            return
        self._reconcile_quietly(kind, obj, "resync")
