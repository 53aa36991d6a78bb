"""The manager's life: serve probes and metrics, win the lease, run kopf while
leading, and on SIGTERM stop in the order that keeps "never two leaders" true.

    start probes + metrics (a standby is live and ready; the leader is ready once kopf watches)
    acquire the lease (or skip when --leader-elect is off)
    start kopf (own thread), the resync, the lease renewal
    wait for: SIGTERM/SIGINT | lease lost | kopf ended
      lease lost  -> exit(1) at once, without any cleanup that could still write
      signal      -> stop resync, stop kopf, wait for in-flight reconciles,
                     then (only then) release the lease -> exit 0
      kopf ended  -> same as signal, exit 1
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client as k8s

from capi_c3os.backends import images, ironic
from capi_c3os.backends.enrolled import EnrolledBackend
from capi_c3os.backends.enrolled.backend import DEFAULT_RESET_TIMEOUT
from capi_c3os.backends.images import ImageLimits
from capi_c3os.backends.ironic import client as ironic_client
from capi_c3os.backends.ironic.backend import HEALTH_INTERVAL as IRONIC_HEALTH_INTERVAL
from capi_c3os.backends.registry import BACKENDS
from capi_c3os.operator import metrics
from capi_c3os.operator.connection import CountingApiClient, connection_info, load_configuration
from capi_c3os.operator.diffbase import MemoryDiffBase
from capi_c3os.operator.endpoints import serve_metrics, serve_probes, stop_servers
from capi_c3os.operator.engine import KopfEngine
from capi_c3os.operator.enrollment import EnrollmentConfig, EnrollmentServer
from capi_c3os.operator.extension import ExtensionServer, ExtensionSettings
from capi_c3os.operator.handlers import VIEW_READERS, build_registry, kinds_of
from capi_c3os.operator.handlers.clusters import PauseWatch
from capi_c3os.operator.leader import LeaderElector, LeadershipLostError, LeaseConfig
from capi_c3os.operator.resync import Resync
from capi_c3os.operator.runtime import Runtime
from capi_c3os.operator.settings import build_settings
from capi_c3os.reconcilers.host_inventory import KubeInventory
from capi_c3os.reconcilers.kube import CLUSTERS, Kube, OwnWrites
from capi_c3os.reconcilers.site_record import RECORD_KEY_SECRET, ensure_record_key
from capi_c3os.reconcilers.view import ClusterView

log = logging.getLogger(__name__)

EXIT_LEADERSHIP_LOST = 1
EXIT_FAILED = 1


@dataclass(frozen=True)
class Options:
    providers: tuple[str, ...]
    namespaces: tuple[str, ...] = ()
    """Empty = all namespaces."""
    kubeconfig: str | None = None
    lease: LeaseConfig | None = None
    """None = no leader election (a single replica, or tests)."""
    health_addr: str = ":9440"
    metrics_addr: str = ":8080"
    sync_period: float = 600.0
    max_concurrent_reconciles: int = 4
    shutdown_timeout: float = 20.0
    """How long in-flight reconciles may take to finish on shutdown."""
    identity: str = ""
    watch_cache: bool = True
    """Reconcilers read cluster Secrets (bootstrap data too), Machines, Clusters and
    C3osClusters from the watches (reconcilers/view.py) instead of the API server; off:
    every read is a request (for comparison and debugging)."""
    record_key_namespace: str = "default"
    """The manager's own namespace: where the site record key Secret lives."""
    record_key_secret: str = RECORD_KEY_SECRET
    """That Secret's name (made at start-up when absent; infrastructure only)."""
    image_limits: ImageLimits = field(default_factory=ImageLimits)
    """Size, time and `file://` limits of image downloads (the libvirt backend)."""
    extension: ExtensionSettings | None = None
    """The Runtime SDK extension (in-place upgrades); None = not served."""
    enrollment: EnrollmentConfig | None = None
    """The enrollment endpoint for self-enrolling hosts (infrastructure only); None = off."""
    host_reset_timeout: float = DEFAULT_RESET_TIMEOUT
    """Seconds a released enrolled host has to report its reset before it is marked Lost."""
    ironic_health_interval: float = IRONIC_HEALTH_INTERVAL
    """Seconds between looks at a running bare-metal machine's Ironic node."""


