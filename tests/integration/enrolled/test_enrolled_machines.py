"""Issue 17, phase 1: C3osMachines on an enrolled site, against the real API server and
the real CAPI core manager, with our manager as a process. Hosts' agents are the test's
own HTTPS client (agent.py); phase 2 puts a real agent into the live ISO and boots VMs.

Claim (exactly one of two racing machines wins; a crash after the claim finds it again),
assignment (bootstrap data only to the claiming host), progress and failures on the
machine, release (reset, reuse), and a host lost during its reset."""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from capi_c3os.api.hosts import C3osHost, C3osHostStatus
from capi_c3os.backends.base import MachineIdentity, MachineIntent, Phase, SiteCredentials
from capi_c3os.backends.enrolled import EnrolledBackend
from capi_c3os.reconcilers.c3osmachine import FINALIZER
from capi_c3os.reconcilers.host_inventory import KubeInventory
from capi_c3os.reconcilers.kube import Kube
from tests.integration.enrolled.agent import Agent, hardware
from tests.integration.enrolled.conftest import (
    POOL,
    Endpoint,
    StartEndpoint,
    enrolled_site,
    host_of,
    host_phase,
    machine_spec,
    make_site,
)
from tests.integration.libvirt.conftest import CAPI, INFRA, Capi
from tests.support import eventually

pytestmark = pytest.mark.integration

UUIDS = [f"4C4C4544-0031-4A10-8044-B4C04F4A30{i:02d}" for i in range(10)]
USER_DATA = b"#cloud-config\nhostname: worker\n"


def name_of(system_uuid: str) -> str:
    return "host-" + system_uuid.lower()


def claim_of(objects: Capi, host: str) -> dict[str, Any]:
    return ((host_of(objects, host) or {}).get("status") or {}).get("claim") or {}


def ready_reason(objects: Capi, machine: str) -> str | None:
    return objects.ready(machine).get("reason")


def wait_reason(objects: Capi, machine: str, reason: str, timeout: float = 60) -> None:
    eventually(
        lambda: ready_reason(objects, machine) == reason,
        f"C3osMachine {machine} Ready reason {reason}",
        timeout,
        explain=lambda: objects.ready_message(machine),
    )


@dataclass
class Pool:
    """The test's enrolled site (Cluster `c`, site `lab`, its token Secret) and the
    manager serving enrollment for it."""

    objects: Capi
    endpoint: Endpoint
    token: str

    def host(self, system_uuid: str, **facts: Any) -> Agent:
        """A host registered into the pool with the site's token."""
        agent = self.endpoint.agent()
        answer = agent.register(self.objects.namespace, POOL, self.token, hardware(system_uuid, **facts))
        assert answer.status == 200, answer.body
        return agent


OpenPool = Callable[..., Pool]


@pytest.fixture
def open_pool(capi: Capi, start_endpoint: StartEndpoint) -> OpenPool:
    """The site, then the manager (started with `flags`)."""

    def open_(*flags: str) -> Pool:
        token = make_site(capi)
        return Pool(capi, start_endpoint(*flags), token)

    return open_


@pytest.fixture
def pool(open_pool: OpenPool) -> Pool:
    return open_pool()


def claimed(objects: Capi, machine: str, agent: Agent) -> str:
    eventually(
        lambda: claim_of(objects, agent.name).get("machine") == machine,
        f"{machine} to claim {agent.name}",
        60,
    )
    return str(claim_of(objects, agent.name)["id"])


