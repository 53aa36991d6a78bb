"""The in-place upgrade Job against a real kube-apiserver (the workload stand-in): it is
accepted as built, made once per (node, image), replaces the node's Job for an older
image, and its progress follows what the Job controller and the kubelet write."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as kc

from capi_c3os.bootstrap.certificates import new_ca
from capi_c3os.dev.mgmt import api_client
from capi_c3os.dev.processes import free_port
from capi_c3os.dev.workload import WorkloadStandIn
from capi_c3os.workload.client import WorkloadClient
from capi_c3os.workload.upgrade import (
    BOOT_ID_BEFORE_ANNOTATION,
    UPGRADE_NAMESPACE,
    UpgradeState,
    advance_upgrade,
    upgrade_job_name,
)

pytestmark = pytest.mark.integration

OLD = "registry.c3os.test/c3os-standin:k3sv1.33.4-k3s1"
NEW = "registry.c3os.test/c3os-standin:k3sv1.34.1-k3s1"


@pytest.fixture
def standin(tmp_path: Path) -> Iterator[WorkloadStandIn]:
    workload = WorkloadStandIn(tmp_path / "workload", new_ca("server"), new_ca("client"), free_port()).start()
    yield workload
    workload.stop()


@pytest.fixture
def workload(standin: WorkloadStandIn) -> Iterator[WorkloadClient]:
    client = WorkloadClient(standin.kubeconfig.read_text())
    yield client
    client.close()


def boot(standin: WorkloadStandIn, name: str, boot_id: str, version: str, boot_state: str) -> None:
    """What a (re)booted node reports: kubelet nodeInfo, Kairos's node labeler labels."""
    with api_client(standin.kubeconfig) as client:
        core = kc.CoreV1Api(client)
        core.patch_node_status(name, {"status": {"nodeInfo": {"bootID": boot_id, "kubeletVersion": version}}})
        core.patch_node(name, {"metadata": {"labels": {"kairos.io/boot-state": boot_state}}})


def complete(standin: WorkloadStandIn, name: str) -> None:
    """The Job controller's status after the upgrade Pod succeeded."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    message = "Reached expected number of succeeded pods"
    done = [{"type": kind, "status": "True", "reason": "CompletionsReached", "message": message,
             "lastTransitionTime": now, "lastProbeTime": now}
            for kind in ("SuccessCriteriaMet", "Complete")]  # fmt: skip
    status: dict[str, Any] = {"startTime": now, "completionTime": now, "succeeded": 1, "conditions": done}
    with api_client(standin.kubeconfig) as client:
        kc.BatchV1Api(client).patch_namespaced_job_status(name, UPGRADE_NAMESPACE, {"status": status})


def job_names(standin: WorkloadStandIn) -> list[str]:
    with api_client(standin.kubeconfig) as client:
        return sorted(
            j.metadata.name for j in kc.BatchV1Api(client).list_namespaced_job(UPGRADE_NAMESPACE).items
        )


def test_an_upgrade_job_is_made_once_replaces_older_ones_and_is_judged_to_done(
    standin: WorkloadStandIn, workload: WorkloadClient
) -> None:
    node = "shop-17-md-0-x7k2p"
    standin.register_node(node, f"c3os://edge/{node}", control_plane=False, kubelet_version="v1.33.4+k3s1")
    boot(standin, node, "boot-1", "v1.33.4+k3s1", "active")

    first = advance_upgrade(workload, node, OLD, "v1.33.4+k3s1")
    assert first.state is UpgradeState.IN_PROGRESS
    # A new target while the old Job exists: the old one goes, the new one records the bootID.
    progress = advance_upgrade(workload, node, NEW, "v1.34.1+k3s1")
    assert progress.state is UpgradeState.IN_PROGRESS
    new_job = upgrade_job_name(node, NEW)
    assert progress.message == f"node {node} is installing {NEW} (job kube-system/{new_job})"
    assert job_names(standin) == [new_job]
    job = workload.job(UPGRADE_NAMESPACE, new_job)
    assert job is not None and job["metadata"]["annotations"][BOOT_ID_BEFORE_ANNOTATION] == "boot-1"
    # Repeating (a reconcile that died, a second replica) changes nothing.
    assert advance_upgrade(workload, node, NEW, "v1.34.1+k3s1") == progress
    assert job_names(standin) == [new_job]

    complete(standin, new_job)
    assert (
        advance_upgrade(workload, node, NEW, "v1.34.1+k3s1").message
        == f"node {node} installed {NEW}, rebooting"
    )
    boot(standin, node, "boot-2", "v1.34.1+k3s1", "active")
    done = advance_upgrade(workload, node, NEW, "v1.34.1+k3s1")
    assert (done.state, done.message) == (UpgradeState.DONE, f"node {node} runs {NEW} (v1.34.1+k3s1)")
    assert job_names(standin) == [new_job]


def test_the_longest_node_name_gets_a_job_the_api_server_accepts(
    standin: WorkloadStandIn, workload: WorkloadClient
) -> None:
    # The Job's defaulting copies the Job's name into a Pod label (at most 63 characters);
    # a kubelet labels its Node with its hostname, so 63 is also the longest Node name.
    node = "edge-" + "x" * 46 + ".example.com"
    assert len(node) == 63
    standin.register_node(node, f"c3os://edge/{node}", control_plane=False)
    assert advance_upgrade(workload, node, NEW, None).state is UpgradeState.IN_PROGRESS
    assert job_names(standin) == [upgrade_job_name(node, NEW)]
    assert advance_upgrade(workload, node, OLD, None).state is UpgradeState.IN_PROGRESS
    assert job_names(standin) == [upgrade_job_name(node, OLD)]
