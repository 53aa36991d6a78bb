"""`make demo` (capi-c3os dev up / down): a management plane that outlives the command,
is usable with the printed kubeconfig and tools, and stops completely."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from capi_c3os.api.infrastructure import C3osMachineSpec
from capi_c3os.dev.mgmt import ManagementPlane
from tests.conftest import REPO

pytestmark = pytest.mark.integration


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _dev(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "capi_c3os", "dev", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_demo_up_serves_our_api_and_down_stops_everything(mgmt: ManagementPlane, tmp_path: Path) -> None:
    # (`mgmt` is requested only so the binaries are known to be built.)
    root = tmp_path / "demo"
    up = _dev("up", "--dir", str(root))
    assert up.returncode == 0, up.stderr
    try:
        pids = json.loads((root / "state.json").read_text())["pids"]
        assert set(pids) == {
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "capi-manager",
            "capi-c3os-manager",
        }
        assert all(_alive(pid) for pid in pids.values())
        assert f"export KUBECONFIG={root / 'kubeconfig'}" in up.stdout

        # The printed tools work against it, and `kubectl explain` shows the models' docs.
        explain = subprocess.run(
            [str(root / "bin" / "kubectl"), "explain", "c3osmachine.spec.providerID"],
            env={**os.environ, "KUBECONFIG": str(root / "kubeconfig")},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert explain.returncode == 0, explain.stderr
        assert "GROUP:      infrastructure.cluster.x-k8s.io" in explain.stdout
        documented = C3osMachineSpec.model_fields["provider_id"].description or ""
        assert documented and " ".join(documented.split()) in " ".join(explain.stdout.split())

        again = _dev("up", "--dir", str(root))
        assert again.returncode == 1
        assert "already running" in again.stderr
    finally:
        down = _dev("down", "--dir", str(root))
    assert down.returncode == 0, down.stderr
    assert not any(_alive(pid) for pid in pids.values())
    assert not (root / "state.json").exists()
