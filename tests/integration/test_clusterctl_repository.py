"""clusterctl (v1.14, built from source) reads our generated local repository: it
finds each provider's components and metadata, substitutes variables, and the result
applies to a real API server."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from capi_c3os.dev import binaries
from capi_c3os.dev.mgmt import ManagementPlane, apply
from tests.conftest import REPO

pytestmark = pytest.mark.integration

PROVIDERS = {
    "infrastructure": "c3os-infrastructure-system",
    "bootstrap": "c3os-bootstrap-system",
    "control-plane": "c3os-control-plane-system",
}


def generate_provider(kind: str, home: Path) -> list[dict[str, Any]]:
    env = {
        **os.environ,
        "HOME": str(home),  # clusterctl keeps its own config and cache under $HOME
        "C3OS_REPOSITORY": str(REPO / "config" / "clusterctl"),
    }
    done = subprocess.run(
        [
            str(binaries.locate("clusterctl")),
            "generate",
            "provider",
            f"--{kind}",
            "c3os",
            "--config",
            str(REPO / "config" / "clusterctl" / "clusterctl.yaml"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.mark.parametrize("kind", list(PROVIDERS))
def test_clusterctl_renders_each_provider_from_the_local_repository(kind: str, tmp_path: Path) -> None:
    objects = generate_provider(kind, tmp_path)
    namespaces = [o["metadata"]["name"] for o in objects if o["kind"] == "Namespace"]
    assert namespaces == [PROVIDERS[kind]]
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["name"] == "manager"
    assert f"--providers={kind}" in container["args"]
    assert not [a for a in container["args"] if "${" in a], "clusterctl left a variable unsubstituted"
    crd_labels = [o["metadata"]["labels"] for o in objects if o["kind"] == "CustomResourceDefinition"]
    assert crd_labels and all(lbl["cluster.x-k8s.io/v1beta2"] == "v1alpha1" for lbl in crd_labels)


def test_rendered_components_apply_to_the_management_plane(mgmt: ManagementPlane, tmp_path: Path) -> None:
    for kind in PROVIDERS:
        apply(mgmt.kubeconfig, generate_provider(kind, tmp_path), manager="clusterctl-test")
