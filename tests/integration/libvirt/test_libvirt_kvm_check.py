"""`domainType: auto` against real libvirtd + QEMU: the boot check runs on the host,
chooses, says why, and leaves nothing behind.

Two daemons: the suite's private one (this machine's /dev/kvm is visible to it), and
one whose mount namespace has /dev/null bind-mounted over /dev/kvm, so libvirt cannot
use KVM at all. Whatever the first host's verdict, a machine created with `auto` must
then boot the stand-in image and print its config drive: a check that chose a KVM that
hangs guests (as on this development machine, a nested Firecracker VM where a KVM guest
never gets past the kernel's decompressor) fails here."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import libvirt  # type: ignore[import-untyped]
import pytest

from capi_c3os.api.infrastructure import LibvirtSite, MachineImage, Site
from capi_c3os.backends.base import Phase, Progress
from capi_c3os.backends.libvirt import LibvirtBackend, kvmprobe
from capi_c3os.backends.libvirt import domain as dx
from capi_c3os.dev.libvirtd import PrivateLibvirtd
from tests.integration.libvirt.conftest import BASE_VOLUME, console_blocks, serial_log
from tests.integration.libvirt.test_libvirt_backend_daemon import intent
from tests.support import eventually

pytestmark = pytest.mark.integration

BOOT_TIMEOUT = 240.0
"""Safety net for one TCG boot on a loaded 2-core machine."""

MASK_KVM = """#!/bin/sh
# The daemon's own `unshare` runs inside a mount namespace where /dev/kvm is /dev/null.
exec {unshare} --mount --propagation private sh -c \\
  'mount --bind /dev/null /dev/kvm && exec "$0" "$@"' {unshare} "$@"
"""


@pytest.fixture(scope="module")
def kvmless_libvirtd(
    tmp_path_factory: pytest.TempPathFactory, standin_image: Path
) -> Iterator[PrivateLibvirtd]:
    root = tmp_path_factory.mktemp("kvmless")
    wrapper = root / "bin"
    wrapper.mkdir()
    script = wrapper / "unshare"
    script.write_text(MASK_KVM.format(unshare="/usr/bin/unshare"))
    script.chmod(0o755)
    daemon = PrivateLibvirtd(root / "daemon")
    try:
        with pytest.MonkeyPatch.context() as mp:  # the daemon's environment, at its start only
            mp.setenv("PATH", f"{wrapper}{os.pathsep}{os.environ['PATH']}")
            daemon.start()
        daemon.upload_file(standin_image / "base.qcow2", BASE_VOLUME)
        yield daemon
    finally:
        daemon.stop()


def leftovers(daemon: PrivateLibvirtd) -> tuple[list[str], list[str]]:
    with closing(daemon.connect()) as conn:
        domains = [d.name() for d in conn.listAllDomains(0) if d.name() == kvmprobe.PROBE_NAME]
        volumes = [
            v for v in conn.storagePoolLookupByName("default").listVolumes() if v == kvmprobe.PROBE_VOLUME
        ]
    return domains, volumes


def boot_auto(daemon: PrivateLibvirtd, standin: Path, name: str) -> tuple[str, Progress]:
    """Provision a stand-in machine with domainType auto; (its domain type, the backend's
    report) once it printed its config drive."""
    backend = LibvirtBackend()
    machine = intent(daemon, standin, name, MachineImage(volume=BASE_VOLUME))
    machine = type(machine)(
        **{
            **machine.__dict__,
            "site": Site(name="lab", libvirt=LibvirtSite(uri=daemon.uri, domain_type="auto")),
        }
    )
    domain = dx.domain_name(machine.identity)
    try:
        progress = backend.provision(machine)
        assert progress.phase is Phase.RUNNING, progress.message
        blocks = eventually(
            lambda: console_blocks(serial_log(daemon, domain)) or None,
            "the stand-in to print its config drive",
            BOOT_TIMEOUT,
            explain=lambda: serial_log(daemon, domain)[-400:],
        )
        assert blocks["USER-DATA"] == machine.user_data
        with closing(daemon.connect()) as conn:
            kind = conn.lookupByName(domain).XMLDesc(0).split("type='", 1)[1].split("'", 1)[0]
        return kind, progress
    finally:
        backend.deprovision(machine.identity, machine.site, machine.credentials)
        backend.connections.close()


def test_auto_without_usable_kvm_emulates_and_says_why(
    kvmless_libvirtd: PrivateLibvirtd, standin_image: Path
) -> None:
    with closing(kvmless_libvirtd.connect()) as conn:
        assert kvmprobe.kvm_unavailable(conn) is not None  # libvirt itself refuses kvm here
    kind, progress = boot_auto(kvmless_libvirtd, standin_image, "nokvm-0")
    assert kind == "qemu"
    assert progress.details["domainType"] == "qemu"
    assert progress.details["domainTypeReason"].startswith("domainType auto: the host offers no KVM (")
    assert "KVM" not in progress.message  # Ready is about the machine; CAPI copies it everywhere
    assert leftovers(kvmless_libvirtd) == ([], [])


def test_auto_on_this_host_chooses_a_type_that_boots_and_says_why(
    libvirtd: PrivateLibvirtd, standin_image: Path
) -> None:
    kind, progress = boot_auto(libvirtd, standin_image, "auto-0")
    why = progress.details["domainTypeReason"]
    print(f"domainType auto on this host: {kind}; {why}")
    assert progress.details["domainType"] == kind
    if kind == "kvm":
        assert why.startswith("domainType auto: a test guest booted under KVM in")
    else:
        assert kind == "qemu" and why.startswith("domainType auto: ") and "under KVM in" not in why
    assert "KVM" not in progress.message
    assert leftovers(libvirtd) == ([], [])


def test_the_check_finishes_what_a_crashed_check_left(libvirtd: PrivateLibvirtd) -> None:
    """A manager that died mid-check left a running probe guest and its volume."""
    with closing(libvirtd.connect()) as conn:
        pool = conn.storagePoolLookupByName("default")
        vol = pool.createXML(dx.volume_xml(kvmprobe.PROBE_VOLUME, kvmprobe.DISK_SIZE, "raw"), 0)
        # An empty disk: the guest never powers off by itself, like a hung KVM guest.
        conn.createXML(kvmprobe.probe_xml("qemu", vol.path()), 0)
        assert leftovers(libvirtd) == ([kvmprobe.PROBE_NAME], [kvmprobe.PROBE_VOLUME])
        from capi_c3os.backends.libvirt.backend import _upload  # noqa: PLC0415

        verdict = kvmprobe.check(conn, pool, _upload, dx.volume_xml)
    assert verdict.domain_type in ("kvm", "qemu") and verdict.reason
    assert "did not finish even emulated" not in verdict.reason  # the leftover was replaced
    assert leftovers(libvirtd) == ([], [])
    with closing(libvirtd.connect()) as conn:
        assert not any(d.name() == kvmprobe.PROBE_NAME for d in conn.listAllDomains(0))
        with pytest.raises(libvirt.libvirtError):
            conn.storagePoolLookupByName("default").storageVolLookupByName(kvmprobe.PROBE_VOLUME)
