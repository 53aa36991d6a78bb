"""Issue 21: what a reconcile of a bare-metal machine costs, counted on the real servers.

- A write that meets a 409 only because CAPI changed the object's metadata meanwhile
  (its Machine controller sets owner references and labels while we reconcile) is made
  again on the fresh object, not thrown away with the whole reconcile; a spec change
  meanwhile still ends the reconcile with the conflict.
- A C3osMachine reconcile in the manager reads its Machine, Cluster, C3osCluster and
  bootstrap Secret from the manager's watches, not with a GET each time (counted by the
  manager's own request metric).
- A running machine's node is looked at in Ironic once per health interval, whatever
  else wakes its reconcile (the periodic resync, every few minutes for every machine);
  the interval is the manager's --ironic-health-interval, by default no shorter than the
  resync period (an idle machine: at most one Ironic request per resync).
- The Ironic client keeps a connection per reconcile that may run at once: none is
  opened and dropped per request when the pool is larger than requests' default 10.
- The site's busy-node count (maxConcurrentProvisioning) reads the busy nodes, not every
  node of the site: its cost does not grow with the site.
- kopf's event of a version our own reconcile wrote and went on from (the claim, before
  that reconcile's status patch) starts no reconcile; another writer's change, and a
  version our write made on a body read afresh after a 409, still do. Nor does an object
  of a resync's listing that our own reconcile wrote since (a pass over 100 machines
  takes a while; its bodies go stale under the requeues).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import pytest
import requests

from capi_c3os.api.infrastructure import IronicMachine, IronicSite
from capi_c3os.backends import ironic
from capi_c3os.backends.base import BackendError, Phase, SiteCredentials
from capi_c3os.backends.ironic import IronicBackend
from capi_c3os.backends.ironic import client as ironic_client
from capi_c3os.backends.ironic.client import IronicApi, connect
from capi_c3os.backends.registry import Backends
from capi_c3os.capi.conditions import new_condition
from capi_c3os.capi.outcome import Outcome
from capi_c3os.capi.owners import owner_machine_name
from capi_c3os.capi.status import status_patch
from capi_c3os.dev.ironic import IronicServer
from capi_c3os.dev.manager import Manager
from capi_c3os.operator import run
from capi_c3os.operator.handlers.common import handle
from capi_c3os.operator.resync import Resync
from capi_c3os.operator.runtime import Kind, Runtime
from capi_c3os.reconcilers import c3oscluster, c3osmachine
from capi_c3os.reconcilers.c3osmachine import C3OS_CLUSTERS, FINALIZER
from capi_c3os.reconcilers.kube import ConflictError, Kube, OwnWrites, Resource
from tests.integration.ironic.lab import USER_DATA, IronicLab, drive, new_resource_class
from tests.integration.ironic.test_ironic_machine import machine_spec
from tests.integration.libvirt.conftest import INFRA, Capi
from tests.support import eventually

pytestmark = pytest.mark.integration

MACHINES = Resource(INFRA[0], INFRA[1], "c3osmachines", "C3osMachine")
RECORD_KEY = bytes(32)  # stands in for the manager's key
PAUSED = "cluster.x-k8s.io/paused"


def _no_backend() -> Any:
    # The C3osCluster's orphan sweep must not touch the machine under test.
    raise BackendError("NoBackendInThisTest", "no backend for the C3osCluster here", retry_after=None)


def _condition(capi: Capi, kind: str) -> dict[str, Any]:
    obj = capi.must_get(INFRA, "c3osmachines", "m-race")
    found = [c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == kind]
    return found[0] if found else {}


def _touch(capi: Capi, patch: dict[str, Any]) -> None:
    """Another writer's merge patch (CAPI's controllers write without preconditions)."""
    capi.custom.patch_namespaced_custom_object(*INFRA, capi.namespace, "c3osmachines", "m-race", patch)


def test_a_write_racing_capis_metadata_write_is_made_again_not_the_reconcile(  # noqa: PLR0915 - one race after another
    capi: Capi, k8s: Any, ironic_server: IronicServer
) -> None:
    kube = Kube(k8s)
    lab = IronicLab(ironic_server)
    rc = new_resource_class()
    [node_uuid] = lab.enroll(1, rc)
    backend = IronicBackend(allocation_timeout=15)
    backends = Backends({"ironic": lambda: backend})
    never = Backends({"ironic": _no_backend})
    capi.create_cluster("race", {"ironic": {"endpoint": ironic_server.url}})
    capi.create_machine("race", "m-race", machine_spec(rc), USER_DATA)

    def cluster_up() -> Any:
        c3oscluster.reconcile(
            kube, C3OS_CLUSTERS, capi.must_get(INFRA, "c3osclusters", "race"), backends=never
        )
        cluster = capi.must_get(("cluster.x-k8s.io", "v1beta2"), "clusters", "race")
        return ((cluster.get("status") or {}).get("initialization") or {}).get("infrastructureProvisioned")

    def reconcile(obj: dict[str, Any]) -> Any:
        return c3osmachine.reconcile(kube, MACHINES, obj, backends=backends, record_key=RECORD_KEY)

    try:
        eventually(cluster_up, "Cluster infrastructure provisioned", 60)
        eventually(lambda: owner_machine_name(capi.must_get(INFRA, "c3osmachines", "m-race")), "owner", 60)

        # 0. A body from before a spec change (kopf's queued event from before our own
        # claim, played here by another writer's change): read again, not a conflict.
        stale = capi.must_get(INFRA, "c3osmachines", "m-race")
        _touch(capi, {"spec": {"diskGiB": 21}})
        outcome = reconcile(stale)
        claimed = capi.must_get(INFRA, "c3osmachines", "m-race")
        assert FINALIZER in claimed["metadata"]["finalizers"] and claimed["spec"]["diskGiB"] == 21, outcome
        _touch(capi, {"metadata": {"finalizers": None}})  # to be claimed again in step 1

        # 1. The claim (finalizer, providerID, site record) meets a label CAPI just wrote.
        stale = capi.must_get(INFRA, "c3osmachines", "m-race")
        _touch(capi, {"metadata": {"labels": {"example.test/one": "x"}}})
        outcome = reconcile(stale)
        claimed = capi.must_get(INFRA, "c3osmachines", "m-race")
        assert FINALIZER in claimed["metadata"]["finalizers"], outcome
        assert claimed["spec"]["providerID"] == f"c3os://{capi.namespace}/m-race"
        assert claimed["metadata"]["labels"]["example.test/one"] == "x", "the other write is kept"
        assert capi.ready("m-race").get("reason") == outcome.reason, "and the status written"

        # 2. The status write (Deploying, once Ironic has allocated the node) meets an
        # owner-reference/label change.
        eventually(lambda: lab.node(node_uuid)["instance_uuid"], "Ironic's allocation", 30)
        stale = capi.must_get(INFRA, "c3osmachines", "m-race")
        _touch(capi, {"metadata": {"labels": {"example.test/two": "y"}}})
        outcome = reconcile(stale)
        # Fake hardware may finish the deploy before this reconcile looks: either way the
        # status this reconcile saw is written despite the racing label write.
        assert outcome.reason in ("Deploying", "Deployed"), outcome
        assert capi.ready("m-race").get("reason") == outcome.reason, capi.ready_message("m-race")

        # 3. The status write meets the status an earlier reconcile wrote after this one's
        # body was read (kopf hands over the body of the event our own claim caused):
        # here the Paused condition of a pause and unpause in between.
        stale = capi.must_get(INFRA, "c3osmachines", "m-race")
        _touch(capi, {"metadata": {"annotations": {PAUSED: "true"}}})
        assert reconcile(capi.must_get(INFRA, "c3osmachines", "m-race")).reason == "Paused"
        assert _condition(capi, "Paused").get("status") == "True"
        _touch(capi, {"metadata": {"annotations": {PAUSED: None}}})
        outcome = reconcile(stale)
        assert _condition(capi, "Paused").get("status") == "False", outcome
        assert capi.ready("m-race").get("reason") == outcome.reason

        # 4. A spec change meanwhile is not ours to write over: the conflict stands.
        # (A body from a pause no reconcile saw yet, so that it has a status to write.)
        _touch(capi, {"metadata": {"annotations": {PAUSED: "true"}}})
        stale = capi.must_get(INFRA, "c3osmachines", "m-race")
        _touch(capi, {"metadata": {"annotations": {PAUSED: None}}, "spec": {"diskGiB": 30}})
        with pytest.raises(ConflictError):
            reconcile(stale)
    finally:
        capi.delete(INFRA, "c3osmachines", "m-race")

        def released() -> bool:
            obj = capi.get(INFRA, "c3osmachines", "m-race")
            return obj is None or (reconcile(obj).done and capi.get(INFRA, "c3osmachines", "m-race") is None)

        eventually(released, "m-race released", 120, every=1.0)


def _counting_connector() -> tuple[Any, list[IronicApi]]:
    """A backend's connector and the clients it made (each counts its requests)."""
    apis: list[IronicApi] = []

    def connector(site: IronicSite, credentials: SiteCredentials) -> IronicApi:
        apis.append(connect(site, credentials))
        return apis[-1]

    return connector, apis


