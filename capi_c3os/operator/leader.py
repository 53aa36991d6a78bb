"""Leader election with a coordination.k8s.io/v1 Lease, so that two replicas never
reconcile at the same time.

kopf's peering is not leader election (replicas of equal priority freeze each other),
and `kubernetes.leaderelection` can neither release a lease on shutdown nor be driven
from asyncio, so this is a small elector in the spirit of client-go's:

- A candidate may take the lease when nobody holds it, or when the holder has not
  renewed it for `leaseDurationSeconds` *as measured on the candidate's own monotonic
  clock* since the lease last changed (resourceVersion). Remote timestamps are written
  for people, never trusted for decisions: clocks of two hosts disagree.
- The leader renews every `retry_period`. If it cannot renew within `renew_deadline`
  of its last successful renewal, or sees another holder, it has lost: the caller must
  stop reconciling at once. `renew_deadline < lease_duration` leaves the margin in which
  the old leader stops before any successor may start.
- On clean shutdown the leader releases the lease (empty holder, 1 s duration), so a
  standby takes over at its next retry instead of waiting out the lease.

Writes use the Lease's resourceVersion as precondition, so two candidates racing for
an expired lease cannot both win. All API calls block and run on a dedicated thread,
never on the event loop, and never queue behind reconciles.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import socket
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from capi_c3os.operator import metrics
from capi_c3os.reconcilers.kube import ConflictError, Kube, Resource

log = logging.getLogger(__name__)

LEASES = Resource("coordination.k8s.io", "v1", "leases", "Lease")

T = TypeVar("T")


class LeadershipLostError(Exception):
    """This replica no longer holds the lease; whatever it leads must stop now."""


@dataclass(frozen=True)
class LeaseConfig:
    namespace: str
    name: str
    identity: str
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.retry_period < self.renew_deadline < self.lease_duration:
            raise ValueError("leader election needs 0 < retry period < renew deadline < lease duration")

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def new_identity() -> str:
    """Unique per process: the host (the pod name in a cluster) plus a random part,
    so a restarted container never mistakes its predecessor's lease for its own."""
    return f"{socket.gethostname()}_{uuid.uuid4()}"


