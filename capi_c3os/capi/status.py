"""The one status write per reconcile: conditions and observedGeneration as a JSON
merge patch.

A merge patch replaces lists whole, so the patch carries the complete condition list
(ours merged into what the object holds) and `metadata.resourceVersion` as a
precondition: if anyone changed the object since we read it, the server answers 409
and we reconcile again from fresh data instead of overwriting what we did not see.
"""

from __future__ import annotations

from typing import Any

from capi_c3os.capi.conditions import Condition, conditions_of, set_conditions


def status_patch(
    obj: dict[str, Any],
    conditions: list[Condition],
    observed_generation: int | None = None,
    fields: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """The merge patch that sets `conditions` (and `status.observedGeneration` when
    given, and the kind's own top-level status `fields`, e.g. `dataSecretName`) on `obj`,
    or None when the object already says exactly that, so a level-triggered reconcile
    that changes nothing writes nothing."""
    status = obj.get("status") or {}
    current = conditions_of(obj)
    merged = set_conditions(current, *conditions)
    generation_changes = observed_generation is not None and status.get("observedGeneration") != (
        observed_generation
    )
    fields = fields or {}
    fields_change = any(status.get(key) != value for key, value in fields.items())
    if merged == current and not generation_changes and not fields_change:
        return None
    new_status: dict[str, Any] = {**fields, "conditions": merged}
    if observed_generation is not None:
        new_status["observedGeneration"] = observed_generation
    patch: dict[str, Any] = {"status": new_status}
    resource_version = (obj.get("metadata") or {}).get("resourceVersion")
    if resource_version:
        patch["metadata"] = {"resourceVersion": resource_version}
    return patch
