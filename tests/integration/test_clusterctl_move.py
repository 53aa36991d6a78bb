"""`clusterctl move` of a running cluster to a second management plane: identities
(providerIDs, machine names) and secrets (CAs, token, kubeconfig) arrive unchanged, the
new managers adopt everything, nothing is created twice.

Both planes are initialised with `clusterctl init` from the offline repository; our
bootstrap and control-plane providers run on each side as local processes; the
infrastructure provider and the nodes are played (see MachinePlayer)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as kc

from capi_c3os.dev import binaries
from capi_c3os.dev.clusterctl import write_repository
from capi_c3os.dev.manager import Manager, start_manager
from capi_c3os.dev.mgmt import ManagementPlane, api_client
from capi_c3os.dev.processes import free_port
from capi_c3os.dev.workload import MachinePlayer, WorkloadStandIn, cluster_ca, create_cluster
from tests.conftest import REPO
from tests.integration.controlplane.test_controlplane import _exists
from tests.support import eventually, keep_directory

pytestmark = pytest.mark.integration

CAPI = ("cluster.x-k8s.io", "v1beta2")
CP = ("controlplane.cluster.x-k8s.io", "v1alpha1")


def clusterctl(home: Path, *args: str) -> None:
    done = subprocess.run([str(binaries.locate("clusterctl")), *args], env={**os.environ, "HOME": str(home)},
                          capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr + done.stdout


def init_plane(plane: ManagementPlane, home: Path, config: Path) -> None:
    """`clusterctl init` a plane started without CAPI core from the offline repository (core
    and our three providers), then run CAPI core as a local process."""
    clusterctl(home, "init", "--config", str(config), "--kubeconfig", str(plane.kubeconfig),
               "--core", "cluster-api", "--bootstrap", "c3os", "--control-plane", "c3os",
               "--infrastructure", "c3os")  # fmt: skip
    plane.start_capi()


@pytest.fixture
def planes(tmp_path: Path) -> Iterator[tuple[ManagementPlane, ManagementPlane]]:
    config = write_repository(tmp_path / "repository", REPO / "config" / "clusterctl")
    started = []
    try:
        for name in ("source", "target"):
            plane = ManagementPlane(tmp_path / name).start(capi=False)
            started.append(plane)
            init_plane(plane, tmp_path, config)
        yield started[0], started[1]
    finally:
        for plane, name in zip(started, ("move-source", "move-target"), strict=False):
            plane.stop()
            keep_directory(plane.logs, name)


def run_manager(plane: ManagementPlane, log: Path) -> Manager:
    manager = start_manager(plane.kubeconfig, log, providers="bootstrap,control-plane", metrics=False)
    return manager.wait_ready(60)


def snapshot(api: kc.CustomObjectsApi, core: kc.CoreV1Api) -> dict[str, Any]:
    machines = api.list_namespaced_custom_object(*CAPI, "edge", "machines")["items"]
    secrets = core.list_namespaced_secret("edge", label_selector="cluster.x-k8s.io/cluster-name=shop").items
    return {
        "machines": sorted((m["metadata"]["name"], m["spec"].get("providerID")) for m in machines),
        "secrets": {s.metadata.name: s.data for s in secrets if s.metadata.name.startswith("shop-")},
    }


def test_move_keeps_identities_and_the_new_managers_adopt(
    planes: tuple[ManagementPlane, ManagementPlane], tmp_path: Path
) -> None:
    source, target = planes
    port = free_port()
    with api_client(source.kubeconfig) as client:
        api, core = kc.CustomObjectsApi(client), kc.CoreV1Api(client)
        core.create_namespace(kc.V1Namespace(metadata=kc.V1ObjectMeta(name="edge")))
        create_cluster(api, "edge", port, replicas=3)
        manager = run_manager(source, tmp_path / "source-manager.log")
        eventually(lambda: _exists(core, "edge", "shop-cca"), "cluster CAs")
        standin = WorkloadStandIn(tmp_path / "workload", cluster_ca(core, "edge", "shop-ca"),
                                  cluster_ca(core, "edge", "shop-cca"), port).start()  # fmt: skip
        player = MachinePlayer(client, "edge")
        player.standin = standin
        player.start()
        try:

            def ready() -> bool:
                status = api.get_namespaced_custom_object(*CP, "edge", "c3oscontrolplanes", "shop-cp").get(
                    "status"
                )
                return bool(status and status.get("readyReplicas") == 3)

            eventually(ready, "three servers Ready on the source", timeout=600)

            def linked() -> bool:  # clusterctl refuses to move Machines still provisioning
                items = api.list_namespaced_custom_object(*CAPI, "edge", "machines")["items"]
                return len(items) == 3 and all(m.get("status", {}).get("nodeRef") for m in items)

            eventually(linked, "CAPI to link every Machine to its Node", timeout=300)
        finally:
            player.stop()
        before = snapshot(api, core)
        assert manager.stop() == 0
        clusterctl(tmp_path, "move", "--kubeconfig", str(source.kubeconfig), "-n", "edge",
                   "--to-kubeconfig", str(target.kubeconfig))  # fmt: skip
        assert api.list_namespaced_custom_object(*CAPI, "edge", "machines")["items"] == []

    with api_client(target.kubeconfig) as client:
        api, core = kc.CustomObjectsApi(client), kc.CoreV1Api(client)
        assert snapshot(api, core) == before
        manager = run_manager(target, tmp_path / "target-manager.log")
        player = MachinePlayer(client, "edge")  # the target's infrastructure provider
        player.standin, player.registered = standin, {name for name, _ in before["machines"]}
        # Move does not restore status: the target's infrastructure provider reports again.
        player.provision_cluster("shop", ("site-a", "site-b", "site-c"))
        player.start()
        try:

            def status() -> str:
                return str(
                    api.get_namespaced_custom_object(*CP, "edge", "c3oscontrolplanes", "shop-cp").get(
                        "status"
                    )
                )

            eventually(
                ready_on(api), "the moved control plane Ready on the target", timeout=600, explain=status
            )
            assert snapshot(api, core) == before  # no new Machine, no new secret
        finally:
            player.stop()
            standin.stop()
            assert manager.stop() == 0


def ready_on(api: kc.CustomObjectsApi) -> Any:
    def ready() -> bool:
        obj = api.get_namespaced_custom_object(*CP, "edge", "c3oscontrolplanes", "shop-cp")
        status = obj.get("status") or {}
        return bool(
            status.get("readyReplicas") == 3
            and status.get("observedGeneration") == obj["metadata"]["generation"]
        )

    return ready
