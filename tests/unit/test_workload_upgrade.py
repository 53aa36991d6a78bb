"""The in-place upgrade Job of a node and the judgement of its progress from the Job and
the Node (workload/upgrade.py), on plain objects as the workload API returns them."""

from __future__ import annotations

import copy
import hashlib
import re
from typing import Any

import pytest

from capi_c3os.workload.client import NodeState
from capi_c3os.workload.upgrade import (
    BOOT_ID_BEFORE_ANNOTATION,
    BOOT_STATE_LABEL,
    UPGRADE_SCRIPT,
    UpgradeState,
    judge,
    node_label_value,
    upgrade_job,
    upgrade_job_name,
)

N = "shop-17-md-0-x7k2p"
IMAGE = "registry.c3os.test/c3os-standin:k3sv1.34.1-k3s1"
VERSION = "v1.34.1+k3s1"
OLD_VERSION = "v1.33.4+k3s1"
BEFORE = "0b6f4c52-5d1e-4f59-9d0e-000000000001"
AFTER = "0b6f4c52-5d1e-4f59-9d0e-000000000002"
_DNS_SUBDOMAIN_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def node(**overrides: Any) -> NodeState:
    fields: dict[str, Any] = {
        "name": "shop-17-md-0-x7k2p", "provider_id": "c3os://edge/shop-17-md-0-x7k2p", "ready": True,
        "annotations": {}, "kubelet_version": VERSION, "labels": {"kairos.io/boot-state": "active"},
        "boot_id": AFTER,
    }  # fmt: skip
    fields.update(overrides)
    return NodeState(**fields)


def job(*, condition: str | None = None, message: str = "", **changes: Any) -> dict[str, Any]:
    """The Job as the API returns it, with the status the Job controller writes."""
    made = copy.deepcopy(upgrade_job("shop-17-md-0-x7k2p", IMAGE, BEFORE))
    made["metadata"].update(changes)
    if condition:
        made["status"] = {
            "succeeded" if condition == "Complete" else "failed": 1,
            "conditions": [{"type": condition, "status": "True", "reason": "X", "message": message}],
        }
    return made


def test_the_job_runs_the_target_image_privileged_on_its_node_once() -> None:
    made = upgrade_job("shop-17-md-0-x7k2p", IMAGE, BEFORE)
    assert made["metadata"]["namespace"] == "kube-system"
    assert made["metadata"]["labels"] == {
        "app.kubernetes.io/managed-by": "capi-c3os",
        "c3os.cluster.x-k8s.io/upgrade-node": "shop-17-md-0-x7k2p",
    }
    assert made["metadata"]["annotations"] == {
        "c3os.cluster.x-k8s.io/upgrade-image": IMAGE, BOOT_ID_BEFORE_ANNOTATION: BEFORE,
    }  # fmt: skip
    assert made["spec"]["backoffLimit"] == 0
    pod = made["spec"]["template"]["spec"]
    assert (
        pod["nodeName"] == "shop-17-md-0-x7k2p" and pod["restartPolicy"] == "Never" and pod["hostPID"] is True
    )
    assert pod["tolerations"] == [{"operator": "Exists"}]
    assert pod["volumes"] == [{"name": "host-root", "hostPath": {"path": "/"}}]
    (container,) = pod["containers"]
    assert container["name"] == "upgrade" and container["image"] == IMAGE
    assert container["securityContext"] == {"privileged": True}
    assert container["volumeMounts"] == [{"name": "host-root", "mountPath": "/host"}]
    assert container["command"] == ["/bin/sh", "-c", UPGRADE_SCRIPT]
    # kairos-operator v0.1.3's active-only script, then the reboot into the new slot.
    assert UPGRADE_SCRIPT.splitlines() == [
        "set -e",
        "mount --rbind /host/dev /dev",
        "mount --rbind /host/run /run",
        "kairos-agent upgrade --source dir:/",
        "nsenter -t 1 -m -u -i -n -p -- reboot",
    ]


