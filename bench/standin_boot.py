"""Benchmark: boot time of the stand-in image, booted by itself from its disk (boot.qcow2:
SeaBIOS -> syslinux -> kernel, as a real c3os qcow2 boots) against direct kernel boot
(base.qcow2 + kernel and initrd from the host), under TCG.

    .venv/bin/python bench/standin_boot.py [--rounds 3]

Starts a private libvirtd (capi_c3os.dev.libvirtd; no guest network, so no DHCP wait),
builds the stand-in image (hack/standin-image.sh), and per round provisions one VM each
way with our LibvirtBackend, one at a time, timing from `provision()` reporting the
domain running until the guest prints that it read its config drive and is up
(`C3OS-STANDIN READY`, what the k3s stand-in waits for). Prints medians and the ratio.
Figures only: nothing here asserts a duration; they measure this (shared) machine.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# bench/libvirt.py would shadow the libvirt module: keep this directory off the path.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

from capi_c3os.api.infrastructure import DirectKernelBoot, LibvirtMachine, LibvirtSite, MachineImage, Site  # noqa: E402
from capi_c3os.backends.base import MachineIdentity, MachineIntent, Phase, SiteCredentials  # noqa: E402
from capi_c3os.backends.libvirt import LibvirtBackend  # noqa: E402
from capi_c3os.backends.libvirt import domain as dx  # noqa: E402
from capi_c3os.dev.k3s import BOOTED, serial_log  # noqa: E402
from capi_c3os.dev.libvirtd import PrivateLibvirtd  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def intent_for(daemon: PrivateLibvirtd, image: Path, name: str, self_boot: bool) -> MachineIntent:
    identity = MachineIdentity("bench", name, f"c3os://bench/{name}")
    machine = LibvirtMachine()
    if not self_boot:
        machine = LibvirtMachine(
            direct_kernel_boot=DirectKernelBoot(
                kernel=str(image / "vmlinuz"), initrd=str(image / "initrd.img"), cmdline="console=ttyS0 quiet"
            )
        )
    return MachineIntent(
        identity=identity,
        site=Site(name="bench", libvirt=LibvirtSite(uri=daemon.uri, pool=daemon.pool_name)),
        credentials=SiteCredentials(),
        image=MachineImage(volume="boot.qcow2" if self_boot else "base.qcow2"),
        cpus=1,
        memory_mib=256,
        disk_gib=1,
        hostname=name,
        user_data=b"#cloud-config\n",
        meta_data={"instance-id": identity.uuid, "local-hostname": name, "provider-id": identity.provider_id},
        libvirt=machine,
    )


def boot(backend: LibvirtBackend, daemon: PrivateLibvirtd, intent: MachineIntent) -> float:
    assert backend.provision(intent).phase is Phase.RUNNING
    started = time.perf_counter()
    domain = dx.domain_name(intent.identity)
    try:
        while BOOTED not in serial_log(daemon, domain):
            if time.perf_counter() - started > 600:
                raise SystemExit(f"{domain} did not boot: {serial_log(daemon, domain)[-1000:]}")
            time.sleep(0.1)
        return time.perf_counter() - started
    finally:
        backend.deprovision(intent.identity, intent.site, intent.credentials)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    out = subprocess.run(
        [str(REPO / "hack" / "standin-image.sh")], check=True, capture_output=True, text=True
    )
    image = Path(out.stdout.strip().splitlines()[-1])
    with tempfile.TemporaryDirectory(prefix="bench-boot-") as tmp:
        daemon = PrivateLibvirtd(Path(tmp))
        daemon.start()
        backend = LibvirtBackend(serial_log_dir="/var/log/libvirt/qemu")
        try:
            daemon.upload_file(image / "boot.qcow2", "boot.qcow2")
            daemon.upload_file(image / "base.qcow2", "base.qcow2")
            times: dict[str, list[float]] = {"self-boot (disk)": [], "direct kernel": []}
            for r in range(args.rounds):
                times["self-boot (disk)"].append(
                    boot(backend, daemon, intent_for(daemon, image, f"s{r}", True))
                )
                times["direct kernel"].append(
                    boot(backend, daemon, intent_for(daemon, image, f"d{r}", False))
                )
        finally:
            backend.connections.close()
            daemon.stop()
    print(f"stand-in boot, running -> config drive read and up, TCG 1 vCPU 256 MiB, {args.rounds} rounds")
    for name, samples in times.items():
        each = ", ".join(f"{s:.1f}" for s in samples)
        print(f"  {name:18} median {statistics.median(samples):6.1f}s  ({each})")
    ratio = statistics.median(times["self-boot (disk)"]) / statistics.median(times["direct kernel"])
    print(f"  ratio self-boot / direct kernel: {ratio:.2f}")


if __name__ == "__main__":
    main()
