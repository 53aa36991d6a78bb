"""The libvirt backend against libvirt's in-process `test:///default` driver: naming,
domain XML, idempotency, adoption after a crash, bad input and cleanup. (Uploads,
resizes and real boots need a real libvirtd: tests/integration/libvirt.)"""

from __future__ import annotations

import hashlib
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import libvirt  # type: ignore[import-untyped]
import pytest

from capi_c3os.api.infrastructure import LibvirtMachine, LibvirtSite, MachineImage, Site
from capi_c3os.backends.base import BackendError, MachineIdentity, MachineIntent, Phase, SiteCredentials
from capi_c3os.backends.images import ImageLimits
from capi_c3os.backends.libvirt import LibvirtBackend
from capi_c3os.backends.libvirt import domain as dx
from tests.unit.conftest import GIB, POOL, URI


def site(**libvirt_fields: Any) -> Site:
    fields = {"uri": URI, "pool": POOL, **libvirt_fields}
    return Site(name="lab", libvirt=LibvirtSite.model_validate(fields))


def intent(
    base: str, *, name: str | None = None, disk_gib: int = 2, the_site: Site | None = None, **kw: Any
) -> MachineIntent:
    name = name or f"m-{uuid.uuid4().hex[:6]}"
    identity = MachineIdentity("ns", name, f"c3os://ns/{name}")
    image = kw.pop("image", None) or MachineImage(volume=base)
    return MachineIntent(
        identity=identity,
        site=the_site or site(),
        credentials=SiteCredentials(),
        image=image,
        cpus=1,
        memory_mib=256,
        disk_gib=disk_gib,
        hostname=name,
        user_data=b"#cloud-config\n",
        meta_data={"instance-id": identity.uuid, "local-hostname": name, "provider-id": identity.provider_id},
        libvirt=kw.pop("libvirt", LibvirtMachine()),
        cluster="ns/c1",
        **kw,
    )


def domains_named(conn: Any, identity: MachineIdentity) -> list[Any]:
    return [d for d in conn.listAllDomains(0) if d.name() == dx.domain_name(identity)]


def volume_names(conn: Any) -> set[str]:
    return set(conn.storagePoolLookupByName(POOL).listVolumes())


def test_identity_names_are_deterministic_and_not_from_uid() -> None:
    a = MachineIdentity("ns", "m-0", "c3os://ns/m-0")
    assert a.uuid == MachineIdentity("other-place", "x", "c3os://ns/m-0").uuid
    assert dx.domain_name(a) == f"ns-m-0-{a.uuid[:8]}"
    assert dx.disk_volume_name(a) == f"ns-m-0-{a.uuid[:8]}-disk.qcow2"
    assert dx.config_drive_volume_name(a) == f"ns-m-0-{a.uuid[:8]}-config.iso"


def test_domain_xml_has_identity_tag_disks_serial_log_and_no_nic_without_network() -> None:
    ident = MachineIdentity("ns", "m-0", "c3os://ns/m-0")
    spec = dx.DomainSpec(
        identity=ident,
        tag=dx.Tag("ns", "m-0", "c3os://ns/m-0", "ns/c1"),
        domain_type="qemu",
        cpus=1,
        memory_mib=256,
        disk_path="/p/disk.qcow2",
        disk_format="qcow2",
        config_drive_path="/p/cfg.iso",
        uefi=True,
        kernel="/k",
        initrd="/i",
        cmdline="console=ttyS0",
        serial_log="/log/serial.log",
    )
    root = ET.fromstring(dx.domain_xml(spec))
    assert root.get("type") == "qemu"
    assert root.findtext("uuid") == ident.uuid
    assert root.find("os").get("firmware") == "efi"  # type: ignore[union-attr]
    assert root.findtext("os/cmdline") == "console=ttyS0"
    disk, cdrom = root.findall("devices/disk")
    assert disk.find("target").attrib == {"dev": "vda", "bus": "virtio"}  # type: ignore[union-attr]
    assert cdrom.get("device") == "cdrom" and cdrom.find("readonly") is not None
    assert root.find("devices/serial/log").get("file") == "/log/serial.log"  # type: ignore[union-attr]
    assert root.find("devices/channel/target").get("name") == "org.qemu.guest_agent.0"  # type: ignore[union-attr]
    assert root.findall("devices/interface") == []
    tag = dx.parse_tag(ET.tostring(root.find("metadata")[0], encoding="unicode"))  # type: ignore[index]
    assert tag == dx.Tag("ns", "m-0", "c3os://ns/m-0", "ns/c1")
    reasoned = dx.Tag("ns", "m-0", "c3os://ns/m-0", "ns/c1", "domainType auto: the host offers no KVM")
    assert dx.parse_tag(dx.tag_xml(reasoned)) == reasoned


