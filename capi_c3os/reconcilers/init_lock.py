"""The init lock: until a Cluster's control plane is initialised, exactly one
control-plane machine may render `--cluster-init` data.

The lock is a ConfigMap `<cluster>-lock` (the name CAPI's kubeadm and the k3s
providers use) holding the holder Machine's name and UID. The API server lets exactly
one create win, so two configs reconciled at the same moment cannot both initialise.
It survives controller crashes (it lives in the API server, not in memory) and is
owned by the Cluster, so it moves and dies with it. A lock whose Machine is gone, is
being deleted, has failed, or was recreated under the same name (another UID) is
stale: it is deleted with a resourceVersion precondition (never someone's fresh lock)
and taken over. Once the control plane is initialised nobody needs it and it is
deleted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from capi_c3os.capi.metadata import CLUSTER_NAME_LABEL, CORE_API_VERSION
from capi_c3os.reconcilers.kube import CONFIG_MAPS, MACHINES, ConflictError, Kube

LOCK_KEY = "lock-information"


def lock_name(cluster_name: str) -> str:
    return f"{cluster_name}-lock"


@dataclass(frozen=True)
class LockState:
    held: bool
    """True when `machine` holds the lock (now, or since before a crash)."""
    holder: str = ""
    """The holding Machine's name."""


def _holder(lock: dict[str, Any]) -> tuple[str, str]:
    try:
        info = json.loads((lock.get("data") or {}).get(LOCK_KEY) or "{}")
    except ValueError:
        info = {}
    return str(info.get("machineName") or ""), str(info.get("machineUID") or "")


def _stale(kube: Kube, namespace: str, name: str, uid: str) -> bool:
    if not name:
        return True
    machine = kube.get(MACHINES, namespace, name)
    if machine is None:
        return True
    meta = machine.get("metadata") or {}
    if meta.get("deletionTimestamp") or (uid and meta.get("uid") != uid):
        return True
    return (machine.get("status") or {}).get("phase") == "Failed"


def _body(cluster: dict[str, Any], machine: dict[str, Any]) -> dict[str, Any]:
    cmeta, mmeta = cluster["metadata"], machine["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": lock_name(cmeta["name"]),
            "namespace": cmeta["namespace"],
            "labels": {CLUSTER_NAME_LABEL: cmeta["name"]},
            "ownerReferences": [
                {
                    "apiVersion": cluster.get("apiVersion") or CORE_API_VERSION,
                    "kind": "Cluster",
                    "name": cmeta["name"],
                    "uid": cmeta["uid"],
                }
            ],
        },
        "data": {LOCK_KEY: json.dumps({"machineName": mmeta["name"], "machineUID": mmeta["uid"]})},
    }


def acquire(kube: Kube, cluster: dict[str, Any], machine: dict[str, Any]) -> LockState:
    """Take the lock for `machine`, or report who holds it. Raises `ConflictError`
    when the lock changed hands meanwhile (reconcile again)."""
    namespace = cluster["metadata"]["namespace"]
    name = lock_name(cluster["metadata"]["name"])
    mine = machine["metadata"]["name"]
    for _ in range(2):  # at most: clear one stale lock, then take it
        lock = kube.get(CONFIG_MAPS, namespace, name)
        if lock is None:
            try:
                kube.create(CONFIG_MAPS, namespace, _body(cluster, machine))
            except ConflictError:
                continue  # someone else won the race: read who
            return LockState(held=True, holder=mine)
        holder, holder_uid = _holder(lock)
        if holder == mine and holder_uid in ("", machine["metadata"]["uid"]):
            return LockState(held=True, holder=mine)
        if not _stale(kube, namespace, holder, holder_uid):
            return LockState(held=False, holder=holder)
        kube.delete(CONFIG_MAPS, namespace, name, resource_version=lock["metadata"]["resourceVersion"])
    raise ConflictError(f"init lock {namespace}/{name} changed hands meanwhile")


def release(kube: Kube, cluster: dict[str, Any]) -> bool:
    """Delete the lock (once the control plane is initialised); False when absent."""
    meta = cluster["metadata"]
    return kube.delete(CONFIG_MAPS, meta["namespace"], lock_name(meta["name"]))