def test_a_claimed_host_installs_boots_and_its_machine_is_provisioned(capi: Capi, pool: Pool) -> None:
    host = pool.host(UUIDS[0])
    other = pool.host(UUIDS[1], memory_mib=8192)
    only_16 = machine_spec(hostSelector={"matchLabels": {"host.c3os.io/memory-gib": "16"}})
    capi.create_machine("c", "m1", only_16, USER_DATA)
    claim = claimed(capi, "m1", host)
    assert claim_of(capi, other.name) == {}  # the selector left it out
    wait_reason(capi, "m1", "WaitingForHostAgent")
    machine = capi.must_get(INFRA, "c3osmachines", "m1")
    assert machine["status"]["failureDomain"] == "lab"
    assert machine["status"]["backend"]["enrolled"] == {
        "host": host.name, "systemUUID": UUIDS[0], "installDisk": "/dev/nvme0n1", "hostPhase": "Claimed",
    }  # fmt: skip

    # The claiming host gets its assignment; the other host gets nothing of it.
    assignment = host.assignment().body
    assert (assignment["action"], assignment["id"]) == ("install", claim)
    install = assignment["install"]
    assert base64.b64decode(install["userData"]) == USER_DATA
    assert install["disk"] == "/dev/nvme0n1"  # the fixed disk, never the registration stick
    assert install["image"]["url"] == "https://images.example/c3os.iso"
    # The providerID names the host (its system UUID) and the machine.
    provider_id = f"c3os://{capi.namespace}/{host.name}/m1"
    assert install["metaData"]["provider-id"] == provider_id
    assert install["metaData"]["local-hostname"] == "m1"
    assert other.assignment().body == {"action": "wait", "reason": "Idle", "pollSeconds": 15}

    assert host.report("installing", claim, "writing /dev/nvme0n1").status == 204
    wait_reason(capi, "m1", "Installing")
    assert "writing /dev/nvme0n1" in capi.ready_message("m1")
    assert host.report("booted", claim).status == 409  # not installed yet
    assert host.report("installed", claim).status == 204
    wait_reason(capi, "m1", "WaitingForBoot")
    assert host.report("booted", claim).status == 204
    provisioned = eventually(lambda: capi.provisioned("m1"), "the machine provisioned", 60)
    assert provisioned["spec"]["providerID"] == provider_id
    assert capi.ready("m1")["status"] == "True" and ready_reason(capi, "m1") == "HostBooted"
    assert host.assignment().body["action"] == "run"


def test_a_failed_install_reaches_the_machine_with_the_hosts_words(capi: Capi, pool: Pool) -> None:
    host = pool.host(UUIDS[0])
    capi.create_machine("c", "m1", machine_spec(), USER_DATA)
    claim = claimed(capi, "m1", host)
    assert host.report("no-matching-disk", claim, "/dev/nvme0n1 not found").status == 204
    wait_reason(capi, "m1", "NoMatchingDisk")
    assert "/dev/nvme0n1 not found" in capi.ready_message("m1")
    assert capi.ready("m1")["status"] == "False"
    assert host.assignment().body["action"] == "wait"  # no second install of a failed claim


def test_a_released_host_resets_returns_to_the_pool_and_serves_the_next_machine(
    capi: Capi, pool: Pool
) -> None:
    host = pool.host(UUIDS[0])
    capi.create_machine("c", "m1", machine_spec(), USER_DATA)
    first = claimed(capi, "m1", host)
    assert host.report("installing", first).status == 204

    capi.delete(CAPI, "machines", "m1")
    eventually(lambda: host_phase(capi, host.name) == "Resetting", "the host told to reset", 60)
    assignment = host.assignment().body
    assert assignment == {"action": "reset", "id": first, "pollSeconds": 15}  # nothing of m1's data
    assert host.report("installed", first).status == 409  # the claim is gone
    wait_reason(capi, "m1", "WaitingForHostReset")
    assert capi.get(INFRA, "c3osmachines", "m1") is not None  # deletion waits for the reset

    assert host.report("reset-done", first).status == 204
    eventually(lambda: capi.get(INFRA, "c3osmachines", "m1") is None, "the machine gone", 60)
    assert host_phase(capi, host.name) == "Available"

    capi.create_machine("c", "m2", machine_spec(), b"#cloud-config\nhostname: second\n")
    second = claimed(capi, "m2", host)
    assert second != first
    install = host.assignment().body["install"]
    assert base64.b64decode(install["userData"]) == b"#cloud-config\nhostname: second\n"
    assert host.report("installing", first).status == 409  # a report of the old claim reaches nobody


