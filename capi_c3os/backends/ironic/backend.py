"""The Ironic backend: one non-blocking step per call, like Metal3's Ironic provisioner.

Each call reads what Ironic holds for the machine, requests at most one state change and
returns `Progress` with a requeue delay (3 s while Ironic is busy, 10 s during long work,
plus 0-25 % jitter). Nothing is remembered between calls that Ironic does not also hold,
so a restarted manager resumes where Ironic stands:

- the allocation is named *and* numbered after the machine (`identity.resource_name`,
  `identity.uuid`): Ironic refuses a second one (409), and the chosen node's
  `instance_uuid` becomes `identity.uuid`, which is how the node is found afterwards;
- the deploy is requested only from `available` (or, bounded, from `deploy failed`);
- from the start of undeploy until cleaning ends Ironic has cleared `instance_uuid`, so
  the node carries a marker in its `extra` (removed once it is `available` again).

A node is this machine's only when Ironic's link and our tags agree: its instance_uuid is
the machine's UUID *and* the allocation's tags (or, once deployed, the node's marker and
tags) name the machine's provider ID, namespace and name. A node or allocation naming
another object is never deployed, changed or undeployed here; counters and tags another
machine left on a node are neither counted nor kept.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from capi_c3os.api.infrastructure import IronicMachine, IronicSite, Site
from capi_c3os.backends.base import (
    BackendError,
    MachineIdentity,
    MachineIntent,
    Phase,
    Progress,
    SiteCredentials,
)
from capi_c3os.backends.ironic import states
from capi_c3os.backends.ironic.client import Allocation, IronicApi, IronicBusyError, Node, client_key, connect
from capi_c3os.backends.ironic.instance import (
    CLEAN_ATTEMPTS,
    CLUSTER,
    DEPLOY_ATTEMPTS,
    OUR_EXTRA_KEYS,
    addresses,
    allocation_request,
    attempts,
    claim,
    configdrive,
    deploy_interface_for,
    identity_from_tags,
    instance_info,
    machine_of,
    marked_for,
    names,
    owner_label,
)

log = logging.getLogger(__name__)

BUSY_DELAY = 3.0
WORK_DELAY = 10.0
WAIT_FOR_NODE_DELAY = 30.0
SLOT_COUNT_TTL = 2.0
SLOT_RECOUNT = 30.0
ALLOCATION_TIMEOUT = 60.0
STALLED_TEARDOWN_AFTER = 600.0
HEALTH_INTERVAL = 600.0
"""Seconds between looks at a running machine's node (plus 0-25 % jitter): how soon a node
undeployed or taken outside the cluster is reported `NodeMissing`. The manager's default
resync period, so an idle machine costs Ironic at most one light GET per resync (500
machines: less than one a second). A reconcile woken by anything else in between (the
periodic resync, a Machine change) reports what the last look saw, without a request.
The manager's --ironic-health-interval sets it (`configure`)."""

_health_interval = HEALTH_INTERVAL


def configure(health_interval: float) -> None:
    """The health interval of backends made from now on (the manager's flag)."""
    global _health_interval  # noqa: PLW0603
    _health_interval = health_interval


@dataclass(frozen=True)
class _Running:
    """What the last look at a running machine's node saw, and when (monotonic)."""

    endpoint: str
    message: str
    details: dict[str, str]
    at: float


