"""Letting a server Machine go only once k3s removed its etcd member: our pre-terminate
hook on each server Machine, the removal request to k3s and the judgement of its answer.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from capi_c3os.capi.metadata import PRE_TERMINATE_HOOK_PREFIX
from capi_c3os.reconcilers.controlplane_context import ControlPlaneContext, deleting_machines, node_of
from capi_c3os.reconcilers.kube import MACHINES
from capi_c3os.workload.client import NodeState, WorkloadUnreachableError

log = logging.getLogger(__name__)

HOOK = f"{PRE_TERMINATE_HOOK_PREFIX}/c3os-control-plane"
"""Holds a server Machine after drain until k3s removed its etcd member."""
ETCD_REMOVE = "etcd.k3s.cattle.io/remove"
ETCD_REMOVED = "etcd.k3s.cattle.io/removed-node-name"
ETCD_NODE_NAME = "etcd.k3s.cattle.io/node-name"
"""k3s's metadata controller puts a server's etcd member name here (and its address in
`etcd.k3s.cattle.io/node-address`); its removal controller needs both."""
ETCD_REMOVAL_REQUESTED = "controlplane.cluster.x-k8s.io/c3os-etcd-removal-requested"
"""On a server Machine being deleted: when we asked k3s to remove its etcd member."""
ETCD_MEMBER_GRACE = timedelta(minutes=2)
"""How long a Node without etcd member annotations may take to get them before its
Machine is let go (its etcd never joined: there is nothing to remove)."""
ETCD_MEMBERS_REMOVED = "EtcdMembersRemoved"
"""Condition: no server Machine being deleted waits for its etcd member's removal."""
WAITING_FOR_ETCD_REMOVAL = "WaitingForEtcdMemberRemoval"
WAITING_FOR_ETCD_MEMBER = "WaitingForEtcdMemberAnnotation"
ETCD_REMOVAL_REFUSED = "EtcdMemberRemovalRefused"


def release_hooks(ctx: ControlPlaneContext) -> None:
    """A server Machine being deleted waits at our pre-terminate hook until k3s removed
    its etcd member; the last server, and a cluster being deleted, need no removal.

    k3s (`pkg/etcd/member_controller.go`) acts on `remove=true` only for a Node carrying
    its etcd member annotations (node-name, node-address), and refuses the only voting
    member by deleting `remove` without setting `removed-node-name`. So: a Node without
    member annotations is let go after ETCD_MEMBER_GRACE (k3s's metadata controller
    annotates a server within seconds of its start; none means its etcd never joined);
    a refused last member is held, never let go silently, and asked again once another
    server's etcd has joined. No Node at all: k3s never registered, nothing to remove."""
    cluster_deleting = bool(ctx.cluster["metadata"].get("deletionTimestamp"))
    for machine in deleting_machines(ctx.machines):
        annotations = machine["metadata"].get("annotations") or {}
        if HOOK not in annotations:
            continue
        name = machine["metadata"]["name"]
        others = [m for m in ctx.machines if m is not machine]
        if cluster_deleting or not others:
            remove_hook(ctx, machine)
            continue
        if ctx.workload is None or ctx.workload_error:
            # Without the Nodes we cannot tell whether it still holds an etcd member.
            ctx.etcd_waits.append(
                (WAITING_FOR_ETCD_REMOVAL, f"{name}: the workload cluster's Nodes cannot be read")
            )
            continue
        node = node_of(ctx, machine)
        if node is None or ETCD_REMOVED in node.annotations:
            remove_hook(ctx, machine)
            continue
        try:
            if not _etcd_member_gone(ctx, machine, node):
                continue
        except WorkloadUnreachableError as exc:
            ctx.workload_error = str(exc)
            continue
        remove_hook(ctx, machine)