def test_a_host_that_does_not_report_its_reset_is_lost_and_must_reset_before_reuse(
    capi: Capi, open_pool: OpenPool
) -> None:
    pool = open_pool("--host-reset-timeout=3")
    host = pool.host(UUIDS[0])
    capi.create_machine("c", "m1", machine_spec(), USER_DATA)
    claim = claimed(capi, "m1", host)
    capi.delete(CAPI, "machines", "m1")
    eventually(lambda: capi.get(INFRA, "c3osmachines", "m1") is None, "the machine deletion to complete", 90)
    assert host_phase(capi, host.name) == "Lost"
    assert host_of(capi, host.name)["status"]["reason"] == "ResetTimeout"  # type: ignore[index]

    # It comes back (rebooted into the registration image): it must wipe first.
    again = pool.host(UUIDS[0])
    assert host_phase(capi, host.name) == "Resetting"
    assert again.assignment().body == {"action": "reset", "id": claim, "pollSeconds": 15}
    assert again.report("reset-done", claim).status == 204
    assert host_phase(capi, host.name) == "Available"


def test_two_machines_racing_for_one_host_through_the_manager_one_wins(
    capi: Capi, open_pool: OpenPool
) -> None:
    pool = open_pool("--max-concurrent-reconciles=4")
    host = pool.host(UUIDS[0])
    capi.create_machine("c", "m1", machine_spec(), USER_DATA)
    capi.create_machine("c", "m2", machine_spec(), USER_DATA)
    winner = eventually(lambda: claim_of(capi, host.name).get("machine"), "one machine to claim the host", 60)
    loser = "m2" if winner == "m1" else "m1"
    wait_reason(capi, loser, "WaitingForHost")
    assert claim_of(capi, host.name)["machine"] == winner


def test_a_machine_finds_the_host_it_claimed_before_its_manager_died(
    capi: Capi, pool: Pool, start_endpoint: StartEndpoint
) -> None:
    hosts = [pool.host(u) for u in UUIDS[:3]]
    capi.create_machine("c", "m1", machine_spec(), USER_DATA)
    mine = eventually(
        lambda: next((h for h in hosts if claim_of(capi, h.name).get("machine") == "m1"), None), "a claim", 60
    )
    first_claim = claim_of(capi, mine.name)
    pool.endpoint.manager.stop(sig=9)  # a crash: no clean shutdown
    # The claim is all a dead manager left (the machine's status may say nothing yet).
    capi.custom.patch_namespaced_custom_object_status(*INFRA, capi.namespace, "c3osmachines", "m1",
                                                      {"status": {"backend": None}})  # fmt: skip
    start_endpoint()
    eventually(
        lambda: (capi.must_get(INFRA, "c3osmachines", "m1").get("status") or {}).get("backend"),
        "the new manager to report the machine's host",
        60,
    )
    assert capi.must_get(INFRA, "c3osmachines", "m1")["status"]["backend"]["enrolled"]["host"] == mine.name
    assert claim_of(capi, mine.name) == first_claim
    assert [h.name for h in hosts if claim_of(capi, h.name)] == [mine.name]


# --------------------------------------------------------------- the backend on its own


class RacingInventory(KubeInventory):
    """The real inventory, but every racer reads the hosts before any of them writes:
    the claims race on the same resourceVersion."""

    def __init__(self, kube: Kube, barrier: threading.Barrier) -> None:
        super().__init__(kube)
        self.barrier = barrier

    def hosts(self, namespace: str) -> list[C3osHost]:
        found = super().hosts(namespace)
        self.barrier.wait(timeout=30)
        return found


class CrashAfterClaim(KubeInventory):
    """The real inventory whose process dies right after its first status write."""

    def replace_status(self, host: C3osHost, status: C3osHostStatus) -> C3osHost | None:
        super().replace_status(host, status)
        raise KeyboardInterrupt("killed after the claim was written")


