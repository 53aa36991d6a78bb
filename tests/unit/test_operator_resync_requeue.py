"""Reconciles that answer "wait" (started by kopf, a Cluster unpaused or the periodic
resync) are run again in memory after the delay they asked for, once per object, with
fresh data; a requeued run that fails is retried."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import pytest

from capi_c3os.capi.outcome import Outcome
from capi_c3os.operator import resync as resync_module
from capi_c3os.operator.handlers.bootstrap import C3OS_CONFIG
from capi_c3os.operator.resync import Resync
from capi_c3os.operator.runtime import Kind, Runtime
from capi_c3os.reconcilers.kube import ConflictError, Kube, Resource

OBJ = {
    "kind": "C3osConfig",
    "metadata": {"name": "cfg", "namespace": "ns", "uid": "uid-cfg", "resourceVersion": "1"},
}


class Store:
    own_writes = None

    def __init__(self) -> None:
        self.obj: dict[str, Any] | None = copy.deepcopy(OBJ)

    def get(self, resource: Resource, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.obj)

    def list(
        self, resource: Resource, namespace: str | None = None, label_selector: str | None = None
    ) -> Any:
        return [copy.deepcopy(self.obj)] if self.obj else []


def recording(runtime: Runtime, triggers: list[str]) -> Runtime:
    """`runtime`, noting the trigger of every reconcile it runs."""
    original = runtime.reconcile

    def record(kind: Kind, obj: dict[str, Any], trigger: str) -> Outcome:
        triggers.append(trigger)
        return original(kind, obj, trigger)

    runtime.reconcile = record  # type: ignore[method-assign]
    return runtime


def drive(resync: Resync, kick: Callable[[], object], until: Callable[[], bool]) -> None:
    """Run the resync's loop, call `kick` on its executor, wait until `until()` holds (and a
    little longer: room for a wrong extra run), then stop it."""

    async def scenario() -> None:
        with ThreadPoolExecutor(2) as executor:
            task = asyncio.ensure_future(resync.run_forever(3600, executor))
            await asyncio.sleep(0)  # run_forever has taken the loop and executor
            await asyncio.get_running_loop().run_in_executor(executor, kick)
            for _ in range(400):
                if until():
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())


def test_waiting_outcome_from_a_cluster_trigger_is_requeued_until_done() -> None:
    store = Store()
    triggers: list[str] = []
    answers = [Outcome.wait("WaitingForMachine", "no machine yet", 0.01), Outcome.wait("X", "y", 0.01)]

    def reconcile(kube: Kube, resource: Resource, obj: dict[str, Any]) -> Outcome:
        return answers.pop(0) if answers else Outcome.ready()

    resync = Resync(recording(Runtime(cast(Kube, store)), triggers), [Kind(C3OS_CONFIG, reconcile)], [])
    drive(resync, lambda: resync.reconcile_dependents("ns", "c"), lambda: len(triggers) >= 3)
    assert triggers == ["cluster", "requeue", "requeue"]


def test_requeue_stops_when_the_object_is_gone_and_on_shutdown() -> None:
    store = Store()
    calls: list[str] = []

    def reconcile(kube: Kube, resource: Resource, obj: dict[str, Any]) -> Outcome:
        calls.append(obj["metadata"]["name"])
        store.obj = None  # deleted right after this reconcile
        return Outcome.wait("WaitingForMachine", "no machine yet", 0.01)

    resync = Resync(Runtime(cast(Kube, store)), [Kind(C3OS_CONFIG, reconcile)], [])

    async def scenario() -> None:
        with ThreadPoolExecutor(2) as executor:
            task = asyncio.ensure_future(resync.run_forever(3600, executor))
            await asyncio.sleep(0)
            await asyncio.get_running_loop().run_in_executor(executor, resync.reconcile_dependents, "ns", "c")
            await asyncio.sleep(0.2)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        assert resync._pending == {}

    asyncio.run(scenario())
    assert calls == ["cfg"]


def test_an_earlier_requeue_replaces_a_later_one_and_a_later_one_is_ignored() -> None:
    store = Store()
    runs: list[str] = []

    def reconcile(kube: Kube, resource: Resource, obj: dict[str, Any]) -> Outcome:
        runs.append("run")
        return Outcome.ready()

    kind = Kind(C3OS_CONFIG, reconcile)
    resync = Resync(Runtime(cast(Kube, store)), [kind], [])

    async def scenario() -> None:
        with ThreadPoolExecutor(2) as executor:
            task = asyncio.ensure_future(resync.run_forever(3600, executor))
            await asyncio.sleep(0)
            assert resync.requeue(kind, OBJ, 3600)
            assert resync.requeue(kind, OBJ, 0.01)  # earlier: replaces the hour
            assert resync.requeue(kind, OBJ, 1800)  # later than the pending one: ignored
            for _ in range(200):
                if runs:
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)
            assert resync._pending == {}  # nothing left behind for the hour
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())
    assert len(runs) == 1


def test_a_requeued_reconcile_that_raises_is_run_again_after_the_backoff(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(resync_module, "HANDLER_BACKOFF", 0.01)
    store = Store()
    answers: list[Outcome | Exception] = [RuntimeError("boom"), ConflictError("changed"), Outcome.ready()]
    calls: list[str] = []

    def reconcile(kube: Kube, resource: Resource, obj: dict[str, Any]) -> Outcome:
        calls.append("run")
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(resync_module, "CONFLICT_RETRY_DELAY", 0.01)
    kind = Kind(C3OS_CONFIG, reconcile)
    resync = Resync(Runtime(cast(Kube, store)), [kind], [])

    def kick() -> None:
        assert resync.requeue(kind, OBJ, 0.01)

    drive(resync, kick, lambda: len(calls) >= 3)
    assert calls == ["run", "run", "run"]
    assert answers == []


def test_requeue_is_refused_while_the_resync_is_not_running() -> None:
    kind = Kind(C3OS_CONFIG, lambda kube, resource, obj: Outcome.ready())
    assert Resync(Runtime(cast(Kube, Store())), [kind], []).requeue(kind, OBJ, 1.0) is False


def test_a_cluster_triggered_reconcile_that_meets_a_newer_object_is_requeued(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Unpausing a Cluster wakes its configs while CAPI adds owner references to them: a
    conflict then must not end the wake-up (no kopf handler fires for that change)."""
    monkeypatch.setattr(resync_module, "CONFLICT_RETRY_DELAY", 0.01)
    store = Store()
    triggers: list[str] = []
    answers: list[Outcome | Exception] = [
        ConflictError("C3osConfig ns/cfg changed meanwhile"),
        Outcome.ready(),
    ]

    def reconcile(kube: Kube, resource: Resource, obj: dict[str, Any]) -> Outcome:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    resync = Resync(recording(Runtime(cast(Kube, store)), triggers), [Kind(C3OS_CONFIG, reconcile)], [])
    drive(resync, lambda: resync.reconcile_dependents("ns", "c"), lambda: len(triggers) >= 2)
    assert triggers == ["cluster", "requeue"]
    assert answers == []


def test_the_periodic_resync_tells_which_objects_exist() -> None:
    """What the in-memory diff base keeps (operator/diffbase.py) is pruned by this."""
    listed: list[list[str]] = []

    def reconcile(kube: Kube, resource: Resource, obj: dict[str, Any]) -> Outcome:
        return Outcome.ready()

    resync = Resync(
        Runtime(cast(Kube, Store())),
        [Kind(C3OS_CONFIG, reconcile)],
        [],
        listed=lambda uids: listed.append(list(uids)),
    )

    async def scenario() -> None:
        with ThreadPoolExecutor(2) as executor:
            task = asyncio.ensure_future(resync.run_forever(0.01, executor))
            for _ in range(400):
                if listed:
                    break
                await asyncio.sleep(0.01)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())
    assert listed[0] == ["uid-cfg"]
