"""A machine touches only its own Ironic node (issue 13): what another machine left on a
node is neither counted nor kept, a node whose allocation or tags name another object is
never changed or undeployed, and a running machine notices, within the health interval,
that its node was undeployed behind its back."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import pytest

from capi_c3os.api.infrastructure import IronicMachine, MachineImage
from capi_c3os.backends.base import MachineIdentity, Phase, Progress
from capi_c3os.backends.ironic import IronicBackend
from capi_c3os.backends.ironic.instance import (
    CLEAN_ATTEMPTS,
    CLUSTER,
    DEPLOY_ATTEMPTS,
    MARKER,
    NAME,
    NAMESPACE,
    PROVIDER_ID,
    allocation_request,
)
from capi_c3os.dev.processes import free_port
from tests.integration.ironic.lab import CHECKSUM, IronicLab, drive, new_resource_class
from tests.support import eventually

pytestmark = pytest.mark.integration


def leftovers(identity: MachineIdentity, deploys: int, cleans: int) -> dict[str, Any]:
    """What a machine torn down a moment ago leaves in a node's extra until its manager
    polls the deletion again."""
    return {
        MARKER: identity.uuid,
        PROVIDER_ID: identity.provider_id,
        NAMESPACE: identity.namespace,
        NAME: identity.name,
        CLUSTER: f"{identity.namespace}/gone",
        DEPLOY_ATTEMPTS: deploys,
        CLEAN_ATTEMPTS: cleans,
    }


def ours(extra: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in extra.items() if k.startswith("c3os_")}


def test_a_node_left_with_another_machines_tags_and_counters_is_deployed_as_attempt_one_without_them(
    lab: IronicLab, backend: IronicBackend
) -> None:
    rc = new_resource_class()
    [node_uuid] = lab.enroll(1, rc)
    old = MachineIdentity("edge", "old", "c3os://edge/old")
    patch = [{"op": "add", "path": f"/extra/{k}", "value": v} for k, v in leftovers(old, 4, 2).items()]
    lab.admin.node.update(node_uuid, patch)
    intent = lab.intent("fresh", IronicMachine(resource_class=rc), cluster="edge/c9")
    seen: list[Progress] = []

    running = drive(lambda: backend.provision(intent), {Phase.RUNNING}, seen)

    assert running.phase is Phase.RUNNING and running.details["nodeUUID"] == node_uuid
    deploying = [p.message for p in seen if p.reason == "Deploying"]
    assert deploying and "attempt 1 of 3" in deploying[0], deploying
    identity = intent.identity
    assert ours(lab.node(node_uuid)["extra"]) == {
        MARKER: identity.uuid,
        PROVIDER_ID: identity.provider_id,
        NAMESPACE: "edge",
        NAME: "fresh",
        CLUSTER: "edge/c9",
        DEPLOY_ATTEMPTS: 1,
    }, "the old machine's keys are gone, counters included"
    drive(lambda: backend.deprovision(identity, intent.site, intent.credentials), {Phase.DELETED})
    assert ours(lab.node(node_uuid)["extra"]) == {}


def test_a_failing_deploy_is_retried_as_often_as_allowed_whatever_another_machine_counted(
    lab: IronicLab,
) -> None:
    rc = new_resource_class()
    [node_uuid] = lab.enroll(1, rc)
    old = MachineIdentity("edge", "old", "c3os://edge/old")
    patch = [{"op": "add", "path": f"/extra/{k}", "value": v} for k, v in leftovers(old, 4, 0).items()]
    lab.admin.node.update(node_uuid, patch)
    # A `direct` deploy makes the conductor fetch the image; nothing listens there.
    intent = lab.intent(
        "unlucky",
        IronicMachine(resource_class=rc, deploy_interface="direct", automated_cleaning=False),
        image=MachineImage(url=f"http://127.0.0.1:{free_port()}/c3os.qcow2", checksum=CHECKSUM),
    )
    backend = IronicBackend(max_deploy_attempts=2)
    seen: list[Progress] = []

    failed = drive(lambda: backend.provision(intent), {Phase.RUNNING}, seen)

    assert failed.reason == "DeployFailed" and "failed 2 times" in failed.message, failed.message
    assert [p.reason for p in seen].count("RetryingDeploy") == 1, [p.reason for p in seen]
    assert lab.node(node_uuid)["extra"][DEPLOY_ATTEMPTS] == 2
    drive(lambda: backend.deprovision(intent.identity, intent.site, intent.credentials), {Phase.DELETED})
    assert ours(lab.node(node_uuid)["extra"]) == {}


def test_a_node_torn_down_for_one_machine_and_taken_by_the_next_is_left_to_the_next(
    lab: IronicLab,
) -> None:
    rc = new_resource_class()
    [node_uuid] = lab.enroll(1, rc)
    first, second = (lab.intent(name, IronicMachine(resource_class=rc)) for name in ("first", "second"))
    old_manager = IronicBackend()
    drive(lambda: old_manager.provision(first), {Phase.RUNNING})
    # The first machine's teardown starts; Ironic finishes it before that machine's manager
    # looks again, so the node is available still carrying the first machine's keys.
    undeploying = old_manager.deprovision(first.identity, first.site, first.credentials)
    assert undeploying.reason == "Undeploying", undeploying
    lab.wait_states([node_uuid], "available")
    assert lab.node(node_uuid)["extra"][MARKER] == first.identity.uuid
    seen: list[Progress] = []

    running = drive(lambda: IronicBackend().provision(second), {Phase.RUNNING}, seen)

    assert running.details["nodeUUID"] == node_uuid
    assert next(p.message for p in seen if p.reason == "Deploying").endswith("(attempt 1 of 3)")
    taken = lab.node(node_uuid)
    assert taken["extra"][MARKER] == second.identity.uuid and taken["extra"][DEPLOY_ATTEMPTS] == 1
    # The first machine's release, by the manager that started it and by a restarted one:
    # nothing of it remains, and the second machine's node is not touched.
    for manager in (old_manager, IronicBackend()):
        released = manager.deprovision(first.identity, first.site, first.credentials)
        assert released.phase is Phase.DELETED, released
        after = lab.node(node_uuid)
        assert after["provision_state"] == "active" and after["instance_uuid"] == second.identity.uuid
        assert after["extra"] == taken["extra"] and after["instance_info"] == taken["instance_info"]
        assert after["automated_clean"] == taken["automated_clean"]
    assert IronicBackend().provision(second).phase is Phase.RUNNING
    drive(
        lambda: IronicBackend().deprovision(second.identity, second.site, second.credentials), {Phase.DELETED}
    )


def test_calls_for_another_identity_never_change_or_undeploy_a_machines_node(
    lab: IronicLab, backend: IronicBackend
) -> None:
    """What reaches the backend when an object claims another's provider ID as its own
    (issue 13): the victim's UUID, but its own namespace and name."""
    rc = new_resource_class()
    deployed_node, allocated_node = lab.enroll(2, rc)
    victim = lab.intent("victim", IronicMachine(resource_class=rc, candidate_nodes=[deployed_node]))
    running = drive(lambda: backend.provision(victim), {Phase.RUNNING})
    assert running.details["nodeUUID"] == deployed_node
    # A second victim whose allocation Ironic has granted, not yet deployed.
    waiting = lab.intent("waiting", IronicMachine(resource_class=rc))
    request = allocation_request(waiting.identity, IronicMachine(resource_class=rc), waiting.cluster)
    lab.admin.allocation.create(**request)
    eventually(lambda: lab.node(allocated_node)["instance_uuid"] == waiting.identity.uuid, "allocation", 30)

    for target, node_uuid in ((victim, deployed_node), (waiting, allocated_node)):
        forged = MachineIdentity("tenant-b", "thief", target.identity.provider_id)
        assert forged.uuid == target.identity.uuid
        before = lab.node(node_uuid)
        [allocation] = lab.allocations_named(target.identity.resource_name)

        for attempt in (IronicBackend(), backend):
            deleted = attempt.deprovision(forged, target.site, target.credentials)
            provisioned = attempt.provision(replace(target, identity=forged))

            assert deleted.phase is Phase.DELETED and deleted.reason == "NodeOwnedByOther", deleted
            assert provisioned.phase is Phase.FAILED and provisioned.reason == "NodeOwnedByOther"
            assert f"belongs to edge/{target.identity.name}" in provisioned.message, provisioned.message
            after = lab.node(node_uuid)
            for key in ("provision_state", "instance_uuid", "extra", "instance_info", "maintenance"):
                assert after[key] == before[key], key
            assert lab.allocations_named(target.identity.resource_name) == [allocation]

    # The owners go on as before.
    assert backend.provision(victim).phase is Phase.RUNNING
    assert drive(lambda: backend.provision(waiting), {Phase.RUNNING}).details["nodeUUID"] == allocated_node
    site, credentials = victim.site, victim.credentials
    drive(lambda: backend.deprovision(victim.identity, site, credentials), {Phase.DELETED})
    drive(lambda: backend.deprovision(waiting.identity, site, credentials), {Phase.DELETED})