def _etcd_member_gone(ctx: ControlPlaneContext, machine: dict[str, Any], node: NodeState) -> bool:
    """Ask k3s to remove the etcd member of `machine`'s Node (once), then judge k3s's
    answer; True when the hook may go. Records why it waits in ctx.etcd_waits."""
    assert ctx.workload is not None
    name = machine["metadata"]["name"]
    requested = _removal_requested_at(machine)
    if requested is None:
        # Remember the request first: a crash between the two writes then reads as a
        # request k3s dropped, which is asked again (or reported) below.
        _mark_removal_requested(ctx, machine)
        ctx.workload.annotate_node(node.name, {ETCD_REMOVE: "true"})
        ctx.etcd_waits.append(
            (WAITING_FOR_ETCD_REMOVAL, f"{name}: asked k3s to remove node {node.name}'s etcd member")
        )
        return False
    member = node.annotations.get(ETCD_NODE_NAME)
    if member is None:
        # k3s ignores a removal request for a Node without its etcd member annotations.
        deadline = requested + ETCD_MEMBER_GRACE
        if ctx.now >= deadline:
            log.warning(
                "releasing %s/%s: node %s never carried an etcd member annotation (%s) within %ds "
                "of the removal request, so its etcd never joined",
                ctx.namespace, name, node.name, ETCD_NODE_NAME, ETCD_MEMBER_GRACE.total_seconds(),
            )  # fmt: skip
            return True
        ctx.etcd_waits.append((
            WAITING_FOR_ETCD_MEMBER,
            f"{name}: node {node.name} has no etcd member annotation ({ETCD_NODE_NAME}), which k3s needs "
            f"to remove it; let go at {deadline.strftime('%Y-%m-%dT%H:%M:%SZ')} if none appears",
        ))  # fmt: skip
        return False
    if node.annotations.get(ETCD_REMOVE) == "true":
        ctx.etcd_waits.append((WAITING_FOR_ETCD_REMOVAL, f"{name}: k3s is removing etcd member {member}"))
        return False
    # Asked, and k3s dropped the request without removing: the only voting member.
    members = [n for n in ctx.nodes.values() if n.name != node.name and ETCD_NODE_NAME in n.annotations]
    if members:
        ctx.workload.annotate_node(node.name, {ETCD_REMOVE: "true"})  # k3s: ask again once there are more
        ctx.etcd_waits.append(
            (WAITING_FOR_ETCD_REMOVAL, f"{name}: asked k3s again to remove etcd member {member}")
        )
        return False
    ctx.etcd_waits.append((
        ETCD_REMOVAL_REFUSED,
        f"{name}: k3s refused to remove etcd member {member} of node {node.name}: it is the only "
        "voting member, no other server's etcd has joined; the Machine is held so the cluster's "
        "data is not lost (it is asked again once another server joins etcd)",
    ))  # fmt: skip
    return False


def _removal_requested_at(machine: dict[str, Any]) -> datetime | None:
    value = (machine["metadata"].get("annotations") or {}).get(ETCD_REMOVAL_REQUESTED)
    if not value:
        return None
    try:
        return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None  # not ours to trust: ask again and restart the clock


def _mark_removal_requested(ctx: ControlPlaneContext, machine: dict[str, Any]) -> None:
    annotations = {
        **(machine["metadata"].get("annotations") or {}),
        ETCD_REMOVAL_REQUESTED: ctx.now.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    body = {**machine, "metadata": {**machine["metadata"], "annotations": annotations}}
    updated = ctx.kube.replace(MACHINES, ctx.namespace, machine["metadata"]["name"], body)
    machine["metadata"] = updated["metadata"]


def remove_hook(ctx: ControlPlaneContext, machine: dict[str, Any]) -> None:
    annotations = machine["metadata"].get("annotations") or {}
    if HOOK not in annotations:
        return
    rest = {k: v for k, v in annotations.items() if k != HOOK}
    body = {**machine, "metadata": {**machine["metadata"], "annotations": rest}}
    ctx.kube.replace(MACHINES, ctx.namespace, machine["metadata"]["name"], body)
