"""A manager can die at any line. Here it dies at every request that changes Ironic, just
before the request and just after it, and a new backend (a restarted manager: nothing in
memory) carries on from what Ironic holds: one allocation, one node, a clean end."""

from __future__ import annotations

from typing import Any

import pytest

from capi_c3os.api.infrastructure import IronicMachine, IronicSite
from capi_c3os.backends.base import BackendError, MachineIntent, Phase, Progress, SiteCredentials
from capi_c3os.backends.ironic import IronicBackend
from capi_c3os.backends.ironic.client import IronicApi, connect
from capi_c3os.backends.ironic.instance import DEPLOY_ATTEMPTS
from tests.integration.ironic.lab import IronicLab, new_resource_class
from tests.support import eventually

pytestmark = pytest.mark.integration

MUTATIONS = ("create_allocation", "delete_allocation", "patch_node", "set_provision_state", "set_maintenance")
# A whole lifecycle with fake-hardware makes five changes: create the allocation, patch
# the node, request the deploy, request the undeploy, drop the marker.
LIFECYCLE_CHANGES = 5


class Crash(BaseException):
    """The process dies here (BaseException: nothing in the backend may swallow it)."""


class CrashingApi:
    """The real API, except that the n-th change dies before or after reaching Ironic."""

    def __init__(self, api: IronicApi, crash_at: int, after: bool, counter: list[int]) -> None:
        self._api = api
        self._crash_at = crash_at
        self._after = after
        self._counter = counter

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._api, name)
        if name not in MUTATIONS:
            return real

        def change(*args: Any, **kwargs: Any) -> Any:
            index = self._counter[0]
            self._counter[0] += 1
            if index == self._crash_at and not self._after:
                raise Crash(f"before {name}")
            result = real(*args, **kwargs)
            if index == self._crash_at:
                raise Crash(f"after {name}")
            return result

        return change


def crashing_backend(crash_at: int, after: bool, counter: list[int]) -> IronicBackend:
    def connector(site: IronicSite, credentials: SiteCredentials) -> Any:
        return CrashingApi(connect(site, credentials), crash_at, after, counter)

    return IronicBackend(connector=connector)


def check_invariants(lab: IronicLab, intent: MachineIntent, rc: str) -> None:
    allocations = lab.allocations_for_class(rc)
    assert len(allocations) <= 1, allocations
    assert all(a["uuid"] == intent.identity.uuid for a in allocations)
    ours = [n for n in lab.nodes_of_class(rc) if n["instance_uuid"] == intent.identity.uuid]
    assert len(ours) <= 1, ours


def run_through_crash(
    lab: IronicLab, intent: MachineIntent, rc: str, crash_at: int, after: bool
) -> tuple[Progress, list[str]]:
    """Provision to RUNNING, then deprovision to DELETED; the first backend dies at change
    number `crash_at`, every later call gets a fresh backend."""
    counter = [0]
    backend = crashing_backend(crash_at, after, counter)
    crashes: list[str] = []

    def step(call: str) -> Progress | None:
        nonlocal backend
        try:
            if call == "provision":
                progress = backend.provision(intent)
            else:
                progress = backend.deprovision(intent.identity, intent.site, intent.credentials)
        except Crash as crash:
            crashes.append(str(crash))
            backend = IronicBackend()  # the restarted manager
            return None
        except BackendError as err:  # retryable (e.g. SQLite busy): the reconciler requeues
            assert err.retry_after is not None, err
            return None
        finally:
            check_invariants(lab, intent, rc)
        return progress if progress.phase in (Phase.RUNNING, Phase.DELETED, Phase.FAILED) else None

    running = eventually(lambda: step("provision"), "machine running", timeout=90, every=0.1)
    assert running.phase is Phase.RUNNING, running
    node = lab.node(running.details["nodeUUID"])
    assert node["instance_uuid"] == intent.identity.uuid and node["provision_state"] == "active"
    # A crash between counting the attempt and requesting the deploy costs one count.
    assert node["extra"][DEPLOY_ATTEMPTS] in (1, 2)
    deleted = eventually(lambda: step("deprovision"), "machine deleted", timeout=90, every=0.1)
    return deleted, crashes


@pytest.mark.parametrize("after", [False, True], ids=["before-request", "after-request"])
@pytest.mark.parametrize("crash_at", range(LIFECYCLE_CHANGES))
def test_a_crash_at_any_change_resumes_with_one_allocation_and_a_clean_end(
    lab: IronicLab, crash_at: int, after: bool
) -> None:
    rc = new_resource_class()
    lab.enroll(2, rc)  # a spare node: a second allocation would find it
    intent = lab.intent(f"crash-{crash_at}-{int(after)}", IronicMachine(resource_class=rc))

    deleted, crashes = run_through_crash(lab, intent, rc, crash_at, after)

    assert len(crashes) == 1, f"the crash point was reached exactly once: {crashes}"
    assert deleted.phase is Phase.DELETED, deleted
    assert lab.allocations_for_class(rc) == []
    for node in lab.nodes_of_class(rc):
        assert node["provision_state"] == "available", node["provision_state"]
        assert node["instance_uuid"] is None
        assert not any(key.startswith("c3os_") for key in node["extra"]), (crashes, node["extra"])