@dataclass
class _Slots:
    """The site's count of busy nodes: read from Ironic (one query per busy state, so the
    work is the busy nodes', not the site's) and counted up by the starts made here in
    between. Read again at most every SLOT_COUNT_TTL while the count says the site is
    full (slots free up only in Ironic), else every SLOT_RECOUNT (others' starts, e.g.
    another manager or an operator, count too). Memory only: a new process reads first."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    busy: int = 0
    read_at: float = float("-inf")


class IronicBackend:
    """Implements `capi_c3os.backends.base.Backend` for sites with `ironic` set. Thread-safe:
    one instance serves every machine of every Ironic site."""

    def __init__(
        self,
        *,
        max_deploy_attempts: int = 3,
        max_clean_attempts: int = 3,
        busy_delay: float = BUSY_DELAY,
        work_delay: float = WORK_DELAY,
        wait_for_node_delay: float = WAIT_FOR_NODE_DELAY,
        slot_count_ttl: float = SLOT_COUNT_TTL,
        slot_recount: float = SLOT_RECOUNT,
        allocation_timeout: float = ALLOCATION_TIMEOUT,
        stalled_teardown_after: float = STALLED_TEARDOWN_AFTER,
        health_interval: float | None = None,
        rng: random.Random | None = None,
        connector: Any = connect,
    ) -> None:
        self.max_deploy_attempts = max_deploy_attempts
        self.max_clean_attempts = max_clean_attempts
        self.busy_delay = busy_delay
        self.work_delay = work_delay
        self.wait_for_node_delay = wait_for_node_delay
        self.slot_count_ttl = slot_count_ttl
        self.slot_recount = max(slot_recount, slot_count_ttl)
        self.allocation_timeout = allocation_timeout
        self.stalled_teardown_after = stalled_teardown_after
        self.health_interval = _health_interval if health_interval is None else health_interval
        self._rng = rng or random.Random()
        self._connect = connector
        self._lock = threading.Lock()
        self._clients: dict[str, IronicApi] = {}
        self._slots: dict[str, _Slots] = {}
        self._allocating_since: dict[str, float] = {}
        """identity.uuid -> when this process first saw its allocation `allocating`."""
        self._releasing: dict[str, str] = {}
        """identity.uuid -> node UUID while the node is cleaning (a cache of the marker)."""
        self._running: dict[str, _Running] = {}
        """identity.uuid -> the last look at its node, while that said `active`."""

    # --- the protocol ----------------------------------------------------------------------

    def provision(self, intent: MachineIntent) -> Progress:
        site = _ironic_site(intent.site)
        machine = machine_of(intent)
        # Validate the whole request before anything is created in Ironic.
        info = instance_info(intent)
        drive = configdrive(intent)
        seen = self._seen_running(site, intent)
        if seen is not None:
            return seen
        api = self.api(site, intent.credentials)
        identity = intent.identity
        with self._lock:
            self._running.pop(identity.uuid, None)  # looked at anew below
        try:
            node = api.node_by_instance_uuid(identity.uuid)
            if node is not None:
                other = self._other_owner(api, identity, node)
                if other is not None:
                    return _owned_by_other(Phase.FAILED, f"node {node.label}", other, _details(node))
            else:
                missing = self._missing(api, intent)
                if missing is not None:
                    return missing
                allocated = self._allocate(api, intent, machine)
                if isinstance(allocated, Progress):
                    return allocated
                node = allocated
            return self._advance(api, site, intent, machine, node, info, drive)
        except IronicBusyError as busy:
            return self._busy(Phase.PROVISIONING, busy)

    def deprovision(self, identity: MachineIdentity, site: Site, credentials: SiteCredentials) -> Progress:
        ironic = _ironic_site(site)
        with self._lock:
            self._running.pop(identity.uuid, None)
        api = self.api(ironic, credentials)
        try:
            node = api.node_by_instance_uuid(identity.uuid)
            if node is not None:
                other = self._other_owner(api, identity, node)
                if other is not None:
                    # Nothing of this machine is in Ironic: what its UUID finds is another's.
                    self._forget(identity)
                    return _owned_by_other(Phase.DELETED, f"node {node.label}", other, _details(node))
                return self._undeploy(api, ironic, identity, node)
            allocation = api.get_allocation(identity.uuid)
            if allocation is not None:
                if not names(allocation.extra, identity):
                    self._forget(identity)
                    label = f"allocation {allocation.name or allocation.uuid}"
                    return _owned_by_other(Phase.DELETED, label, owner_label(allocation.extra))
                tearing_down = self._node_being_released(api, allocation)
                if tearing_down is not None:
                    if not marked_for(tearing_down.extra, identity):
                        # Ours by the allocation, but not marked: never changed here; Ironic
                        # drops the allocation when its teardown ends.
                        return self._later(
                            Phase.DELETING,
                            "Cleaning",
                            f"node {tearing_down.label} is {tearing_down.provision_state}; waiting "
                            "for Ironic to finish its teardown",
                            self.work_delay,
                            _details(tearing_down),
                        )
                    with self._lock:
                        self._releasing[identity.uuid] = tearing_down.uuid
                    return self._finish_release(api, ironic, identity, tearing_down)
                return self._release_allocation(api, allocation)
            node = self._find_released(api, identity)
            if node is None:
                self._forget(identity)
                return Progress(Phase.DELETED, "Deleted", "nothing of the machine remains in Ironic")
            return self._finish_release(api, ironic, identity, node)
        except IronicBusyError as busy:
            return self._busy(Phase.DELETING, busy)

    def tagged_identities(
        self, site: Site, credentials: SiteCredentials, cluster: str
    ) -> list[MachineIdentity]:
        """Machines of `cluster` that Ironic holds: allocations (deploying or deployed) and
        nodes still carrying our tags (being cleaned)."""
        api = self.api(_ironic_site(site), credentials)
        found: dict[str, MachineIdentity] = {}
        for extra in [a.extra for a in api.list_allocations()] + [n.extra for n in api.list_nodes(["extra"])]:
            if extra.get(CLUSTER) != cluster:
                continue
            identity = identity_from_tags(extra)
            if identity is not None:
                found[identity.uuid] = identity
        return sorted(found.values(), key=lambda i: (i.namespace, i.name))

    # --- clients -----------------------------------------------------------------------------

    def api(self, site: IronicSite, credentials: SiteCredentials) -> IronicApi:
        key = client_key(site, credentials)
        with self._lock:
            api = self._clients.get(key)
            if api is None:
                api = self._connect(site, credentials)
                self._clients[key] = api
            return api

    # --- provisioning steps --------------------------------------------------------------------

    def _seen_running(self, site: IronicSite, intent: MachineIntent) -> Progress | None:
        """RUNNING as the last look saw it, while that look is younger than the health
        interval (memory only: a new process looks first)."""
        with self._lock:
            seen = self._running.get(intent.identity.uuid)
        if seen is None or seen.endpoint != site.endpoint or not intent.provisioned:
            return None
        left = self.health_interval - (time.monotonic() - seen.at)
        if left <= 0:
            return None
        return Progress(
            Phase.RUNNING,
            "Deployed",
            seen.message,
            addresses=addresses(intent),
            requeue_after=self._jitter(left),
            details=dict(seen.details),
        )

    def _missing(self, api: IronicApi, intent: MachineIntent) -> Progress | None:
        """A machine that was running has no node any more: report it, never deploy anew."""
        if not intent.provisioned or api.get_allocation(intent.identity.uuid) is not None:
            return None
        return self._node_missing(intent.identity)

    def _node_missing(self, identity: MachineIdentity) -> Progress:
        return self._later(
            Phase.MISSING,
            "NodeMissing",
            f"no Ironic node holds the machine any more (instance_uuid {identity.uuid}); "
            "it was undeployed or deleted outside the cluster",
            60.0,
        )

    def _allocation_stuck(self, identity: MachineIdentity) -> bool:
        now = time.monotonic()
        with self._lock:
            since = self._allocating_since.setdefault(identity.uuid, now)
            stuck = now - since > self.allocation_timeout
            if stuck:
                del self._allocating_since[identity.uuid]
            return stuck

    def _other_owner(self, api: IronicApi, identity: MachineIdentity, node: Node) -> str | None:
        """None when the node found by the machine's instance_uuid is the machine's, else who
        it belongs to. Ironic's link says which allocation took the node; the tags say whose
        that allocation (or, once deployed, the node) is."""
        if marked_for(node.extra, identity):
            return None  # the usual case once deployed: no second request
        allocation = api.get_allocation(identity.uuid)
        if allocation is not None and names(allocation.extra, identity):
            return None
        return owner_label(allocation.extra if allocation is not None else {}, node.extra)

    def _allocate(self, api: IronicApi, intent: MachineIntent, machine: IronicMachine) -> Node | Progress:
        identity = intent.identity
        allocation = api.get_allocation(identity.uuid)
        if allocation is None:
            try:
                allocation = api.create_allocation(**allocation_request(identity, machine, intent.cluster))
                log.info(
                    "allocation %s requested for %s/%s", allocation.name, identity.namespace, identity.name
                )
            except IronicBusyError:
                # Another call for this machine created it first (same uuid), or the name is
                # taken: read what is there.
                allocation = api.get_allocation(identity.uuid)
                if allocation is None:
                    return self._later(
                        Phase.FAILED,
                        "AllocationNameTaken",
                        f"Ironic already has an allocation named {identity.resource_name} that does not "
                        "belong to this machine; delete it in Ironic",
                        self.wait_for_node_delay,
                    )
        if not names(allocation.extra, identity):
            label = f"allocation {allocation.name or allocation.uuid}"
            return _owned_by_other(Phase.FAILED, label, owner_label(allocation.extra))
        if allocation.state == "allocating" and self._allocation_stuck(identity):
            # Ironic leaves an allocation `allocating` for good when its worker dies on an
            # unexpected error (seen with SQLite "database is locked"): drop it, ask again.
            api.delete_allocation(allocation.uuid)
            return self._later(
                Phase.PROVISIONING,
                "WaitingForNode",
                f"Ironic did not finish allocating a node within {self.allocation_timeout:.0f}s; "
                "asking again",
                self.busy_delay,
            )
        if allocation.state == "allocating":
            return self._later(
                Phase.PROVISIONING,
                "AllocatingNode",
                "Ironic is choosing a node for the machine",
                self.busy_delay,
            )
        with self._lock:
            self._allocating_since.pop(identity.uuid, None)
        if allocation.state == "error" or allocation.node_uuid is None:
            # An allocation that failed never retries by itself: drop it so the next call
            # asks again (a node may have been enrolled or freed meanwhile).
            api.delete_allocation(allocation.uuid)
            return self._later(
                Phase.PROVISIONING,
                "WaitingForNode",
                f"no Ironic node is free for the machine ({_selector(machine)}): "
                f"{allocation.last_error or 'allocation failed'}; asking again",
                self.wait_for_node_delay,
            )
        node = api.get_node(allocation.node_uuid)
        if node is None:
            return self._busy(Phase.PROVISIONING, IronicBusyError("allocated node vanished; re-reading"))
        if node.instance_uuid is None:
            # Ironic cleared its link: the node is being torn down, and drops the allocation
            # when that ends. A running machine's node was undeployed outside the cluster.
            if intent.provisioned:
                return self._node_missing(identity)
            return self._later(
                Phase.PROVISIONING,
                "NodeNotReady",
                f"node {node.label} is {node.provision_state!r} without an instance; waiting "
                "for Ironic to finish its teardown",
                self.work_delay,
                _details(node),
            )
        if node.instance_uuid != identity.uuid:
            return _owned_by_other(
                Phase.FAILED, f"node {node.label}", owner_label(node.extra), _details(node)
            )
        return node

    def _advance(
        self,
        api: IronicApi,
        site: IronicSite,
        intent: MachineIntent,
        machine: IronicMachine,
        node: Node,
        info: dict[str, Any],
        drive: dict[str, Any],
    ) -> Progress:
        details = _details(node)
        state = node.provision_state
        if state == states.ACTIVE:
            # Looked at again: Ironic tells nobody when a node is undeployed behind our back.
            message = f"node {node.label} is active"
            with self._lock:
                self._running[intent.identity.uuid] = _Running(
                    site.endpoint, message, dict(details), time.monotonic()
                )
            return Progress(
                Phase.RUNNING,
                "Deployed",
                message,
                addresses=addresses(intent),
                requeue_after=self._jitter(self.health_interval),
                details=details,
            )
        if state in states.DEPLOY_IN_PROGRESS:
            return self._later(
                Phase.PROVISIONING, "Deploying", f"node {node.label} is {state}", self.work_delay, details
            )
        if state == states.AVAILABLE:
            return self._start_deploy(api, site, intent, machine, node, info, drive, previous_error=None)
        if state == states.DEPLOY_FAILED:
            tried = attempts(node.extra, DEPLOY_ATTEMPTS, intent.identity)
            error = node.last_error or api.last_error_event(node.uuid) or "no error recorded"
            if tried >= self.max_deploy_attempts:
                return Progress(
                    Phase.FAILED,
                    "DeployFailed",
                    f"deploying node {node.label} failed {tried} times; last error: {error}",
                    details=details,
                )
            return self._start_deploy(api, site, intent, machine, node, info, drive, previous_error=error)
        if state in states.PROVISION_FAILURES:
            return Progress(
                Phase.FAILED,
                _failure_reason(state),
                f"node {node.label} is in state {state!r}: {node.last_error or 'no error recorded'}",
                details=details,
            )
        return self._later(
            Phase.PROVISIONING,
            "NodeNotReady",
            f"node {node.label} is {state!r}, waiting for it to become available",
            self.work_delay,
            details,
        )

    def _start_deploy(
        self,
        api: IronicApi,
        site: IronicSite,
        intent: MachineIntent,
        machine: IronicMachine,
        node: Node,
        info: dict[str, Any],
        drive: dict[str, Any],
        previous_error: str | None,
    ) -> Progress:
        held = self._before_change(api, site, node, Phase.PROVISIONING)
        if held is not None:
            return held
        identity = intent.identity
        attempt = attempts(node.extra, DEPLOY_ATTEMPTS, identity) + 1
        ours: dict[str, Any] = {DEPLOY_ATTEMPTS: attempt}
        if intent.cluster:
            ours[CLUSTER] = intent.cluster
        patch: list[dict[str, Any]] = [
            {"op": "add", "path": "/instance_info", "value": info},
            *claim(node.extra, identity, ours),
            {"op": "replace", "path": "/automated_clean", "value": machine.automated_cleaning},
        ]
        interface = deploy_interface_for(machine, intent.image.format, node.deploy_interface)
        if interface is not None and interface != node.deploy_interface:
            patch.append({"op": "replace", "path": "/deploy_interface", "value": interface})
        # Counted before the request: a crash in between costs an attempt, never adds one.
        api.patch_node(node.uuid, patch)
        api.set_provision_state(node.uuid, states.TARGET_ACTIVE, configdrive=drive)
        log.info(
            "deploy %d of node %s started for %s/%s", attempt, node.uuid, identity.namespace, identity.name
        )
        message = f"deploying node {node.label} (attempt {attempt} of {self.max_deploy_attempts})"
        if previous_error:
            message += f"; previous attempt failed: {previous_error}"
        return self._later(
            Phase.PROVISIONING,
            "Deploying" if previous_error is None else "RetryingDeploy",
            message,
            self.work_delay,
            _details(node, states.DEPLOYING),
        )

    # --- deprovisioning steps ------------------------------------------------------------------

    def _undeploy(self, api: IronicApi, site: IronicSite, identity: MachineIdentity, node: Node) -> Progress:
        """The node still has the machine's instance_uuid."""
        details = _details(node)
        state = node.provision_state
        with self._lock:
            self._releasing[identity.uuid] = node.uuid
        if state == states.AVAILABLE:
            # Allocated but never deployed: dropping the allocation frees the node.
            api.delete_allocation(identity.uuid)
            return self._later(
                Phase.DELETING,
                "ReleasingNode",
                f"releasing node {node.label}, which was never deployed",
                0.5,
                details,
            )
        if state in (states.ACTIVE, states.DEPLOY_FAILED, states.DEPLOY_WAIT, states.ERROR):
            held = self._before_change(api, site, node, Phase.DELETING)
            if held is not None:
                return held
            if not marked_for(node.extra, identity):
                # Found through our allocation (checked by the caller) but never marked.
                allocation = api.get_allocation(identity.uuid)
                cluster = allocation.extra.get(CLUSTER) if allocation is not None else None
                api.patch_node(node.uuid, claim(node.extra, identity, {CLUSTER: cluster} if cluster else {}))
            api.set_provision_state(node.uuid, states.TARGET_DELETED)
            log.info("undeploy of node %s started for %s/%s", node.uuid, identity.namespace, identity.name)
            return self._later(
                Phase.DELETING,
                "Undeploying",
                f"undeploying node {node.label}",
                self.work_delay,
                _details(node, states.DELETING),
            )
        return self._later(
            Phase.DELETING,
            "WaitingForNode",
            f"node {node.label} is {state!r}; undeploy starts when Ironic allows it",
            self.work_delay,
            details,
        )

    def _node_being_released(self, api: IronicApi, allocation: Allocation) -> Node | None:
        """The allocation's node when it is past undeploy (instance_uuid already cleared):
        Ironic deletes the allocation itself at the end of the teardown and refuses to
        before (409), so there is nothing to do but wait for the node."""
        if allocation.node_uuid is None:
            return None
        node = api.get_node(allocation.node_uuid)
        if node is None or node.instance_uuid is not None:
            return None
        released = states.CLEAN_IN_PROGRESS | {states.CLEAN_FAILED, states.MANAGEABLE, states.ERROR}
        return node if node.provision_state in released else None

    def _release_allocation(self, api: IronicApi, allocation: Allocation) -> Progress:
        if allocation.state == "allocating":
            return self._later(
                Phase.DELETING,
                "AllocatingNode",
                "waiting for Ironic to finish the allocation before releasing it",
                self.busy_delay,
            )
        api.delete_allocation(allocation.uuid)
        return self._later(
            Phase.DELETING,
            "ReleasingAllocation",
            f"allocation {allocation.name or allocation.uuid} deleted",
            0.5,
        )

    def _find_released(self, api: IronicApi, identity: MachineIdentity) -> Node | None:
        """The node being cleaned for this machine (instance_uuid already cleared)."""
        with self._lock:
            known = self._releasing.get(identity.uuid)
        if known is not None:
            node = api.get_node(known)
            if node is not None and marked_for(node.extra, identity):
                return node
            self._forget(identity)
            return None
        # After a restart: one scan for the marker, then the cache above.
        for candidate in api.list_nodes(["extra"]):
            if marked_for(candidate.extra, identity):
                node = api.get_node(candidate.uuid)
                if node is not None and marked_for(node.extra, identity):
                    with self._lock:
                        self._releasing[identity.uuid] = node.uuid
                return node
        return None

    def _finish_release(
        self, api: IronicApi, site: IronicSite, identity: MachineIdentity, node: Node
    ) -> Progress:
        """The node, marked for this machine, after Ironic cleared its instance_uuid."""
        details = _details(node)
        state = node.provision_state
        if node.instance_uuid is not None:
            # Another machine's allocation took the node (so it was cleaned): our marker
            # left on it is that machine's deploy to strip, not ours to touch.
            self._forget(identity)
            return Progress(Phase.DELETED, "Deleted", f"node {node.label} was released")
        if state in states.CLEAN_IN_PROGRESS:
            stalled = self._stalled_teardown(node)
            if stalled is not None:
                return stalled
            return self._later(
                Phase.DELETING, "Cleaning", f"node {node.label} is {state}", self.work_delay, details
            )
        if state == states.AVAILABLE:
            # Normally gone with the teardown; left behind when Ironic's teardown failed late.
            api.delete_allocation(identity.uuid)
            self._drop_marker(api, node)
            self._forget(identity)
            log.info("node %s is available again after %s/%s", node.uuid, identity.namespace, identity.name)
            return Progress(
                Phase.DELETED, "Deleted", f"node {node.label} is cleaned and available", details=details
            )
        failures = attempts(node.extra, CLEAN_ATTEMPTS, identity)
        if state == states.CLEAN_FAILED:
            if node.maintenance:
                # Ironic sets maintenance (fault "clean failure") on a failed clean; Metal3
                # clears it before moving the node on.
                api.set_maintenance(node.uuid, False)
                return self._later(
                    Phase.DELETING,
                    "CleaningFailed",
                    f"cleaning node {node.label} failed: {node.last_error or 'no error recorded'}; "
                    "clearing maintenance",
                    self.busy_delay,
                    details,
                )
            failures += 1
            api.patch_node(node.uuid, [{"op": "add", "path": f"/extra/{CLEAN_ATTEMPTS}", "value": failures}])
            # manage, then provide: cleaning runs again on the way to available.
            api.set_provision_state(node.uuid, states.TARGET_MANAGE)
            verdict = (
                "retrying" if failures < self.max_clean_attempts else "giving up; the node stays manageable"
            )
            return self._later(
                Phase.DELETING,
                "CleaningFailed",
                f"cleaning node {node.label} failed ({failures} of {self.max_clean_attempts}): "
                f"{node.last_error or 'no error recorded'}; {verdict}",
                self.busy_delay,
                details,
            )
        if state == states.ERROR:
            # Where a conductor restart puts a teardown its worker never finished.
            return self._undeploy_again(api, site, identity, node, failures)
        if state == states.MANAGEABLE:
            if failures >= self.max_clean_attempts:
                # Out of the pool, so nobody gets an uncleaned disk; Metal3 stops here too.
                self._drop_marker(api, node)
                self._forget(identity)
                log.warning(
                    "node %s left manageable after %d failed cleanings (%s/%s): %s",
                    node.uuid,
                    failures,
                    identity.namespace,
                    identity.name,
                    node.last_error,
                )
                return Progress(
                    Phase.DELETED,
                    "NodeLeftManageable",
                    f"cleaning node {node.label} failed {failures} times; it is left manageable "
                    f"(out of the pool) for an operator: {node.last_error or 'no error recorded'}",
                    details=details,
                )
            blocked = self._take_slot(api, site, Phase.DELETING, node)
            if blocked is not None:
                return blocked
            api.set_provision_state(node.uuid, states.TARGET_PROVIDE)
            return self._later(
                Phase.DELETING,
                "Cleaning",
                f"cleaning node {node.label} again (attempt {failures + 1} of {self.max_clean_attempts})",
                self.work_delay,
                _details(node, states.CLEANING),
            )
        return self._later(
            Phase.DELETING,
            "NodeNotReady",
            f"node {node.label} is {state!r}; waiting for cleaning to finish",
            self.work_delay,
            details,
        )

    def _stalled_teardown(self, node: Node) -> Progress | None:
        """A node `deleting` for longer than any teardown takes: Ironic's worker died
        without moving it on (Ironic 39 on SQLite under concurrent undeploys, see
        capi_c3os.dev.ironic). Nothing over the API moves a node out of `deleting`; a
        conductor restart fails it to `error`, from which the undeploy is retried."""
        if node.provision_state != states.DELETING:
            return None
        age = _age(node.provision_updated_at)
        if age is None or age < self.stalled_teardown_after:
            return None
        return self._later(
            Phase.DELETING,
            "TeardownStalled",
            f"node {node.label} has been {states.DELETING!r} for {age:.0f}s: Ironic's conductor "
            "stopped its teardown (seen with Ironic on SQLite); restart the Ironic conductor, "
            "which moves the node to 'error', and the undeploy is retried from there",
            self.wait_for_node_delay,
            _details(node),
        )

    def _undeploy_again(
        self, api: IronicApi, site: IronicSite, identity: MachineIdentity, node: Node, failures: int
    ) -> Progress:
        error = node.last_error or "no error recorded"
        if failures >= self.max_clean_attempts:
            self._drop_marker(api, node)
            self._forget(identity)
            log.warning("node %s left in error after %d teardowns: %s", node.uuid, failures, error)
            return Progress(
                Phase.DELETED,
                "NodeLeftInError",
                f"tearing down node {node.label} failed {failures} times; it is left in "
                f"'error' for an operator: {error}",
                details=_details(node),
            )
        held = self._before_change(api, site, node, Phase.DELETING)
        if held is not None:
            return held
        failures += 1
        api.patch_node(node.uuid, [{"op": "add", "path": f"/extra/{CLEAN_ATTEMPTS}", "value": failures}])
        api.set_provision_state(node.uuid, states.TARGET_DELETED)
        log.info("undeploy of node %s retried (%s/%s)", node.uuid, identity.namespace, identity.name)
        return self._later(
            Phase.DELETING,
            "RetryingUndeploy",
            f"node {node.label} was in 'error' after its teardown ({error}); undeploying again "
            f"(attempt {failures} of {self.max_clean_attempts})",
            self.work_delay,
            _details(node, states.DELETING),
        )

    def _drop_marker(self, api: IronicApi, node: Node) -> None:
        patch: list[dict[str, Any]] = [
            {"op": "remove", "path": f"/extra/{key}"} for key in OUR_EXTRA_KEYS if key in node.extra
        ]
        if node.instance_info:
            # Left by a deploy that never started (Ironic clears it on undeploy).
            patch.append({"op": "remove", "path": "/instance_info"})
        # Back to the conductor's default for whoever gets the node next.
        patch.append({"op": "replace", "path": "/automated_clean", "value": None})
        api.patch_node(node.uuid, patch)

    def _forget(self, identity: MachineIdentity) -> None:
        with self._lock:
            self._running.pop(identity.uuid, None)
            self._releasing.pop(identity.uuid, None)
            self._allocating_since.pop(identity.uuid, None)

    # --- shared rules --------------------------------------------------------------------------

    def _ready_for_state_change(self, api: IronicApi, node: Node, phase: Phase) -> Progress | None:
        """Metal3's rule: a node with a fault waits for Ironic to clear it; maintenance set
        by hand is cleared, because provision-state changes are refused under it."""
        if node.fault:
            return self._later(
                phase,
                "NodeFault",
                f"node {node.label} has a fault ({node.fault}): "
                f"{node.maintenance_reason or 'no reason recorded'}; waiting for Ironic to recover it",
                self.work_delay,
                _details(node),
            )
        if node.maintenance:
            api.set_maintenance(node.uuid, False)
            log.info("cleared maintenance of node %s (%s)", node.uuid, node.maintenance_reason)
            return self._later(
                phase,
                "ClearingMaintenance",
                f"node {node.label} was in maintenance ({node.maintenance_reason or 'no reason'}); "
                "cleared it",
                self.busy_delay,
                _details(node),
            )
        return None

    def _before_change(self, api: IronicApi, site: IronicSite, node: Node, phase: Phase) -> Progress | None:
        """What holds a deploy or undeploy back: the node's state, then the site's cap."""
        return self._ready_for_state_change(api, node, phase) or self._take_slot(api, site, phase, node)

    def _take_slot(self, api: IronicApi, site: IronicSite, phase: Phase, node: Node) -> Progress | None:
        with self._lock:
            slots = self._slots.setdefault(site.endpoint, _Slots())
        with slots.lock:
            now = time.monotonic()
            age = now - slots.read_at
            full = slots.busy >= site.max_concurrent_provisioning
            if age > self.slot_recount or (full and age > self.slot_count_ttl):
                slots.busy = sum(len(api.list_nodes([], provision_state=s)) for s in sorted(states.BUSY))
                slots.read_at = now
            if slots.busy >= site.max_concurrent_provisioning:
                return self._later(
                    phase,
                    "WaitingForProvisioningSlot",
                    # No count in the message: a message that changes on every requeue
                    # is a status write on every requeue.
                    "as many nodes of the site as it allows are deploying or cleaning "
                    f"(maxConcurrentProvisioning is {site.max_concurrent_provisioning})",
                    self.work_delay,
                    _details(node),
                )
            slots.busy += 1
            return None

    def _busy(self, phase: Phase, busy: IronicBusyError) -> Progress:
        return self._later(phase, "IronicBusy", str(busy), self.busy_delay)

    def _later(
        self, phase: Phase, reason: str, message: str, delay: float, details: dict[str, str] | None = None
    ) -> Progress:
        """Not there yet: call again after `delay` seconds plus jitter."""
        return Progress(phase, reason, message, requeue_after=self._jitter(delay), details=details or {})

    def _jitter(self, delay: float) -> float:
        with self._lock:
            return delay * (1.0 + self._rng.uniform(0.0, 0.25))


