"""The enrolled-hosts backend: a machine is a self-enrolled host of its site's pool.

    provision    find the host this machine claimed (a crash after the claim finds it
                 again), else claim one: accepted, idle, matching the selector, with a
                 fitting disk; the claim is one write of the host's status with its
                 resourceVersion, so of two machines racing for a host exactly one wins
                 -> the host's phase as the machine's progress (its agent reports)
    deprovision  release the claimed host (it must reset), wait for its reset; a host
                 that does not report within the reset timeout is marked Lost and the
                 machine goes

The backend's world is the host inventory, held in Kubernetes (C3osHost objects); it
reads and writes it only through `Inventory`, which the manager provides. The host's
agent is served its assignment (bootstrap data, disk, image) by the registration
endpoint, from the claim; nothing of a machine is stored on the host object but the
claim, so nothing is served once the claim is released.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Protocol

from capi_c3os.api.hosts import C3osHost, C3osHostStatus
from capi_c3os.api.infrastructure import Site, own_provider_id
from capi_c3os.backends.base import (
    BackendError,
    MachineIdentity,
    MachineIntent,
    Phase,
    Progress,
    SiteCredentials,
)
from capi_c3os.backends.enrolled import pool

log = logging.getLogger(__name__)

WAIT_FOR_HOST = 15.0
"""Seconds between looks for an idle host when none fits."""
POLL = 5.0
"""Seconds between looks at a host that is installing or resetting."""
DEFAULT_RESET_TIMEOUT = 1800.0


class Inventory(Protocol):
    """The C3osHost objects of a namespace, as the backend needs them."""

    def hosts(self, namespace: str) -> list[C3osHost]:
        """Every host of the namespace, freshly read (not from a cache)."""
        ...

    def replace_status(self, host: C3osHost, status: C3osHostStatus) -> C3osHost | None:
        """Write `status` if the host is still at the version read; None when it changed
        meanwhile (someone else won)."""
        ...


class EnrolledBackend:
    def __init__(
        self,
        inventory: Inventory,
        reset_timeout: float = DEFAULT_RESET_TIMEOUT,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._inventory = inventory
        self._reset_timeout = reset_timeout
        self._clock = clock
        self._listeners: list[Callable[[str, str], None]] = []
        # Reconciles a report wakes run here, not on the endpoint's request thread.
        self._wakeups = ThreadPoolExecutor(max_workers=1, thread_name_prefix="enrolled-wakeup")

    # --- Watches: a host's report wakes its machine at once ---------------------------

    def watch(self, listener: Callable[[str, str], None]) -> None:
        self._listeners.append(listener)

    def host_changed(self, namespace: str, machine: str) -> None:
        """Called by the registration endpoint after a host's report moved its claim."""
        for listener in self._listeners:
            self._wakeups.submit(listener, namespace, machine)

    # --- Backend ---------------------------------------------------------------------

    def provision(self, intent: MachineIntent) -> Progress:
        site = intent.site.enrolled
        if site is None:
            raise BackendError("UnsupportedSite", f"site {intent.site.name} is not an enrolled site", None)
        if intent.image.url is None:
            raise BackendError(
                "UnsupportedImage",
                "an enrolled host downloads its image itself: give image.url and checksum, not image.volume",
                None,
            )
        identity = intent.identity
        hosts = self._inventory.hosts(identity.namespace)
        mine = pool.claimed_by(hosts, identity.name)
        if len(mine) > 1:
            # Only a hand edit makes this: the oldest claim is the machine's, the rest
            # are released (they reset like any released host).
            for extra in mine[1:]:
                log.warning(
                    "C3osMachine %s/%s holds %s too: releasing it",
                    *identity_key(identity),
                    extra.metadata.name,
                )
                self._release(extra)
        host = mine[0] if mine else None
        if host is None:
            if intent.provisioned:
                return Progress(
                    Phase.MISSING,
                    "HostMissing",
                    "the machine was provisioned, but no C3osHost is claimed by it any more "
                    "(the host object was deleted or edited): delete the machine",
                )
            claimed = self._claim(identity, site.pool, intent, hosts)
            if isinstance(claimed, Progress):
                return claimed
            host = claimed
        return _progress(host)

    def _claim(
        self, identity: MachineIdentity, pool_name: str, intent: MachineIntent, hosts: list[C3osHost]
    ) -> C3osHost | Progress:
        fitting = [(h, d) for h in hosts if (d := pool.claimable(h, pool_name, intent.enrolled)) is not None]
        if not fitting:
            in_pool = [h for h in hosts if pool.host_pool(h) == pool_name]
            idle = [h for h in in_pool if pool.is_idle(h) and h.spec.accepted]
            return Progress(
                Phase.PROVISIONING,
                "WaitingForHost",
                f"no host of pool {pool_name} fits: {len(in_pool)} host(s) in the pool, "
                f"{len(idle)} accepted and idle, none of them matching the host selector and "
                "install disk hints",
                requeue_after=WAIT_FOR_HOST,
            )
        disks = {h.metadata.name: d for h, d in fitting}
        for host in pool.claim_order(identity.name, [h for h, _ in fitting]):
            assert host.status is not None
            disk = disks[host.metadata.name]
            cluster = intent.cluster.partition("/")[2] or None
            status = pool.claim(
                host.status, identity.name, str(uuid.uuid4()), disk.name, self._clock(), cluster
            )
            won = self._inventory.replace_status(host, status)
            if won is not None:
                log.info("C3osMachine %s/%s claimed host %s", *identity_key(identity), host.metadata.name)
                return won
        return Progress(
            Phase.PROVISIONING,
            "ClaimConflict",
            "every fitting host was claimed by another machine meanwhile: looking again",
            requeue_after=1.0,
        )

    def deprovision(self, identity: MachineIdentity, site: Site, credentials: SiteCredentials) -> Progress:
        hosts = self._inventory.hosts(identity.namespace)
        for host in pool.claimed_by(hosts, identity.name):
            if not self._release(host):
                return Progress(
                    Phase.DELETING, "ReleaseConflict", "the host changed meanwhile", requeue_after=1.0
                )
            hosts = self._inventory.hosts(identity.namespace)
        waiting: list[str] = []
        now = self._clock()
        for host in pool.resetting_for(hosts, identity.name):
            assert host.status is not None and host.status.reset is not None
            if (now - host.status.reset.time).total_seconds() < self._reset_timeout:
                waiting.append(str(host.metadata.name))
                continue
            if self._inventory.replace_status(host, pool.lose(host.status, self._reset_timeout)) is None:
                return Progress(
                    Phase.DELETING, "ReleaseConflict", "the host changed meanwhile", requeue_after=1.0
                )
            log.warning(
                "host %s did not report its reset within %.0fs: marked Lost",
                host.metadata.name,
                self._reset_timeout,
            )
        if waiting:
            return Progress(
                Phase.DELETING,
                "WaitingForHostReset",
                f"waiting for host {', '.join(waiting)} to report its reset (it is marked Lost after "
                f"{self._reset_timeout:.0f}s)",
                requeue_after=POLL,
            )
        return Progress(Phase.DELETED, "Deleted", "the host is released")

    def tagged_identities(
        self, site: Site, credentials: SiteCredentials, cluster: str
    ) -> list[MachineIdentity]:
        """Machines of `cluster` (`<namespace>/<name>`) that hold a host of the site's pool,
        so a cluster reconcile releases the hosts of machines deleted behind our back."""
        if site.enrolled is None:
            return []
        namespace, _, name = cluster.partition("/")
        return [
            MachineIdentity(
                namespace, host.status.claim.machine, own_provider_id(namespace, host.status.claim.machine)
            )
            for host in self._inventory.hosts(namespace)
            if host.status is not None
            and host.status.claim is not None
            and host.status.claim.cluster == name
            and pool.host_pool(host) == site.enrolled.pool
        ]

    def _release(self, host: C3osHost) -> bool:
        assert host.status is not None
        return self._inventory.replace_status(host, pool.release(host.status, self._clock())) is not None


