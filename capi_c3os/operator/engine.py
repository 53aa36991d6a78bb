"""kopf, run in a thread of its own, started and stopped by the manager.

Why a thread with its own event loop rather than kopf on the manager's loop:
- kopf's shutdown cancels every task it finds on its loop ("the loop is not fully
  ours", says its source); on a shared loop that would include our lease renewal and
  the health server.
- kopf installs its own SIGTERM/SIGINT handlers when it runs in the main thread; we
  need them for ourselves (stop kopf first, then release the lease).
kopf supports this mode: its flags accept `threading.Event`, and it skips signal
handling outside the main thread.

Readiness is "kopf's watches are up": kopf has finished its startup, discovered the
namespaces and resources, and every resource we handle is among those it watches. kopf
exposes those facts only through its `Insights` object (a private module); that is the
single place we reach into kopf's internals, and it degrades to "not ready", never to
a crash, should kopf change it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Collection
from typing import Any

import kopf

log = logging.getLogger(__name__)


def _new_insights() -> Any:
    """kopf's Insights object, or None if kopf moved it (then we are never ready,
    which a test catches at once)."""
    try:
        from kopf._cogs.structs.references import Insights  # noqa: PLC0415
    except ImportError:  # pragma: no cover - only if kopf reorganises its internals
        return None
    return Insights()


class KopfEngine:
    def __init__(
        self,
        registry: kopf.OperatorRegistry,
        settings: kopf.OperatorSettings,
        namespaces: Collection[str],
        watched: Collection[tuple[str, str]],
    ) -> None:
        """`namespaces` empty = cluster-wide; `watched` = (group, plural) pairs that
        must be watched before we call ourselves ready."""
        self._registry = registry
        self._settings = settings
        self._namespaces = list(namespaces)
        self._watched = set(watched)
        self._stop_flag = threading.Event()
        self._ready_flag = threading.Event()
        self._insights: Any = _new_insights()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name="kopf", daemon=True)
        self.error: BaseException | None = None
        self._finished: list[asyncio.Future[None]] = []
        self._finished_lock = threading.Lock()
        self._done = False

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Ask kopf to stop (returns at once; see `join`)."""
        self._stop_flag.set()

    def join(self, timeout: float) -> bool:
        """Blocking; True when kopf's thread has ended."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def finished(self) -> asyncio.Future[None]:
        """A future on the *caller's* loop, resolved when kopf's thread ends."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with self._finished_lock:
            if self._done:
                future.set_result(None)
            else:
                self._finished.append(future)
        return future

    def _run(self) -> None:
        try:
            asyncio.run(self._operate())
        except BaseException as exc:
            self.error = exc
            log.exception("kopf stopped with an error")
        finally:
            with self._finished_lock:
                self._done = True
                waiting, self._finished = self._finished, []
            for future in waiting:
                future.get_loop().call_soon_threadsafe(_resolve, future)

    async def _operate(self) -> None:
        self._loop = asyncio.get_running_loop()
        await kopf.operator(
            registry=self._registry,
            settings=self._settings,
            insights=self._insights,
            standalone=True,  # no kopf peering: leader election is ours (leader.py)
            clusterwide=not self._namespaces,
            namespaces=self._namespaces,
            stop_flag=self._stop_flag,
            ready_flag=self._ready_flag,
        )

    async def responsive(self, timeout: float = 5.0) -> bool:
        """kopf's loop runs callbacks (liveness: a wedged loop means no reconciles)."""
        return await self._in_kopf_loop(_noop(), timeout) is not None

    async def watching(self, timeout: float = 5.0) -> bool:
        """kopf has started and watches everything we handle (readiness)."""
        if not self._ready_flag.is_set() or self._insights is None:
            return False
        return bool(await self._in_kopf_loop(self._check_insights(), timeout))

    async def _check_insights(self) -> bool:
        # Runs on kopf's loop: the sets are only ever touched there.
        insights = self._insights
        if not (insights.ready_namespaces.is_set() and insights.ready_resources.is_set()):
            return False
        watched = {(r.group, r.plural) for r in insights.watched_resources}
        return self._watched <= watched

    async def _in_kopf_loop(self, coro: Any, timeout: float) -> Any:
        loop = self._loop
        if loop is None or not self.alive or loop.is_closed():
            coro.close()
            return None
        try:
            future = asyncio.run_coroutine_threadsafe(coro, loop)
        except RuntimeError:  # the loop closed between the check and the call
            coro.close()
            return None
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout)
        except (TimeoutError, RuntimeError):
            return None


async def _noop() -> bool:
    return True


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
