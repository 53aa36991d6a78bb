"""The lease algorithm against an in-memory API server with real optimistic
concurrency (resourceVersion preconditions) and a hand-driven clock."""

from __future__ import annotations

import asyncio
import copy
from datetime import UTC, datetime
from typing import Any, cast

import pytest

from capi_c3os.operator.leader import LeaderElector, LeadershipLostError, LeaseConfig, micro_time
from capi_c3os.reconcilers.kube import ConflictError, Kube, Resource


class FakeLeases:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.version = 0

    def _bump(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = str(self.version)
        return obj

    def get(self, resource: Resource, namespace: str, name: str) -> dict[str, Any] | None:
        obj = self.objects.get((namespace, name))
        return copy.deepcopy(obj) if obj else None

    def create(self, resource: Resource, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        key = (namespace, body["metadata"]["name"])
        if key in self.objects:
            raise ConflictError("exists")
        self.objects[key] = self._bump(body)
        return copy.deepcopy(self.objects[key])

    def replace(self, resource: Resource, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        current = self.objects[(namespace, name)]
        if body["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
            raise ConflictError("changed")
        self.objects[(namespace, name)] = self._bump(body)
        return copy.deepcopy(self.objects[(namespace, name)])

    def spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = self.objects[("ns", "lease")]["spec"]
        return spec


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def elector(store: FakeLeases, clock: Clock, identity: str) -> LeaderElector:
    config = LeaseConfig("ns", "lease", identity, lease_duration=15, renew_deadline=10, retry_period=2)
    wall = lambda: datetime(2026, 11, 26, 2, 0, 0, 123456, tzinfo=UTC)  # noqa: E731
    return LeaderElector(config, cast(Kube, store), clock=clock, wall_clock=wall)


@pytest.fixture
def store() -> FakeLeases:
    return FakeLeases()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_first_candidate_creates_the_lease(store: FakeLeases, clock: Clock) -> None:
    a = elector(store, clock, "a")
    assert a.try_acquire_or_renew()
    assert store.spec() == {
        "holderIdentity": "a",
        "leaseDurationSeconds": 15,
        "acquireTime": "2026-11-26T02:00:00.123456Z",
        "renewTime": "2026-11-26T02:00:00.123456Z",
        "leaseTransitions": 0,
    }


def test_second_candidate_waits_while_the_lease_is_renewed(store: FakeLeases, clock: Clock) -> None:
    a, b = elector(store, clock, "a"), elector(store, clock, "b")
    assert a.try_acquire_or_renew()
    for _ in range(20):  # 40 s of renewals every 2 s
        assert not b.try_acquire_or_renew()
        clock.now += 2
        assert a.try_acquire_or_renew()
    assert store.spec()["holderIdentity"] == "a"
    assert b.holder == "a"


def test_standby_takes_over_only_after_a_full_lease_duration_of_silence(
    store: FakeLeases, clock: Clock
) -> None:
    a, b = elector(store, clock, "a"), elector(store, clock, "b")
    assert a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew()  # b first observes the lease now
    clock.now += 14.9
    assert not b.try_acquire_or_renew()
    clock.now += 0.2
    assert b.try_acquire_or_renew()
    assert store.spec()["holderIdentity"] == "b"
    assert store.spec()["leaseTransitions"] == 1


def test_expiry_is_judged_by_local_observation_not_remote_timestamps(store: FakeLeases, clock: Clock) -> None:
    # A lease whose renewTime is far in the past, but which b has just seen for the
    # first time: b must still wait a whole lease duration (the other host's clock
    # may be wrong; the holder may be alive).
    a, b = elector(store, clock, "a"), elector(store, clock, "b")
    assert a.try_acquire_or_renew()
    store.objects[("ns", "lease")]["spec"]["renewTime"] = "2000-01-01T00:00:00.000000Z"
    assert not b.try_acquire_or_renew()


def test_released_lease_is_taken_at_once(store: FakeLeases, clock: Clock) -> None:
    a, b = elector(store, clock, "a"), elector(store, clock, "b")
    assert a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew()
    assert a.release()
    assert store.spec()["holderIdentity"] == ""
    assert store.spec()["leaseDurationSeconds"] == 1
    assert b.try_acquire_or_renew()
    assert store.spec()["holderIdentity"] == "b"


def test_release_does_nothing_unless_we_hold_the_lease(store: FakeLeases, clock: Clock) -> None:
    a, b = elector(store, clock, "a"), elector(store, clock, "b")
    assert not b.release()  # no lease at all
    assert a.try_acquire_or_renew()
    assert not b.release()
    assert store.spec()["holderIdentity"] == "a"


def test_racing_candidates_cannot_both_win(store: FakeLeases, clock: Clock) -> None:
    a, b, c = (elector(store, clock, x) for x in "abc")
    assert a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew()
    assert not c.try_acquire_or_renew()
    clock.now += 16
    # b and c both read the expired lease; the first write wins, the second conflicts.
    read = store.get(Resource("", "", "", ""), "ns", "lease")
    assert b.try_acquire_or_renew()
    assert read is not None
    store_get = store.get
    store.get = lambda *_: copy.deepcopy(read)  # type: ignore[method-assign]
    try:
        assert not c.try_acquire_or_renew()
    finally:
        store.get = store_get  # type: ignore[method-assign]
    assert store.spec()["holderIdentity"] == "b"


def test_renewal_keeps_acquire_time_and_transitions(store: FakeLeases, clock: Clock) -> None:
    a = elector(store, clock, "a")
    assert a.try_acquire_or_renew()
    first = dict(store.spec())
    clock.now += 2
    assert a.try_acquire_or_renew()
    assert store.spec()["acquireTime"] == first["acquireTime"]
    assert store.spec()["leaseTransitions"] == first["leaseTransitions"]


def test_lease_config_rejects_deadline_beyond_duration() -> None:
    with pytest.raises(ValueError):
        LeaseConfig("ns", "l", "me", lease_duration=10, renew_deadline=10, retry_period=2)
    with pytest.raises(ValueError):
        LeaseConfig("ns", "l", "me", lease_duration=15, renew_deadline=10, retry_period=10)


def test_micro_time_has_six_fraction_digits_even_on_whole_seconds() -> None:
    assert micro_time(datetime(2026, 1, 1, tzinfo=UTC)) == "2026-01-01T00:00:00.000000Z"


# ---------------------------------------------------------------- async driving


class FailingLeases(FakeLeases):
    def __init__(self) -> None:
        super().__init__()
        self.failing = False

    def get(self, resource: Resource, namespace: str, name: str) -> dict[str, Any] | None:
        if self.failing:
            raise ConnectionError("API server unreachable")
        return super().get(resource, namespace, name)


def fast_elector(store: FakeLeases, identity: str) -> LeaderElector:
    config = LeaseConfig("ns", "lease", identity, lease_duration=0.5, renew_deadline=0.2, retry_period=0.02)
    return LeaderElector(config, cast(Kube, store))


def test_hold_gives_up_when_renewal_fails_past_the_deadline() -> None:
    store = FailingLeases()
    a = fast_elector(store, "a")

    async def scenario() -> None:
        assert await a.acquire(asyncio.Event())
        store.failing = True
        with pytest.raises(LeadershipLostError, match="within"):
            await asyncio.wait_for(a.hold(), timeout=5)

    try:
        asyncio.run(scenario())
    finally:
        a.close()


def test_hold_gives_up_at_once_when_someone_else_holds_the_lease() -> None:
    store = FakeLeases()
    a = fast_elector(store, "a")

    async def scenario() -> None:
        assert await a.acquire(asyncio.Event())
        store.objects[("ns", "lease")]["spec"]["holderIdentity"] = "b"
        store.objects[("ns", "lease")]["metadata"]["resourceVersion"] = "999"
        with pytest.raises(LeadershipLostError, match="held by b"):
            await asyncio.wait_for(a.hold(), timeout=5)

    try:
        asyncio.run(scenario())
    finally:
        a.close()


def test_hold_keeps_renewing_while_all_is_well() -> None:
    store = FakeLeases()
    # Renew often, but with deadlines no loaded machine misses: this test is about
    # renewing, the deadline has its own tests.
    config = LeaseConfig("ns", "lease", "a", lease_duration=60, renew_deadline=30, retry_period=0.02)
    a = LeaderElector(config, cast(Kube, store))

    async def scenario() -> None:
        assert await a.acquire(asyncio.Event())
        renewals = store.version
        holding = asyncio.create_task(a.hold())
        for _ in range(1000):
            if store.version > renewals + 3 or holding.done():
                break
            await asyncio.sleep(0.01)
        assert not holding.done()  # hold() only returns by raising
        holding.cancel()
        await asyncio.gather(holding, return_exceptions=True)
        assert store.version > renewals + 3
        assert store.spec()["holderIdentity"] == "a"

    try:
        asyncio.run(scenario())
    finally:
        a.close()


def test_acquire_returns_false_when_stopped_while_waiting() -> None:
    store = FakeLeases()
    a, b = fast_elector(store, "a"), fast_elector(store, "b")

    async def scenario() -> None:
        assert await a.acquire(asyncio.Event())
        stop = asyncio.Event()
        waiting = asyncio.create_task(b.acquire(stop))
        await asyncio.sleep(0.1)
        assert not waiting.done()
        stop.set()
        assert await asyncio.wait_for(waiting, timeout=5) is False

    try:
        asyncio.run(scenario())
    finally:
        a.close()
        b.close()