def intent(objects: Capi, machine: str) -> MachineIntent:
    from capi_c3os.api.infrastructure import C3osMachineSpec, Site  # noqa: PLC0415

    spec = C3osMachineSpec.model_validate(machine_spec())
    return MachineIntent(
        identity=MachineIdentity(objects.namespace, machine, f"c3os://{objects.namespace}/{machine}"),
        site=Site.model_validate({"name": "lab", **enrolled_site()}),
        credentials=SiteCredentials(),
        image=spec.image,
        cpus=1, memory_mib=256, disk_gib=1, hostname=machine, user_data=b"", meta_data={},
        enrolled=spec.backend.enrolled,
    )  # fmt: skip


def race(objects: Capi, kube: Kube, machines: list[str]) -> dict[str, Any]:
    """Each machine's provision on its own backend and thread, started together."""
    barrier = threading.Barrier(len(machines))
    results: dict[str, Any] = {}

    def provision(machine: str) -> None:
        results[machine] = EnrolledBackend(RacingInventory(kube, barrier)).provision(intent(objects, machine))

    threads = [threading.Thread(target=provision, args=(m,)) for m in machines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


def test_of_two_racing_claims_on_the_real_api_server_exactly_one_wins(
    capi: Capi, k8s: Any, pool: Pool
) -> None:
    """Two backends (as two managers would be) read the same host at the same version and
    both try to claim it, round after round; the API server's optimistic concurrency lets
    exactly one through each time."""
    kube = Kube(k8s)
    for round_ in range(8):
        host = pool.host(UUIDS[round_])
        results = race(capi, kube, [f"r{round_}a", f"r{round_}b"])
        won = [m for m, progress in results.items() if progress.reason == "WaitingForHostAgent"]
        lost = [m for m, progress in results.items() if progress.reason == "ClaimConflict"]
        assert len(won) == 1 and len(lost) == 1, results
        assert claim_of(capi, host.name)["machine"] == won[0]
        # Retire the host so the next round races for a fresh one.
        capi.custom.patch_namespaced_custom_object(*INFRA, capi.namespace, "c3oshosts", host.name,
                                                   {"spec": {"accepted": False}})  # fmt: skip


def test_a_backend_that_died_right_after_its_claim_claims_nothing_more(
    capi: Capi, k8s: Any, pool: Pool
) -> None:
    for u in UUIDS[:3]:
        pool.host(u)
    kube = Kube(k8s)
    with pytest.raises(KeyboardInterrupt):
        EnrolledBackend(CrashAfterClaim(kube)).provision(intent(capi, "m1"))
    progress = EnrolledBackend(KubeInventory(kube)).provision(intent(capi, "m1"))
    assert progress.phase is Phase.PROVISIONING and progress.reason == "WaitingForHostAgent"
    held = [u for u in UUIDS[:3] if claim_of(capi, name_of(u)).get("machine") == "m1"]
    assert held == [progress.details["systemUUID"]]


def test_an_image_volume_is_refused_on_an_enrolled_site(capi: Capi, pool: Pool) -> None:
    host = pool.host(UUIDS[0])
    capi.create_machine("c", "m1", {**machine_spec(), "image": {"volume": "base"}}, USER_DATA)
    wait_reason(capi, "m1", "UnsupportedImage")
    assert claim_of(capi, host.name) == {}


def test_the_cluster_releases_the_host_of_a_machine_deleted_behind_its_back(capi: Capi, pool: Pool) -> None:
    host = pool.host(UUIDS[0])
    capi.create_machine("c", "m1", machine_spec(), USER_DATA)
    claim = claimed(capi, "m1", host)
    assert claim_of(capi, host.name)["cluster"] == "c"
    # Someone removes our finalizer by hand: the machine goes without a release.
    capi.custom.patch_namespaced_custom_object(*INFRA, capi.namespace, "c3osmachines", "m1",
                                               {"metadata": {"finalizers": None}})  # fmt: skip
    capi.delete(CAPI, "machines", "m1")
    eventually(lambda: capi.get(INFRA, "c3osmachines", "m1") is None, "the machine gone", 60)
    # Any change of the C3osCluster reconciles it (else the periodic resync would).
    capi.custom.patch_namespaced_custom_object(*INFRA, capi.namespace, "c3osclusters", "c",
                                               {"metadata": {"annotations": {"touch": "1"}}})  # fmt: skip
    eventually(lambda: host_phase(capi, host.name) == "Resetting", "the orphaned host released", 60)
    assert host.assignment().body == {"action": "reset", "id": claim, "pollSeconds": 15}


def test_a_providerid_naming_a_host_is_the_providers_to_write(capi: Capi, pool: Pool) -> None:
    host = pool.host(UUIDS[0])
    other = pool.host(UUIDS[1])
    capi.custom.patch_namespaced_custom_object(*INFRA, capi.namespace, "c3oshosts", other.name,
                                               {"spec": {"accepted": False}})  # fmt: skip
    # Written by hand at creation (the server takes the form): refused, nothing claimed.
    capi.create_machine("c", "m1", {**machine_spec(), "providerID": f"c3os://{capi.namespace}/{host.name}/m1"},
                        USER_DATA)  # fmt: skip
    wait_reason(capi, "m1", "InvalidProviderID")
    assert claim_of(capi, host.name) == {}
    # With our finalizer added by hand as well, the host it names is checked against the
    # claim: m2 claims `host` (the only accepted one), its providerID names `other`.
    meta = {"name": "m2", "labels": {"cluster.x-k8s.io/cluster-name": "c"}, "finalizers": [FINALIZER]}
    capi.create(INFRA, "c3osmachines", {
        "apiVersion": "/".join(INFRA), "kind": "C3osMachine", "metadata": meta,
        "spec": {**machine_spec(), "providerID": f"c3os://{capi.namespace}/{other.name}/m2"},
    })  # fmt: skip
    capi.create_secret("m2-bootstrap", {"value": USER_DATA, "format": b"cloud-config"})
    capi.create(CAPI, "machines", {
        "apiVersion": "/".join(CAPI), "kind": "Machine",
        "metadata": {"name": "m2", "labels": {"cluster.x-k8s.io/cluster-name": "c"}},
        "spec": {"clusterName": "c", "bootstrap": {"dataSecretName": "m2-bootstrap"},
                 "infrastructureRef": {"apiGroup": INFRA[0], "kind": "C3osMachine", "name": "m2"}},
    })  # fmt: skip
    claimed(capi, "m2", host)
    wait_reason(capi, "m2", "InvalidProviderID")
    assert capi.provisioned("m2") is None
    assert host.assignment().body == {"action": "wait", "reason": "MachineNotReady", "pollSeconds": 15}


def test_an_owner_reference_written_by_hand_hands_out_no_other_machines_bootstrap_data(
    capi: Capi, pool: Pool
) -> None:
    """Whoever edits C3osMachines can write their ownerReferences; CAPI adopts only the
    infrastructure machine its Machine references. A C3osMachine claiming to be owned by
    another Machine (a server's, say) must not install a host with its bootstrap data."""
    host = pool.host(UUIDS[0])
    secret = b"#cloud-config\n# the victim's join secrets\n"
    capi.create_machine("c", "victim", machine_spec(hostSelector={"matchLabels": {"no": "host"}}), secret)
    victim = capi.must_get(CAPI, "machines", "victim")
    owner = {"apiVersion": "/".join(CAPI), "kind": "Machine", "name": "victim",
             "uid": victim["metadata"]["uid"], "controller": True}  # fmt: skip
    capi.create(INFRA, "c3osmachines", {
        "apiVersion": "/".join(INFRA), "kind": "C3osMachine",
        "metadata": {"name": "thief", "labels": {"cluster.x-k8s.io/cluster-name": "c"},
                     "ownerReferences": [owner]},
        "spec": machine_spec(),
    })  # fmt: skip
    wait_reason(capi, "thief", "OwnerMachineMismatch")
    assert claim_of(capi, host.name) == {}
    assert host.assignment().body == {"action": "wait", "reason": "Idle", "pollSeconds": 15}