def _ironic_site(site: Site) -> IronicSite:
    if site.ironic is None:
        raise BackendError("WrongBackend", f"site {site.name} is not an Ironic site", retry_after=None)
    return site.ironic


def _details(node: Node, state: str | None = None) -> dict[str, str]:
    details = {"nodeUUID": node.uuid, "provisionState": state or node.provision_state}
    if node.name:
        details["nodeName"] = node.name
    return details


def _owned_by_other(phase: Phase, what: str, owner: str, details: dict[str, str] | None = None) -> Progress:
    """Left alone: provisioning fails (it will not heal by waiting); deprovisioning is done,
    since nothing of this machine is there."""
    return Progress(
        phase,
        "NodeOwnedByOther",
        f"{what} belongs to {owner}, not to this machine; it is left alone",
        details=details or {},
    )


def _age(timestamp: str | None) -> float | None:
    """Seconds since an Ironic timestamp (ISO 8601, UTC), None when absent or unreadable."""
    if not timestamp:
        return None
    try:
        when = datetime.fromisoformat(timestamp)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return (datetime.now(UTC) - when).total_seconds()


def _failure_reason(state: str) -> str:
    return "".join(word.capitalize() for word in state.split()) if state != states.ERROR else "NodeError"


def _selector(machine: IronicMachine) -> str:
    parts = [f"resource class {machine.resource_class}"]
    if machine.traits:
        parts.append(f"traits {', '.join(machine.traits)}")
    if machine.candidate_nodes:
        parts.append(f"candidates {', '.join(machine.candidate_nodes)}")
    return "; ".join(parts)