@dataclass
class _State:
    leading: bool = False
    engine: KopfEngine | None = None
    elector: LeaderElector | None = None


def _exit_now(code: int) -> None:
    """Leave without running anything else: no cleanup may write once we lost the lease."""
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    sys.stderr.flush()
    os._exit(code)


def _health_checks(
    state: _State, stop: asyncio.Event
) -> tuple[Callable[[], Awaitable[bool]], Callable[[], Awaitable[bool]]]:
    """Liveness and readiness as the probes ask them."""

    async def live() -> bool:
        engine = state.engine
        if engine is None or not engine.alive:
            return True  # a standby (or a stopping manager) is alive as long as it answers
        return await engine.responsive()

    async def ready() -> bool:
        engine = state.engine
        if stop.is_set():
            ok = False
        elif not state.leading:
            # A standby that sees another leader is ready to take over. Tying readiness to
            # leadership would leave a second replica unavailable forever and stall every
            # rolling update of the Deployment.
            elector = state.elector
            ok = elector is not None and elector.holder not in ("", elector.config.identity)
        else:
            ok = engine is not None and await engine.watching()
        metrics.READY.set(1 if ok else 0)
        return ok

    return live, ready


async def run_manager(options: Options) -> int:
    images.configure(options.image_limits)
    ironic_client.configure(options.max_concurrent_reconciles)
    ironic.configure(options.ironic_health_interval)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    lease_name = f"{options.lease.key}" if options.lease else "none"
    metrics.MANAGER.info(
        {"identity": options.identity, "providers": ",".join(options.providers), "lease": lease_name}
    )
    metrics.LEADER.labels(lease_name).set(0)
    state = _State()

    live, ready = _health_checks(state, stop)

    configuration = await asyncio.to_thread(load_configuration, options.kubeconfig)
    probes = await serve_probes(options.health_addr, live, ready)
    metrics_server = await serve_metrics(options.metrics_addr)
    # A connection kept per reconcile that may run at once (the default is 5 per CPU).
    configuration.connection_pool_maxsize = max(
        configuration.connection_pool_maxsize, options.max_concurrent_reconciles
    )
    api = CountingApiClient(configuration)
    lease_api = CountingApiClient(configuration)  # its own connection pool: never queues behind reconciles
    executor = ThreadPoolExecutor(
        max_workers=options.max_concurrent_reconciles, thread_name_prefix="reconcile"
    )
    elector: LeaderElector | None = None
    # Every replica serves the extension, leader or not (CAPI calls whichever the Service picks).
    extension = ExtensionServer(options.extension, configuration) if options.extension else None
    enrollment: EnrollmentServer | None = None
    try:
        if extension is not None:
            await extension.start()
        if options.lease is not None:
            # A lease call must end well inside the renew deadline, or a hung request
            # would hide that we can no longer prove leadership.
            lease_kube = Kube(lease_api, request_timeout=max(1.0, options.lease.renew_deadline / 2))
            elector = state.elector = LeaderElector(options.lease, lease_kube)
            if not await elector.acquire(stop):
                log.info("stopped before becoming leader")
                return 0
        state.leading = True
        metrics.LEADER.labels(lease_name).set(1)
        enrollment = await _start_enrollment(options, Kube(api))
        return await _lead(
            options=options, state=state, stop=stop, api=api, executor=executor, elector=elector
        )
    finally:
        state.leading = False
        metrics.LEADER.labels(lease_name).set(0)
        await stop_servers(probes, metrics_server, extension)
        if enrollment is not None:
            await enrollment.stop()
        if elector is not None:
            elector.close()
        executor.shutdown(wait=False, cancel_futures=True)
        api.close()
        lease_api.close()


