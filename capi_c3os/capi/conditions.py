"""Conditions in the shape CAPI v1beta2 reads (metav1.Condition): `type`, `status`
(True|False|Unknown), `observedGeneration`, `lastTransitionTime` (RFC 3339), `reason`
(CamelCase) and `message`.

A condition list is a list-map keyed by `type`. Setting a condition replaces the entry
of the same type in place and keeps its `lastTransitionTime` unless the status changed:
the time says when the status last *changed*, which is what `clusterctl describe` shows
and what a person debugging a stuck machine needs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

Condition = dict[str, Any]

TRUE = "True"
FALSE = "False"
UNKNOWN = "Unknown"
STATUSES = (TRUE, FALSE, UNKNOWN)

# CAPI's convention for reasons (stricter than the API server's pattern, which would
# also accept "not_ready,x"): a script matches on it, a person reads the message.
_CAMEL_CASE = re.compile(r"^[A-Z][A-Za-z0-9]*$")


def is_camel_case(reason: str) -> bool:
    return bool(_CAMEL_CASE.match(reason))


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC at second precision, as metav1.Time serialises itself."""
    if moment.tzinfo is None:
        raise ValueError("condition times must be timezone-aware")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_condition(
    type_: str,
    status: str,
    reason: str,
    message: str = "",
    *,
    generation: int | None = None,
    now: datetime,
) -> Condition:
    """A complete condition; `now` becomes its lastTransitionTime unless `set_condition`
    keeps an older one."""
    if status not in STATUSES:
        raise ValueError(f"condition status must be one of {STATUSES}, got {status!r}")
    if not is_camel_case(reason):
        raise ValueError(f"condition reason must be CamelCase, got {reason!r}")
    condition: Condition = {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": format_time(now),
    }
    if generation is not None:
        condition["observedGeneration"] = generation
    return condition


def conditions_of(obj: dict[str, Any]) -> list[Condition]:
    conditions: list[Condition] = (obj.get("status") or {}).get("conditions") or []
    return conditions


def find_condition(conditions: Iterable[Condition], type_: str) -> Condition | None:
    return next((c for c in conditions if c.get("type") == type_), None)


def get_condition(obj: dict[str, Any], type_: str) -> Condition | None:
    return find_condition(conditions_of(obj), type_)


def is_true(obj: dict[str, Any], type_: str) -> bool:
    condition = get_condition(obj, type_)
    return condition is not None and condition.get("status") == TRUE


def is_false(obj: dict[str, Any], type_: str) -> bool:
    condition = get_condition(obj, type_)
    return condition is not None and condition.get("status") == FALSE


def same_state(a: Condition, b: Condition) -> bool:
    """Equal apart from lastTransitionTime (which only records history)."""
    keys = ("type", "status", "reason", "message", "observedGeneration")
    return all(a.get(k) == b.get(k) for k in keys)


def set_condition(conditions: Iterable[Condition], condition: Condition) -> list[Condition]:
    """A new list with `condition` in place of the one of the same type (appended when
    absent). The old lastTransitionTime survives when the status did not change."""
    result: list[Condition] = []
    found = False
    for existing in conditions:
        if existing.get("type") != condition["type"]:
            result.append(existing)
            continue
        found = True
        merged = dict(condition)
        if existing.get("status") == condition["status"] and existing.get("lastTransitionTime"):
            merged["lastTransitionTime"] = existing["lastTransitionTime"]
        result.append(merged)
    if not found:
        result.append(dict(condition))
    return result


def set_conditions(conditions: Iterable[Condition], *new: Condition) -> list[Condition]:
    result = list(conditions)
    for condition in new:
        result = set_condition(result, condition)
    return result


def delete_condition(conditions: Iterable[Condition], type_: str) -> list[Condition]:
    return [c for c in conditions if c.get("type") != type_]