def test_the_job_name_is_the_node_and_image_and_fits_a_label_value() -> None:
    digest = hashlib.sha256(f"shop-17-md-0-x7k2p\n{IMAGE}".encode()).hexdigest()[:10]
    assert upgrade_job_name("shop-17-md-0-x7k2p", IMAGE) == f"c3os-upgrade-shop-17-md-0-x7k2p-{digest}"
    assert upgrade_job_name("shop-17-md-0-x7k2p", IMAGE) != upgrade_job_name(
        "shop-17-md-0-x7k2p", IMAGE + "x"
    )
    # Long names are cut, and a cut never leaves '-' or '.' before the hash.
    for long in ("n" * 38 + "-.-abc", "a" * 200, "edge.example.com" * 10):
        name = upgrade_job_name(long, IMAGE)
        assert len(name) <= 63 and all(_DNS_SUBDOMAIN_LABEL.match(part) for part in name.split("."))
        value = node_label_value(long)
        assert len(value) <= 63 and value[-1].isalnum()
    assert node_label_value("a" * 63) == "a" * 63
    assert node_label_value("a" * 64) != node_label_value("a" * 63 + "b")


@pytest.mark.parametrize(
    ("the_job", "the_node", "state", "message"),
    [
        (job(), node(boot_id=BEFORE), UpgradeState.IN_PROGRESS,
         "node shop-17-md-0-x7k2p is installing " + IMAGE + " (job kube-system/"
         + upgrade_job_name("shop-17-md-0-x7k2p", IMAGE) + ")"),
        (job(condition="Complete"), node(boot_id=BEFORE), UpgradeState.IN_PROGRESS,
         f"node shop-17-md-0-x7k2p installed {IMAGE}, rebooting"),
        (job(condition="Complete"), node(labels={}), UpgradeState.IN_PROGRESS,
         "node shop-17-md-0-x7k2p rebooted, waiting for boot-state active (is unset)"),
        (job(condition="Complete"), node(ready=False), UpgradeState.IN_PROGRESS,
         f"node shop-17-md-0-x7k2p rebooted into {IMAGE}, waiting for Ready"),
        (job(condition="Complete"), None, UpgradeState.IN_PROGRESS,
         f"node shop-17-md-0-x7k2p installed {IMAGE}, waiting for it to register"),
        (job(condition="Complete"), node(), UpgradeState.DONE,
         f"node shop-17-md-0-x7k2p runs {IMAGE} (v1.34.1+k3s1)"),
        (job(condition="Failed", message="Job has reached the specified backoff limit"), node(boot_id=BEFORE),
         UpgradeState.FAILED,
         f"upgrade of node {N} to {IMAGE} failed: Job has reached the specified backoff limit"),
        (job(condition="Complete"), node(labels={BOOT_STATE_LABEL: "passive"}, kubelet_version=OLD_VERSION),
         UpgradeState.FAILED,
         f"node {N} fell back to the previous image (boot-state passive): {IMAGE} did not boot"),
        (job(condition="Complete"), node(kubelet_version="v1.33.4+k3s1"), UpgradeState.FAILED,
         f"node shop-17-md-0-x7k2p booted {IMAGE} but runs v1.33.4+k3s1, wanted v1.34.1+k3s1"),
    ],
    ids=["installing", "rebooting", "no-boot-state-yet", "not-ready-yet", "node-gone", "done", "job-failed",
         "fell-back", "wrong-version"],
)  # fmt: skip
def test_progress_is_judged_from_the_job_and_the_node(
    the_job: dict[str, Any], the_node: NodeState | None, state: UpgradeState, message: str
) -> None:
    progress = judge(the_job, the_node, IMAGE, VERSION)
    assert (progress.state, progress.message) == (state, message)
    # Same inputs, same words: CAPI copies the message into the Machine's conditions.
    assert judge(copy.deepcopy(the_job), the_node, IMAGE, VERSION) == progress


def test_without_a_wanted_version_a_booted_active_ready_node_is_done() -> None:
    assert judge(job(condition="Complete"), node(kubelet_version=None), IMAGE, None).done


def test_a_job_that_is_not_ours_under_our_name_is_never_taken_as_progress() -> None:
    foreign = job(condition="Complete", labels={})
    assert judge(foreign, node(), IMAGE, VERSION).failed
    other_image = job(condition="Complete")
    other_image["metadata"]["annotations"]["c3os.cluster.x-k8s.io/upgrade-image"] = "evil.example/os:1"
    progress = judge(other_image, node(), IMAGE, VERSION)
    assert progress.failed
    assert progress.message == (
        f"job kube-system/{upgrade_job_name('shop-17-md-0-x7k2p', IMAGE)} "
        f"is not the upgrade of node shop-17-md-0-x7k2p to {IMAGE}"
    )
    other_node = job(condition="Complete")
    other_node["spec"]["template"]["spec"]["nodeName"] = "someone-else"
    assert judge(other_node, node(), IMAGE, VERSION).failed
