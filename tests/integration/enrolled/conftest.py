"""Fixtures for enrolled hosts against real servers: the management plane (kube-apiserver,
CAPI core), our manager as a process under the infrastructure provider's generated RBAC
with its enrollment endpoint on a loopback port, and test-side agents (agent.py) that
speak HTTPS to it."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as kc

from capi_c3os.dev.manager import Manager
from capi_c3os.dev.processes import free_port
from capi_c3os.operator.enrollment import CA_SECRET
from tests.conftest import RunManager
from tests.integration.enrolled.agent import Agent
from tests.integration.libvirt.conftest import (  # noqa: F401 - fixtures shared with the libvirt tests
    INFRA,
    Capi,
    capi,
    infrastructure_kubeconfig,
    tenant_b,
)

MANAGER_NAMESPACE = "c3os-infrastructure-system"
"""The infrastructure ServiceAccount's namespace: its kubeconfig's, so the manager's own."""
POOL = "shop-floor"


@dataclass
class Endpoint:
    manager: Manager
    url: str
    ca_pem: bytes

    def agent(self) -> Agent:
        return Agent(self.url, self.ca_pem)


StartEndpoint = Callable[..., Endpoint]


@pytest.fixture
def start_endpoint(
    k8s: Any,
    capi: Capi,  # noqa: F811 - the fixture imported above
    run_manager: RunManager,
    infrastructure_kubeconfig: Path,  # noqa: F811
) -> StartEndpoint:
    """`capi-c3os run --providers infrastructure` for the test's namespace (and `also`),
    serving enrollment on a free loopback port; `flags` are added."""

    def start(*flags: str, also: tuple[str, ...] = ()) -> Endpoint:
        port = free_port()
        namespaces = [arg for ns in also for arg in ("--namespace", ns)]
        manager = run_manager(
            "infrastructure", infrastructure_kubeconfig,
            f"--enrollment-addr=127.0.0.1:{port}", "--enrollment-name=127.0.0.1", *namespaces, *flags,
            providers="infrastructure", namespace=capi.namespace, log_level="debug",
        ).wait_ready()  # fmt: skip
        secret = kc.CoreV1Api(k8s).read_namespaced_secret(CA_SECRET, MANAGER_NAMESPACE)
        return Endpoint(manager, f"https://127.0.0.1:{port}", base64.b64decode(secret.data["ca.crt"]))

    return start


def new_token() -> str:
    return secrets.token_urlsafe(24)


def enrolled_site(acceptance: str = "Token", token_secret: str = "shop-token") -> dict[str, Any]:
    return {
        "controlPlane": True,
        "enrolled": {
            "pool": POOL,
            "registrationTokenSecretRef": {"name": token_secret},
            "acceptance": acceptance,
        },
    }


def make_site(objects: Capi, cluster: str = "c", acceptance: str = "Token", **tokens: str) -> str:
    """A token Secret (keys as given, `token` by default) and a Cluster whose C3osCluster
    has the enrolled site `lab` of pool POOL. Returns the token."""
    token = tokens.get("token") or new_token()
    data = {"token": token, **tokens}
    objects.create_secret("shop-token", {k.replace("_", "-"): v.encode() for k, v in data.items()})
    objects.create_cluster(cluster, enrolled_site(acceptance))
    return token


def machine_spec(**enrolled: Any) -> dict[str, Any]:
    return {
        "backend": {"enrolled": enrolled},
        "image": {"url": "https://images.example/c3os.iso", "checksum": "a" * 64, "format": "iso"},
    }


def host_of(objects: Capi, name: str) -> dict[str, Any] | None:
    return objects.get(INFRA, "c3oshosts", name)


def host_phase(objects: Capi, name: str) -> str | None:
    return ((host_of(objects, name) or {}).get("status") or {}).get("phase")