def test_provision_creates_one_running_domain_with_overlay_and_config_drive(
    conn: Any, backend: LibvirtBackend, base: str
) -> None:
    wanted = intent(base)
    progress = backend.provision(wanted)
    assert progress.phase is Phase.RUNNING, progress
    assert ("Hostname", wanted.hostname) in [(a.type, a.address) for a in progress.addresses]
    assert progress.details["domainUUID"] == wanted.identity.uuid
    again = backend.provision(wanted)
    assert again.phase is Phase.RUNNING
    assert len(domains_named(conn, wanted.identity)) == 1
    pool = conn.storagePoolLookupByName(POOL)
    disk = ET.fromstring(pool.storageVolLookupByName(dx.disk_volume_name(wanted.identity)).XMLDesc(0))
    assert disk.findtext("backingStore/path", "").endswith(base)
    assert int(disk.findtext("capacity", "0")) == 2 * GIB
    assert dx.config_drive_volume_name(wanted.identity) in volume_names(conn)
    backend.deprovision(wanted.identity, wanted.site, wanted.credentials)


def test_a_defined_but_never_started_domain_is_started_on_the_next_provision(
    conn: Any, backend: LibvirtBackend, base: str
) -> None:
    wanted = intent(base)
    lsite = wanted.site.libvirt
    assert lsite is not None
    backend._create(backend.connections.get(lsite, wanted.credentials), lsite, wanted)
    (dom,) = domains_named(conn, wanted.identity)
    assert not dom.isActive()  # the "crash" came right after defineXML
    assert backend.provision(wanted).phase is Phase.RUNNING
    assert dom.isActive()
    backend.deprovision(wanted.identity, wanted.site, wanted.credentials)


def test_the_domain_type_and_why_are_in_the_details_not_the_ready_message(
    conn: Any, backend: LibvirtBackend, base: str
) -> None:
    """The reason is kept in the domain's tag from its definition, so marking it started
    (which rewrites the tag) and a new manager process (no verdict in memory) keep it."""
    wanted = intent(base)
    lsite = wanted.site.libvirt
    assert lsite is not None
    backend._create(backend.connections.get(lsite, wanted.credentials), lsite, wanted)
    (dom,) = domains_named(conn, wanted.identity)
    tag = dx.Tag("ns", wanted.identity.name, wanted.identity.provider_id, "ns/c1", "domainType auto: why")
    dom.setMetadata(
        libvirt.VIR_DOMAIN_METADATA_ELEMENT, dx.tag_xml(tag), dx.METADATA_PREFIX, dx.METADATA_NS, 0
    )
    progress = backend.provision(wanted)  # starts it and marks it started
    assert progress.phase is Phase.RUNNING
    assert progress.message == f"domain {dom.name()} is running"
    assert progress.details["domainType"] == "test"
    assert progress.details["domainTypeReason"] == "domainType auto: why"
    fresh = LibvirtBackend()
    try:
        assert fresh.provision(wanted).details["domainTypeReason"] == "domainType auto: why"
    finally:
        fresh.connections.close()
    backend.deprovision(wanted.identity, wanted.site, wanted.credentials)


def test_a_domain_stopped_after_it_ran_is_reported_not_restarted(
    conn: Any, backend: LibvirtBackend, base: str
) -> None:
    wanted = intent(base)
    backend.provision(wanted)
    (dom,) = domains_named(conn, wanted.identity)
    dom.destroy()
    progress = backend.provision(wanted)
    assert progress.phase is Phase.STOPPED
    assert progress.reason == "DomainStopped"
    assert "destroyed" in progress.message
    assert not dom.isActive()
    backend.deprovision(wanted.identity, wanted.site, wanted.credentials)


def test_a_vanished_domain_of_a_provisioned_machine_is_missing_not_recreated(
    conn: Any, backend: LibvirtBackend, base: str
) -> None:
    wanted = intent(base)
    backend.provision(wanted)
    (dom,) = domains_named(conn, wanted.identity)
    dom.destroy()
    dom.undefine()
    gone = MachineIntent(**{**wanted.__dict__, "provisioned": True})
    assert backend.provision(gone).phase is Phase.MISSING
    assert domains_named(conn, wanted.identity) == []
    backend.deprovision(wanted.identity, wanted.site, wanted.credentials)


