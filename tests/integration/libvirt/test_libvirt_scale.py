"""Issue 21: what the libvirt backend costs per machine, counted on a real libvirtd (which
logs every call it serves), so that N machines cost N times one.

- A domain start (or removal) the backend makes itself wakes no reconcile of the
  machine: the reconcile that started it already reports it running (a lifecycle event
  per start was one more reconcile per machine, often meeting a conflict with the first;
  a removal's two events two more per deleted machine).
- A look at a running machine (every resync, every requeue) reads its domain once:
  tag, start mark, type and NICs from one XML description, not one call each.
- The C3osCluster's orphan sweep (every resync of every cluster) reads the tag of each
  domain on the host once, not at every sweep: a sweep costs two listings, not a call per
  domain of the host (every cluster's, so it grew with the clusters sharing a host).
- A new machine is made with the raw sequence's calls plus its checks (find before
  create, sizes), not looking up the domain it just defined nor asking whether the domain
  it just started is active.
"""

from __future__ import annotations

import dataclasses
import queue
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from capi_c3os.api.infrastructure import LibvirtSite, MachineImage, Site
from capi_c3os.backends.base import MachineIntent, Phase
from capi_c3os.backends.libvirt import LibvirtBackend
from capi_c3os.backends.libvirt import domain as dx
from capi_c3os.dev.libvirtd import PrivateLibvirtd
from tests.integration.libvirt.conftest import BASE_VOLUME
from tests.integration.libvirt.test_libvirt_backend_daemon import intent as daemon_intent
from tests.unit.test_libvirt_backend import settled

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def counted(tmp_path_factory: pytest.TempPathFactory, standin_image: Path) -> Iterator[PrivateLibvirtd]:
    """A private libvirtd logging the calls it serves (guests get no NIC: no network)."""
    daemon = PrivateLibvirtd(tmp_path_factory.mktemp("counted-libvirtd"), log_calls=True).start()
    try:
        daemon.upload_file(standin_image / "base.qcow2", BASE_VOLUME)
        yield daemon
    finally:
        daemon.stop()


def served(daemon: PrivateLibvirtd) -> list[tuple[str, str]]:
    """The calls libvirtd has served so far, in order: (name, the client's address)."""
    marker = ": debug : remoteDispatch"
    found = []
    with daemon.log_path.open(errors="replace") as log:
        for line in log:
            if marker in line and "Helper:" in line:
                name = line.split(marker, 1)[1].split("Helper:", 1)[0]
                found.append((name, line.split(" client=", 1)[1].split(" ", 1)[0]))
    return found


def calls_since(daemon: PrivateLibvirtd, before: int) -> list[str]:
    """The calls served since the first `before`, of the client that made the first of
    them (events of earlier tests may still make another client look at a domain)."""
    made = served(daemon)[before:]
    return [name for name, client in made if client == made[0][1]] if made else []


IMAGE = MachineImage(volume=BASE_VOLUME, format="qcow2")


def intent(daemon: PrivateLibvirtd, standin: Path, name: str) -> MachineIntent:
    """The stand-in booted directly, as emulated domain (no boot check first)."""
    site = Site(name="lab", libvirt=LibvirtSite(uri=daemon.uri, domain_type="qemu"))
    return dataclasses.replace(daemon_intent(daemon, standin, name, IMAGE), site=site)


def test_a_start_or_removal_the_backend_makes_wakes_no_reconcile(
    counted: PrivateLibvirtd, standin_image: Path
) -> None:
    backend = LibvirtBackend()
    woken: queue.SimpleQueue[str] = queue.SimpleQueue()
    backend.watch(lambda _namespace, name: woken.put(name))
    ours = intent(counted, standin_image, "self-started")
    removed = intent(counted, standin_image, "self-removed")
    # Started and removed by another manager (another backend): changes this backend did
    # not make, whose wakes come after any wake of ours (one connection's events arrive
    # in order).
    other = LibvirtBackend()
    theirs = intent(counted, standin_image, "changed-elsewhere")

    def wakes_until_theirs() -> list[str]:
        seen = [woken.get(timeout=60)]
        while seen[-1] != "changed-elsewhere":
            seen.append(woken.get(timeout=60))
        return seen

    try:
        assert settled(backend, ours) is Phase.RUNNING
        assert settled(backend, removed) is Phase.RUNNING
        assert settled(other, theirs) is Phase.RUNNING
        assert wakes_until_theirs() == ["changed-elsewhere"]
        # What happens to our domain behind our back is still reported at once.
        with closing(counted.connect()) as conn:
            conn.lookupByName(dx.domain_name(ours.identity)).destroy()
        assert woken.get(timeout=60) == "self-started"
        # Our own removal of a running machine (destroy, undefine) wakes nothing either
        # (the destroy behind our back sent SHUTDOWN and STOPPED: a second wake of ours).
        assert backend.deprovision(removed.identity, removed.site, removed.credentials).phase is Phase.DELETED
        assert other.deprovision(theirs.identity, theirs.site, theirs.credentials).phase is Phase.DELETED
        assert set(wakes_until_theirs()) <= {"self-started", "changed-elsewhere"}
    finally:
        for machine, owner in ((ours, backend), (removed, backend), (theirs, other)):
            owner.deprovision(machine.identity, machine.site, machine.credentials)
        other.connections.close()
        backend.connections.close()


