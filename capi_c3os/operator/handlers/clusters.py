"""Wake our objects when their Cluster is paused or unpaused.

`Cluster.spec.paused` is the switch `clusterctl move` flips, and it lives on an object
we do not own; without this, our objects would notice only at the next resync. We
watch Clusters with a stateless event handler (kopf writes nothing to CAPI's objects
for those) and remember only each Cluster's last seen `spec.paused`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import kopf

from capi_c3os.capi.pause import cluster_paused
from capi_c3os.reconcilers.kube import CLUSTERS

DependentsFn = Callable[[str, str], None]
"""(namespace, cluster name) -> reconcile every object of ours labelled with it."""


class PauseWatch:
    def __init__(self, reconcile_dependents: DependentsFn) -> None:
        self._reconcile_dependents = reconcile_dependents
        self._seen: dict[str, bool] = {}
        self._lock = threading.Lock()

    def on_event(self, event_type: str | None, cluster: dict[str, Any]) -> None:
        meta = cluster.get("metadata") or {}
        uid = str(meta.get("uid"))
        paused = cluster_paused(cluster)
        with self._lock:
            if event_type == "DELETED":
                self._seen.pop(uid, None)
                return
            before = self._seen.get(uid)
            self._seen[uid] = paused
        # First sight (kopf's initial listing, or a new Cluster): our objects are being
        # reconciled by their own resume/create handlers anyway.
        if before is None or before == paused:
            return
        self._reconcile_dependents(str(meta.get("namespace")), str(meta.get("name")))

    def register(self, registry: kopf.OperatorRegistry) -> None:
        def handler(type: str | None, body: kopf.Body, **_: Any) -> None:
            self.on_event(type, dict(body))

        kopf.on.event(
            CLUSTERS.group, CLUSTERS.version, CLUSTERS.plural, registry=registry, id="cluster-pause"
        )(handler)
