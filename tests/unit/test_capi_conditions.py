from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from capi_c3os.capi.conditions import (
    FALSE,
    TRUE,
    delete_condition,
    find_condition,
    format_time,
    get_condition,
    is_camel_case,
    is_false,
    is_true,
    new_condition,
    same_state,
    set_condition,
    set_conditions,
)

T0 = datetime(2026, 11, 26, 2, 0, 0, tzinfo=UTC)
T1 = T0 + timedelta(minutes=5)


def test_new_condition_has_capi_shape() -> None:
    cond = new_condition("Ready", TRUE, "Provisioned", "all good", generation=3, now=T0)
    assert cond == {
        "type": "Ready",
        "status": "True",
        "reason": "Provisioned",
        "message": "all good",
        "lastTransitionTime": "2026-11-26T02:00:00Z",
        "observedGeneration": 3,
    }


def test_new_condition_without_generation_omits_observed_generation() -> None:
    assert "observedGeneration" not in new_condition("Ready", FALSE, "NotReady", now=T0)


@pytest.mark.parametrize("status", ["true", "yes", "", "TRUE"])
def test_new_condition_rejects_status_outside_true_false_unknown(status: str) -> None:
    with pytest.raises(ValueError, match="status"):
        new_condition("Ready", status, "Because", now=T0)


@pytest.mark.parametrize("reason", ["not_ready", "notReady", "Not Ready", "", "Ready,Now"])
def test_new_condition_rejects_reason_that_is_not_camel_case(reason: str) -> None:
    with pytest.raises(ValueError, match="CamelCase"):
        new_condition("Ready", TRUE, reason, now=T0)


def test_camel_case_accepts_digits_after_first_letter() -> None:
    assert is_camel_case("WaitingForK3sServer2")


def test_format_time_is_rfc3339_utc_seconds() -> None:
    plus_two = timezone(timedelta(hours=2))
    assert format_time(datetime(2026, 1, 2, 5, 4, 5, 999999, tzinfo=plus_two)) == "2026-01-02T03:04:05Z"


def test_format_time_refuses_naive_datetimes() -> None:
    with pytest.raises(ValueError):
        format_time(datetime(2026, 1, 1))


def test_set_condition_appends_a_new_type_and_keeps_the_others_in_order() -> None:
    a = new_condition("A", TRUE, "Yes", now=T0)
    b = new_condition("B", TRUE, "Yes", now=T0)
    c = new_condition("C", FALSE, "No", now=T1)
    assert [x["type"] for x in set_condition([a, b], c)] == ["A", "B", "C"]


def test_set_condition_keeps_transition_time_when_status_unchanged() -> None:
    old = new_condition("Paused", FALSE, "NotPaused", generation=1, now=T0)
    new = new_condition("Paused", FALSE, "NotPaused", "still not", generation=2, now=T1)
    (merged,) = set_condition([old], new)
    assert merged["lastTransitionTime"] == "2026-11-26T02:00:00Z"
    assert merged["observedGeneration"] == 2
    assert merged["message"] == "still not"


def test_set_condition_moves_transition_time_when_status_changes() -> None:
    old = new_condition("Paused", FALSE, "NotPaused", now=T0)
    new = new_condition("Paused", TRUE, "Paused", now=T1)
    (merged,) = set_condition([old], new)
    assert merged["lastTransitionTime"] == "2026-11-26T02:05:00Z"
    assert merged["status"] == "True"


def test_set_condition_replaces_in_place_and_does_not_mutate_the_input() -> None:
    a = new_condition("A", TRUE, "Yes", now=T0)
    b = new_condition("B", TRUE, "Yes", now=T0)
    before = [dict(a), dict(b)]
    result = set_condition([a, b], new_condition("A", FALSE, "No", now=T1))
    assert [x["type"] for x in result] == ["A", "B"]
    assert [a, b] == before


def test_set_conditions_applies_several() -> None:
    result = set_conditions(
        [], new_condition("A", TRUE, "Yes", now=T0), new_condition("B", FALSE, "No", now=T0)
    )
    assert [x["type"] for x in result] == ["A", "B"]


def test_lookups_on_an_object() -> None:
    obj = {"status": {"conditions": [new_condition("Ready", TRUE, "Yes", now=T0)]}}
    assert get_condition(obj, "Ready") is not None
    assert is_true(obj, "Ready")
    assert not is_false(obj, "Ready")
    assert get_condition(obj, "Paused") is None
    assert not is_true({}, "Ready")
    assert find_condition([], "Ready") is None


def test_same_state_ignores_only_transition_time() -> None:
    a = new_condition("A", TRUE, "Yes", "m", generation=1, now=T0)
    assert same_state(a, new_condition("A", TRUE, "Yes", "m", generation=1, now=T1))
    assert not same_state(a, new_condition("A", TRUE, "Yes", "m", generation=2, now=T0))
    assert not same_state(a, new_condition("A", TRUE, "Yes", "other", generation=1, now=T0))


def test_delete_condition() -> None:
    a = new_condition("A", TRUE, "Yes", now=T0)
    assert delete_condition([a], "A") == []
    assert delete_condition([a], "B") == [a]