IDLE_NODES = 20


def test_the_slot_count_reads_the_busy_nodes_not_every_node_of_the_site(lab: IronicLab) -> None:
    rc = new_resource_class()
    lab.enroll(IDLE_NODES + 1, rc)
    connector, apis = _counting_connector()

    backend = IronicBackend(connector=connector)
    intent = lab.intent("slot-count", IronicMachine(resource_class=rc))
    try:
        drive(lambda: backend.provision(intent), {Phase.RUNNING})
        # The deploy took a slot: the count read what was deploying or cleaning then (at
        # most a few nodes other tests left cleaning), never the idle nodes enrolled here.
        listed = sum(api.nodes_listed for api in apis)
        assert listed < IDLE_NODES, f"{listed} node records read to count the busy ones"
    finally:
        drive(lambda: backend.deprovision(intent.identity, intent.site, intent.credentials), {Phase.DELETED})


VIEW_MACHINES = 2


def test_a_machine_reconcile_reads_machine_and_secrets_from_the_watches(
    capi: Capi, ironic_server: IronicServer, start_manager: Any
) -> None:
    lab = IronicLab(ironic_server)
    rc = new_resource_class()
    lab.enroll(VIEW_MACHINES, rc)
    manager: Manager = start_manager().wait_ready()

    def gets(resource: str) -> float:
        return manager.metric_sum("capi_c3os_api_requests_total", verb="get", resource=resource)

    before = {r: gets(r) for r in ("machines", "secrets", "clusters")}  # start-up: the record key
    capi.create_cluster("views", {"ironic": {"endpoint": ironic_server.url}})
    names = [f"v-{i}" for i in range(VIEW_MACHINES)]
    for name in names:
        capi.create_machine("views", name, machine_spec(rc), USER_DATA)
    eventually(
        lambda: all(capi.provisioned(n) for n in names),
        "machines provisioned",
        180,
        explain=lambda: "; ".join(capi.ready_message(n) for n in names),
    )

    machine_reconciles = manager.metric_sum("capi_c3os_reconcile_total", kind="C3osMachine")
    cluster_reconciles = manager.metric_sum("capi_c3os_reconcile_total", kind="C3osCluster")
    assert machine_reconciles >= 2 * VIEW_MACHINES, "each machine was reconciled past its Machine"
    # Nothing else reads Machines or Secrets here (the site has no credentials Secret).
    read = {r: gets(r) - n for r, n in before.items()}
    assert read["machines"] == 0, f"{read} GETs in {machine_reconciles} machine reconciles"
    assert read["secrets"] == 0, f"{read} GETs in {machine_reconciles} machine reconciles"
    # The C3osCluster's own reconciles still read the Cluster (not this change's).
    assert read["clusters"] <= cluster_reconciles, (read, cluster_reconciles)
    for name in names:
        capi.delete(INFRA, "c3osmachines", name)
    eventually(lambda: all(capi.get(INFRA, "c3osmachines", n) is None for n in names), "released", 120)