def test_a_node_pointed_at_a_machine_by_hand_is_neither_deployed_nor_undeployed(
    lab: IronicLab, backend: IronicBackend
) -> None:
    """Anyone who may write nodes can compute a machine's instance UUID (it is derived from
    the provider ID) and set it on a node they hold, hoping to receive the machine's
    bootstrap data (join token): without our allocation, that node is not the machine's."""
    rc = new_resource_class()
    [node_uuid] = lab.enroll(1, rc)
    intent = lab.intent("lured", IronicMachine(resource_class=rc))
    lab.admin.node.update(node_uuid, [{"op": "add", "path": "/instance_uuid", "value": intent.identity.uuid}])
    before = lab.node(node_uuid)

    provisioned = backend.provision(intent)
    deleted = backend.deprovision(intent.identity, intent.site, intent.credentials)

    assert provisioned.phase is Phase.FAILED and provisioned.reason == "NodeOwnedByOther", provisioned
    assert "no c3os tags" in provisioned.message
    assert deleted.phase is Phase.DELETED and deleted.reason == "NodeOwnedByOther", deleted
    after = lab.node(node_uuid)
    for key in ("provision_state", "instance_uuid", "extra", "instance_info"):
        assert after[key] == before[key], key
    assert lab.allocations_for_class(rc) == []
    lab.admin.node.update(node_uuid, [{"op": "remove", "path": "/instance_uuid"}])


def test_a_running_machine_reports_its_node_missing_within_the_health_interval(lab: IronicLab) -> None:
    rc = new_resource_class()
    lab.enroll(1, rc)
    intent = replace(lab.intent("watched", IronicMachine(resource_class=rc)), provisioned=True)
    backend = IronicBackend(health_interval=0.5)
    running = drive(lambda: backend.provision(replace(intent, provisioned=False)), {Phase.RUNNING})
    node_uuid = running.details["nodeUUID"]
    lab.admin.node.set_provision_state(node_uuid, "deleted")  # outside the cluster

    # What the reconciler does: call again when the backend asks to, and only then.
    progress = running
    seen = [progress]
    for _ in range(200):
        if progress.requeue_after is None:
            break
        time.sleep(progress.requeue_after)
        progress = backend.provision(intent)
        seen.append(progress)
        if progress.phase is Phase.MISSING:
            break

    assert progress.phase is Phase.MISSING and progress.reason == "NodeMissing", seen[-3:]
    assert progress.requeue_after is not None
    assert lab.allocations_for_class(rc) == [], "no second allocation"
    lab.wait_states([node_uuid], "available")
    drive(lambda: backend.deprovision(intent.identity, intent.site, intent.credentials), {Phase.DELETED})
