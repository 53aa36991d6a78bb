"""The crash storm of tests/storm.py at a bigger size than `make test` runs it: C3osMachines
created and deleted at random while our real manager is SIGKILLed and restarted at random
moments, against a real management plane (etcd, kube-apiserver, the CAPI core manager), a
real Ironic (fake-hardware nodes) and a private libvirtd (the stand-in image).

    .venv/bin/python bench/storm.py [--backend ironic|libvirt|both] [--seed N]
                                    [--cycles 20] [--kills 15] [--batch 3]
                                    [--nodes 8] [--vms 4] [--repeat 1]

Prints, per storm: the seed (CAPI_C3OS_STORM_SEED or --seed replays its schedule), cycles,
machines, kills, wall time, duplicates, mapping errors, machines stuck, leaks, bootstrap
data found in logs, unplanned manager deaths; and every problem. Exits 1
when any storm found one. Everything runs on loopback; the servers are started and
stopped by the script; the run's files are kept under --keep when given.
"""

# ruff: noqa: E402 - the path is fixed before the imports it affects

from __future__ import annotations

import sys
from pathlib import Path

# bench/libvirt.py would shadow `import libvirt`: keep this directory off the path.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import argparse
import contextlib
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from kubernetes import client as kc

from capi_c3os.dev.ironic import IronicServer
from capi_c3os.dev.libvirtd import PrivateLibvirtd
from capi_c3os.dev.manager import Manager, start_manager
from capi_c3os.dev.mgmt import ManagementPlane, api_client, apply, wait_for_crds_established
from tests.conftest import REPO, our_crds, provider_identity
from tests.integration.ironic.lab import IronicLab, new_resource_class
from tests.integration.libvirt.conftest import BASE_VOLUME, Capi
from tests.storm import (
    SEED_ENV,
    IronicStormSite,
    LibvirtStormSite,
    StartManager,
    Storm,
    StormPlan,
    StormReport,
    StormSite,
    storm_seed,
)


@dataclass
class Servers:
    ironic: IronicServer | None = None
    libvirtd: PrivateLibvirtd | None = None
    standin: Path | None = None
    """The stand-in image's directory (kernel, initrd)."""


@contextlib.contextmanager
def world(root: Path, backends: list[str]) -> Iterator[tuple[ManagementPlane, Path, Servers]]:
    """The management plane with our CRDs, the infrastructure provider's identity, and the
    servers of `backends`; all stopped afterwards."""
    with contextlib.ExitStack() as stack:
        plane = ManagementPlane(root / "mgmt").start()
        stack.callback(plane.stop)
        crds = our_crds()
        apply(plane.kubeconfig, crds)
        wait_for_crds_established(plane.kubeconfig, crds)
        kubeconfig = provider_identity(plane, "infrastructure", root)[0]
        servers = Servers()
        if "ironic" in backends:
            servers.ironic = IronicServer(root / "ironic").start()
            stack.callback(servers.ironic.stop)
        if "libvirt" in backends:
            image = (
                subprocess.run(
                    [str(REPO / "hack" / "standin-image.sh")], check=True, capture_output=True, text=True
                )
                .stdout.strip()
                .splitlines()[-1]
            )
            daemon = PrivateLibvirtd(root / "libvirtd", network=True).start()
            stack.callback(daemon.stop)
            daemon.upload_file(Path(image) / "base.qcow2", BASE_VOLUME)
            servers.libvirtd, servers.standin = daemon, Path(image)
        yield plane, kubeconfig, servers


def storm(
    backend: str, plan: StormPlan, args: argparse.Namespace, root: Path,
    plane: ManagementPlane, kubeconfig: Path, servers: Servers,
) -> StormReport:  # fmt: skip
    namespace = f"storm-{backend}-{uuid.uuid4().hex[:6]}"
    workdir = root / namespace
    with api_client(plane.kubeconfig) as client:
        kc.CoreV1Api(client).create_namespace(kc.V1Namespace(metadata=kc.V1ObjectMeta(name=namespace)))
        capi = Capi(client, namespace)
        site: StormSite
        if backend == "ironic":
            assert servers.ironic is not None
            lab = IronicLab(servers.ironic)
            rc = new_resource_class()
            lab.enroll(args.nodes, rc)
            site = IronicStormSite(lab, namespace, rc, args.nodes)
        else:
            assert servers.libvirtd is not None and servers.standin is not None
            site = LibvirtStormSite(servers.libvirtd, namespace, servers.standin, capacity=args.vms)
        started: list[Manager] = []

        def start(name: str, env: dict[str, str] | None = None) -> Manager:
            manager = start_manager(
                kubeconfig, workdir / f"{name}.log", providers="infrastructure", namespace=namespace,
                log_level="debug", env=env, name=name,
            )  # fmt: skip
            started.append(manager)
            return manager

        runner: StartManager = start
        try:
            return Storm(plan, backend, capi, site, runner, workdir, lambda line: print(f"  {line}")).run()
        finally:
            for manager in started:
                manager.stop()
            kc.CoreV1Api(client).delete_namespace(namespace)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=["ironic", "libvirt", "both"], default="both")
    parser.add_argument("--seed", type=int, help=f"default: ${SEED_ENV}, else a fresh one (printed)")
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--kills", type=int, default=15)
    parser.add_argument("--batch", type=int, default=3, help="machines created per cycle, at most")
    parser.add_argument(
        "--nodes", type=int, default=8, help="Ironic fake-hardware nodes (machines at once: one less)"
    )
    parser.add_argument("--vms", type=int, default=4, help="libvirt machines at once, at most")
    parser.add_argument("--repeat", type=int, default=1, help="storms per backend (seeds: seed, seed+1, ...)")
    parser.add_argument("--keep", type=Path, help="copy the run's files (logs) here")
    args = parser.parse_args()
    # The servers run in their own process groups: turn SIGTERM into an exit that stops them.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    backends = ["ironic", "libvirt"] if args.backend == "both" else [args.backend]
    seed = args.seed if args.seed is not None else storm_seed()
    reports: list[StormReport] = []
    with tempfile.TemporaryDirectory(prefix="bench-storm-") as tmp:
        root = Path(tmp)
        try:
            with world(root, backends) as (plane, kubeconfig, servers):
                for backend in backends:
                    for i in range(args.repeat):
                        plan = StormPlan(seed + i, args.cycles, args.kills, batch=args.batch)
                        print(
                            f"{backend}: seed {plan.seed}, {plan.cycles} cycles, {plan.kills} kills",
                            flush=True,
                        )
                        report = storm(backend, plan, args, root, plane, kubeconfig, servers)
                        reports.append(report)
                        print(report.explain() if report.problems else report.summary(), flush=True)
        finally:
            if args.keep:
                shutil.copytree(root, args.keep, dirs_exist_ok=True, ignore_dangling_symlinks=True,
                                ignore=shutil.ignore_patterns("*.sock", "*.qcow2", "*.iso"))  # fmt: skip
    for report in reports:
        print(report.summary())
    return 1 if any(r.problems for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
