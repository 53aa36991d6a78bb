"""Small helpers for tests against real servers."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def eventually(
    probe: Callable[[], T | None],
    what: str,
    timeout: float = 60.0,
    every: float = 0.25,
    explain: Callable[[], str] | None = None,
) -> T:
    """Poll `probe` until it returns something truthy; fail with `what` (and what `explain`
    says at that moment) after `timeout` seconds. The timeout is a safety net against
    hangs, not a performance assertion."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            detail = f": {explain()}" if explain else ""
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
        time.sleep(every)


def condition(type_: str, status: str, reason: str, message: str = "") -> dict[str, Any]:
    """A condition as a provider writes it (CAPI's metav1.Condition shape)."""
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }
