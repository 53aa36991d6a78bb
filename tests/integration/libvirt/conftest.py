"""Fixtures for the libvirt backend and the infrastructure provider against real
servers: a private libvirtd + QEMU (TCG) inside a network namespace this test run
creates (the networking rule: guests and their DHCP network never leave it), the
stand-in c3os image, and our manager run as a real process under the infrastructure
provider's generated RBAC."""

from __future__ import annotations

import base64
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from kubernetes import client as kc
from kubernetes.client.exceptions import ApiException

from capi_c3os.capi.metadata import CLUSTER_SECRET_TYPE
from capi_c3os.dev.k3s import console_blocks, serial_log
from capi_c3os.dev.libvirtd import PrivateLibvirtd
from capi_c3os.dev.manager import Manager
from capi_c3os.dev.mgmt import ManagementPlane
from capi_c3os.reconcilers.c3osmachine import FINALIZER
from tests.conftest import REPO, RunManager, provider_identity
from tests.integration.libvirt.remote import RemoteHost, start_remote_host
from tests.support import eventually

CAPI = ("cluster.x-k8s.io", "v1beta2")
INFRA = ("infrastructure.cluster.x-k8s.io", "v1alpha1")
BOOTSTRAP = ("bootstrap.cluster.x-k8s.io", "v1alpha1")
CONTROL_PLANE = ("controlplane.cluster.x-k8s.io", "v1alpha1")
CLUSTER_NAME = "cluster.x-k8s.io/cluster-name"
CONTROL_PLANE_LABEL = "cluster.x-k8s.io/control-plane"
BASE_VOLUME = "standin.qcow2"
BOOT_VOLUME = "standin-boot.qcow2"
"""Ships k3s STANDIN_K3S (hack/standin-image.sh's DEFAULT_K3S)."""
STANDIN_K3S = "v1.33.4+k3s1"
NEXT_K3S = "v1.34.1+k3s1"
NEXT_BOOT_VOLUME = "standin-boot-k3sv1.34.1-k3s1.qcow2"
"""The same stand-in, shipping k3s NEXT_K3S."""
UPLOADED_VOLUMES = frozenset({BASE_VOLUME, BOOT_VOLUME, NEXT_BOOT_VOLUME})
"""What the `libvirtd` fixture puts in the pool: never a leftover of a test."""
__all__ = ["console_blocks", "serial_log"]  # imported from here by the libvirt tests


@pytest.fixture(scope="session")
def standin_image() -> Path:
    """kernel, initrd and base.qcow2 of the stand-in image (built once, cached)."""
    out = subprocess.run(
        [str(REPO / "hack" / "standin-image.sh")], check=True, capture_output=True, text=True
    )
    return Path(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def libvirtd(tmp_path_factory: pytest.TempPathFactory, standin_image: Path) -> Iterator[PrivateLibvirtd]:
    root = tmp_path_factory.mktemp("libvirtd")
    daemon = PrivateLibvirtd(root, network=True)
    try:
        daemon.start()
        daemon.upload_file(standin_image / "base.qcow2", BASE_VOLUME)
        daemon.upload_file(standin_image / "boot.qcow2", BOOT_VOLUME)
        daemon.upload_file(standin_image / "boot-k3sv1.34.1-k3s1.qcow2", NEXT_BOOT_VOLUME)
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory, standin_image: Path) -> Iterator[RemoteHost]:
    """A private libvirtd reached as a remote host, over qemu+tls and (its sshd) qemu+ssh."""
    host = start_remote_host(tmp_path_factory.mktemp("remote"))
    try:
        host.daemon.upload_file(standin_image / "base.qcow2", BASE_VOLUME)
        yield host
    finally:
        host.sshd.stop()
        host.daemon.stop()


