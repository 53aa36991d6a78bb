"""Well-known CAPI labels, annotations and API groups.

Values are the ones in `api/core/v1beta2/common_types.go` of cluster-api v1.14 and in
clusterctl's `cmd/clusterctl/api/v1alpha3`. Keep names close to CAPI's Go constants so a
reader can grep both code bases.
"""

from __future__ import annotations

from typing import Any

CORE_GROUP = "cluster.x-k8s.io"
CORE_VERSION = "v1beta2"
CORE_API_VERSION = f"{CORE_GROUP}/{CORE_VERSION}"

INFRASTRUCTURE_GROUP = "infrastructure.cluster.x-k8s.io"
BOOTSTRAP_GROUP = "bootstrap.cluster.x-k8s.io"
CONTROL_PLANE_GROUP = "controlplane.cluster.x-k8s.io"

# --- labels
CLUSTER_NAME_LABEL = "cluster.x-k8s.io/cluster-name"
"""On every object that belongs to a Cluster; the value is the Cluster's name."""
MACHINE_CONTROL_PLANE_LABEL = "cluster.x-k8s.io/control-plane"
"""On control-plane Machines (value ""): how bootstrap tells a server from an agent."""
MACHINE_CONTROL_PLANE_NAME_LABEL = "cluster.x-k8s.io/control-plane-name"
MACHINE_DEPLOYMENT_NAME_LABEL = "cluster.x-k8s.io/deployment-name"
MACHINE_SET_NAME_LABEL = "cluster.x-k8s.io/set-name"
PROVIDER_NAME_LABEL = "cluster.x-k8s.io/provider"
"""On provider components: `<type>-<name>`, e.g. `infrastructure-c3os`."""
CONTRACT_LABEL_PREFIX = "cluster.x-k8s.io/"
"""CRDs carry `cluster.x-k8s.io/<contract>: <our versions joined by _>`."""
CLUSTER_TOPOLOGY_OWNED_LABEL = "topology.cluster.x-k8s.io/owned"
WATCH_FILTER_LABEL = "cluster.x-k8s.io/watch-filter"

# --- annotations
PAUSED_ANNOTATION = "cluster.x-k8s.io/paused"
"""Present (any value) = do not reconcile this object. See `capi_c3os.capi.pause`."""
MANAGED_BY_ANNOTATION = "cluster.x-k8s.io/managed-by"
"""Present on an infrastructure cluster = someone else manages it; we only observe.
The contract doc calls it a label; CAPI's code (util/annotations) checks the annotation."""
CLONED_FROM_NAME_ANNOTATION = "cluster.x-k8s.io/cloned-from-name"
CLONED_FROM_GROUPKIND_ANNOTATION = "cluster.x-k8s.io/cloned-from-groupkind"
DELETE_MACHINE_ANNOTATION = "cluster.x-k8s.io/delete-machine"
IN_PLACE_UPDATE_IN_PROGRESS_ANNOTATION = "in-place-updates.internal.cluster.x-k8s.io/update-in-progress"
"""machine_types.go UpdateInProgressAnnotation: on the Machine, its infrastructure machine
and bootstrap config while CAPI updates them in place (gate InPlaceUpdates)."""
SKIP_REMEDIATION_ANNOTATION = "cluster.x-k8s.io/skip-remediation"
REMEDIATE_MACHINE_ANNOTATION = "cluster.x-k8s.io/remediate-machine"
PRE_DRAIN_HOOK_PREFIX = "pre-drain.delete.hook.machine.cluster.x-k8s.io"
PRE_TERMINATE_HOOK_PREFIX = "pre-terminate.delete.hook.machine.cluster.x-k8s.io"

# --- clusterctl move
MOVE_LABEL = "clusterctl.cluster.x-k8s.io/move"
MOVE_HIERARCHY_LABEL = "clusterctl.cluster.x-k8s.io/move-hierarchy"
BLOCK_MOVE_ANNOTATION = "clusterctl.cluster.x-k8s.io/block-move"
DELETE_FOR_MOVE_ANNOTATION = "clusterctl.cluster.x-k8s.io/delete-for-move"

# --- Secrets CAPI reads
CLUSTER_SECRET_TYPE = "cluster.x-k8s.io/secret"


def labels_of(obj: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = (obj.get("metadata") or {}).get("labels") or {}
    return labels


def annotations_of(obj: dict[str, Any]) -> dict[str, str]:
    annotations: dict[str, str] = (obj.get("metadata") or {}).get("annotations") or {}
    return annotations


def api_group(api_version: str) -> str:
    """`infrastructure.cluster.x-k8s.io/v1alpha1` -> `infrastructure.cluster.x-k8s.io`;
    core `v1` -> `""` (the core group has no name)."""
    group, _, version = api_version.rpartition("/")
    return group if version else ""


def is_externally_managed(obj: dict[str, Any]) -> bool:
    return MANAGED_BY_ANNOTATION in annotations_of(obj)


def is_control_plane_machine(machine: dict[str, Any]) -> bool:
    return MACHINE_CONTROL_PLANE_LABEL in labels_of(machine)
