"""C3osControlPlane with the real CAPI core manager, our bootstrap and control-plane
providers (as a real `capi-c3os run` process) and the workload-cluster stand-in.

The test plays the infrastructure provider (marks each C3osMachine provisioned with its
providerID) and the node side (a Node per machine in the stand-in, `k3s-serving` once the
first server is up, etcd member removal on request). Booting real VMs for this is the
libvirt backend's part; here the point is the control plane's own logic against real
CAPI objects and a real workload API server that trusts only the cluster's CAs."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as kc
from kubernetes.client.exceptions import ApiException

from capi_c3os.dev.manager import Manager
from capi_c3os.dev.mgmt import ManagementPlane, api_client
from capi_c3os.dev.workload import image_template, node_versions, played_cluster
from capi_c3os.reconcilers.controlplane_etcd import (
    ETCD_MEMBER_GRACE,
    ETCD_MEMBERS_REMOVED,
    ETCD_REMOVAL_REFUSED,
    ETCD_REMOVAL_REQUESTED,
    HOOK,
    WAITING_FOR_ETCD_MEMBER,
)
from tests.support import eventually

pytestmark = pytest.mark.integration

INFRA = ("infrastructure.cluster.x-k8s.io", "v1alpha1")
CP = ("controlplane.cluster.x-k8s.io", "v1alpha1")
CAPI = ("cluster.x-k8s.io", "v1beta2")
VERSION = "v1.33.4+k3s1"
NEXT = "v1.34.1+k3s1"


def test_one_to_three_servers_then_an_upgrade_then_back_to_one_with_etcd_members_removed(
    mgmt: ManagementPlane, k8s: Any, namespace: str, manager: Manager, tmp_path: Path
) -> None:
    api, core = kc.CustomObjectsApi(k8s), kc.CoreV1Api(k8s)
    with played_cluster(k8s, namespace, tmp_path / "workload", answer_etcd_removals=False) as standin:

        def status() -> dict[str, Any]:
            obj = api.get_namespaced_custom_object(*CP, namespace, "c3oscontrolplanes", "shop-cp")
            return dict(obj.get("status") or {})

        def ready(n: int) -> bool:
            s = status()
            return s.get("readyReplicas") == n and s.get("replicas") == n

        eventually(lambda: ready(1), "one server Ready", timeout=120, explain=lambda: str(status()))
        assert status()["initialization"] == {"controlPlaneInitialized": True}
        assert status()["versions"] == [{"version": VERSION, "replicas": 1}]

        # The kubeconfig the control plane wrote works against the stand-in.
        kubeconfig = tmp_path / "shop.kubeconfig"
        kubeconfig.write_bytes(
            base64.b64decode(core.read_namespaced_secret("shop-kubeconfig", namespace).data["value"])
        )
        with api_client(kubeconfig) as client:
            assert [n.metadata.name for n in kc.CoreV1Api(client).list_node().items]

        api.patch_namespaced_custom_object(
            *CP, namespace, "c3oscontrolplanes", "shop-cp", {"spec": {"replicas": 3}}
        )
        eventually(lambda: ready(3), "three servers Ready", timeout=180, explain=lambda: str(status()))
        machines = api.list_namespaced_custom_object(*CAPI, namespace, "machines")["items"]
        assert sorted(m["spec"].get("failureDomain") for m in machines) == ["site-a", "site-b", "site-c"]

        standin.keep_answering_etcd_removals()
        # A k3s upgrade: k3s comes with the image, so the version and a template whose
        # image ships it change together; every server is replaced, one at a time, a new
        # one first (surge 1).
        template = image_template(api, namespace, NEXT)
        api.patch_namespaced_custom_object(*CP, namespace, "c3oscontrolplanes", "shop-cp", {"spec": {
            "version": NEXT, "machineTemplate": {"spec": {"infrastructureRef": {"name": template}}},
        }})  # fmt: skip

        def rolled_out() -> bool:
            s = status()
            return (
                ready(3)
                and s.get("upToDateReplicas") == 3
                and s.get("versions") == [{"version": NEXT, "replicas": 3}]
            )

        eventually(rolled_out, "all servers on the new version", timeout=300, explain=lambda: str(status()))
        upgraded = api.list_namespaced_custom_object(*CAPI, namespace, "machines")["items"]
        assert not {m["metadata"]["name"] for m in upgraded} & {m["metadata"]["name"] for m in machines}
        assert all(m["spec"]["version"] == NEXT for m in upgraded)
        running = node_versions(standin)
        assert {running[m["metadata"]["name"]] for m in upgraded} == {NEXT}, running
        machines = machines + upgraded
        api.patch_namespaced_custom_object(
            *CP, namespace, "c3oscontrolplanes", "shop-cp", {"spec": {"replicas": 1}}
        )
        eventually(lambda: ready(1), "back to one server", timeout=180, explain=lambda: str(status()))
        eventually(lambda: len(api.list_namespaced_custom_object(*CAPI, namespace, "machines")["items"]) == 1,
                   "removed Machines gone")  # fmt: skip
        # k3s was asked to drop the etcd member of each removed server before it went.
        remaining = api.list_namespaced_custom_object(*CAPI, namespace, "machines")["items"]
        removed = {m["metadata"]["name"] for m in machines} - {m["metadata"]["name"] for m in remaining}
        assert sorted(standin.etcd_removed) == sorted(removed)

        (survivor,) = remaining
        in_place_changes_and_kubeconfig_rewrite(api, core, namespace, survivor["metadata"]["name"])
        deleting_the_cluster_leaves_nothing(api, core, namespace)


def in_place_changes_and_kubeconfig_rewrite(
    api: kc.CustomObjectsApi, core: kc.CoreV1Api, namespace: str, survivor: str
) -> None:
    # Labels and deletion timeouts reach the existing Machine in place, no rollout.
    api.patch_namespaced_custom_object(*CP, namespace, "c3oscontrolplanes", "shop-cp", {"spec": {
        "machineTemplate": {"metadata": {"labels": {"tier": "edge"}},
                            "spec": {"deletion": {"nodeDrainTimeoutSeconds": 120}}}}})  # fmt: skip

    def propagated() -> bool:
        m = api.get_namespaced_custom_object(*CAPI, namespace, "machines", survivor)
        return bool(m["metadata"].get("labels", {}).get("tier") == "edge"
                    and m["spec"].get("deletion", {}).get("nodeDrainTimeoutSeconds") == 120)  # fmt: skip

    eventually(propagated, "labels and timeouts propagated in place")
    machines = api.list_namespaced_custom_object(*CAPI, namespace, "machines")["items"]
    assert [m["metadata"]["name"] for m in machines] == [survivor]

    # A kubeconfig that no longer matches the cluster's CAs is written anew.
    stale = base64.b64encode(b"apiVersion: v1\nkind: Config\n").decode()
    core.patch_namespaced_secret("shop-kubeconfig", namespace, {"data": {"value": stale}})
    eventually(lambda: core.read_namespaced_secret("shop-kubeconfig", namespace).data["value"] != stale,
               "the kubeconfig rewritten")  # fmt: skip


def deleting_the_cluster_leaves_nothing(api: kc.CustomObjectsApi, core: kc.CoreV1Api, namespace: str) -> None:
    api.delete_namespaced_custom_object(*CAPI, namespace, "clusters", "shop")

    def leftovers() -> list[str]:
        found = [
            f"Cluster/{o['metadata']['name']}"
            for o in api.list_namespaced_custom_object(*CAPI, namespace, "clusters")["items"]
        ]
        found += [
            f"Machine/{o['metadata']['name']}"
            for o in api.list_namespaced_custom_object(*CAPI, namespace, "machines")["items"]
        ]
        for plural in ("c3osconfigs",):
            found += [
                f"{plural}/{o['metadata']['name']}"
                for o in api.list_namespaced_custom_object(
                    "bootstrap.cluster.x-k8s.io", "v1alpha1", namespace, plural
                )["items"]
            ]
        found += [
            f"c3oscontrolplanes/{o['metadata']['name']}"
            for o in api.list_namespaced_custom_object(*CP, namespace, "c3oscontrolplanes")["items"]
        ]
        found += [
            f"Secret/{o.metadata.name}"
            for o in core.list_namespaced_secret(
                namespace, label_selector="cluster.x-k8s.io/cluster-name=shop"
            ).items
        ]
        return found

    eventually(lambda: not leftovers(), "everything of the cluster to be gone", timeout=120,
               explain=lambda: ", ".join(leftovers()))  # fmt: skip


def _exists(core: kc.CoreV1Api, namespace: str, name: str) -> bool:
    try:
        core.read_namespaced_secret(name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


def test_a_server_a_health_check_marks_unhealthy_is_replaced_keeping_quorum(
    mgmt: ManagementPlane, k8s: Any, namespace: str, manager: Manager, tmp_path: Path
) -> None:
    api = kc.CustomObjectsApi(k8s)
    retries = {"maxRetry": 2, "retryPeriodSeconds": 0}
    with played_cluster(k8s, namespace, tmp_path / "workload", replicas=3, remediation=retries) as standin:

        def status() -> dict[str, Any]:
            return dict(api.get_namespaced_custom_object(*CP, namespace, "c3oscontrolplanes", "shop-cp")
                        .get("status") or {})  # fmt: skip

        eventually(lambda: status().get("readyReplicas") == 3, "three servers Ready", timeout=180,
                   explain=lambda: str(status()))  # fmt: skip
        # The real CAPI MachineHealthCheck decides what is unhealthy; we only remediate.
        api.create_namespaced_custom_object(*CAPI, namespace, "machinehealthchecks", {
            "apiVersion": "/".join(CAPI), "kind": "MachineHealthCheck", "metadata": {"name": "servers"},
            "spec": {"clusterName": "shop",
                     "selector": {"matchLabels": {"cluster.x-k8s.io/control-plane": ""}},
                     "checks": {"unhealthyNodeConditions": [{"type": "Ready", "status": "False",
                                                             "timeoutSeconds": 1}]}},
        })  # fmt: skip
        before = {
            m["metadata"]["name"]
            for m in api.list_namespaced_custom_object(*CAPI, namespace, "machines")["items"]
        }
        victim = sorted(before)[0]
        standin.set_node_ready(victim, False)  # its VM died: the kubelet stops reporting

        def replaced() -> bool:
            names = {
                m["metadata"]["name"]
                for m in api.list_namespaced_custom_object(*CAPI, namespace, "machines")["items"]
            }
            return victim not in names and len(names) == 3 and status().get("readyReplicas") == 3

        eventually(replaced, "the unhealthy server replaced", timeout=240, explain=lambda: str(status()))
        assert status()["lastRemediation"]["machine"] == victim
        assert victim in standin.etcd_removed


def test_an_upgrade_with_max_surge_zero_never_exceeds_the_replica_count(
    mgmt: ManagementPlane, k8s: Any, namespace: str, manager: Manager, tmp_path: Path
) -> None:
    """Bare-metal sites have no spare server: remove one outdated server, then add its
    replacement, never more than `replicas` at once."""
    api = kc.CustomObjectsApi(k8s)
    most = 0
    surge_zero = {"strategy": {"rollingUpdate": {"maxSurge": 0}}}
    with played_cluster(k8s, namespace, tmp_path / "workload", replicas=3, rollout=surge_zero) as standin:

        def status() -> dict[str, Any]:
            return dict(api.get_namespaced_custom_object(*CP, namespace, "c3oscontrolplanes", "shop-cp")
                        .get("status") or {})  # fmt: skip

        eventually(lambda: status().get("readyReplicas") == 3, "three servers Ready", timeout=180)
        before = {
            m["metadata"]["name"]
            for m in api.list_namespaced_custom_object(*CAPI, namespace, "machines")["items"]
        }
        # The version alone: the template's image says (by its name) it ships VERSION.
        # Refused before a server goes (surge 0 would remove one first).
        api.patch_namespaced_custom_object(
            *CP, namespace, "c3oscontrolplanes", "shop-cp", {"spec": {"version": NEXT}}
        )

        def refused() -> dict[str, Any] | None:
            conditions = status().get("conditions") or []
            found = next((c for c in conditions if c["type"] == "VersionMismatch"), None)
            return found if found and found["reason"] == "ImageVersionMismatch" else None

        reported = eventually(refused, "the template's image refused", explain=lambda: str(status()))
        assert f"ships {VERSION} by its name, the version is {NEXT}" in reported["message"]
        ready = next(c for c in status()["conditions"] if c["type"] == "Ready")
        assert ready["reason"] == "VersionMismatch"
        machines = api.list_namespaced_custom_object(*CAPI, namespace, "machines")["items"]
        assert {m["metadata"]["name"] for m in machines} == before
        assert not any(m["metadata"].get("deletionTimestamp") for m in machines)
        template = image_template(api, namespace, NEXT)
        api.patch_namespaced_custom_object(*CP, namespace, "c3oscontrolplanes", "shop-cp", {"spec": {
            "version": NEXT, "machineTemplate": {"spec": {"infrastructureRef": {"name": template}}},
        }})  # fmt: skip

        def rolled_out() -> bool:
            nonlocal most
            machines = api.list_namespaced_custom_object(*CAPI, namespace, "machines")["items"]
            most = max(most, len(machines))
            s = status()
            return s.get("versions") == [{"version": NEXT, "replicas": 3}] and s.get("readyReplicas") == 3

        eventually(rolled_out, "all servers on the new version", timeout=300, explain=lambda: str(status()))
        assert most == 3
        assert len(standin.etcd_removed) == 3
        machines = api.list_namespaced_custom_object(*CAPI, namespace, "machines")["items"]
        running = node_versions(standin)
        assert {running[m["metadata"]["name"]] for m in machines} == {NEXT}, running


def _etcd_condition(api: kc.CustomObjectsApi, namespace: str) -> dict[str, Any]:
    obj = api.get_namespaced_custom_object(*CP, namespace, "c3oscontrolplanes", "shop-cp")
    conditions = (obj.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == ETCD_MEMBERS_REMOVED), {})


def _etcd_condition_reads(api: kc.CustomObjectsApi, namespace: str, reason: str) -> dict[str, Any]:
    def reads() -> bool:
        return _etcd_condition(api, namespace).get("reason") == reason

    eventually(
        reads,
        f"{ETCD_MEMBERS_REMOVED} {reason}",
        timeout=120,
        explain=lambda: str(_etcd_condition(api, namespace)),
    )
    return _etcd_condition(api, namespace)


def _machines(api: kc.CustomObjectsApi, namespace: str) -> dict[str, dict[str, Any]]:
    items = api.list_namespaced_custom_object(*CAPI, namespace, "machines")["items"]
    return {m["metadata"]["name"]: m for m in items}


def _three_servers_only_the_first_in_etcd(
    api: kc.CustomObjectsApi, namespace: str, standin: Any
) -> tuple[str, str]:
    """One server (an etcd member), then two whose etcd never joins (k3s's metadata
    controller never annotates their Nodes). Returns the first and the second's names."""
    eventually(lambda: standin.etcd_members, "the first server in etcd", timeout=120)
    (first,) = _machines(api, namespace)
    standin.servers_join_etcd = False
    api.patch_namespaced_custom_object(
        *CP, namespace, "c3oscontrolplanes", "shop-cp", {"spec": {"replicas": 3}}
    )

    def three_ready() -> bool:
        obj = api.get_namespaced_custom_object(*CP, namespace, "c3oscontrolplanes", "shop-cp")
        return (obj.get("status") or {}).get("readyReplicas") == 3

    eventually(three_ready, "three servers Ready", timeout=240)
    second = sorted(set(_machines(api, namespace)) - {first})[0]
    assert list(standin.etcd_members.values()) == [first]
    return first, second


