"""The end-to-end environment, started once per session: everything that can run here is
real, and what cannot (k3s on the nodes) is stood in for from what the VMs received.

- a management plane of its own (etcd, kube-apiserver, kube-controller-manager, the
  CAPI core manager) with our CRDs: the fixtures of tests/conftest.py, instantiated
  here again, so our all-namespace manager never meets the integration tests' objects;
- our manager, all three providers, as a real `python -m capi_c3os run` process;
- a private libvirtd + QEMU (TCG) in a network namespace of this run, with the stand-in
  images uploaded into its pool (the self-booting one as `standin-boot.qcow2`);
- the k3s stand-in (`capi_c3os.dev.k3s`) watching that daemon's VMs.

On a failing scenario the logs (manager, management plane and CAPI, libvirtd, every
serial console, k3s stand-in and workload API servers) are copied to
`$CAPI_C3OS_TEST_LOGS/e2e/<test>` when that is set; otherwise their paths are printed.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from capi_c3os.dev.k3s import K3sStandIn
from capi_c3os.dev.libvirtd import PrivateLibvirtd
from capi_c3os.dev.manager import Manager, start_manager
from capi_c3os.dev.mgmt import ManagementPlane
from tests.conftest import k8s, mgmt  # noqa: F401 - session fixtures, instantiated for e2e/
from tests.integration.libvirt.conftest import libvirtd, standin_image  # noqa: F401


@dataclass
class E2eEnv:
    mgmt: ManagementPlane
    k8s: Any
    """An admin `kubernetes.client.ApiClient` for the management plane."""
    libvirtd: PrivateLibvirtd
    k3s: K3sStandIn
    manager: Manager
    standin_image: Path
    """Directory of the stand-in images (boot.qcow2 boots by itself)."""

    def log_sources(self) -> dict[str, Path]:
        """What to read after a failure, by name."""
        return {
            "manager.log": self.manager.log_path,
            "mgmt": self.mgmt.logs,
            "libvirtd.log": self.libvirtd.root / "libvirtd.log",
            "consoles": self.libvirtd.qemu_log_dir,
            "k3s": self.k3s.workdir,
        }

    def keep_logs(self, name: str) -> None:
        keep = os.environ.get("CAPI_C3OS_TEST_LOGS")
        sources = self.log_sources()
        if not keep:
            print(f"\n{name} failed; logs:", *(f"  {k}: {p}" for k, p in sources.items()), sep="\n")
            return
        target = Path(keep) / "e2e" / name
        for what, path in sources.items():
            if path.is_dir():
                # The workload servers' data directories (etcd) are not logs.
                shutil.copytree(path, target / what, dirs_exist_ok=True, ignore=_not_logs)
            elif path.exists():
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy(path, target / what)
        print(f"\n{name} failed; logs copied to {target}")


def _not_logs(directory: str, names: list[str]) -> set[str]:
    return {n for n in names if n in {"data", "pki", "etcd"} or n.endswith((".key", "kubeconfig"))}


@pytest.fixture(scope="session")
def e2e(
    mgmt: ManagementPlane,  # noqa: F811
    k8s: Any,  # noqa: F811
    libvirtd: PrivateLibvirtd,  # noqa: F811
    standin_image: Path,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[E2eEnv]:
    root = tmp_path_factory.mktemp("e2e")
    # The clusters boot the stand-in image by a file:// URL: allowed there only.
    manager = start_manager(
        mgmt.kubeconfig,
        root / "manager.log",
        f"--image-file-dir={standin_image}",
        log_level="debug",
        metrics=False,
    )
    k3s = K3sStandIn(libvirtd, root / "k3s")
    try:
        manager.wait_ready()
        k3s.start()
        yield E2eEnv(mgmt, k8s, libvirtd, k3s, manager, standin_image)
    finally:
        k3s.stop()
        manager.stop()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.failed:
        item.stash[_FAILED] = True
    return report


_FAILED = pytest.StashKey[bool]()


@pytest.fixture(autouse=True)
def scenario_logs(request: pytest.FixtureRequest, e2e: E2eEnv) -> Iterator[None]:
    """Every scenario leaves readable logs when it fails (setup included)."""
    yield
    if request.node.stash.get(_FAILED, False):
        e2e.keep_logs(request.node.name)


# Scenarios with an Ironic site share one Ironic (e2e/ironic_site.py).
from e2e.ironic_site import e2e_ironic, ironic_logs  # noqa: E402, F401
