"""Shared fixtures: a real management plane (etcd, kube-apiserver, kube-controller-manager,
CAPI core manager) started once per test session on loopback, and our manager
(`capi-c3os run`) as a real process."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest
import yaml
from kubernetes import client as kc

from capi_c3os.dev.manager import Manager, start_manager
from capi_c3os.dev.mgmt import ManagementPlane, api_client, apply, wait_for_crds_established
from tests.support import keep_directory

# clusterctl looks for a newer release of itself (proxy.golang.org, api.github.com)
# after each command; tests talk to loopback only.
os.environ.setdefault("CLUSTERCTL_DISABLE_VERSIONCHECK", "true")

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def mgmt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagementPlane]:
    """The whole management plane, with our CRDs installed. Logs are kept on failure
    under the session's tmp dir (printed at teardown) or CAPI_C3OS_TEST_LOGS when set."""
    root = tmp_path_factory.mktemp("mgmt")
    plane = ManagementPlane(root).start()
    try:
        crds = our_crds()
        assert crds, "config/crd is empty: run `capi-c3os manifests`"
        apply(plane.kubeconfig, crds)
        wait_for_crds_established(plane.kubeconfig, crds)
        yield plane
    finally:
        plane.stop()
        keep_directory(plane.logs, "mgmt")


def our_crds() -> list[dict[str, Any]]:
    return [yaml.safe_load(p.read_text()) for p in sorted((REPO / "config" / "crd").glob("*.yaml"))]


@pytest.fixture(scope="session")
def k8s(mgmt: ManagementPlane) -> Iterator[Any]:
    """An admin `kubernetes.client.ApiClient` for the management plane."""
    with api_client(mgmt.kubeconfig) as client:
        yield client


@pytest.fixture
def namespace(k8s: Any) -> Iterator[str]:
    """A fresh namespace per test, deleted afterwards (the namespace controller empties it)."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    core = kc.CoreV1Api(k8s)
    core.create_namespace(kc.V1Namespace(metadata=kc.V1ObjectMeta(name=name)))
    yield name
    core.delete_namespace(name)


def provider_identity(
    mgmt: ManagementPlane, provider: str, directory: Path
) -> tuple[Path, list[dict[str, Any]]]:
    """Install a provider's generated components (Namespace, ServiceAccount, RBAC, ...) and
    return a kubeconfig with a token of its ServiceAccount, and the components: a manager
    using it gets exactly the generated RBAC, so a missing rule fails the test."""
    path = REPO / "config" / "clusterctl" / f"{provider}-c3os" / "v0.1.0" / f"{provider}-components.yaml"
    components = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    apply(mgmt.kubeconfig, components, manager="rbac-test")
    account = next(d for d in components if d["kind"] == "ServiceAccount")["metadata"]
    kubeconfig = mgmt.write_service_account_kubeconfig(
        directory / f"{provider}-sa.kubeconfig", account["namespace"], account["name"]
    )
    return kubeconfig, components


# ------------------------------------------------------------------ our manager as a process


class RunManager(Protocol):
    def __call__(
        self,
        name: str,
        kubeconfig: Path,
        *flags: str,
        providers: str | None = None,
        namespace: str | None = None,
        log_level: str | None = None,
        env: dict[str, str] | None = None,
    ) -> Manager: ...


@pytest.fixture
def run_manager(tmp_path: Path) -> Iterator[RunManager]:
    """Start `capi-c3os run` processes (`capi_c3os.dev.manager.start_manager`: health and
    metrics on free loopback ports, log under the test's tmp dir); every one is stopped
    with SIGTERM at teardown. `providers` and `namespace` scope it, `kubeconfig` is its
    identity (admin, or a provider's ServiceAccount so the API server enforces the
    generated RBAC), `flags` go last (a repeated flag wins), `env` is added to the
    environment."""
    started: list[Manager] = []

    def start(
        name: str,
        kubeconfig: Path,
        *flags: str,
        providers: str | None = None,
        namespace: str | None = None,
        log_level: str | None = None,
        env: dict[str, str] | None = None,
    ) -> Manager:
        log = tmp_path / f"{name}-{uuid.uuid4().hex[:6]}.log"
        manager = start_manager(
            kubeconfig, log, *flags, providers=providers, namespace=namespace, log_level=log_level, env=env,
            name=name,
        )  # fmt: skip
        started.append(manager)
        return manager

    yield start
    for manager in started:
        manager.stop()


# ------------------------------------------------------------------ order for parallel workers

# The longest modules go first, so that parallel workers (`make test`: pytest-xdist, a
# module per worker at a time) do not end with one worker still busy on a long scenario
# while the others idle. Stable: within each group, collection order stays.
_LONG_FIRST = ("e2e/", "tests/integration/", "tests/unit/")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        path = item.nodeid.split("::", 1)[0]
        return next((i for i, prefix in enumerate(_LONG_FIRST) if path.startswith(prefix)), len(_LONG_FIRST))

    items.sort(key=rank)
