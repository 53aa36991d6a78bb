"""KeyedLocks: one holder per key at a time, waiters told they waited, and no lock kept
for a key nobody holds (a manager sees every machine it ever had)."""

from __future__ import annotations

import threading

from capi_c3os.reconcilers.keyed_lock import KeyedLocks


def test_one_holder_per_key_and_the_waiter_knows_it_waited() -> None:
    locks = KeyedLocks()
    inside = threading.Event()
    release = threading.Event()
    seen: list[tuple[str, bool]] = []

    def first() -> None:
        with locks.hold("m") as waited:
            seen.append(("first", waited))
            inside.set()
            release.wait(10)

    def second() -> None:
        with locks.hold("m") as waited:
            seen.append(("second", waited))

    a = threading.Thread(target=first)
    a.start()
    assert inside.wait(10)
    b = threading.Thread(target=second)
    b.start()
    b.join(0.2)
    assert b.is_alive()  # blocked behind the first holder
    with locks.hold("other") as waited:  # another key is not blocked
        assert waited is False
    release.set()
    a.join(10)
    b.join(10)
    assert seen == [("first", False), ("second", True)]
    assert len(locks) == 0


def test_a_key_is_forgotten_once_released_even_after_an_exception() -> None:
    locks = KeyedLocks()
    for i in range(100):
        with locks.hold(("ns", f"m-{i}")):
            assert len(locks) == 1
    try:
        with locks.hold("boom"):
            raise RuntimeError("reconcile failed")
    except RuntimeError:
        pass
    assert len(locks) == 0
