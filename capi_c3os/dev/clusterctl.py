"""An offline clusterctl repository: CAPI core, cert-manager and our three providers.

clusterctl normally downloads core components and cert-manager from GitHub releases,
which this environment cannot reach. The same files are built here from the pinned Go
module sources:
- CAPI core: `kubectl kustomize` of the module's `core/config/default` (what its release
  process does), with the release image filled in;
- cert-manager: its namespace and CRDs from the module (`deploy/crds`). Its controllers
  cannot be built here (their `cmd/*` modules are not on the Go module proxy), so nothing
  issues certificates: clusterctl's readiness probe (it creates a test Issuer and
  Certificate) passes, and the harness gives the locally run managers their webhook
  serving certificates itself (`ManagementPlane.start_capi`).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from capi_c3os.dev import binaries

CERT_MANAGER_VERSION = "v1.21.1"  # the version clusterctl v1.14 installs by default
CAPI_IMAGE = f"registry.k8s.io/cluster-api/cluster-api-controller:{binaries.CAPI_VERSION}"
OUR_PROVIDERS = {
    "InfrastructureProvider": "infrastructure-c3os",
    "BootstrapProvider": "bootstrap-c3os",
    "ControlPlaneProvider": "control-plane-c3os",
}


def _dump_all(docs: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(docs, sort_keys=False)


def core_components() -> str:
    source = binaries.capi_source() / "core" / "config" / "default"
    built = subprocess.run(
        [str(binaries.locate("kubectl")), "kustomize", str(source)],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    docs = [d for d in yaml.safe_load_all(built.stdout) if d]
    for doc in docs:
        if doc["kind"] == "Deployment":
            for container in doc["spec"]["template"]["spec"]["containers"]:
                container["image"] = CAPI_IMAGE
    return _dump_all(docs)


def cert_manager_components() -> str:
    source = binaries.module_dir("github.com/cert-manager/cert-manager", CERT_MANAGER_VERSION)
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "cert-manager"}}
    crds = [
        d
        for p in sorted((source / "deploy" / "crds").glob("*.yaml"))
        for d in yaml.safe_load_all(p.read_text())
        if d
    ]
    return _dump_all([namespace, *crds])


def write_repository(root: Path, our_repository: Path) -> Path:
    """Lay out `root` as a clusterctl local repository; returns the clusterctl.yaml path."""
    core = root / "cluster-api" / binaries.CAPI_VERSION
    core.mkdir(parents=True, exist_ok=True)
    (core / "core-components.yaml").write_text(core_components())
    shutil.copy(binaries.capi_source() / "metadata.yaml", core / "metadata.yaml")
    cert_manager = root / "cert-manager" / CERT_MANAGER_VERSION
    cert_manager.mkdir(parents=True, exist_ok=True)
    (cert_manager / "cert-manager.yaml").write_text(cert_manager_components())
    providers = [{
        "name": "cluster-api", "type": "CoreProvider",
        "url": str(core / "core-components.yaml"),
    }]  # fmt: skip
    for provider_type, directory in OUR_PROVIDERS.items():
        shutil.copytree(our_repository / directory, root / directory, dirs_exist_ok=True)
        components = next((root / directory).glob("*/*-components.yaml"))
        providers.append({"name": "c3os", "type": provider_type, "url": str(components)})
    config = {
        "providers": providers,
        "cert-manager": {"url": str(cert_manager / "cert-manager.yaml"), "version": CERT_MANAGER_VERSION},
    }
    path = root / "clusterctl.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