def test_a_running_machine_is_looked_at_in_ironic_once_per_health_interval(lab: IronicLab) -> None:
    rc = new_resource_class()
    lab.enroll(1, rc)
    connector, apis = _counting_connector()

    backend = IronicBackend(connector=connector, health_interval=300)
    intent = lab.intent("health", IronicMachine(resource_class=rc))
    running = drive(lambda: backend.provision(intent), {Phase.RUNNING})
    provisioned = dataclasses.replace(intent, provisioned=True)  # what the reconciler says next
    before = sum(api.calls for api in apis)
    again = [backend.provision(provisioned) for _ in range(5)]  # five resyncs, say
    assert sum(api.calls for api in apis) == before, "no request until the health interval is over"
    assert all(p.phase is Phase.RUNNING and p.details == running.details for p in again), again
    assert all(p.requeue_after is not None and 0 < p.requeue_after <= 300 * 1.25 for p in again)

    # A deletion looks again: what was seen running is forgotten.
    drive(lambda: backend.deprovision(intent.identity, intent.site, intent.credentials), {Phase.DELETED})
    after = backend.provision(provisioned)
    assert after.phase is Phase.MISSING, after


def test_an_idle_machine_costs_ironic_at_most_one_request_per_resync_and_the_flag_sets_it(
    lab: IronicLab,
) -> None:
    parser = argparse.ArgumentParser()
    run.add_arguments(parser)
    default = run.options_from_args(parser.parse_args([]))
    assert default.ironic_health_interval >= default.sync_period, "one look per resync at most"
    options = run.options_from_args(
        parser.parse_args(["--ironic-health-interval", "45", "--sync-period", "15"])
    )
    rc = new_resource_class()
    lab.enroll(1, rc)
    connector, apis = _counting_connector()

    ironic.configure(options.ironic_health_interval)  # what the manager does with the flag
    try:
        backend = IronicBackend(connector=connector)
    finally:
        ironic.configure(default.ironic_health_interval)
    intent = lab.intent("idle", IronicMachine(resource_class=rc))
    try:
        running = drive(lambda: backend.provision(intent), {Phase.RUNNING})
        assert running.requeue_after is not None and 45 <= running.requeue_after <= 45 * 1.25
        provisioned = dataclasses.replace(intent, provisioned=True)
        before = sum(api.calls for api in apis)
        resyncs = [backend.provision(provisioned) for _ in range(3)]  # 45 s: three resyncs of 15 s
        assert sum(api.calls for api in apis) == before, "no request within the interval"
        assert all(p.phase is Phase.RUNNING for p in resyncs), resyncs
    finally:
        drive(lambda: backend.deprovision(intent.identity, intent.site, intent.credentials), {Phase.DELETED})


