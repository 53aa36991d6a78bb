"""The workload-cluster stand-in behaves like the k3s cluster it replaces, as far as the
providers and CAPI core can tell: it serves with the cluster's server CA, admits only
clients of the cluster's client CA, and CAPI core links a Machine to the Node that
carries its providerID."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as kc
from kubernetes.client.exceptions import ApiException

from capi_c3os.bootstrap.certificates import KeyPair, issue_certificate, new_ca
from capi_c3os.dev.mgmt import ManagementPlane, api_client
from capi_c3os.dev.processes import free_port
from capi_c3os.dev.workload import (
    ETCD_NODE_ADDRESS,
    ETCD_NODE_NAME,
    ETCD_REMOVE,
    ETCD_REMOVED,
    ETCD_ROLE,
    WorkloadStandIn,
)
from tests.support import condition, eventually

pytestmark = pytest.mark.integration


@pytest.fixture
def cas() -> tuple[KeyPair, KeyPair]:
    return new_ca("shop-17-server-ca"), new_ca("shop-17-client-ca")


@pytest.fixture
def standin(tmp_path: Path, cas: tuple[KeyPair, KeyPair]) -> Iterator[WorkloadStandIn]:
    workload = WorkloadStandIn(tmp_path / "workload", cas[0], cas[1], free_port()).start()
    yield workload
    workload.stop()


def admin_kubeconfig(port: int, server_ca: KeyPair, client_ca: KeyPair) -> dict[str, Any]:
    """What the control-plane provider writes into <cluster>-kubeconfig."""
    admin = issue_certificate(client_ca, "kubernetes-admin", organizations=("system:masters",), client=True)

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return {
        "apiVersion": "v1", "kind": "Config", "current-context": "admin",
        "clusters": [{"name": "shop-17", "cluster": {
            "server": f"https://127.0.0.1:{port}", "certificate-authority-data": b64(server_ca.cert_pem)}}],
        "users": [{"name": "admin", "user": {
            "client-certificate-data": b64(admin.cert_pem), "client-key-data": b64(admin.key_pem)}}],
        "contexts": [{"name": "admin", "context": {"cluster": "shop-17", "user": "admin"}}],
    }  # fmt: skip


def test_serves_with_the_cluster_cas_only(standin: WorkloadStandIn, cas: tuple[KeyPair, KeyPair],
                                          tmp_path: Path) -> None:  # fmt: skip
    good = tmp_path / "good"
    good.write_text(yaml.safe_dump(admin_kubeconfig(standin.port, *cas)))
    with api_client(good) as client:
        assert kc.CoreV1Api(client).list_namespace().items
    impostor = tmp_path / "impostor"
    impostor.write_text(yaml.safe_dump(admin_kubeconfig(standin.port, cas[0], new_ca("other"))))
    with api_client(impostor) as client, pytest.raises(ApiException) as denied:
        kc.CoreV1Api(client).list_namespace()
    assert denied.value.status == 401


def test_plays_kubelet_and_k3s_etcd_removal(standin: WorkloadStandIn) -> None:
    standin.register_node("cp-0", "c3os://edge/cp-0", control_plane=True)
    standin.register_node("cp-1", "c3os://edge/cp-1", control_plane=True)
    standin.mark_serving()
    with api_client(standin.kubeconfig) as client:
        core = kc.CoreV1Api(client)
        node = core.read_node("cp-0")
        assert node.spec.provider_id == "c3os://edge/cp-0"
        # What a kubelet reports: Ready, and no pressure (CAPI's NodeHealthy reads all four).
        assert sorted((c.type, c.status) for c in node.status.conditions) == [
            ("DiskPressure", "False"), ("MemoryPressure", "False"),
            ("PIDPressure", "False"), ("Ready", "True"),
        ]  # fmt: skip
        assert core.read_namespaced_secret("k3s-serving", "kube-system")
        # k3s's metadata controller: the member (node name + 8 hex) and its address.
        member = node.metadata.annotations[ETCD_NODE_NAME]
        assert re.fullmatch(r"cp-0-[0-9a-f]{8}", member)
        assert node.metadata.annotations[ETCD_NODE_ADDRESS] == "127.0.0.1"
        assert node.metadata.labels[ETCD_ROLE] == "true"
        core.patch_node("cp-0", {"metadata": {"annotations": {ETCD_REMOVE: "true"}}})
    assert standin.answer_etcd_removals() == ["cp-0"]
    assert standin.answer_etcd_removals() == []
    with api_client(standin.kubeconfig) as client:
        annotations = kc.CoreV1Api(client).read_node("cp-0").metadata.annotations
    # removed-node-name is the member name; node-name and node-address go (k3s re-sets
    # them if the member rejoins); `remove` stays as the requester set it.
    assert annotations[ETCD_REMOVED] == member
    assert ETCD_NODE_NAME not in annotations and ETCD_NODE_ADDRESS not in annotations
    assert list(standin.etcd_members.values()) == ["cp-1"]


def test_k3s_refuses_to_remove_the_last_voting_member(standin: WorkloadStandIn) -> None:
    standin.register_node("cp-0", "c3os://edge/cp-0", control_plane=True)
    with api_client(standin.kubeconfig) as client:
        core = kc.CoreV1Api(client)
        core.patch_node("cp-0", {"metadata": {"annotations": {ETCD_REMOVE: "true"}}})
        assert standin.answer_etcd_removals() == []
        annotations = core.read_node("cp-0").metadata.annotations
    # k3s clears `remove` and sets nothing: the member stays.
    assert ETCD_REMOVE not in annotations and ETCD_REMOVED not in annotations
    assert ETCD_NODE_NAME in annotations and standin.etcd_refused == ["cp-0"]


def test_k3s_ignores_removal_of_a_node_without_etcd_annotations(standin: WorkloadStandIn) -> None:
    standin.register_node("cp-0", "c3os://edge/cp-0", control_plane=True)
    standin.register_node("cp-1", "c3os://edge/cp-1", control_plane=True, etcd=False)  # etcd never joined
    standin.register_node("w-0", "c3os://edge/w-0", control_plane=False)
    with api_client(standin.kubeconfig) as client:
        core = kc.CoreV1Api(client)
        for name in ("cp-1", "w-0"):
            core.patch_node(name, {"metadata": {"annotations": {ETCD_REMOVE: "true"}}})
        assert standin.answer_etcd_removals() == []
        for name in ("cp-1", "w-0"):
            annotations = core.read_node(name).metadata.annotations
            assert annotations == {ETCD_REMOVE: "true"}, name  # untouched: nobody answers
        # A Node deleted while a member leaves etcd (k3s onRemove).
        core.delete_node("cp-0")
        standin.answer_etcd_removals()
    assert standin.etcd_members == {}


def test_capi_links_a_machine_to_its_node_in_the_standin(
    mgmt: ManagementPlane, k8s: Any, namespace: str, standin: WorkloadStandIn, cas: tuple[KeyPair, KeyPair]
) -> None:
    """Here the test plays all three providers by hand; the point is the stand-in."""
    api, core = kc.CustomObjectsApi(k8s), kc.CoreV1Api(k8s)
    infra, cp = ("infrastructure.cluster.x-k8s.io", "v1alpha1"), ("controlplane.cluster.x-k8s.io", "v1alpha1")
    endpoint = {"host": "127.0.0.1", "port": standin.port}
    api.create_namespaced_custom_object(
        *infra,
        namespace,
        "c3osclusters",
        {
            "apiVersion": "infrastructure.cluster.x-k8s.io/v1alpha1",
            "kind": "C3osCluster",
            "metadata": {"name": "shop-17"},
            "spec": {
                "controlPlaneEndpoint": endpoint,
                "sites": [{"name": "a", "libvirt": {"uri": "qemu:///system"}}],
            },
        },
    )
    api.patch_namespaced_custom_object_status(
        *infra,
        namespace,
        "c3osclusters",
        "shop-17",
        {
            "status": {
                "initialization": {"provisioned": True},
                "conditions": [condition("Ready", "True", "Provisioned")],
            }
        },
    )
    api.create_namespaced_custom_object(
        *cp,
        namespace,
        "c3oscontrolplanes",
        {
            "apiVersion": "controlplane.cluster.x-k8s.io/v1alpha1",
            "kind": "C3osControlPlane",
            "metadata": {"name": "shop-17"},
            "spec": {
                "version": "v1.33.4+k3s1",
                "machineTemplate": {
                    "spec": {
                        "infrastructureRef": {
                            "apiGroup": infra[0],
                            "kind": "C3osMachineTemplate",
                            "name": "cp",
                        }
                    }
                },
            },
        },
    )
    api.patch_namespaced_custom_object_status(
        *cp,
        namespace,
        "c3oscontrolplanes",
        "shop-17",
        {"status": {"initialization": {"controlPlaneInitialized": True}}},
    )
    core.create_namespaced_secret(
        namespace,
        kc.V1Secret(
            metadata=kc.V1ObjectMeta(
                name="shop-17-kubeconfig", labels={"cluster.x-k8s.io/cluster-name": "shop-17"}
            ),
            type="cluster.x-k8s.io/secret",
            string_data={"value": yaml.safe_dump(admin_kubeconfig(standin.port, *cas))},
        ),
    )
    api.create_namespaced_custom_object(
        "cluster.x-k8s.io",
        "v1beta2",
        namespace,
        "clusters",
        {
            "apiVersion": "cluster.x-k8s.io/v1beta2",
            "kind": "Cluster",
            "metadata": {"name": "shop-17"},
            "spec": {
                "infrastructureRef": {"apiGroup": infra[0], "kind": "C3osCluster", "name": "shop-17"},
                "controlPlaneRef": {"apiGroup": cp[0], "kind": "C3osControlPlane", "name": "shop-17"},
            },
        },
    )
    api.create_namespaced_custom_object(
        *infra,
        namespace,
        "c3osmachines",
        {
            "apiVersion": "infrastructure.cluster.x-k8s.io/v1alpha1",
            "kind": "C3osMachine",
            "metadata": {"name": "cp-0"},
            "spec": {
                "providerID": f"c3os://{namespace}/cp-0",
                "backend": {"libvirt": {}},
                "image": {"volume": "base"},
            },
        },
    )
    api.patch_namespaced_custom_object_status(
        *infra,
        namespace,
        "c3osmachines",
        "cp-0",
        {
            "status": {
                "initialization": {"provisioned": True},
                "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
            }
        },
    )
    core.create_namespaced_secret(
        namespace,
        kc.V1Secret(
            metadata=kc.V1ObjectMeta(name="cp-0-bootstrap"), string_data={"value": "#cloud-config\n"}
        ),
    )
    api.create_namespaced_custom_object("cluster.x-k8s.io", "v1beta2", namespace, "machines", {
        "apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Machine",
        "metadata": {"name": "cp-0", "labels": {"cluster.x-k8s.io/control-plane": ""}},
        "spec": {"clusterName": "shop-17", "version": "v1.33.4+k3s1",
                 "bootstrap": {"dataSecretName": "cp-0-bootstrap"},
                 "infrastructureRef": {"apiGroup": infra[0], "kind": "C3osMachine", "name": "cp-0"}},
    })  # fmt: skip
    standin.register_node("cp-0", f"c3os://{namespace}/cp-0", control_plane=True)

    def node_ref() -> str | None:
        machine = api.get_namespaced_custom_object(
            "cluster.x-k8s.io", "v1beta2", namespace, "machines", "cp-0"
        )
        ref: str | None = machine.get("status", {}).get("nodeRef", {}).get("name")
        return ref

    assert (
        eventually(node_ref, "CAPI to set Machine.status.nodeRef from the stand-in's Node", timeout=120)
        == "cp-0"
    )
