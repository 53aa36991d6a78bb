"""In-place A/B upgrade of one node: the Job that runs it and how far it got.

Upgrading node N to the OCI image I is one batch/v1 Job in the workload cluster, named
after (N, I) so that a reconcile that died after creating it finds it again and a new
target gets a new Job. The Job runs I itself, privileged, on N: the container's root IS
the new OS, and `kairos-agent upgrade --source dir:/` copies it into the node's other
slot, as kairos-operator v0.1.3 does (internal/controller/nodeopupgrade_controller.go,
active-only path); then the host reboots into that slot. Kairos's boot assessment falls
back to the previous slot when the new one does not boot, and the node says which slot
it booted in its `kairos.io/boot-state` label (kairos-operator cmd/node-labeler).

Progress is judged from the Job and the Node only (no state of ours): the node's bootID
before the upgrade is kept on the Job, so "rebooted" means "another bootID than then".
Used by the Runtime SDK extension's UpdateMachine and by the control plane.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from kubernetes.client.exceptions import ApiException

from capi_c3os.capi.versions import matches
from capi_c3os.workload.client import NodeState, WorkloadClient

UPGRADE_NAMESPACE = "kube-system"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "capi-c3os"
UPGRADE_NODE_LABEL = "c3os.cluster.x-k8s.io/upgrade-node"
UPGRADE_IMAGE_ANNOTATION = "c3os.cluster.x-k8s.io/upgrade-image"
BOOT_ID_BEFORE_ANNOTATION = "c3os.cluster.x-k8s.io/boot-id-before"
BOOT_STATE_LABEL = "kairos.io/boot-state"
HOST_MOUNT = "/host"

# `set -e` as kairos-operator's script has it: a failed `kairos-agent upgrade` ends the
# Job Failed instead of rebooting the node into the slot it did not finish writing.
UPGRADE_SCRIPT = (
    "set -e\n"
    f"mount --rbind {HOST_MOUNT}/dev /dev\n"
    f"mount --rbind {HOST_MOUNT}/run /run\n"
    "kairos-agent upgrade --source dir:/\n"
    "nsenter -t 1 -m -u -i -n -p -- reboot\n"
)

_NAME_PREFIX = "c3os-upgrade-"
_NODE_PART = 39
"""The Job controller labels the Job's Pods with the Job's name (`batch.kubernetes.io/
job-name`), and label values end at 63 characters: 13 + 39 + 1 + 10 = 63."""
_LABEL_VALUE_MAX = 63


class UpgradeState(StrEnum):
    IN_PROGRESS = "InProgress"
    DONE = "Done"
    FAILED = "Failed"


@dataclass(frozen=True)
class UpgradeProgress:
    state: UpgradeState
    message: str
    """Deterministic for a given Job and Node state: CAPI copies it into conditions."""

    @property
    def done(self) -> bool:
        return self.state is UpgradeState.DONE

    @property
    def failed(self) -> bool:
        return self.state is UpgradeState.FAILED


def _digest(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:10]


def upgrade_job_name(node: str, image: str) -> str:
    # Cut names may end in '-' or '.', which may not precede the '-' that follows.
    return f"{_NAME_PREFIX}{node[:_NODE_PART].rstrip('-.')}-{_digest(node, image)}"


def node_label_value(node: str) -> str:
    """The node's name as a label value: itself while it fits (63 characters), else cut
    with a hash (Node names may be 253 long). Only narrows listings: the Job's
    `spec.template.spec.nodeName` is what says whose Job it is."""
    if len(node) <= _LABEL_VALUE_MAX:
        return node
    return f"{node[:52].rstrip('-.')}-{_digest(node)}"


def upgrade_job(node: str, image: str, boot_id_before: str) -> dict[str, Any]:
    """The Job that upgrades `node` to `image` (see the module docstring)."""
    labels = {MANAGED_BY_LABEL: MANAGED_BY, UPGRADE_NODE_LABEL: node_label_value(node)}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": upgrade_job_name(node, image),
            "namespace": UPGRADE_NAMESPACE,
            "labels": labels,
            "annotations": {UPGRADE_IMAGE_ANNOTATION: image, BOOT_ID_BEFORE_ANNOTATION: boot_id_before},
        },
        "spec": {
            # One try: a second run after a half-written slot or a started reboot is not
            # what anyone wants; a failure is judged and reported instead.
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": dict(labels)},
                "spec": {
                    "nodeName": node,
                    "restartPolicy": "Never",
                    "hostPID": True,
                    "tolerations": [{"operator": "Exists"}],
                    "volumes": [{"name": "host-root", "hostPath": {"path": "/"}}],
                    "containers": [{
                        "name": "upgrade",
                        "image": image,
                        "securityContext": {"privileged": True},
                        "volumeMounts": [{"name": "host-root", "mountPath": HOST_MOUNT}],
                        "command": ["/bin/sh", "-c", UPGRADE_SCRIPT],
                    }],
                },
            },
        },
    }  # fmt: skip


def _job_condition(job: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for c in (job.get("status") or {}).get("conditions") or []:
        if c.get("type") == kind and c.get("status") == "True":
            return dict(c)
    return None


def _job_node(job: dict[str, Any]) -> str | None:
    return (((job.get("spec") or {}).get("template") or {}).get("spec") or {}).get("nodeName")


def _job_image(job: dict[str, Any]) -> str | None:
    return ((job.get("metadata") or {}).get("annotations") or {}).get(UPGRADE_IMAGE_ANNOTATION)


def judge(job: dict[str, Any], node: NodeState | None, image: str, version: str | None) -> UpgradeProgress:
    """How far the upgrade of `node` to `image` (shipping k3s `version`, when known) got,
    from its Job (as JSON) and the Node as the workload cluster shows them now."""
    meta = job.get("metadata") or {}
    ref = f"{meta.get('namespace', UPGRADE_NAMESPACE)}/{meta.get('name')}"
    name = node.name if node else _job_node(job)
    if (
        _job_node(job) != name
        or _job_image(job) != image
        or (meta.get("labels") or {}).get(MANAGED_BY_LABEL) != MANAGED_BY
    ):
        # Someone else's Job under our name: never judge a node by it.
        return UpgradeProgress(UpgradeState.FAILED, f"job {ref} is not the upgrade of node {name} to {image}")
    failed = _job_condition(job, "Failed")
    if failed is not None:
        detail = failed.get("message") or failed.get("reason") or "no message"
        return UpgradeProgress(UpgradeState.FAILED, f"upgrade of node {name} to {image} failed: {detail}")
    if _job_condition(job, "Complete") is None:
        return UpgradeProgress(UpgradeState.IN_PROGRESS, f"node {name} is installing {image} (job {ref})")
    if node is None:
        return UpgradeProgress(
            UpgradeState.IN_PROGRESS, f"node {name} installed {image}, waiting for it to register"
        )
    before = (meta.get("annotations") or {}).get(BOOT_ID_BEFORE_ANNOTATION) or ""
    if (node.boot_id or "") == before:
        return UpgradeProgress(UpgradeState.IN_PROGRESS, f"node {name} installed {image}, rebooting")
    boot_state = node.labels.get(BOOT_STATE_LABEL)
    if boot_state == "passive":
        return UpgradeProgress(
            UpgradeState.FAILED,
            f"node {name} fell back to the previous image (boot-state passive): {image} did not boot",
        )
    if boot_state != "active":
        # Set by Kairos's node labeler once it runs after the boot.
        return UpgradeProgress(
            UpgradeState.IN_PROGRESS,
            f"node {name} rebooted, waiting for boot-state active (is {boot_state or 'unset'})",
        )
    if not node.ready:
        return UpgradeProgress(
            UpgradeState.IN_PROGRESS, f"node {name} rebooted into {image}, waiting for Ready"
        )
    running = node.kubelet_version
    if version and (not running or not matches(version, running)):
        # The kubelet reports its version with the new bootID: this will not change by waiting.
        return UpgradeProgress(
            UpgradeState.FAILED,
            f"node {name} booted {image} but runs {running or 'no version'}, wanted {version}",
        )
    return UpgradeProgress(
        UpgradeState.DONE, f"node {name} runs {image}" + (f" ({running})" if running else "")
    )


def advance_upgrade(client: WorkloadClient, node: str, image: str, version: str | None) -> UpgradeProgress:
    """Start the upgrade of `node` to `image` unless its Job exists, and judge it. Safe to
    repeat at any point: the Job's name is the state."""
    name = upgrade_job_name(node, image)
    job = client.job(UPGRADE_NAMESPACE, name)
    if job is None:
        current = client.node(node)
        if current is None:
            return UpgradeProgress(UpgradeState.IN_PROGRESS, f"node {node} is not registered, waiting for it")
        # Older upgrades of this node (another image) go first: two Jobs writing the
        # passive slot would race, and a crash between the steps leaves no stray one.
        for old in client.jobs(UPGRADE_NAMESPACE, f"{UPGRADE_NODE_LABEL}={node_label_value(node)}"):
            old_name = (old.get("metadata") or {}).get("name")
            if old_name != name and _job_node(old) == node:
                client.delete_job(UPGRADE_NAMESPACE, str(old_name))
        try:
            job = client.create_job(UPGRADE_NAMESPACE, upgrade_job(node, image, current.boot_id or ""))
        except ApiException as exc:
            if exc.status != 409:
                raise
            job = client.job(UPGRADE_NAMESPACE, name)
            if job is None:  # created and deleted in between: next call
                return UpgradeProgress(
                    UpgradeState.IN_PROGRESS, f"node {node}: upgrade job {name} is being replaced"
                )
        return judge(job, current, image, version)
    return judge(job, client.node(node), image, version)


__all__ = [
    "BOOT_ID_BEFORE_ANNOTATION",
    "BOOT_STATE_LABEL",
    "UPGRADE_IMAGE_ANNOTATION",
    "UPGRADE_NAMESPACE",
    "UPGRADE_NODE_LABEL",
    "UPGRADE_SCRIPT",
    "UpgradeProgress",
    "UpgradeState",
    "advance_upgrade",
    "judge",
    "node_label_value",
    "upgrade_job",
    "upgrade_job_name",
]