def test_a_foreign_domain_with_our_name_is_left_alone(conn: Any, backend: LibvirtBackend, base: str) -> None:
    wanted = intent(base)
    foreign = conn.defineXML(
        f"<domain type='test'><name>{dx.domain_name(wanted.identity)}</name><memory>262144</memory>"
        "<os><type>hvm</type></os></domain>"
    )
    with pytest.raises(BackendError) as err:
        backend.provision(wanted)
    assert err.value.reason == "DomainNameTaken" and err.value.retry_after is None
    with pytest.raises(BackendError):
        backend.deprovision(wanted.identity, wanted.site, wanted.credentials)
    assert foreign.name() in [d.name() for d in conn.listAllDomains(0)]
    foreign.undefine()


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"the_site": site(pool="no-such-pool")}, "StoragePoolNotFound"),
        ({"the_site": site(network="no-such-net")}, "NetworkNotFound"),
        ({"image": MachineImage(volume="no-such-base")}, "ImageNotFound"),
        ({"disk_gib": 0}, "DiskTooSmall"),
    ],
)
def test_bad_input_is_a_readable_error_and_creates_nothing(
    conn: Any, backend: LibvirtBackend, base: str, change: dict[str, Any], reason: str
) -> None:
    before = volume_names(conn)
    wanted = intent(base, **change) if change.get("disk_gib") != 0 else intent(base)
    if change.get("disk_gib") == 0:
        # the base is 1 GiB: a machine asking for less must not get a shrunk disk
        pool = conn.storagePoolLookupByName(POOL)
        pool.storageVolLookupByName(base).delete(0)
        pool.createXML(dx.volume_xml(base, 3 * GIB, "qcow2"), 0)
    with pytest.raises(BackendError) as err:
        backend.provision(wanted)
    assert err.value.reason == reason
    assert err.value.message
    assert domains_named(conn, wanted.identity) == []
    assert volume_names(conn) == before


def settled(backend: LibvirtBackend, wanted: MachineIntent) -> Phase:
    """Provision until the base image download (in the background) has ended."""
    for _ in range(600):
        progress = backend.provision(wanted)
        if progress.reason != "DownloadingImage":
            return progress.phase
        assert progress.requeue_after
    raise AssertionError("the download never ended")


def test_image_url_is_checked_against_its_checksum(conn: Any, base: str, tmp_path: Path) -> None:
    backend = LibvirtBackend(image_limits=ImageLimits(file_dirs=(str(tmp_path),)))
    image_file = tmp_path / "image.raw"
    image_file.write_bytes(b"\0" * 4096)
    good = hashlib.sha256(image_file.read_bytes()).hexdigest()
    bad = MachineImage(url=image_file.as_uri(), checksum="0" * 64, format="raw")
    before = volume_names(conn)
    with pytest.raises(BackendError) as err:
        settled(backend, intent(base, image=bad))
    assert err.value.reason == "ImageChecksumMismatch"
    assert "does not match" in err.value.message and good[:8] not in err.value.message
    assert volume_names(conn) == before

    ok = MachineImage(url=image_file.as_uri(), checksum=good, format="raw")
    first, second = intent(base, image=ok), intent(base, image=ok)
    settled(backend, first)
    settled(backend, second)
    shared = dx.base_volume_name(good, "raw")
    assert {shared, shared + ".verified"} <= volume_names(conn)
    for machine in (first, second):
        backend.deprovision(machine.identity, machine.site, machine.credentials)
    pool = conn.storagePoolLookupByName(POOL)
    for name in (shared, shared + ".verified"):
        pool.storageVolLookupByName(name).delete(0)
    backend.connections.close()


def test_file_urls_are_refused_unless_allowed(conn: Any, backend: LibvirtBackend, base: str) -> None:
    before = volume_names(conn)
    with pytest.raises(BackendError) as err:
        settled(backend, intent(base, image=MachineImage(url="file:///etc/shadow", checksum="0" * 64)))
    assert err.value.reason == "ImageURLRefused" and err.value.retry_after is None
    assert "sha256" not in err.value.message
    assert volume_names(conn) == before


def test_deprovision_removes_domain_and_volumes_and_is_idempotent(
    conn: Any, backend: LibvirtBackend, base: str
) -> None:
    wanted = intent(base)
    before = volume_names(conn)
    backend.provision(wanted)
    assert volume_names(conn) - before == {
        dx.disk_volume_name(wanted.identity),
        dx.config_drive_volume_name(wanted.identity),
    }
    for _ in range(2):
        assert backend.deprovision(wanted.identity, wanted.site, wanted.credentials).phase is Phase.DELETED
    assert domains_named(conn, wanted.identity) == []
    assert volume_names(conn) == before


