"""Failures that a real Ironic produces, surfaced with Ironic's own words, bounded, and
cleaned up without leaks. Every call uses a fresh backend: a restart in a failed state
must find the same facts in Ironic."""

from __future__ import annotations

import pytest

from capi_c3os.api.infrastructure import IronicMachine, MachineImage
from capi_c3os.backends.base import Phase, Progress
from capi_c3os.backends.ironic import IronicBackend
from capi_c3os.backends.ironic.instance import DEPLOY_ATTEMPTS
from capi_c3os.dev.processes import free_port
from tests.integration.ironic.lab import CHECKSUM, IronicLab, drive, new_resource_class

pytestmark = pytest.mark.integration


def fresh() -> IronicBackend:
    return IronicBackend(max_deploy_attempts=2, max_clean_attempts=2)


def test_unreachable_image_fails_the_deploy_with_ironics_reason_and_deletion_leaks_nothing(
    lab: IronicLab,
) -> None:
    rc = new_resource_class()
    [node_uuid] = lab.enroll(1, rc)
    # A `direct` deploy makes the conductor check the image URL; nothing listens there.
    image_url = f"http://127.0.0.1:{free_port()}/c3os-v3.qcow2"
    intent = lab.intent(
        "broken-image",
        IronicMachine(resource_class=rc, deploy_interface="direct"),
        image=MachineImage(url=image_url, checksum=CHECKSUM),
    )
    seen: list[Progress] = []

    failed = drive(lambda: fresh().provision(intent), {Phase.RUNNING}, seen)

    assert failed.phase is Phase.FAILED and failed.reason == "DeployFailed", failed
    assert "failed 2 times" in failed.message and image_url in failed.message, failed.message
    assert failed.requeue_after is None, "waiting will not heal it: stop hammering"
    assert [p.reason for p in seen].count("RetryingDeploy") == 1, [p.reason for p in seen]
    node = lab.node(node_uuid)
    assert node["provision_state"] == "deploy failed" and node["deploy_interface"] == "direct"
    assert node["extra"][DEPLOY_ATTEMPTS] == 2
    again = fresh().provision(intent)
    assert again.reason == "DeployFailed" and lab.node(node_uuid)["extra"][DEPLOY_ATTEMPTS] == 2, (
        "no third deploy"
    )

    # Deleting: undeploy, then cleaning also fails for real (no agent can be reached), is
    # retried within bounds, and the node is left manageable: out of the pool, nothing of ours.
    deleting: list[Progress] = []
    deleted = drive(
        lambda: fresh().deprovision(intent.identity, intent.site, intent.credentials),
        {Phase.DELETED},
        deleting,
    )

    assert deleted.phase is Phase.DELETED and deleted.reason == "NodeLeftManageable", deleted
    cleaning_failures = [p for p in deleting if p.reason == "CleaningFailed"]
    assert cleaning_failures and "for cleaning" in cleaning_failures[0].message, [p.message for p in deleting]
    node = lab.node(node_uuid)
    assert node["provision_state"] == "manageable"
    assert node["instance_uuid"] is None and node["allocation_uuid"] is None
    assert not any(key.startswith("c3os_") for key in node["extra"]), node["extra"]
    assert lab.allocations_for_class(rc) == []
    assert fresh().deprovision(intent.identity, intent.site, intent.credentials).phase is Phase.DELETED
