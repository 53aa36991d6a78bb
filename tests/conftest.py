"""Shared fixtures: a real management plane (etcd, kube-apiserver, kube-controller-manager,
CAPI core manager) started once per test session on loopback, and our manager
(`capi-c3os run`) as a real process."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest
import yaml
from kubernetes import client as kc
from prometheus_client.parser import text_string_to_metric_families

from capi_c3os.dev.mgmt import ManagementPlane, api_client, apply, wait_for_crds_established
from capi_c3os.dev.processes import ManagedProcess, free_port

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
        keep_logs(plane, "mgmt")


def keep_logs(plane: ManagementPlane, name: str) -> None:
    """Copy the servers' logs to CAPI_C3OS_TEST_LOGS/<name> when set (CI keeps them)."""
    keep = os.environ.get("CAPI_C3OS_TEST_LOGS")
    if keep:
        shutil.copytree(plane.logs, Path(keep) / name, dirs_exist_ok=True)


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


def http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


@dataclass
class Manager:
    process: ManagedProcess
    health_port: int
    metrics_port: int

    def status(self, path: str) -> int | None:
        return http_status(f"http://127.0.0.1:{self.health_port}{path}")

    def ready(self) -> bool:
        return self.status("/readyz") == 200

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as resp:
                text = resp.read().decode()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return {}  # not listening yet: no samples
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def metric_sum(self, name: str, **labels: str) -> float:
        return sum(
            value
            for (sample, sample_labels), value in self.metrics().items()
            if sample == name and set(labels.items()) <= set(sample_labels)
        )

    def identity(self) -> str:
        for (name, labels), _ in self.metrics().items():
            if name == "capi_c3os_manager_info":
                return dict(labels)["identity"]
        raise AssertionError("no capi_c3os_manager_info metric")

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Leading and watching: a standby is ready too, but does not lead."""
        self.process.wait_until(
            lambda: self.ready() and self.metric_sum("capi_c3os_leader") == 1,
            "leading and /readyz 200",
            timeout,
        )

    def stop(self) -> int | None:
        return self.process.stop(timeout=30, sig=signal.SIGTERM)


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
    """Start `capi-c3os run` processes (health and metrics on free loopback ports, log
    under the test's tmp dir); every one is stopped with SIGTERM at teardown. `providers`
    and `namespace` scope it, `kubeconfig` is its identity (admin, or a provider's
    ServiceAccount so the API server enforces the generated RBAC), `flags` go last (a
    repeated flag wins), `env` is added to the environment."""
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
        health, metrics = free_port(), free_port()
        argv = [sys.executable, "-m", "capi_c3os", "run", "--kubeconfig", str(kubeconfig)]
        if providers is not None:
            argv += ["--providers", providers]
        if namespace is not None:
            argv += ["--namespace", namespace]
        argv += ["--health-addr", f"127.0.0.1:{health}", "--metrics-addr", f"127.0.0.1:{metrics}"]
        if log_level is not None:
            argv += ["--log-level", log_level]
        process = ManagedProcess(
            name,
            [*argv, *flags],
            tmp_path / f"{name}-{uuid.uuid4().hex[:6]}.log",
            env=env,
        )
        process.start()
        manager = Manager(process, health, metrics)
        started.append(manager)
        return manager

    yield start
    for manager in started:
        manager.stop()
