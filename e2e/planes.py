"""Management planes of their own for the move scenario: each initialised with `clusterctl
init` from the offline repository (CAPI core run as a local process by the harness) and
running our manager, all three providers, as a real process."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from capi_c3os.dev.clusterctl import write_repository
from capi_c3os.dev.manager import Manager, start_manager
from capi_c3os.dev.mgmt import ManagementPlane
from tests.conftest import REPO
from tests.integration.test_clusterctl_move import init_plane


@dataclass
class Plane:
    name: str
    mgmt: ManagementPlane
    manager: Manager

    def log_sources(self) -> dict[str, Path]:
        return {f"{self.name}-manager.log": self.manager.log_path, f"{self.name}-mgmt": self.mgmt.logs}


@contextmanager
def planes(root: Path, *names: str, image_dir: Path | None = None) -> Iterator[list[Plane]]:
    """Management planes, `clusterctl init`-ed, each with our manager (file:// images
    allowed under `image_dir`); stopped on exit."""
    config = write_repository(root / "repository", REPO / "config" / "clusterctl")
    started: list[Plane] = []
    mgmts: list[ManagementPlane] = []
    try:
        for name in names:
            mgmt = ManagementPlane(root / name).start(capi=False)
            mgmts.append(mgmt)
            init_plane(mgmt, root, config)
            flags = [f"--image-file-dir={image_dir}"] if image_dir else []
            manager = start_manager(
                mgmt.kubeconfig, root / f"{name}-manager.log", *flags, log_level="debug", metrics=False
            )
            started.append(Plane(name, mgmt, manager))
            manager.wait_ready()
        yield started
    finally:
        for plane in started:
            plane.manager.stop()
        for mgmt in mgmts:
            mgmt.stop()


def keep_logs(planes: list[Plane], test: str) -> None:
    """The planes' logs next to the e2e environment's (e2e.conftest.E2eEnv.keep_logs)."""
    keep = os.environ.get("CAPI_C3OS_TEST_LOGS")
    sources = {k: v for plane in planes for k, v in plane.log_sources().items()}
    if not keep:
        print(*(f"  {k}: {p}" for k, p in sources.items()), sep="\n")
        return
    target = Path(keep) / "e2e" / test
    for what, path in sources.items():
        if path.is_dir():
            shutil.copytree(path, target / what, dirs_exist_ok=True)
        elif path.exists():
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, target / what)
