"""Machine events that arrive while a control plane is being reconciled collapse into
one more reconcile (which starts after all of them were seen)."""

from __future__ import annotations

import threading
import time

from capi_c3os.operator.handlers.controlplane import Changes, Coalescer, machine_essence


def test_a_burst_during_a_reconcile_becomes_one_more_reconcile() -> None:
    wakeups = Coalescer()
    started, release = threading.Event(), threading.Event()
    runs: list[int] = []

    def wake() -> None:
        runs.append(len(runs))
        if len(runs) == 1:
            started.set()
            release.wait(10)

    first = threading.Thread(target=wakeups.run, args=(("ns", "cp"), wake))
    first.start()
    assert started.wait(10)
    burst = [threading.Thread(target=wakeups.run, args=(("ns", "cp"), wake)) for _ in range(5)]
    for thread in burst:
        thread.start()
    # Four of the five return at once (one is already waiting); only then let the first finish.
    deadline = time.monotonic() + 10
    while sum(t.is_alive() for t in burst) > 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sum(t.is_alive() for t in burst) == 1
    release.set()
    for thread in [first, *burst]:
        thread.join(10)
    assert runs == [0, 1]


def test_other_control_planes_are_not_held_up() -> None:
    wakeups = Coalescer()
    release = threading.Event()
    started = threading.Event()

    def slow() -> None:
        started.set()
        release.wait(10)

    thread = threading.Thread(target=wakeups.run, args=(("ns", "a"), slow))
    thread.start()
    assert started.wait(10)
    ran: list[str] = []
    wakeups.run(("ns", "b"), lambda: ran.append("b"))
    assert ran == ["b"]
    release.set()
    thread.join(10)


def _machine(**status: object) -> dict[str, object]:
    return {"metadata": {"uid": "u1", "labels": {"cluster.x-k8s.io/control-plane": ""}},
            "spec": {"version": "v1.33.4+k3s1"}, "status": dict(status)}  # fmt: skip


def test_only_machine_changes_the_control_plane_acts_on_wake_it() -> None:
    changes = Changes()

    def matters(event: str | None, machine: dict[str, object]) -> bool:
        return changes.matters(event, machine, machine_essence(machine))

    waiting = {"type": "NodeHealthy", "status": "False", "reason": "Waiting", "message": "no node yet"}
    assert matters(None, _machine(conditions=[waiting]))  # first sight (kopf's listing)
    assert not matters(None, _machine(conditions=[waiting]))
    reworded = {**waiting, "message": "still no node", "lastTransitionTime": "2026-01-01T00:00:00Z"}
    assert not matters("MODIFIED", _machine(conditions=[reworded]))
    assert matters("MODIFIED", _machine(conditions=[{**reworded, "status": "True"}]))
    assert matters("MODIFIED", _machine(conditions=[{**reworded, "status": "True"}], nodeRef={"name": "n"}))
    assert matters("DELETED", _machine())
