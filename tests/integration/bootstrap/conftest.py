"""Fixtures for the bootstrap provider against the real management plane: CAPI objects
built the way a user (or the control-plane provider) would, and our manager run as a
real process under the bootstrap provider's generated RBAC.

Nothing here plays our bootstrap provider. The tests do play the *other* providers
(infrastructure: C3osCluster provisioned with an endpoint; control plane: the
C3osControlPlane's `controlPlaneInitialized`), because those run in other issues."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest
from kubernetes import client as kc
from kubernetes.client.exceptions import ApiException

from capi_c3os.dev.manager import Manager
from capi_c3os.dev.mgmt import ManagementPlane
from capi_c3os.reconcilers.kube import Kube
from tests.conftest import RunManager, provider_identity

CAPI = ("cluster.x-k8s.io", "v1beta2")
INFRA = ("infrastructure.cluster.x-k8s.io", "v1alpha1")
BOOTSTRAP = ("bootstrap.cluster.x-k8s.io", "v1alpha1")
CONTROL_PLANE = ("controlplane.cluster.x-k8s.io", "v1alpha1")
CLUSTER_NAME = "cluster.x-k8s.io/cluster-name"
CONTROL_PLANE_LABEL = "cluster.x-k8s.io/control-plane"
ENDPOINT = {"host": "10.0.0.10", "port": 6443}


def condition_of(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == type_), None)


class Capi:
    """Create and read the objects of one test namespace."""

    def __init__(self, api: Any, namespace: str) -> None:
        self.api = api
        self.custom = kc.CustomObjectsApi(api)
        self.core = kc.CoreV1Api(api)
        self.namespace = namespace

    # -------------------------------------------------------------- generic

    def create(self, gv: tuple[str, str], plural: str, body: dict[str, Any]) -> dict[str, Any]:
        body["metadata"]["namespace"] = self.namespace
        return cast(
            dict[str, Any],
            self.custom.create_namespaced_custom_object(*gv, self.namespace, plural, body),
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

    def patch(
        self, gv: tuple[str, str], plural: str, name: str, patch: dict[str, Any], status: bool = False
    ) -> None:
        call = (
            self.custom.patch_namespaced_custom_object_status
            if status
            else self.custom.patch_namespaced_custom_object
        )
        call(*gv, self.namespace, plural, name, patch, _content_type="application/merge-patch+json")

    def config(self, name: str) -> dict[str, Any]:
        obj = self.get(BOOTSTRAP, "c3osconfigs", name)
        assert obj is not None, name
        return obj

    def machine(self, name: str) -> dict[str, Any] | None:
        return self.get(CAPI, "machines", name)

    def secret(self, name: str) -> kc.V1Secret | None:
        try:
            return self.core.read_namespaced_secret(name, self.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def secret_data(self, name: str, key: str = "value") -> str:
        secret = self.secret(name)
        assert secret is not None, name
        return base64.b64decode(secret.data[key]).decode()

    def config_map(self, name: str) -> kc.V1ConfigMap | None:
        try:
            return self.core.read_namespaced_config_map(name, self.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def ready(self, name: str) -> dict[str, Any] | None:
        return condition_of(self.config(name), "Ready")

    def ready_reason(self, name: str) -> str | None:
        ready = self.ready(name)
        return ready["reason"] if ready else None

    # -------------------------------------------------------------- a cluster

    def create_cluster(self, name: str, *, paused: bool = False) -> None:
        """Cluster + C3osCluster (provisioned, with an endpoint, as our infrastructure
        provider would leave it) + C3osControlPlane (not initialised yet)."""
        self.create(INFRA, "c3osclusters", {
            "apiVersion": "/".join(INFRA), "kind": "C3osCluster", "metadata": {"name": name},
            "spec": {"controlPlaneEndpoint": ENDPOINT,
                     "sites": [{"name": "lab", "libvirt": {"uri": "qemu:///system"}}]},
        })  # fmt: skip
        self.patch(
            INFRA, "c3osclusters", name, {"status": {"initialization": {"provisioned": True}}}, status=True
        )
        self.create(CONTROL_PLANE, "c3oscontrolplanes", {
            "apiVersion": "/".join(CONTROL_PLANE), "kind": "C3osControlPlane", "metadata": {"name": name},
            "spec": {"version": "v1.33.4+k3s1", "replicas": 1, "machineTemplate": {"spec": {
                "infrastructureRef": {"apiGroup": INFRA[0], "kind": "C3osMachineTemplate", "name": "cp"}}}},
        })  # fmt: skip
        self.create(CAPI, "clusters", {
            "apiVersion": "/".join(CAPI), "kind": "Cluster", "metadata": {"name": name},
            "spec": {
                "paused": paused,
                "infrastructureRef": {"apiGroup": INFRA[0], "kind": "C3osCluster", "name": name},
                "controlPlaneRef": {"apiGroup": CONTROL_PLANE[0], "kind": "C3osControlPlane", "name": name},
            },
        })  # fmt: skip

    def infrastructure_provisioned(self, cluster: str) -> bool:
        obj = self.get(CAPI, "clusters", cluster) or {}
        status = obj.get("status") or {}
        return bool((status.get("initialization") or {}).get("infrastructureProvisioned")) and bool(
            (obj.get("spec") or {}).get("controlPlaneEndpoint", {}).get("host")
        )

    def initialise_control_plane(self, cluster: str) -> None:
        """What our control-plane provider does once the first server serves."""
        initialized = {"status": {"initialization": {"controlPlaneInitialized": True}}}
        self.patch(CONTROL_PLANE, "c3oscontrolplanes", cluster, initialized, status=True)

    def control_plane_initialised(self, cluster: str) -> bool:
        obj = self.get(CAPI, "clusters", cluster) or {}
        return bool(((obj.get("status") or {}).get("initialization") or {}).get("controlPlaneInitialized"))

    def set_cluster_paused(self, cluster: str, paused: bool) -> None:
        self.patch(CAPI, "clusters", cluster, {"spec": {"paused": paused}})

    def create_machine(
        self, cluster: str, name: str, *, control_plane: bool, spec: dict[str, Any] | None = None
    ) -> None:
        """Machine + its C3osMachine + its C3osConfig (the config first, as the
        control-plane provider and MachineSets do)."""
        labels = {CLUSTER_NAME: cluster, **({CONTROL_PLANE_LABEL: ""} if control_plane else {})}
        self.create(BOOTSTRAP, "c3osconfigs", {
            "apiVersion": "/".join(BOOTSTRAP), "kind": "C3osConfig",
            "metadata": {"name": name, "labels": {CLUSTER_NAME: cluster}}, "spec": spec or {},
        })  # fmt: skip
        self.create(INFRA, "c3osmachines", {
            "apiVersion": "/".join(INFRA), "kind": "C3osMachine",
            "metadata": {"name": name, "labels": {CLUSTER_NAME: cluster}},
            "spec": {"backend": {"libvirt": {}}, "image": {"volume": "base"}},
        })  # fmt: skip
        self.create(CAPI, "machines", {
            "apiVersion": "/".join(CAPI), "kind": "Machine", "metadata": {"name": name, "labels": labels},
            "spec": {
                "clusterName": cluster,
                "bootstrap": {"configRef": {"apiGroup": BOOTSTRAP[0], "kind": "C3osConfig", "name": name}},
                "infrastructureRef": {"apiGroup": INFRA[0], "kind": "C3osMachine", "name": name},
            },
        })  # fmt: skip

    def delete_machine(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(*CAPI, self.namespace, "machines", name)

    def events_text(self) -> str:
        events = self.core.list_namespaced_event(self.namespace).items
        return "\n".join(f"{e.reason} {e.message}" for e in events)


@pytest.fixture
def capi(k8s: Any, namespace: str) -> Capi:
    return Capi(k8s, namespace)


@pytest.fixture
def kube(k8s: Any) -> Kube:
    return Kube(k8s)


@pytest.fixture(scope="session")
def bootstrap_kubeconfig(mgmt: ManagementPlane, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A kubeconfig for the bootstrap provider's ServiceAccount: the API server enforces
    exactly the generated RBAC, so a missing rule fails these tests."""
    return provider_identity(mgmt, "bootstrap", tmp_path_factory.mktemp("bootstrap-sa"))[0]


@pytest.fixture
def start_bootstrap_manager(
    bootstrap_kubeconfig: Path, run_manager: RunManager, namespace: str
) -> Callable[[str], Manager]:
    """`capi-c3os run --providers bootstrap` for this test's namespace, as a process."""

    def start(name: str = "bootstrap") -> Manager:
        return run_manager(
            name, bootstrap_kubeconfig, providers="bootstrap", namespace=namespace, log_level="debug"
        )

    return start
