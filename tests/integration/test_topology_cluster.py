"""A whole cluster from our ClusterClass: CAPI's topology controller, our bootstrap and
control-plane providers (a real `capi-c3os run`), the workload stand-in. The test plays
the infrastructure provider (C3osCluster provisioned, machines provisioned, Nodes
registered, each Node reporting the k3s version its image's name carries) — booting VMs
is the libvirt backend's part. Shows that the control plane initialises, CAPI then
creates the workers, and every Machine gets its Node; then an upgrade: a version with no
entry in the `images` variable is refused before anything changes, and once its image is
there the servers and then the workers boot it and their Nodes run the new version."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as kc

from capi_c3os.capi import conditions as cond
from capi_c3os.capi.versions import image_tag
from capi_c3os.dev.manager import start_manager
from capi_c3os.dev.mgmt import ManagementPlane, apply
from capi_c3os.dev.processes import free_port
from capi_c3os.dev.workload import MachinePlayer, WorkloadStandIn, cluster_ca, node_versions
from tests.integration.controlplane.test_controlplane import _exists
from tests.integration.test_templates import VERSION, await_class_accepted, render
from tests.support import eventually

pytestmark = pytest.mark.integration

INFRA = ("infrastructure.cluster.x-k8s.io", "v1alpha1")
CAPI = ("cluster.x-k8s.io", "v1beta2")
CP = ("controlplane.cluster.x-k8s.io", "v1alpha1")
NEXT = "v1.34.1+k3s1"
NEXT_IMAGE = f"https://images.example/c3os-{image_tag(NEXT)}.qcow2"


def test_a_topology_cluster_comes_up_servers_first_then_workers(
    mgmt: ManagementPlane, k8s: Any, namespace: str, tmp_path: Path
) -> None:
    api, core = kc.CustomObjectsApi(k8s), kc.CoreV1Api(k8s)
    port = free_port()
    rendered = render(
        "topology",
        namespace,
        tmp_path,
        mgmt.kubeconfig,
        C3OS_CONTROL_PLANE_ENDPOINT_HOST="127.0.0.1",
        C3OS_CONTROL_PLANE_ENDPOINT_PORT=str(port),
    )
    for doc in rendered:  # one server and two workers keep the test short
        if doc["kind"] == "Cluster":
            doc["spec"]["topology"]["controlPlane"]["replicas"] = 1
            doc["spec"]["topology"]["workers"]["machineDeployments"][0]["replicas"] = 2
    apply(mgmt.kubeconfig, [d for d in rendered if d["kind"] != "Cluster"])
    await_class_accepted(api, namespace, "c3os-libvirt")
    apply(mgmt.kubeconfig, [d for d in rendered if d["kind"] == "Cluster"])

    manager = start_manager(
        mgmt.kubeconfig, tmp_path / "manager.log", providers="bootstrap,control-plane", metrics=False
    )
    standin: WorkloadStandIn | None = None
    player = MachinePlayer(k8s, namespace)
    try:
        manager.wait_ready(60)

        # Play the infrastructure cluster: provisioned, one failure domain.
        def cloned() -> str | None:
            items = api.list_namespaced_custom_object(*INFRA, namespace, "c3osclusters")["items"]
            return str(items[0]["metadata"]["name"]) if items else None

        player.provision_cluster(eventually(cloned, "C3osCluster cloned"))
        eventually(lambda: _exists(core, namespace, "shop-17-cca"), "cluster CAs", timeout=120)
        standin = WorkloadStandIn(tmp_path / "workload", cluster_ca(core, namespace, "shop-17-ca"),
                                  cluster_ca(core, namespace, "shop-17-cca"), port).start()  # fmt: skip
        player.standin = standin
        player.start()

        def machines() -> list[dict[str, Any]]:
            return list(api.list_namespaced_custom_object(*CAPI, namespace, "machines")["items"])

        def all_nodes_linked() -> bool:
            ms = machines()
            return len(ms) == 3 and all(m.get("status", {}).get("nodeRef") for m in ms)

        eventually(
            all_nodes_linked,
            "one server and two workers with Nodes",
            timeout=300,
            explain=lambda: str(
                [(m["metadata"]["name"], m.get("status", {}).get("phase")) for m in machines()]
            ),
        )
        workers = [
            m for m in machines() if "cluster.x-k8s.io/control-plane" not in m["metadata"].get("labels", {})
        ]
        assert len(workers) == 2
        for worker in workers:
            secret = core.read_namespaced_secret(worker["spec"]["bootstrap"]["dataSecretName"], namespace)
            data = yaml.safe_load(base64.b64decode(secret.data["value"]))
            assert "k3s-agent" in data, sorted(data)  # workers join as k3s agents
            assert "k3s" not in data or not data["k3s"].get("enabled")
        assert set(node_versions(standin).values()) == {VERSION}

        an_upgrade_boots_the_image_of_the_new_version(api, namespace, standin, machines())
    finally:
        player.stop()
        if standin:
            standin.stop()
        manager.stop()


def an_upgrade_boots_the_image_of_the_new_version(
    api: kc.CustomObjectsApi, namespace: str, standin: WorkloadStandIn, before: list[dict[str, Any]]
) -> None:
    def cluster() -> dict[str, Any]:
        return dict(api.get_namespaced_custom_object(*CAPI, namespace, "clusters", "shop-17"))

    def control_plane() -> dict[str, Any]:
        (cp,) = api.list_namespaced_custom_object(*CP, namespace, "c3oscontrolplanes")["items"]
        return dict(cp)

    def topology_refused() -> str | None:
        reconciled = cond.get_condition(cluster(), "TopologyReconciled") or {}
        message = str(reconciled.get("message", ""))
        return message if reconciled.get("status") == "False" and NEXT in message else None

    standin.keep_answering_etcd_removals()  # replaced servers leave etcd first
    # A version no image is given for: CAPI's topology controller fails our patch and
    # changes nothing (the control plane keeps its version, no Machine is replaced).
    api.patch_namespaced_custom_object(*CAPI, namespace, "clusters", "shop-17",
                                       {"spec": {"topology": {"version": NEXT}}})  # fmt: skip
    message = eventually(
        topology_refused,
        "the topology refusing a version without an image",
        explain=lambda: str(cond.get_condition(cluster(), "TopologyReconciled")),
    )
    assert f"the images variable has no image for Kubernetes version {NEXT}" in message
    assert control_plane()["spec"]["version"] == VERSION
    names = {m["metadata"]["name"] for m in before}
    assert {
        m["metadata"]["name"]
        for m in api.list_namespaced_custom_object(*CAPI, namespace, "machines")["items"]
    } == names

    # Its image added: the server, then the workers, are replaced by machines that boot it.
    variables = cluster()["spec"]["topology"]["variables"]
    for variable in variables:
        if variable["name"] == "images":
            variable["value"][NEXT] = {"url": NEXT_IMAGE, "checksum": "0" * 63 + "2"}
    api.patch_namespaced_custom_object(*CAPI, namespace, "clusters", "shop-17",
                                       {"spec": {"topology": {"variables": variables}}})  # fmt: skip

    def upgraded() -> bool:
        ms = api.list_namespaced_custom_object(*CAPI, namespace, "machines")["items"]
        running = node_versions(standin)
        return (
            len(ms) == len(before)
            and not {m["metadata"]["name"] for m in ms} & names
            and all(
                m["spec"].get("version") == NEXT and running.get(m["metadata"]["name"]) == NEXT for m in ms
            )
        )

    eventually(upgraded, "every Machine replaced, its Node on the new version", timeout=300,
               explain=lambda: str(node_versions(standin)))  # fmt: skip
    for machine in api.list_namespaced_custom_object(*CAPI, namespace, "machines")["items"]:
        infra = api.get_namespaced_custom_object(
            *INFRA, namespace, "c3osmachines", machine["spec"]["infrastructureRef"]["name"]
        )
        assert infra["spec"]["image"]["url"] == NEXT_IMAGE
    eventually(
        lambda: control_plane().get("status", {}).get("versions") == [{"version": NEXT, "replicas": 1}],
        "the control plane's status.versions from its Node",
    )