def micro_time(moment: datetime) -> str:
    """metav1.MicroTime's wire format (always six fractional digits)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    def __init__(
        self,
        config: LeaseConfig,
        kube: Kube,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.config = config
        self._kube = kube
        self._clock = clock
        self._wall_clock = wall_clock
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lease")
        self._observed_version: str | None = None
        self._observed_at = 0.0
        self._renewed_at: float | None = None
        self.holder: str = ""
        """Holder seen at the last attempt ("" = free)."""

    @property
    def leading(self) -> bool:
        return self._renewed_at is not None

    # ------------------------------------------------------------ blocking steps

    def try_acquire_or_renew(self) -> bool:
        """One attempt; True when we hold the lease afterwards. Blocking."""
        cfg = self.config
        now = self._clock()
        stamp = micro_time(self._wall_clock())
        duration = math.ceil(cfg.lease_duration)
        lease = self._kube.get(LEASES, cfg.namespace, cfg.name)
        if lease is None:
            body = {
                "apiVersion": LEASES.api_version,
                "kind": LEASES.kind,
                "metadata": {"name": cfg.name, "namespace": cfg.namespace},
                "spec": {
                    "holderIdentity": cfg.identity,
                    "leaseDurationSeconds": duration,
                    "acquireTime": stamp,
                    "renewTime": stamp,
                    "leaseTransitions": 0,
                },
            }
            try:
                created = self._kube.create(LEASES, cfg.namespace, body)
            except ConflictError:
                metrics.LEASE_ATTEMPTS.labels("conflict").inc()
                return False
            self._observe(created, now)
            metrics.LEASE_ATTEMPTS.labels("acquired").inc()
            return True

        self._observe(lease, now)
        spec: dict[str, Any] = dict(lease.get("spec") or {})
        holder = self.holder
        if holder and holder != cfg.identity:
            held_for = spec.get("leaseDurationSeconds") or duration
            if self._observed_at + held_for > now:
                metrics.LEASE_ATTEMPTS.labels("held_by_other").inc()
                return False
        if holder == cfg.identity:
            spec.update(renewTime=stamp, leaseDurationSeconds=duration)
            result = "renewed"
        else:
            spec.update(
                holderIdentity=cfg.identity,
                leaseDurationSeconds=duration,
                acquireTime=stamp,
                renewTime=stamp,
                leaseTransitions=int(spec.get("leaseTransitions") or 0) + 1,
            )
            result = "acquired"
        try:
            updated = self._kube.replace(LEASES, cfg.namespace, cfg.name, {**lease, "spec": spec})
        except ConflictError:
            metrics.LEASE_ATTEMPTS.labels("conflict").inc()
            return False
        self._observe(updated, now)
        metrics.LEASE_ATTEMPTS.labels(result).inc()
        return True

    def release(self) -> bool:
        """Give the lease up if we hold it; True when released. Blocking."""
        cfg = self.config
        lease = self._kube.get(LEASES, cfg.namespace, cfg.name)
        spec: dict[str, Any] = dict((lease or {}).get("spec") or {})
        if lease is None or spec.get("holderIdentity") != cfg.identity:
            return False
        stamp = micro_time(self._wall_clock())
        # client-go's release record: no holder, and a 1 s duration so that even a
        # candidate that does not treat "no holder" as free waits at most a second.
        spec.update(holderIdentity="", leaseDurationSeconds=1, acquireTime=stamp, renewTime=stamp)
        try:
            self._kube.replace(LEASES, cfg.namespace, cfg.name, {**lease, "spec": spec})
        except ConflictError:
            return False
        self._renewed_at = None
        return True

    def _observe(self, lease: dict[str, Any], now: float) -> None:
        version = (lease.get("metadata") or {}).get("resourceVersion")
        if version != self._observed_version:
            self._observed_version = version
            self._observed_at = now
        holder = str((lease.get("spec") or {}).get("holderIdentity") or "")
        if holder not in (self.holder, self.config.identity):
            log.info("leader lease %s is held by %s", self.config.key, holder or "nobody")
        self.holder = holder

    # ------------------------------------------------------------ async driving

    async def _off_loop(self, step: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, step)

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Try until we lead (True) or `stop` is set (False)."""
        cfg = self.config
        log.info("waiting to acquire leader lease %s as %s", cfg.key, cfg.identity)
        while not stop.is_set():
            started = self._clock()
            try:
                if await self._off_loop(self.try_acquire_or_renew):
                    self._renewed_at = started
                    log.info("acquired leader lease %s", cfg.key)
                    return True
            except Exception as exc:  # the API server may be briefly away; keep trying
                metrics.LEASE_ATTEMPTS.labels("error").inc()
                log.warning("could not read or write leader lease %s: %s", cfg.key, exc)
            # Jitter spreads candidates that started together (client-go uses 1.2 too).
            delay = cfg.retry_period * random.uniform(1.0, 1.2)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)
        return False

    async def hold(self) -> None:
        """Renew while leading. Never returns; raises LeadershipLostError."""
        cfg = self.config
        while True:
            await asyncio.sleep(cfg.retry_period)
            if self._renewed_at is None:
                raise LeadershipLostError(f"leader lease {cfg.key} was released")
            deadline = self._renewed_at + cfg.renew_deadline
            while True:
                started = self._clock()
                remaining = deadline - started
                if remaining <= 0:
                    raise LeadershipLostError(
                        f"could not renew leader lease {cfg.key} within {cfg.renew_deadline:g}s"
                    )
                try:
                    renewed = await asyncio.wait_for(self._off_loop(self.try_acquire_or_renew), remaining)
                except TimeoutError:
                    continue  # the deadline check above ends it
                except Exception as exc:
                    metrics.LEASE_ATTEMPTS.labels("error").inc()
                    log.warning("could not renew leader lease %s: %s", cfg.key, exc)
                    renewed = False
                if renewed:
                    self._renewed_at = started
                    break
                if self.holder and self.holder != cfg.identity:
                    raise LeadershipLostError(f"leader lease {cfg.key} is now held by {self.holder}")
                await asyncio.sleep(min(cfg.retry_period, max(0.0, deadline - self._clock())))

    async def release_now(self) -> bool:
        try:
            released = await self._off_loop(self.release)
        except Exception as exc:
            log.warning("could not release leader lease %s: %s", self.config.key, exc)
            return False
        if released:
            log.info("released leader lease %s", self.config.key)
        return released

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
