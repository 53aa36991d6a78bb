"""Benchmark: bootstrap-ready to domain running, our libvirt backend against the same
raw libvirt calls made directly, for a 64 MiB and a 4 GiB base image.

    .venv/bin/python bench/libvirt.py [--rounds 5]

Starts a private libvirtd (capi_c3os.dev.libvirtd; no guest network), builds the stand-in
image (hack/standin-image.sh), and for each base size times, per round:
- ours: `LibvirtBackend.provision(intent)` from nothing until it reports the domain
  running (config drive built and uploaded, overlay created and resized, domain defined
  and started, ownership tagged);
- raw: the same libvirt calls typed out by hand (overlay volume, config drive volume +
  upload of the same ISO, defineXML, create).
Prints medians and the ratio ours/raw. Copy-on-write keeps both flat in the image size.
Figures only: nothing here asserts a duration.
"""

from __future__ import annotations

import sys
from pathlib import Path

# This file is called libvirt.py: keep its directory off the path, or `import libvirt`
# would import this file.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import argparse  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import libvirt  # type: ignore[import-untyped]  # noqa: E402

from capi_c3os.api.infrastructure import DirectKernelBoot, LibvirtMachine, LibvirtSite, MachineImage, Site  # noqa: E402
from capi_c3os.backends.base import MachineIdentity, MachineIntent, Phase, SiteCredentials  # noqa: E402
from capi_c3os.backends.configdrive import build_config_drive  # noqa: E402
from capi_c3os.backends.libvirt import LibvirtBackend  # noqa: E402
from capi_c3os.backends.libvirt import domain as dx  # noqa: E402
from capi_c3os.dev.libvirtd import PrivateLibvirtd  # noqa: E402

GIB = 1024**3
USER_DATA = b"#cloud-config\nk3s:\n  enabled: true\n"


def make_base(daemon: PrivateLibvirtd, name: str, size: int) -> None:
    """A raw base image with every byte allocated (fallocate), so its size is real."""
    path = daemon.pool_path / name
    subprocess.run(["fallocate", "-l", str(size), str(path)], check=True)
    with libvirt.open(daemon.uri) as conn:
        conn.storagePoolLookupByName(daemon.pool_name).refresh(0)


def intent_for(daemon: PrivateLibvirtd, image: Path, base: str, name: str) -> MachineIntent:
    identity = MachineIdentity("bench", name, f"c3os://bench/{name}")
    return MachineIntent(
        identity=identity,
        site=Site(name="bench", libvirt=LibvirtSite(uri=daemon.uri, pool=daemon.pool_name)),
        credentials=SiteCredentials(),
        image=MachineImage(volume=base, format="raw"),
        cpus=1,
        memory_mib=256,
        disk_gib=8,
        hostname=name,
        user_data=USER_DATA,
        meta_data={"instance-id": identity.uuid, "local-hostname": name, "provider-id": identity.provider_id},
        libvirt=LibvirtMachine(
            direct_kernel_boot=DirectKernelBoot(
                kernel=str(image / "vmlinuz"), initrd=str(image / "initrd.img"), cmdline="console=ttyS0 quiet"
            )
        ),
    )


def ours(backend: LibvirtBackend, intent: MachineIntent) -> float:
    start = time.perf_counter()
    progress = backend.provision(intent)
    elapsed = time.perf_counter() - start
    assert progress.phase is Phase.RUNNING, progress
    return elapsed


def raw(conn: libvirt.virConnect, daemon: PrivateLibvirtd, intent: MachineIntent, base: str) -> float:
    identity = intent.identity
    start = time.perf_counter()
    pool = conn.storagePoolLookupByName(daemon.pool_name)
    base_vol = pool.storageVolLookupByName(base)
    disk = pool.createXML(
        dx.volume_xml(dx.disk_volume_name(identity), intent.disk_gib * GIB, "qcow2", base_vol.path(), "raw"),
        0,
    )
    iso = build_config_drive(intent.user_data, intent.meta_data)
    drive = pool.createXML(dx.volume_xml(dx.config_drive_volume_name(identity), len(iso), "raw"), 0)
    stream = conn.newStream(0)
    drive.upload(stream, 0, len(iso), 0)
    stream.send(iso)
    stream.finish()
    dkb = intent.libvirt.direct_kernel_boot if intent.libvirt else None
    spec = dx.DomainSpec(
        identity=identity,
        tag=dx.Tag(identity.namespace, identity.name, identity.provider_id),
        domain_type="qemu",
        cpus=intent.cpus,
        memory_mib=intent.memory_mib,
        disk_path=disk.path(),
        disk_format="qcow2",
        config_drive_path=drive.path(),
        kernel=dkb.kernel if dkb else None,
        initrd=dkb.initrd if dkb else None,
        cmdline=dkb.cmdline if dkb else None,
    )
    dom = conn.defineXML(dx.domain_xml(spec))
    dom.create()
    return time.perf_counter() - start


def cleanup(backend: LibvirtBackend, intent: MachineIntent) -> None:
    backend.deprovision(intent.identity, intent.site, intent.credentials)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    out = subprocess.run(
        [str(_HERE.parent / "hack" / "standin-image.sh")], check=True, capture_output=True, text=True
    )
    image = Path(out.stdout.strip().splitlines()[-1])
    with tempfile.TemporaryDirectory(prefix="capi-c3os-bench-") as tmp:
        daemon = PrivateLibvirtd(Path(tmp)).start()
        try:
            backend = LibvirtBackend(serial_log_dir="/var/log/libvirt/qemu")
            sizes = {"64MiB": 64 * 1024**2, "4GiB": 4 * GIB}
            for label, size in sizes.items():
                make_base(daemon, f"base-{label}.raw", size)
            # One untimed boot first: libvirt probes QEMU's capabilities on first use.
            warm = intent_for(daemon, image, "base-64MiB.raw", "warmup")
            ours(backend, warm)
            cleanup(backend, warm)
            print(
                f"{'base':>6} {'ours (s)':>9} {'raw (s)':>8} {'ratio':>6}  (medians of {args.rounds} rounds)"
            )
            with libvirt.open(daemon.uri) as conn:
                for label in sizes:
                    base = f"base-{label}.raw"
                    times: dict[str, list[float]] = {"ours": [], "raw": []}
                    for i in range(args.rounds):
                        mine = intent_for(daemon, image, base, f"ours-{label.lower()}-{i}")
                        times["ours"].append(ours(backend, mine))
                        cleanup(backend, mine)
                        theirs = intent_for(daemon, image, base, f"raw-{label.lower()}-{i}")
                        times["raw"].append(raw(conn, daemon, theirs, base))
                        cleanup(backend, theirs)
                    o, r = statistics.median(times["ours"]), statistics.median(times["raw"])
                    print(f"{label:>6} {o:9.3f} {r:8.3f} {o / r:6.2f}")
            backend.connections.close()
        finally:
            daemon.stop()


if __name__ == "__main__":
    main()