def test_tagged_machines_lists_the_clusters_domains(conn: Any, backend: LibvirtBackend, base: str) -> None:
    ours = intent(base)
    theirs = MachineIntent(**{**intent(base).__dict__, "cluster": "ns/other"})
    for m in (ours, theirs):
        backend.provision(m)
    tags = backend.tagged_machines(ours.site, ours.credentials, "ns/c1")
    names = {t.name for t in tags}
    assert ours.identity.name in names and theirs.identity.name not in names
    for m in (ours, theirs):
        backend.deprovision(m.identity, m.site, m.credentials)


class CrashError(Exception):
    """Stands for the manager dying at that line (kill -9 leaves no cleanup either)."""


def _crash(*_: Any, **__: Any) -> Any:
    raise CrashError


@pytest.mark.parametrize(
    "boundary",
    [
        "after-base-image",  # before the disk is created
        "after-disk",  # disk exists, no config drive
        "after-config-drive",  # both volumes, no domain
        "after-define",  # domain defined, never started
        "after-start",  # running, not yet marked as started
    ],
)
def test_a_restart_after_a_crash_at_any_step_finishes_with_one_domain_and_no_orphans(
    conn: Any, base: str, boundary: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from capi_c3os.backends.libvirt import backend as module  # noqa: PLC0415

    wanted = intent(base)
    before = volume_names(conn)
    crashing = LibvirtBackend()
    with monkeypatch.context() as patch:
        if boundary == "after-base-image":
            patch.setattr(dx, "volume_xml", _crash)
        elif boundary == "after-disk":
            patch.setattr(module, "build_config_drive", _crash)
        elif boundary == "after-config-drive":
            patch.setattr(dx, "domain_xml", _crash)
        elif boundary == "after-define":
            patch.setattr(module._Look, "of", _crash)  # the look at the new domain
        else:
            patch.setattr(module, "_mark_started", _crash)
        with pytest.raises(CrashError):
            crashing.provision(wanted)

    restarted = LibvirtBackend()  # a new process: no memory of the first
    progress = restarted.provision(wanted)
    assert progress.phase is Phase.RUNNING, progress
    assert len(domains_named(conn, wanted.identity)) == 1
    assert volume_names(conn) - before == {
        dx.disk_volume_name(wanted.identity),
        dx.config_drive_volume_name(wanted.identity),
    }
    # and a restart once more changes nothing
    assert restarted.provision(wanted).phase is Phase.RUNNING
    assert len(domains_named(conn, wanted.identity)) == 1
    restarted.deprovision(wanted.identity, wanted.site, wanted.credentials)
    assert volume_names(conn) == before
    for b in (crashing, restarted):
        b.connections.close()


def test_a_crash_during_deletion_is_finished_by_the_next_deprovision(
    conn: Any, backend: LibvirtBackend, base: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from capi_c3os.backends.libvirt import backend as module  # noqa: PLC0415

    wanted = intent(base)
    before = volume_names(conn)
    backend.provision(wanted)
    with monkeypatch.context() as patch:
        patch.setattr(module, "_lookup_pool", _crash)  # domain gone, volumes not yet
        with pytest.raises(CrashError):
            backend.deprovision(wanted.identity, wanted.site, wanted.credentials)
    assert domains_named(conn, wanted.identity) == []
    assert volume_names(conn) != before
    assert backend.deprovision(wanted.identity, wanted.site, wanted.credentials).phase is Phase.DELETED
    assert volume_names(conn) == before


def test_a_live_iso_boots_from_cdrom_onto_an_empty_disk(conn: Any, backend: LibvirtBackend) -> None:
    pool = conn.storagePoolLookupByName(POOL)
    iso_name = f"live-{uuid.uuid4().hex[:6]}.iso"
    iso = pool.createXML(dx.volume_xml(iso_name, 512 * 1024**2, "raw"), 0)
    wanted = intent("", image=MachineImage(volume=iso_name, format="iso"), disk_gib=4)
    assert backend.provision(wanted).phase is Phase.RUNNING
    (dom,) = domains_named(conn, wanted.identity)
    root = ET.fromstring(dom.XMLDesc(0))
    assert [b.get("dev") for b in root.findall("os/boot")] == ["hd", "cdrom"]
    sources: dict[str, list[str]] = {}
    for d in root.findall("devices/disk"):
        sources.setdefault(d.get("device", ""), []).append(d.find("source").get("file", ""))  # type: ignore[union-attr]
    # The cdrom that <boot dev='cdrom'> makes bootable is the first one: the live ISO, not
    # the config drive.
    assert sources["cdrom"][0] == iso.path()
    assert sources["cdrom"][1].endswith(dx.CONFIG_DRIVE_SUFFIX)
    disk = ET.fromstring(pool.storageVolLookupByName(dx.disk_volume_name(wanted.identity)).XMLDesc(0))
    assert disk.find("backingStore/path") is None
    assert int(disk.findtext("capacity", "0")) == 4 * GIB
    backend.deprovision(wanted.identity, wanted.site, wanted.credentials)
    iso.delete(0)


LONG = "w" * 60
"""A machine name that makes `<namespace>-<name>` longer than the readable part."""


def test_long_identities_are_named_with_96_bits_short_ones_as_before() -> None:
    short = MachineIdentity("ns", "m-0", "c3os://ns/m-0")
    assert dx.domain_name(short) == short.resource_name and dx.legacy_stem(short) is None
    long = MachineIdentity("team", "a-" + LONG, f"c3os://team/a-{LONG}")
    stem = dx.domain_name(long)
    assert len(stem) <= 63 and stem.endswith(long.uuid.replace("-", "")[:24])
    assert dx.legacy_stem(long) == long.resource_name != stem
    # Another namespace continuing this one's name, with a name of the same beginning:
    # the same readable part, told apart by the hash alone.
    other = MachineIdentity("team-a", LONG + "x", f"c3os://team-a/{LONG}x")
    assert other.resource_name[:50] == long.resource_name[:50]
    assert dx.domain_name(other) != stem


def test_another_machines_domain_and_volumes_under_our_old_name_are_left_alone(
    conn: Any, backend: LibvirtBackend, base: str
) -> None:
    # Issue 13: a name chosen so that its old 32-bit name matches a victim's. The
    # victim's domain is gone (its disk, with its data, waits for the victim's deletion).
    wanted = intent(base, name="a-" + LONG)
    legacy = dx.legacy_stem(wanted.identity)
    assert legacy is not None
    pool = conn.storagePoolLookupByName(POOL)
    victim_disk = pool.createXML(dx.volume_xml(legacy + dx.DISK_SUFFIX, GIB, "qcow2"), 0)
    pool.createXML(dx.volume_xml(legacy + dx.CONFIG_DRIVE_SUFFIX, 1024, "raw"), 0)
    backend.provision(wanted)
    (dom,) = domains_named(conn, wanted.identity)
    assert victim_disk.path() not in dom.XMLDesc(0)
    assert backend.deprovision(wanted.identity, wanted.site, wanted.credentials).phase is Phase.DELETED
    assert {legacy + dx.DISK_SUFFIX, legacy + dx.CONFIG_DRIVE_SUFFIX} <= volume_names(conn)

    # And with the victim's domain there, under that name and tagged as the victim's.
    victim = conn.defineXML(
        f"<domain type='test'><name>{legacy}</name><memory>262144</memory><os><type>hvm</type></os>"
        f"<metadata>{dx.tag_xml(dx.Tag('victim-ns', 'victim', 'c3os://victim-ns/victim'))}</metadata></domain>"
    )
    backend.provision(wanted)
    backend.deprovision(wanted.identity, wanted.site, wanted.credentials)
    assert legacy in [d.name() for d in conn.listAllDomains(0)]
    assert {legacy + dx.DISK_SUFFIX, legacy + dx.CONFIG_DRIVE_SUFFIX} <= volume_names(conn)
    victim.undefine()
    for suffix in (dx.DISK_SUFFIX, dx.CONFIG_DRIVE_SUFFIX):
        pool.storageVolLookupByName(legacy + suffix).delete(0)


def test_a_domain_an_older_release_named_with_32_bits_is_adopted_and_removed(
    conn: Any, backend: LibvirtBackend, base: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    wanted = intent(base, name="a-" + LONG)
    before = volume_names(conn)
    with monkeypatch.context() as older:
        older.setattr(dx, "resource_stem", lambda identity: identity.resource_name)
        backend.provision(wanted)
    legacy = wanted.identity.resource_name
    assert [d.name() for d in conn.listAllDomains(0) if d.name() == legacy]
    assert backend.provision(wanted).phase is not Phase.MISSING
    assert domains_named(conn, wanted.identity) == []  # adopted, not made again
    assert backend.deprovision(wanted.identity, wanted.site, wanted.credentials).phase is Phase.DELETED
    assert legacy not in [d.name() for d in conn.listAllDomains(0)]
    assert volume_names(conn) == before
