from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from capi_c3os.capi.conditions import FALSE, TRUE, new_condition
from capi_c3os.capi.outcome import Kind, Outcome
from capi_c3os.capi.status import status_patch

T0 = datetime(2026, 11, 26, 2, 0, 0, tzinfo=UTC)
T1 = datetime(2026, 11, 26, 3, 0, 0, tzinfo=UTC)


# ---------------------------------------------------------------- Outcome


def test_ready_is_done() -> None:
    assert Outcome.ready().done
    assert not Outcome.ready().waiting


def test_paused_is_done_with_reason_paused() -> None:
    outcome = Outcome.paused("Cluster spec.paused is set to true")
    assert outcome.done
    assert outcome.reason == "Paused"


def test_wait_carries_reason_message_and_delay() -> None:
    outcome = Outcome.wait("WaitingForBootstrapData", "Machine has no bootstrap secret yet", after=10)
    assert (outcome.kind, outcome.waiting, outcome.done, outcome.after) == (Kind.WAIT, True, False, 10)


def test_error_does_not_heal_by_waiting() -> None:
    outcome = Outcome.error("InvalidSite", "site x names no backend")
    assert outcome.failed
    assert not outcome.done
    assert outcome.after is None


@pytest.mark.parametrize(
    "make",
    [
        lambda: Outcome.wait("waiting", "lower-case reason", after=1),
        lambda: Outcome.wait("Waiting", "negative delay", after=-1),
        lambda: Outcome(Kind.WAIT, "Waiting", "no delay"),
        lambda: Outcome(Kind.ERROR, "", "no reason"),
        lambda: Outcome(Kind.DONE, "", "", after=3),
    ],
)
def test_malformed_outcomes_are_rejected(make: Any) -> None:
    with pytest.raises(ValueError):
        make()


# ---------------------------------------------------------------- status_patch


def obj(conditions: list[dict[str, Any]] | None = None, observed: int | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {}
    if conditions is not None:
        status["conditions"] = conditions
    if observed is not None:
        status["observedGeneration"] = observed
    return {"metadata": {"name": "m", "resourceVersion": "42", "generation": 3}, "status": status}


def test_status_patch_sets_condition_generation_and_precondition() -> None:
    paused = new_condition("Paused", FALSE, "NotPaused", generation=3, now=T0)
    patch = status_patch(obj(), [paused], observed_generation=3)
    assert patch == {
        "metadata": {"resourceVersion": "42"},
        "status": {"conditions": [paused], "observedGeneration": 3},
    }


def test_status_patch_carries_the_whole_merged_list() -> None:
    ready = new_condition("Ready", TRUE, "Provisioned", now=T0)
    paused = new_condition("Paused", FALSE, "NotPaused", now=T0)
    patch = status_patch(obj([ready]), [paused])
    assert patch is not None
    assert patch["status"]["conditions"] == [ready, paused]
    assert "observedGeneration" not in patch["status"]


def test_status_patch_is_none_when_nothing_changes() -> None:
    paused = new_condition("Paused", FALSE, "NotPaused", generation=3, now=T0)
    again = new_condition("Paused", FALSE, "NotPaused", generation=3, now=T1)
    assert status_patch(obj([paused], observed=3), [again], observed_generation=3) is None
    assert status_patch(obj([paused], observed=2), [again]) is None


def test_status_patch_when_only_the_generation_moves() -> None:
    paused = new_condition("Paused", FALSE, "NotPaused", generation=3, now=T0)
    patch = status_patch(obj([paused], observed=2), [paused], observed_generation=3)
    assert patch is not None
    assert patch["status"]["observedGeneration"] == 3


def test_status_patch_keeps_transition_time_of_an_unchanged_status() -> None:
    old = new_condition("Paused", FALSE, "NotPaused", generation=2, now=T0)
    new = new_condition("Paused", FALSE, "NotPaused", generation=3, now=T1)
    patch = status_patch(obj([old]), [new])
    assert patch is not None
    assert patch["status"]["conditions"][0]["lastTransitionTime"] == "2026-11-26T02:00:00Z"