def test_a_look_at_a_running_machine_reads_its_domain_once(
    counted: PrivateLibvirtd, standin_image: Path
) -> None:
    backend = LibvirtBackend()
    machine = intent(counted, standin_image, "looked-at")
    try:
        assert settled(backend, machine) is Phase.RUNNING
        before = len(served(counted))
        progress = backend.provision(machine)
        calls = calls_since(counted, before)
        assert progress.phase is Phase.RUNNING, progress
        # Find it by name, read its XML (tag, start mark, type, NICs), ask its state:
        # without a NIC there is no address to look for.
        assert calls == ["DomainLookupByName", "DomainGetXMLDesc", "DomainGetState"], calls
    finally:
        backend.deprovision(machine.identity, machine.site, machine.credentials)
        backend.connections.close()


def test_an_orphan_sweep_reads_each_domains_tag_once(counted: PrivateLibvirtd, standin_image: Path) -> None:
    backend = LibvirtBackend()
    machines = [
        dataclasses.replace(intent(counted, standin_image, f"swept-{i}"), cluster="daemon/c1")
        for i in range(3)
    ]
    site, credentials = machines[0].site, machines[0].credentials
    try:
        for machine in machines:
            assert settled(backend, machine) is Phase.RUNNING
        wanted = [m.identity for m in machines]  # names in order, as returned
        assert backend.tagged_identities(site, credentials, "daemon/c1") == wanted
        before = len(served(counted))
        assert backend.tagged_identities(site, credentials, "daemon/c1") == wanted
        calls = calls_since(counted, before)
        # One listing of the domains and one of the volumes, however many domains there are.
        assert calls == [
            "ConnectListAllDomains",
            "StoragePoolLookupByName",
            "StoragePoolIsActive",
            "StoragePoolListAllVolumes",
        ], calls
        # Removed behind this backend's back (another manager): not reported any more.
        other = LibvirtBackend()
        other.deprovision(machines[0].identity, site, credentials)
        other.connections.close()
        assert backend.tagged_identities(site, credentials, "daemon/c1") == wanted[1:]
    finally:
        for machine in machines:
            backend.deprovision(machine.identity, machine.site, machine.credentials)
        backend.connections.close()


def test_a_new_machine_is_made_with_no_call_it_could_do_without(
    counted: PrivateLibvirtd, standin_image: Path
) -> None:
    backend = LibvirtBackend()
    warm = intent(counted, standin_image, "warm")  # the connection and its subscription
    machine = intent(counted, standin_image, "fresh")
    try:
        assert settled(backend, warm) is Phase.RUNNING
        before = len(served(counted))
        assert backend.provision(machine).phase is Phase.RUNNING
        calls = calls_since(counted, before)
        assert calls == [
            "DomainLookupByName",  # not there yet
            *("StoragePoolLookupByName", "StoragePoolIsActive"),
            *("StorageVolLookupByName", "StorageVolGetPath", "StorageVolGetInfo"),  # the base and its size
            *("StorageVolLookupByName", "StorageVolCreateXML", "StorageVolGetInfo"),  # the disk, its size
            *("StorageVolLookupByName", "StorageVolCreateXML", "StorageVolUpload"),  # the config drive
            *("StorageVolGetPath", "StorageVolGetPath", "DomainDefineXML"),
            *("DomainGetXMLDesc", "DomainGetState", "DomainCreate", "DomainLookupByUUID"),
            *("DomainSetMetadata", "DomainGetState"),  # marked started; running
        ], calls
    finally:
        for m in (warm, machine):
            backend.deprovision(m.identity, m.site, m.credentials)
        backend.connections.close()