async def _lead(
    *,
    options: Options,
    state: _State,
    stop: asyncio.Event,
    api: k8s.ApiClient,
    executor: ThreadPoolExecutor,
    elector: LeaderElector | None,
) -> int:
    kube = Kube(api, own_writes=OwnWrites())
    view = ClusterView() if options.watch_cache and set(VIEW_READERS) & set(options.providers) else None
    kinds = kinds_of(options.providers)
    record_key = None
    if any(kind.signs_records for kind in kinds):
        record_key = await asyncio.to_thread(
            ensure_record_key, kube, options.record_key_namespace, options.record_key_secret
        )
    runtime = Runtime(kube, view, record_key)
    diffbase = MemoryDiffBase()
    resync = Resync(runtime, kinds, options.namespaces, listed=functools.partial(_retain, diffbase, kube))
    runtime.requeue = resync.requeue
    registry = build_registry(
        options.providers,
        runtime,
        PauseWatch(resync.reconcile_dependents),
        login=lambda: connection_info(load_configuration(options.kubeconfig)),
    )
    watched = {(k.resource.group, k.resource.plural) for k in kinds} | {(CLUSTERS.group, CLUSTERS.plural)}
    settings = build_settings(options.identity, executor, diffbase)
    engine = KopfEngine(registry, settings, options.namespaces, watched)
    state.engine = engine
    engine.start()
    log.info(
        "reconciling %s in %s",
        ", ".join(k.resource.kind for k in kinds),
        ", ".join(options.namespaces) or "all namespaces",
    )

    signalled: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
    kopf_ended: asyncio.Future[Any] = engine.finished()
    lease_task: asyncio.Future[None] | None = None
    if elector is not None:
        lease_task = asyncio.ensure_future(elector.hold())
        # Reacts the moment renewal fails, whatever else we are doing (even shutting down).
        lease_task.add_done_callback(_exit_if_lost)
    resync_task = asyncio.ensure_future(resync.run_forever(options.sync_period, executor))
    try:
        await asyncio.wait([signalled, kopf_ended], return_when=asyncio.FIRST_COMPLETED)
        code = 0
        if kopf_ended.done() and not stop.is_set():
            log.error("kopf stopped unexpectedly: %r", engine.error)
            code = EXIT_FAILED
        else:
            log.info("stopping: signal received")
        resync_task.cancel()
        engine.stop()
        # The lease is still renewed while we wait, so no successor can start before
        # our last write is done.
        stopped = await asyncio.to_thread(engine.join, options.shutdown_timeout)
        if not (stopped and await _drain(executor, options.shutdown_timeout)):
            log.error(
                "reconciles did not finish within %.0fs; exiting without releasing the lease",
                options.shutdown_timeout,
            )
            _exit_now(EXIT_FAILED)
        if lease_task is not None:
            lease_task.remove_done_callback(_exit_if_lost)
            lease_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, LeadershipLostError):
                await lease_task
        state.leading = False
        if elector is not None:
            await elector.release_now()
        return code
    finally:
        for task in (signalled, resync_task, lease_task):
            if task is not None:
                task.cancel()


async def _start_enrollment(options: Options, kube: Kube) -> EnrollmentServer | None:
    """The enrolled-hosts backend (its inventory is in Kubernetes) and, when configured,
    the endpoint its hosts talk to. Leader only: the endpoint and the claims write the
    same hosts, and a standby answers nothing (hosts retry)."""
    if "infrastructure" not in options.providers:
        return None
    backend = EnrolledBackend(KubeInventory(kube), reset_timeout=options.host_reset_timeout)
    BACKENDS.provide("enrolled", backend)
    if options.enrollment is None:
        return None
    server = EnrollmentServer(kube, options.enrollment, backend.host_changed)
    return server if await server.start() else None


def _retain(diffbase: MemoryDiffBase, kube: Kube, uids: Collection[str]) -> None:
    """What the resync listed is all that exists: memory of anything else goes."""
    diffbase.retain(uids)
    if kube.own_writes is not None:
        kube.own_writes.retain(uids)


def _exit_if_lost(lease_task: asyncio.Future[None]) -> None:
    if lease_task.cancelled():
        return
    log.error("leadership lost, stopping at once: %s", lease_task.exception())
    _exit_now(EXIT_LEADERSHIP_LOST)


async def _drain(executor: ThreadPoolExecutor, timeout: float) -> bool:
    """Wait for reconciles already running on the executor (kopf handlers, resync)."""
    try:
        await asyncio.wait_for(asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True), timeout)
    except TimeoutError:
        return False
    return True