class Capi:
    """Create and read the objects of one test namespace."""

    def __init__(self, api: Any, namespace: str) -> None:
        self.custom = kc.CustomObjectsApi(api)
        self.core = kc.CoreV1Api(api)
        self.namespace = namespace

    def create(self, gv: tuple[str, str], plural: str, body: dict[str, Any]) -> dict[str, Any]:
        body["metadata"]["namespace"] = self.namespace
        return cast(
            dict[str, Any], self.custom.create_namespaced_custom_object(*gv, self.namespace, plural, body)
        )

    def get(self, gv: tuple[str, str], plural: str, name: str) -> dict[str, Any] | None:
        try:
            return cast(
                dict[str, Any], self.custom.get_namespaced_custom_object(*gv, self.namespace, plural, name)
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def must_get(self, gv: tuple[str, str], plural: str, name: str) -> dict[str, Any]:
        obj = self.get(gv, plural, name)
        assert obj is not None, f"{plural}/{name} not found"
        return obj

    def delete(self, gv: tuple[str, str], plural: str, name: str) -> None:
        self.custom.delete_namespaced_custom_object(*gv, self.namespace, plural, name)

    def provisioned(self, name: str) -> dict[str, Any] | None:
        """The C3osMachine once its status says provisioned."""
        obj = self.get(INFRA, "c3osmachines", name) or {}
        initialization = (obj.get("status") or {}).get("initialization") or {}
        return obj if initialization.get("provisioned") else None

    def ready_message(self, name: str) -> str:
        """A C3osMachine's Ready reason and message, for failure messages."""
        obj = self.get(INFRA, "c3osmachines", name) or {}
        ready = [c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == "Ready"]
        return f"{ready[0]['reason']}: {ready[0]['message']}" if ready else "no Ready condition yet"

    def ready(self, name: str) -> dict[str, Any]:
        """A C3osMachine's Ready condition, or {} before it has one."""
        obj = self.get(INFRA, "c3osmachines", name) or {}
        found = [c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == "Ready"]
        return found[0] if found else {}

    def create_secret(
        self, name: str, data: dict[str, bytes], cluster: str | None = None, type: str | None = None
    ) -> None:
        """With `cluster`, labelled as that Cluster's (cluster-name label)."""
        self.core.create_namespaced_secret(
            self.namespace,
            kc.V1Secret(
                metadata=kc.V1ObjectMeta(name=name, labels={CLUSTER_NAME: cluster} if cluster else None),
                data={k: base64.b64encode(v).decode() for k, v in data.items()},
                type=type,
            ),
        )

    def create_cluster(self, name: str, site: dict[str, Any]) -> None:
        """Cluster + C3osCluster with one site; no control plane (not this issue's)."""
        self.create(INFRA, "c3osclusters", {
            "apiVersion": "/".join(INFRA), "kind": "C3osCluster", "metadata": {"name": name},
            "spec": {"controlPlaneEndpoint": {"host": "cp.example.test", "port": 6443},
                     "sites": [{"name": "lab", **site}]},
        })  # fmt: skip
        self.create(CAPI, "clusters", {
            "apiVersion": "/".join(CAPI), "kind": "Cluster", "metadata": {"name": name},
            "spec": {"infrastructureRef": {"apiGroup": INFRA[0], "kind": "C3osCluster", "name": name}},
        })  # fmt: skip

    def create_machine(self, cluster: str, name: str, spec: dict[str, Any], user_data: bytes) -> None:
        """A worker Machine whose bootstrap data is given directly (a Secret, typed and
        labelled as CAPI's bootstrap providers make it), and its C3osMachine."""
        self.create_secret(
            f"{name}-bootstrap",
            {"value": user_data, "format": b"cloud-config"},
            cluster=cluster,
            type=CLUSTER_SECRET_TYPE,
        )
        self.create(INFRA, "c3osmachines", {
            "apiVersion": "/".join(INFRA), "kind": "C3osMachine",
            "metadata": {"name": name, "labels": {CLUSTER_NAME: cluster}}, "spec": spec,
        })  # fmt: skip
        self.create(CAPI, "machines", {
            "apiVersion": "/".join(CAPI), "kind": "Machine",
            "metadata": {"name": name, "labels": {CLUSTER_NAME: cluster}},
            "spec": {
                "clusterName": cluster,
                "bootstrap": {"dataSecretName": f"{name}-bootstrap"},
                "infrastructureRef": {"apiGroup": INFRA[0], "kind": "C3osMachine", "name": name},
            },
        })  # fmt: skip


@pytest.fixture
def capi(k8s: Any, namespace: str) -> Capi:
    return Capi(k8s, namespace)


def claim_with_foreign_provider_id(attacker: Capi, site: dict[str, Any], spec: dict[str, Any]) -> None:
    """Issue 13 (a): a Cluster + Machine + C3osMachine `victim` in the attacker's namespace
    whose spec says `providerID` (another namespace's machine of that name). It must be
    refused before anything is written or created, and go away when its Cluster does."""
    attacker.create_cluster("c", site)
    attacker.create_machine("c", "victim", spec, b"#cloud-config\n")
    eventually(
        lambda: attacker.ready("victim").get("reason") == "InvalidProviderID",
        "the attacker's machine refused",
        90,
        explain=lambda: attacker.ready_message("victim"),
    )
    refused = attacker.must_get(INFRA, "c3osmachines", "victim")
    assert attacker.ready("victim")["status"] == "False"
    assert spec["providerID"] in attacker.ready("victim")["message"]
    assert FINALIZER not in (refused["metadata"].get("finalizers") or [])
    assert "initialization" not in (refused.get("status") or {})
    attacker.delete(CAPI, "clusters", "c")
    eventually(lambda: attacker.get(INFRA, "c3osmachines", "victim") is None, "attacker machine gone", 90)


@pytest.fixture
def tenant_b(k8s: Any) -> Iterator[Capi]:
    """A second namespace: another tenant's (the attacker's in issue 13's tests)."""
    name = f"tenant-b-{uuid.uuid4().hex[:6]}"
    core = kc.CoreV1Api(k8s)
    core.create_namespace(kc.V1Namespace(metadata=kc.V1ObjectMeta(name=name)))
    yield Capi(k8s, name)
    core.delete_namespace(name)


@pytest.fixture(scope="session")
def infrastructure_kubeconfig(mgmt: ManagementPlane, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The infrastructure provider's ServiceAccount: the API server enforces exactly the
    generated RBAC, so a missing rule fails these tests."""
    return provider_identity(mgmt, "infrastructure", tmp_path_factory.mktemp("infrastructure-sa"))[0]


@pytest.fixture
def start_manager(
    infrastructure_kubeconfig: Path, run_manager: RunManager, namespace: str
) -> Callable[..., Manager]:
    """`capi-c3os run --providers infrastructure` for this test's namespace, as a process
    (`env` adds to its environment)."""

    def start(name: str = "infrastructure", env: dict[str, str] | None = None) -> Manager:
        return run_manager(
            name,
            infrastructure_kubeconfig,
            providers="infrastructure",
            namespace=namespace,
            log_level="debug",
            env=env,
        )

    return start