POOL = 12
"""Reconciles at once: above requests' default pool (10), below what Ironic's API server
takes at once (10 threads and a listen backlog of 5)."""


def test_the_ironic_client_keeps_a_connection_per_reconcile_that_may_run_at_once(lab: IronicLab) -> None:
    [node_uuid] = lab.enroll(1, new_resource_class())
    ironic_client.configure(POOL)  # what the manager does with --max-concurrent-reconciles
    try:
        api = connect(lab.site().ironic, SiteCredentials())  # type: ignore[arg-type]
    finally:
        ironic_client.configure(requests.adapters.DEFAULT_POOLSIZE)
    together = threading.Barrier(POOL)

    def reconcile(_: int) -> None:
        together.wait()
        assert api.get_node(node_uuid) is not None

    for _ in range(3):
        with ThreadPoolExecutor(POOL) as threads:
            list(threads.map(reconcile, range(POOL)))
    pools = api._client.http_client.session.session.get_adapter(lab.server.url).poolmanager.pools
    # urllib3's pool container refuses plain iteration; keys() is its way.
    opened = sum(pools[key].num_connections for key in pools.keys())  # noqa: SIM118
    assert opened <= POOL, f"{opened} connections opened for {POOL} requests at a time, three times"


CLAIMED = "example.test/claimed"


