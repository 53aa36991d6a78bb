"""Which server Machines a C3osControlPlane replaces, and why (plain objects, no server)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from capi_c3os.api.controlplane import C3osControlPlaneSpec
from capi_c3os.reconcilers.controlplane_rollout import (
    INFRA_TEMPLATE_ANNOTATION,
    SERVER_CONFIG_ANNOTATION,
    outdated_because,
    server_config_hash,
)

INFRA = {"apiGroup": "infrastructure.cluster.x-k8s.io", "kind": "C3osMachineTemplate", "name": "cp-v1"}


def spec(**changes: Any) -> C3osControlPlaneSpec:
    return C3osControlPlaneSpec.model_validate({
        "replicas": 3, "version": "v1.33.4+k3s1",
        "machineTemplate": {"spec": {"infrastructureRef": INFRA}}, **changes,
    })  # fmt: skip


def machine(made_with: C3osControlPlaneSpec, created: datetime) -> dict[str, Any]:
    annotations = {
        SERVER_CONFIG_ANNOTATION: server_config_hash(made_with),
        INFRA_TEMPLATE_ANNOTATION: made_with.machine_template.spec.infrastructure_ref.name,
    }
    stamp = created.strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "metadata": {"name": "m", "creationTimestamp": stamp, "annotations": annotations},
        "spec": {"version": made_with.version},
    }


def test_a_machine_made_from_the_current_spec_is_up_to_date() -> None:
    current = spec()
    assert outdated_because(current, machine(current, datetime.now(UTC))) is None


def test_version_template_config_and_rollout_after_each_make_a_machine_outdated() -> None:
    old = spec()
    made = machine(old, datetime.now(UTC) - timedelta(hours=1))
    assert "version" in (outdated_because(spec(version="v1.34.1+k3s1"), made) or "")
    new_template = spec(machineTemplate={"spec": {"infrastructureRef": {**INFRA, "name": "cp-v2"}}})
    assert outdated_because(new_template, made) == "infrastructure template changed to cp-v2"
    new_config = spec(serverConfig={"k3s": {"nodeLabels": {"tier": "edge"}}})
    assert outdated_because(new_config, made) == "server config changed"
    restart = spec(rollout={"after": (datetime.now(UTC) - timedelta(minutes=1)).isoformat()})
    assert "rollout.after" in (outdated_because(restart, made) or "")
    not_yet = spec(rollout={"after": (datetime.now(UTC) + timedelta(hours=1)).isoformat()})
    assert outdated_because(not_yet, made) is None