def test_a_server_whose_etcd_never_joined_is_let_go_after_a_bounded_wait(
    mgmt: ManagementPlane, k8s: Any, namespace: str, manager: Manager, tmp_path: Path
) -> None:
    """k3s ignores `remove` on a Node without its etcd member annotations: the hook would
    hold the Machine forever. It is let go ETCD_MEMBER_GRACE after the request."""
    api = kc.CustomObjectsApi(k8s)
    with played_cluster(k8s, namespace, tmp_path / "workload") as standin:
        first, second = _three_servers_only_the_first_in_etcd(api, namespace, standin)
        api.delete_namespaced_custom_object(*CAPI, namespace, "machines", second)
        condition = _etcd_condition_reads(api, namespace, WAITING_FOR_ETCD_MEMBER)
        assert condition["status"] == "False" and second in condition["message"]
        machine = _machines(api, namespace)[second]
        assert HOOK in machine["metadata"]["annotations"]
        # The grace passes: the request is rewound rather than waited out.
        past = (datetime.now(UTC) - ETCD_MEMBER_GRACE - timedelta(seconds=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
        api.patch_namespaced_custom_object(
            *CAPI,
            namespace,
            "machines",
            second,
            {"metadata": {"annotations": {ETCD_REMOVAL_REQUESTED: past}}},
        )
        eventually(lambda: second not in _machines(api, namespace), "the server let go", timeout=120)
        assert standin.etcd_removed == [] and list(standin.etcd_members.values()) == [first]


def test_the_last_voting_etcd_member_is_held_until_another_server_joins_etcd(
    mgmt: ManagementPlane, k8s: Any, namespace: str, manager: Manager, tmp_path: Path
) -> None:
    """Deleting the only etcd member (the others' etcd never joined) would lose the
    cluster's data: k3s refuses, and the Machine holding it stays."""
    api = kc.CustomObjectsApi(k8s)
    with played_cluster(k8s, namespace, tmp_path / "workload") as standin:
        first, second = _three_servers_only_the_first_in_etcd(api, namespace, standin)
        api.delete_namespaced_custom_object(*CAPI, namespace, "machines", first)
        assert first in _etcd_condition_reads(api, namespace, ETCD_REMOVAL_REFUSED)["message"]
        assert set(standin.etcd_refused) == {first}
        held = _machines(api, namespace)[first]
        assert held["metadata"].get("deletionTimestamp") and HOOK in held["metadata"]["annotations"]
        assert list(standin.etcd_members.values()) == [first]
        # The way out: another server's etcd joins; k3s is asked again and removes it.
        standin.join_etcd(second)
        eventually(
            lambda: first not in _machines(api, namespace), "the server let go once removed", timeout=120
        )
        assert standin.etcd_removed == [first]
        assert list(standin.etcd_members.values()) == [second]
