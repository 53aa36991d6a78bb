"""A teardown Ironic's conductor stopped halfway (the node stays `deleting` for good):
reported clearly, and finished by the backend once an operator restarts the conductor.

Ironic 39 on SQLite leaves exactly this behind when its teardown worker dies on "database
is locked" in `destroy_allocation` (see capi_c3os.dev.ironic): the node saved as
`deleting` with instance_uuid cleared, the allocation still there, cleaning never
started. The test Ironic retries those writes, so the test writes that state into Ironic's
own database itself, on its own Ironic (it restarts it)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from capi_c3os.api.infrastructure import IronicMachine
from capi_c3os.backends.base import Phase, Progress
from capi_c3os.backends.ironic import IronicBackend
from capi_c3os.dev.ironic import IronicServer, Shape
from tests.integration.ironic.lab import IronicLab, drive, new_resource_class
from tests.support import eventually

pytestmark = pytest.mark.integration


@pytest.fixture
def own_ironic(tmp_path: Path) -> Iterator[IronicServer]:
    # The stranded state is written into the SQLite file: the single shape whatever the run's.
    server = IronicServer(tmp_path / "ironic", shape=Shape.SINGLE).start()
    try:
        yield server
    finally:
        server.stop()


def strand_teardown(server: IronicServer, node_uuid: str) -> None:
    """The node as the dead worker left it (Ironic reads its SQLite file anew each time),
    once the conductor has let go of it (it may hold its lock a moment after `active`)."""

    def strand() -> bool:
        now = datetime.now(UTC).replace(tzinfo=None).isoformat(sep=" ")
        with sqlite3.connect(server.root / "ironic.sqlite", timeout=30) as db:
            changed: int = db.execute(
                "UPDATE nodes SET provision_state = 'deleting', target_provision_state = 'available', "
                "instance_uuid = NULL, instance_info = '{}', provision_updated_at = ? "
                "WHERE uuid = ? AND provision_state = 'active' AND reservation IS NULL",
                (now, node_uuid),
            ).rowcount
        return changed == 1

    eventually(strand, "the deployed node unlocked by the conductor", 30)


def test_a_stalled_teardown_is_reported_and_finished_after_a_conductor_restart(
    own_ironic: IronicServer,
) -> None:
    lab = IronicLab(own_ironic)
    rc = new_resource_class()
    [node_uuid] = lab.enroll(1, rc)
    intent = lab.intent("stalled", IronicMachine(resource_class=rc))
    backend = IronicBackend(stalled_teardown_after=0)
    drive(lambda: backend.provision(intent), {Phase.RUNNING})
    strand_teardown(own_ironic, node_uuid)

    def delete() -> Progress:
        return backend.deprovision(intent.identity, intent.site, intent.credentials)

    stalled = delete()
    assert stalled.phase is Phase.DELETING and stalled.reason == "TeardownStalled", stalled
    assert "restart the Ironic conductor" in stalled.message and node_uuid in stalled.message
    assert delete().reason == "TeardownStalled", "waiting changes nothing in Ironic"
    assert lab.node(node_uuid)["provision_state"] == "deleting"

    own_ironic.restart()
    assert lab.node(node_uuid)["provision_state"] == "error", "Ironic fails it on start"
    seen: list[Progress] = []
    deleted = drive(delete, {Phase.DELETED}, seen)

    assert deleted.reason == "Deleted", deleted
    assert "RetryingUndeploy" in {p.reason for p in seen}
    node = lab.node(node_uuid)
    assert node["provision_state"] == "available" and node["allocation_uuid"] is None
    assert not any(key.startswith("c3os_") for key in node["extra"]), node["extra"]
    assert lab.allocations_for_class(rc) == []
