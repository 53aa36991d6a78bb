"""The Ironic backend against a real standalone Ironic (fake-hardware nodes): lifecycle,
waiting for nodes, races, the concurrency cap and maintenance."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest

from capi_c3os.api.infrastructure import IronicMachine
from capi_c3os.backends.base import MachineIntent, Phase, Progress
from capi_c3os.backends.ironic import IronicBackend
from capi_c3os.backends.ironic.instance import MARKER
from tests.integration.ironic.lab import IronicLab, drive, new_resource_class, settle
from tests.support import eventually

pytestmark = pytest.mark.integration


def test_several_machines_are_deployed_and_released_as_ironic_records_show(
    lab: IronicLab, backend: IronicBackend
) -> None:
    rc = new_resource_class()
    lab.enroll(3, rc)
    network = {
        "links": [],
        "networks": [{"id": "n0", "type": "ipv4", "ip_address": "10.1.0.7"}],
        "services": [],
    }
    cluster = f"edge/{rc}"
    intents = [
        lab.intent(f"m{i}", IronicMachine(resource_class=rc), network_config=network, cluster=cluster)
        for i in range(3)
    ]

    with ThreadPoolExecutor(3) as pool:
        running = list(pool.map(lambda i: drive(lambda: backend.provision(i), {Phase.RUNNING}), intents))

    assert [p.phase for p in running] == [Phase.RUNNING] * 3, running
    node_uuids = {p.details["nodeUUID"] for p in running}
    assert len(node_uuids) == 3, "each machine has a node of its own"
    for intent, progress in zip(intents, running, strict=True):
        node = lab.node(progress.details["nodeUUID"])
        assert node["provision_state"] == "active"
        assert node["instance_uuid"] == intent.identity.uuid
        assert node["instance_info"]["configdrive"] == "******", (
            "Ironic holds the config drive (and hides it)"
        )
        assert node["instance_info"]["image_source"] == intent.image.url
        assert node["instance_info"]["image_os_hash_value"] == intent.image.checksum
        assert node["extra"][MARKER] == intent.identity.uuid
        [allocation] = lab.allocations_named(intent.identity.resource_name)
        assert allocation["uuid"] == intent.identity.uuid and allocation["node_uuid"] == node["uuid"]
        assert {(a.type, a.address) for a in progress.addresses} == {
            ("Hostname", intent.hostname),
            ("InternalIP", "10.1.0.7"),
        }
        # Calling again once running changes nothing.
        again = backend.provision(intent)
        assert again.phase is Phase.RUNNING and again.details["nodeUUID"] == node["uuid"]
    assert len(lab.allocations_for_class(rc)) == 3
    site, credentials = intents[0].site, intents[0].credentials
    assert backend.tagged_identities(site, credentials, cluster) == sorted(
        (i.identity for i in intents), key=lambda identity: identity.name
    ), "a cluster finds its machines in Ironic (orphan sweep)"

    # All at once (this lost teardowns in Ironic's SQLite before the test Ironic retried
    # its allocation writes: capi_c3os.dev.ironic.SQLITE_RETRY_LAUNCHER).
    def delete(intent: MachineIntent) -> Progress:
        identity, site, credentials = intent.identity, intent.site, intent.credentials
        return drive(lambda: backend.deprovision(identity, site, credentials), {Phase.DELETED})

    with ThreadPoolExecutor(3) as pool:
        deleted = list(pool.map(delete, intents))

    assert [p.reason for p in deleted] == ["Deleted"] * 3, deleted
    assert lab.allocations_for_class(rc) == []
    for node in lab.nodes_of_class(rc):
        assert node["provision_state"] == "available"
        assert node["instance_uuid"] is None and node["allocation_uuid"] is None
        assert not any(key.startswith("c3os_") for key in node["extra"]), node["extra"]
        assert node["automated_clean"] is None, "the node goes back to the conductor's default"
    gone = backend.deprovision(intents[0].identity, intents[0].site, intents[0].credentials)
    assert gone.phase is Phase.DELETED
    assert backend.tagged_identities(site, credentials, cluster) == []


def test_machine_waits_for_a_matching_node_and_proceeds_once_one_is_enrolled(
    lab: IronicLab, backend: IronicBackend
) -> None:
    rc = new_resource_class()
    intent = lab.intent("waiter", IronicMachine(resource_class=rc, traits=["CUSTOM_GPU"]))
    seen: list[Progress] = []

    waiting = drive(lambda: backend.provision(intent), {Phase.PROVISIONING}, seen)
    while waiting.reason == "AllocatingNode":
        waiting = drive(lambda: backend.provision(intent), {Phase.PROVISIONING}, seen)

    assert waiting.reason == "WaitingForNode"
    assert rc in waiting.message and "CUSTOM_GPU" in waiting.message
    assert "no available nodes" in waiting.message, "Ironic's own words are passed on"
    assert lab.allocations_named(intent.identity.resource_name) == [], (
        "a failed allocation is not left behind"
    )

    lab.enroll(1, rc)  # a node without the trait does not match
    lab.enroll(1, rc, traits=["CUSTOM_GPU"])
    running = drive(lambda: backend.provision(intent), {Phase.RUNNING}, seen)

    assert running.phase is Phase.RUNNING
    assert "CUSTOM_GPU" in lab.node(running.details["nodeUUID"])["traits"]
    assert lab.node(running.details["nodeUUID"])["instance_info"]["traits"] == ["CUSTOM_GPU"]
    drive(lambda: backend.deprovision(intent.identity, intent.site, intent.credentials), {Phase.DELETED})


def test_two_machines_racing_for_one_node_one_wins_the_other_waits(lab: IronicLab) -> None:
    rc = new_resource_class()
    [node_uuid] = lab.enroll(1, rc)
    intents = [lab.intent(f"racer-{i}", IronicMachine(resource_class=rc)) for i in range(2)]
    start = threading.Barrier(2)

    def race(intent_index: int) -> Progress:
        backend = IronicBackend()  # two managers, even: nothing shared but Ironic
        intent = intents[intent_index]
        start.wait()
        return settle(lambda: backend.provision(intent))

    with ThreadPoolExecutor(2) as pool:
        outcomes = list(pool.map(race, range(2)))

    winners = [o for o in outcomes if o.details.get("nodeUUID") == node_uuid]
    losers = [o for o in outcomes if o.reason == "WaitingForNode"]
    assert len(winners) == 1 and len(losers) == 1, outcomes
    assert "no Ironic node is free for the machine" in losers[0].message
    allocations = lab.allocations_for_class(rc)
    assert len(allocations) == 1 and allocations[0]["node_uuid"] == node_uuid
    winner = intents[outcomes.index(winners[0])]
    assert lab.node(node_uuid)["instance_uuid"] == winner.identity.uuid
    backend = IronicBackend()
    drive(lambda: backend.provision(winner), {Phase.RUNNING})
    drive(lambda: backend.deprovision(winner.identity, winner.site, winner.credentials), {Phase.DELETED})


def test_deploys_beyond_the_sites_concurrency_cap_wait_for_a_slot(lab: IronicLab) -> None:
    rc = new_resource_class()
    lab.enroll(2, rc)
    busy_now = sum(
        1
        for n in lab.admin.node.list(fields=["provision_state"], limit=0)
        if n.provision_state in ("deploying", "wait call-back", "cleaning", "clean wait", "deleting")
    )
    site = lab.site(max_concurrent=busy_now + 1)
    first, second = (lab.intent(f"capped-{i}", IronicMachine(resource_class=rc), site=site) for i in range(2))
    # Counted once from Ironic, then only by this backend's own starts: deterministic.
    backend = IronicBackend(slot_count_ttl=3600)

    started = settle(lambda: backend.provision(first))
    blocked = settle(lambda: backend.provision(second))

    assert started.reason in ("Deploying", "Deployed"), started
    assert blocked.reason == "WaitingForProvisioningSlot", blocked
    assert f"maxConcurrentProvisioning is {busy_now + 1}" in blocked.message
    assert lab.node(blocked.details["nodeUUID"])["provision_state"] == "available", "no deploy was requested"

    fresh = IronicBackend()  # counts anew from Ironic: the first deploy has finished
    drive(lambda: fresh.provision(first), {Phase.RUNNING})
    drive(lambda: fresh.provision(second), {Phase.RUNNING})
    drive(lambda: fresh.deprovision(first.identity, first.site, first.credentials), {Phase.DELETED})
    drive(lambda: fresh.deprovision(second.identity, second.site, second.credentials), {Phase.DELETED})


def test_maintenance_set_by_hand_is_cleared_before_the_deploy(lab: IronicLab, backend: IronicBackend) -> None:
    rc = new_resource_class()
    [node_uuid] = lab.enroll(1, rc)
    intent = lab.intent("maint", IronicMachine(resource_class=rc))
    first = backend.provision(intent)
    assert first.reason == "AllocatingNode", "Ironic allocates asynchronously"
    eventually(lambda: lab.node(node_uuid)["instance_uuid"] == intent.identity.uuid, "allocation", timeout=30)
    lab.admin.node.set_maintenance(node_uuid, True, maint_reason="BMC firmware update")

    seen: list[Progress] = []
    running = drive(lambda: backend.provision(intent), {Phase.RUNNING}, seen)

    assert running.phase is Phase.RUNNING
    clearing = [p for p in seen if p.reason == "ClearingMaintenance"]
    assert clearing and "BMC firmware update" in clearing[0].message
    assert lab.node(node_uuid)["maintenance"] is False
    drive(lambda: backend.deprovision(intent.identity, intent.site, intent.credentials), {Phase.DELETED})


def test_a_running_machine_whose_node_was_undeployed_by_hand_is_missing_not_redeployed(
    lab: IronicLab, backend: IronicBackend
) -> None:
    rc = new_resource_class()
    lab.enroll(2, rc)
    intent = lab.intent("vanishing", IronicMachine(resource_class=rc))
    running = drive(lambda: backend.provision(intent), {Phase.RUNNING})
    node_uuid = running.details["nodeUUID"]
    lab.admin.node.set_provision_state(node_uuid, "deleted")  # an operator, outside the cluster
    lab.wait_states([node_uuid], "available")

    missing = IronicBackend().provision(replace(intent, provisioned=True))

    assert missing.phase is Phase.MISSING and missing.reason == "NodeMissing", missing
    assert lab.allocations_for_class(rc) == [], "no second allocation"
    assert all(n["provision_state"] == "available" for n in lab.nodes_of_class(rc)), "no second deploy"
    deleted = drive(
        lambda: IronicBackend().deprovision(intent.identity, intent.site, intent.credentials), {Phase.DELETED}
    )
    assert deleted.phase is Phase.DELETED
    assert not any(k.startswith("c3os_") for k in lab.node(node_uuid)["extra"]), (
        "the marker left behind is removed"
    )
