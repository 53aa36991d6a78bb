"""The libvirt backend against the real private libvirtd, without Kubernetes: what the
in-process test driver cannot do (uploads, qcow2 overlays on real files)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from capi_c3os.api.infrastructure import DirectKernelBoot, LibvirtMachine, LibvirtSite, MachineImage, Site
from capi_c3os.backends.base import BackendError, MachineIdentity, MachineIntent, Phase, SiteCredentials
from capi_c3os.backends.images import ImageLimits
from capi_c3os.backends.libvirt import LibvirtBackend
from capi_c3os.backends.libvirt import domain as dx
from capi_c3os.dev.libvirtd import PrivateLibvirtd
from tests.unit.test_libvirt_backend import settled

pytestmark = pytest.mark.integration


def intent(daemon: PrivateLibvirtd, standin: Path, name: str, image: MachineImage) -> MachineIntent:
    identity = MachineIdentity("daemon", name, f"c3os://daemon/{name}")
    return MachineIntent(
        identity=identity,
        site=Site(name="lab", libvirt=LibvirtSite(uri=daemon.uri)),
        credentials=SiteCredentials(),
        image=image,
        cpus=1,
        memory_mib=256,
        disk_gib=1,
        hostname=name,
        user_data=b"#cloud-config\n",
        meta_data={"instance-id": identity.uuid},
        libvirt=LibvirtMachine(
            direct_kernel_boot=DirectKernelBoot(
                kernel=str(standin / "vmlinuz"),
                initrd=str(standin / "initrd.img"),
                cmdline="console=ttyS0 quiet",
            )
        ),
    )


def test_image_url_is_verified_uploaded_once_per_pool_and_shared(
    libvirtd: PrivateLibvirtd, standin_image: Path
) -> None:
    source = standin_image / "base.qcow2"
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    shared = dx.base_volume_name(digest, "qcow2")
    backend = LibvirtBackend(image_limits=ImageLimits(file_dirs=(str(standin_image),)))
    before = {p.name for p in libvirtd.pool_path.iterdir()}

    wrong = MachineImage(url=source.as_uri(), checksum="f" * 64)
    with pytest.raises(BackendError) as err:
        settled(backend, intent(libvirtd, standin_image, "bad", wrong))
    assert err.value.reason == "ImageChecksumMismatch" and err.value.retry_after is None
    assert {p.name for p in libvirtd.pool_path.iterdir()} == before

    # An upload that died half-way (no .verified marker) is thrown away and redone.
    (libvirtd.pool_path / shared).write_bytes(b"half an image")
    with libvirtd.connect() as conn:
        conn.storagePoolLookupByName("default").refresh(0)

    good = MachineImage(url=source.as_uri(), checksum=digest)
    machines = [intent(libvirtd, standin_image, name, good) for name in ("u-0", "u-1")]
    try:
        for machine in machines:
            assert settled(backend, machine) is Phase.RUNNING
        assert hashlib.sha256((libvirtd.pool_path / shared).read_bytes()).hexdigest() == digest
        created = {p.name for p in libvirtd.pool_path.iterdir()} - before
        assert created == {
            shared,
            shared + ".verified",
            *(dx.disk_volume_name(m.identity) for m in machines),
            *(dx.config_drive_volume_name(m.identity) for m in machines),
        }
    finally:
        for machine in machines:
            backend.deprovision(machine.identity, machine.site, machine.credentials)
        backend.connections.close()
    with libvirtd.connect() as conn:
        pool = conn.storagePoolLookupByName("default")
        for name in (shared, shared + ".verified"):
            pool.storageVolLookupByName(name).delete(0)
    assert {p.name for p in libvirtd.pool_path.iterdir()} == before
