"""Periodic resync: every `period` seconds, reconcile every object of ours again.

This is the level-triggered safety net that kopf's timers would be (they would add
kopf's finalizer to every object, see handlers/common.py): a missed watch event, a
Cluster change we did not map, or time itself (a lease, a certificate) all heal at
the next resync. It also serves `PauseWatch`: reconcile the objects of one Cluster.

Reconciles run on the same executor as kopf's sync handlers, so stopping that
executor waits for every in-flight write before the lease is released.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from concurrent.futures import Executor
from typing import Any

from capi_c3os.capi.metadata import CLUSTER_NAME_LABEL
from capi_c3os.operator.logs import object_ref
from capi_c3os.operator.runtime import Kind, Runtime
from capi_c3os.reconcilers.kube import ConflictError

log = logging.getLogger(__name__)


class Resync:
    def __init__(self, runtime: Runtime, kinds: Sequence[Kind], namespaces: Sequence[str]) -> None:
        """`namespaces` empty = all namespaces."""
        self._runtime = runtime
        self._kinds = list(kinds)
        self._namespaces: list[str | None] = list(namespaces) or [None]

    def _reconcile_quietly(self, kind: Kind, obj: dict[str, Any], trigger: str) -> None:
        """Blocking. A failure here is only logged: the object's own handlers retry, and
        the next resync comes anyway."""
        try:
            self._runtime.reconcile(kind, obj, trigger)
        except ConflictError:
            pass  # it changed meanwhile, so kopf is about to handle it
        except Exception:
            log.exception("%s reconcile failed", trigger, extra=object_ref(obj))

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
        while True:
            await asyncio.sleep(period)
            try:
                objects = await loop.run_in_executor(executor, self.all_objects)
            except Exception as exc:
                log.warning("resync could not list objects: %s", exc)
                continue
            log.debug("resync: %d objects", len(objects))
            for kind, obj in objects:
                await loop.run_in_executor(executor, self._reconcile_quietly, kind, obj, "resync")
