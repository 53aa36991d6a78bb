"""The manager killed (SIGKILL) while it scales a control plane up: a new manager,
starting with an empty watch view, finishes the job without a duplicate or a leftover
Machine, C3osConfig or C3osMachine."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as kc

from capi_c3os.dev.mgmt import ManagementPlane
from capi_c3os.dev.processes import free_port
from capi_c3os.dev.workload import MachinePlayer, WorkloadStandIn, cluster_ca, create_cluster
from tests.integration.controlplane.conftest import start_manager
from tests.integration.controlplane.test_controlplane import _exists
from tests.support import eventually

pytestmark = pytest.mark.integration

INFRA = ("infrastructure.cluster.x-k8s.io", "v1alpha1")
BOOTSTRAP = ("bootstrap.cluster.x-k8s.io", "v1alpha1")
CP = ("controlplane.cluster.x-k8s.io", "v1alpha1")
CAPI = ("cluster.x-k8s.io", "v1beta2")


def test_a_manager_killed_mid_scale_up_is_finished_by_the_next_one(
    mgmt: ManagementPlane, k8s: Any, namespace: str, tmp_path: Path
) -> None:
    api, core = kc.CustomObjectsApi(k8s), kc.CoreV1Api(k8s)
    first = start_manager(mgmt, tmp_path / "first.log")
    port = free_port()
    create_cluster(api, namespace, port)
    eventually(lambda: _exists(core, namespace, "shop-cca"), "cluster CAs")
    standin = WorkloadStandIn(tmp_path / "workload", cluster_ca(core, namespace, "shop-ca"),
                              cluster_ca(core, namespace, "shop-cca"), port).start()  # fmt: skip
    standin.keep_answering_etcd_removals()
    player = MachinePlayer(k8s, namespace)
    player.standin = standin
    player.start()
    second = None
    try:

        def names(plural: str, group: tuple[str, str]) -> list[str]:
            items = api.list_namespaced_custom_object(*group, namespace, plural)["items"]
            return sorted(i["metadata"]["name"] for i in items)

        def status() -> dict[str, Any]:
            obj = api.get_namespaced_custom_object(*CP, namespace, "c3oscontrolplanes", "shop-cp")
            return dict(obj.get("status") or {})

        eventually(lambda: status().get("readyReplicas") == 1, "one server Ready", timeout=120)
        api.patch_namespaced_custom_object(
            *CP, namespace, "c3oscontrolplanes", "shop-cp", {"spec": {"replicas": 3}}
        )
        # Kill as soon as the second server's first part exists (its creation is under way).
        eventually(lambda: len(names("c3osmachines", INFRA)) > 1, "a second server begun", every=0.02)
        first.stop(timeout=5, sig=signal.SIGKILL)

        second = start_manager(mgmt, tmp_path / "second.log")

        def settled() -> bool:
            s = status()
            return s.get("readyReplicas") == 3 and s.get("replicas") == 3

        eventually(
            settled, "three servers Ready after the restart", timeout=240, explain=lambda: str(status())
        )
        machines = names("machines", CAPI)
        assert len(machines) == 3
        assert names("c3osconfigs", BOOTSTRAP) == machines
        assert names("c3osmachines", INFRA) == machines

        # A crash right after an infrastructure machine was made (before its C3osConfig
        # and Machine) leaves only that: made here by hand while no manager runs. With
        # all replicas there, the next manager removes it.
        assert second.stop() == 0, second.tail()
        cp = api.get_namespaced_custom_object(*CP, namespace, "c3oscontrolplanes", "shop-cp")
        template = api.get_namespaced_custom_object(*INFRA, namespace, "c3osmachinetemplates", "cp")
        labels = {
            "cluster.x-k8s.io/cluster-name": "shop",
            "cluster.x-k8s.io/control-plane": "",
            "cluster.x-k8s.io/control-plane-name": "shop-cp",
        }
        owner = {"apiVersion": cp["apiVersion"], "kind": cp["kind"], "name": "shop-cp",
                 "uid": cp["metadata"]["uid"], "controller": True}  # fmt: skip
        api.create_namespaced_custom_object(*INFRA, namespace, "c3osmachines", {
            "apiVersion": "/".join(INFRA), "kind": "C3osMachine",
            "metadata": {"name": "shop-cp-orphn", "labels": labels, "ownerReferences": [owner]},
            "spec": template["spec"]["template"]["spec"],
        })  # fmt: skip
        second = start_manager(mgmt, tmp_path / "third.log")
        eventually(lambda: names("c3osmachines", INFRA) == machines, "the half-made server removed")
        assert names("machines", CAPI) == machines
    finally:
        player.stop()
        standin.stop()
        if second is not None:
            assert second.stop() == 0, second.tail()
        first.stop()