def identity_key(identity: MachineIdentity) -> tuple[str, str]:
    return identity.namespace, identity.name


_PROGRESS: dict[str, tuple[Phase, str, str]] = {
    "Claimed": (
        Phase.PROVISIONING,
        "WaitingForHostAgent",
        "waiting for the host's agent to fetch its assignment",
    ),
    "Installing": (Phase.PROVISIONING, "Installing", "the host is installing c3os"),
    "Installed": (
        Phase.PROVISIONING,
        "WaitingForBoot",
        "installed; waiting for the host to boot the installed system",
    ),
    "Provisioned": (Phase.RUNNING, "HostBooted", "the host booted the installed system"),
}


def _progress(host: C3osHost) -> Progress:
    status = host.status
    assert status is not None and status.claim is not None
    name = str(host.metadata.name)
    details = {
        "host": name,
        "systemUUID": status.hardware.system.uuid if status.hardware else "",
        "installDisk": status.claim.install_disk,
        "hostPhase": str(status.phase),
    }
    said = f" (host: {status.message})" if status.message else ""
    if status.phase == "Failed":
        reason = status.reason or "InstallFailed"
        return Progress(Phase.FAILED, reason, f"host {name}: {reason}{said}", details=details)
    phase, reason, message = _PROGRESS.get(str(status.phase), _PROGRESS["Claimed"])
    return Progress(
        phase,
        reason,
        f"host {name}: {message}{said}",
        requeue_after=None if phase is Phase.RUNNING else POLL,
        details=details,
    )
