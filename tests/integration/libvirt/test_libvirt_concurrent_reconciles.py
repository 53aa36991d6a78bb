"""Two reconciles of one C3osMachine at once: kopf's deletion handler stops the domain,
libvirt reports the stop, and the backend's event thread starts a second reconcile of
the same (deleting) machine. Run in-process against the real API server, CAPI core and
the private libvirtd, with the real libvirt backend behind a gate that holds the first
deprovision until the second reconcile has had its chance to come in.

Before reconciles were one at a time per machine, the second deprovision ran alongside
the first; whichever deleted a volume second failed ("Storage volume not found"), wrote
Ready=False LibvirtError and waited 30 s to retry: seen in the e2e upgrade with surge 0.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from capi_c3os.api.infrastructure import Site
from capi_c3os.backends.base import BackendError, MachineIdentity, MachineIntent, Progress, SiteCredentials
from capi_c3os.backends.libvirt import LibvirtBackend
from capi_c3os.backends.libvirt import domain as dx
from capi_c3os.backends.registry import Backends
from capi_c3os.capi.outcome import Outcome
from capi_c3os.dev.libvirtd import PrivateLibvirtd
from capi_c3os.reconcilers import c3oscluster, c3osmachine
from capi_c3os.reconcilers.c3osmachine import C3OS_CLUSTERS
from capi_c3os.reconcilers.kube import Kube, Resource
from tests.integration.libvirt.conftest import INFRA, Capi
from tests.integration.libvirt.test_libvirt_machine import (
    USER_DATA,
    domain_names,
    machine_spec,
    pool_volumes,
)
from tests.support import eventually

pytestmark = pytest.mark.integration

MACHINES = Resource(INFRA[0], INFRA[1], "c3osmachines", "C3osMachine")
CHANCE = 10.0
"""Seconds the first deprovision holds for the second to come in (it takes one API read
to get there; a bound on the wait, not on speed)."""


class Gate:
    """The real backend; the first deprovision holds until a second one starts (or
    `CHANCE` passes), and any overlap is recorded."""

    def __init__(self, backend: LibvirtBackend) -> None:
        self.backend = backend
        self.first_inside = threading.Event()
        self.second_came = threading.Event()
        self.calls = 0
        self.inside = 0
        self.overlapped = False
        self._lock = threading.Lock()

    def provision(self, intent: MachineIntent) -> Progress:
        return self.backend.provision(intent)

    def deprovision(self, identity: MachineIdentity, site: Site, credentials: SiteCredentials) -> Progress:
        with self._lock:
            self.calls += 1
            first = self.calls == 1
            self.inside += 1
            if self.inside > 1:
                self.overlapped = True
                self.second_came.set()
        try:
            if first:
                self.first_inside.set()
                self.second_came.wait(CHANCE)
            return self.backend.deprovision(identity, site, credentials)
        finally:
            with self._lock:
                self.inside -= 1


RECORD_KEY = bytes(32)  # stands in for the manager's key


def _no_backend() -> Any:
    # The C3osCluster's orphan sweep must not touch the machine under test.
    raise BackendError("NoBackendInThisTest", "no backend for the C3osCluster here", retry_after=None)


def test_a_backend_event_during_deletion_waits_for_the_running_reconcile(
    capi: Capi, k8s: Any, libvirtd: PrivateLibvirtd, standin_image: Path
) -> None:
    kube = Kube(k8s)
    backend = LibvirtBackend()
    gate = Gate(backend)
    backends = Backends({"libvirt": lambda: gate})
    volumes_before = pool_volumes(libvirtd)
    capi.create_cluster("race", {"libvirt": {"uri": libvirtd.uri}})
    capi.create_machine("race", "m-race", machine_spec(libvirtd, standin_image), USER_DATA)
    never = Backends({"libvirt": _no_backend})

    def cluster_up() -> Any:
        c3oscluster.reconcile(
            kube, C3OS_CLUSTERS, capi.must_get(INFRA, "c3osclusters", "race"), backends=never
        )
        return (capi.must_get(INFRA, "c3osclusters", "race").get("status") or {}).get("initialization")

    def machine_up() -> dict[str, Any] | None:
        c3osmachine.reconcile(
            kube,
            MACHINES,
            capi.must_get(INFRA, "c3osmachines", "m-race"),
            backends=backends,
            record_key=RECORD_KEY,
        )
        return capi.provisioned("m-race")

    try:
        eventually(cluster_up, "C3osCluster provisioned", 60)
        eventually(
            machine_up, "m-race provisioned", 120, every=1.0, explain=lambda: capi.ready_message("m-race")
        )
        identity = MachineIdentity(capi.namespace, "m-race", "c3os://" + capi.namespace + "/m-race")
        assert dx.domain_name(identity) in domain_names(libvirtd)

        capi.delete(INFRA, "c3osmachines", "m-race")
        deleting = capi.must_get(INFRA, "c3osmachines", "m-race")
        assert deleting["metadata"].get("deletionTimestamp")
        results: dict[str, Outcome | BaseException] = {}

        def run(who: str) -> None:
            try:
                results[who] = c3osmachine.reconcile(
                    kube, MACHINES, deleting, backends=backends, record_key=RECORD_KEY
                )
            except BaseException as exc:  # reported by the assertions below
                results[who] = exc

        handler = threading.Thread(target=run, args=("handler",))
        handler.start()
        assert gate.first_inside.wait(60), "the first deprovision never started"
        event = threading.Thread(target=run, args=("event",))  # what the domain's stop starts
        event.start()
        handler.join(120)
        event.join(120)

        assert not gate.overlapped, f"two deprovisions of one machine ran at once: {results}"
        assert set(results) == {"handler", "event"}, results
        for who, result in results.items():
            assert isinstance(result, Outcome) and result.done and not result.failed, (who, result)
        assert gate.calls == 1, "the second reconcile saw the machine gone and did nothing"
        assert capi.get(INFRA, "c3osmachines", "m-race") is None
        assert dx.domain_name(identity) not in domain_names(libvirtd)
        assert pool_volumes(libvirtd) == volumes_before
    finally:
        backend.connections.close()