def test_an_event_of_our_own_write_starts_no_reconcile_anothers_change_does(  # noqa: PLR0915 - one event after another
    capi: Capi, k8s: Any
) -> None:
    kube = Kube(k8s, own_writes=OwnWrites())
    runtime = Runtime(kube)  # no requeue: a conflict surfaces as kopf's TemporaryError
    runs: list[str] = []
    written: list[dict[str, Any]] = []  # the versions our writes made: kopf's next events

    def claim_and_report(kube: Kube, resource: Resource, obj: dict[str, Any]) -> Outcome:
        """A claim (replace) and one status patch conditional on it, as a machine's."""
        runs.append(obj["metadata"]["resourceVersion"])
        if CLAIMED not in (obj["metadata"].get("annotations") or {}):
            body = copy.deepcopy(obj)
            body["metadata"].setdefault("annotations", {})[CLAIMED] = "yes"
            body.pop("status", None)
            try:
                obj = kube.replace(resource, capi.namespace, "m-own", body)
            except ConflictError:  # another writer first: once more on the fresh object
                fresh = kube.get(resource, capi.namespace, "m-own")
                assert fresh is not None
                fresh["metadata"].setdefault("annotations", {})[CLAIMED] = "yes"
                obj = kube.replace(resource, capi.namespace, "m-own", fresh)
            written.append(obj)
        ready = new_condition(
            "Ready", "False", "Deploying", f"run {len(runs)}", generation=1, now=datetime.now(UTC)
        )
        patch = status_patch(obj, [ready])
        try:
            if patch is not None:
                written.append(kube.patch_status(resource, capi.namespace, "m-own", patch))
        except ConflictError:
            pass  # the body was not the newest: the cost avoided (a real one reads again)
        return Outcome.ready()

    kind = Kind(MACHINES, claim_and_report)
    created = capi.create(INFRA, "c3osmachines", {
        "apiVersion": "/".join(INFRA), "kind": "C3osMachine", "metadata": {"name": "m-own"},
        "spec": machine_spec("own-writes"),
    })  # fmt: skip
    try:
        handle(runtime, kind, created, "create")
        claimed, reported = written
        # kopf hands over the claim's event after the status patch was made on top of it
        # (and the patch's own event, when its batch ends there): nothing to do.
        handle(runtime, kind, claimed, "update")
        handle(runtime, kind, reported, "update")
        assert len(runs) == 1, f"{len(runs)} reconciles of events our own writes caused"

        # Another writer's change is reconciled.
        _touch_own(capi, {"metadata": {"labels": {"example.test/other": "x"}}})
        handle(runtime, kind, capi.must_get(INFRA, "c3osmachines", "m-own"), "update")
        assert len(runs) == 2

        # A write made on a body read afresh after a 409 carries a change no reconcile
        # decided on: its event is reconciled.
        _touch_own(capi, {"metadata": {"annotations": {CLAIMED: None}}})
        stale = capi.must_get(INFRA, "c3osmachines", "m-own")
        _touch_own(capi, {"metadata": {"labels": {"example.test/other": "y"}}})
        written.clear()
        handle(runtime, kind, stale, "update")
        retried = written[0]
        assert retried["metadata"]["labels"]["example.test/other"] == "y"
        handle(runtime, kind, retried, "update")
        assert len(runs) == 4, runs

        # A deletion's event is never skipped (kopf's finalizer waits for its handler),
        # even of a version our own write made.
        handle(runtime, kind, capi.must_get(INFRA, "c3osmachines", "m-own"), "update")
        ours = written[-1]  # that reconcile's status patch
        for cause, reconciled in (("update", 5), ("delete", 6)):
            handle(runtime, kind, ours, cause)
            assert len(runs) == reconciled, (cause, runs)
    finally:
        capi.delete(INFRA, "c3osmachines", "m-own")


def _touch_own(capi: Capi, patch: dict[str, Any]) -> None:
    capi.custom.patch_namespaced_custom_object(*INFRA, capi.namespace, "c3osmachines", "m-own", patch)


def test_a_resync_leaves_out_what_our_own_reconcile_wrote_since_its_listing(capi: Capi, k8s: Any) -> None:
    kube = Kube(k8s, own_writes=OwnWrites())
    runs: list[str] = []

    def report(kube: Kube, resource: Resource, obj: dict[str, Any]) -> Outcome:
        runs.append(obj["metadata"]["resourceVersion"])
        ready = new_condition(
            "Ready", "False", "Deploying", f"run {len(runs)}", generation=1, now=datetime.now(UTC)
        )
        patch = status_patch(obj, [ready])
        if patch is not None:
            kube.patch_status(resource, capi.namespace, obj["metadata"]["name"], patch)
        return Outcome.ready()

    kind = Kind(MACHINES, report)
    resync = Resync(Runtime(kube), [kind], [capi.namespace])
    names = ("m-listed-a", "m-listed-b")
    for name in names:
        capi.create(INFRA, "c3osmachines", {
            "apiVersion": "/".join(INFRA), "kind": "C3osMachine", "metadata": {"name": name},
            "spec": machine_spec("resync"),
        })  # fmt: skip
    try:
        listed_at = time.monotonic()
        listing = [obj for _, obj in resync.all_objects()]
        assert sorted(o["metadata"]["name"] for o in listing) == list(names)
        # While the pass goes on, a requeued reconcile of the first one writes it.
        handle(Runtime(kube), kind, capi.must_get(INFRA, "c3osmachines", names[0]), "update")
        assert len(runs) == 1
        for obj in listing:
            resync.reconcile_listed(kind, obj, listed_at)
        assert len(runs) == 2, "only the machine nobody wrote since the listing"
        assert capi.must_get(INFRA, "c3osmachines", names[1])["status"]["conditions"][0]["message"] == "run 2"
    finally:
        for name in names:
            capi.delete(INFRA, "c3osmachines", name)
