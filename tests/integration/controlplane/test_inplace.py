"""In-place upgrades of servers (`rollout.strategy.type: InPlace`), with the real CAPI core
manager and ours: every server is upgraded on its own machine, one at a time and only
while every server is Ready; no Machine is made or deleted; a release that does not boot
(the node falls back) and one that cannot be pulled each stop the rollout with the reason,
the server keeping its version.

The test plays infrastructure and nodes (MachinePlayer) and the node side of the upgrade
Job as the contract describes it (UpgradePlayer): the Job controller's status, then the
reboot (NotReady, a new bootID, Kairos's boot-state label, the k3s version of the image
booted). The node side on real VMs is another helper's (hack/standin-image.sh)."""

from __future__ import annotations

import json
import secrets
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as kc
from kubernetes.client.exceptions import ApiException

from capi_c3os.capi.versions import image_tag, version_from_image_name
from capi_c3os.dev.manager import Manager
from capi_c3os.dev.mgmt import ManagementPlane, api_client
from capi_c3os.dev.workload import WorkloadStandIn, node_versions, played_cluster, standin_volume
from capi_c3os.reconcilers.controlplane_context import IN_PLACE_ANNOTATION
from capi_c3os.workload.upgrade import BOOT_STATE_LABEL, UPGRADE_IMAGE_ANNOTATION, UPGRADE_NAMESPACE
from tests.integration.controlplane.conftest import start_manager
from tests.support import eventually

pytestmark = pytest.mark.integration

INFRA = ("infrastructure.cluster.x-k8s.io", "v1alpha1")
CP = ("controlplane.cluster.x-k8s.io", "v1alpha1")
CAPI = ("cluster.x-k8s.io", "v1beta2")
REPLICAS = 3
VERSION, NEXT, LATER, LATER_STILL = "v1.33.4+k3s1", "v1.34.1+k3s1", "v1.35.0+k3s1", "v1.36.0+k3s1"
REGISTRY = "registry.c3os.test/c3os-standin"


class UpgradePlayer:
    """Plays the node side of each upgrade Job in the workload stand-in, once per Job: an
    image of REGISTRY whose tag names a k3s version installs and boots (the node reports
    it); `broken-<tag>` installs, fails boot assessment and falls back (boot-state
    passive, the old version); any other image fails the Job as an unpullable one would.
    Also watches the management cluster: the most servers in an upgrade at once."""

    def __init__(self, standin: WorkloadStandIn, api: kc.CustomObjectsApi, namespace: str) -> None:
        self.standin, self.api, self.namespace = standin, api, namespace
        self.handled: list[str] = []
        """uids of the Jobs run"""
        self.most_upgrading = 0
        self.machine_names: set[str] = set()
        self.rolling_out: set[str] = set()
        """RollingOut messages seen on the control plane."""
        self.jobs: set[str] = set()
        """uids of every upgrade Job seen."""
        self.holding = False
        """While True, Jobs are seen but not run (an upgrade stays in flight)."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> UpgradePlayer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.wait(0.3):
            try:
                self.step()
            except ApiException:
                continue  # the next round sees the objects settled

    def step(self) -> None:
        machines = self.api.list_namespaced_custom_object(*CAPI, self.namespace, "machines")["items"]
        self.machine_names |= {m["metadata"]["name"] for m in machines}
        upgrading = [m for m in machines if IN_PLACE_ANNOTATION in (m["metadata"].get("annotations") or {})]
        self.most_upgrading = max(self.most_upgrading, len(upgrading))
        cp = self.api.get_namespaced_custom_object(*CP, self.namespace, "c3oscontrolplanes", "shop-cp")
        self.rolling_out |= {
            c["message"]
            for c in (cp.get("status") or {}).get("conditions") or []
            if c["type"] == "RollingOut"
        }
        with api_client(self.standin.kubeconfig) as client:
            jobs = kc.BatchV1Api(client).list_namespaced_job(UPGRADE_NAMESPACE).items
            # By uid: a Job deleted and made again under its name is another upgrade.
            self.jobs |= {job.metadata.uid for job in jobs}
            for job in jobs:
                if job.metadata.uid not in self.handled and not self.holding:
                    self.run(client, job)
                    self.handled.append(job.metadata.uid)

    def run(self, client: Any, job: kc.V1Job) -> None:
        image = job.metadata.annotations[UPGRADE_IMAGE_ANNOTATION]
        node = job.spec.template.spec.node_name
        repository, _, tag = image.rpartition(":")
        version = version_from_image_name(tag)
        if repository != REGISTRY or version is None:
            finish(client, job.metadata.name, failed=f'Back-off pulling image "{image}": not found')
            return
        finish(client, job.metadata.name)
        core = kc.CoreV1Api(client)
        self.standin.set_node_ready(node, False)  # the reboot
        if tag.startswith("broken-"):
            version = str(core.read_node(node).status.node_info.kubelet_version)
        state = "passive" if tag.startswith("broken-") else "active"
        core.patch_node_status(node, {"status": {"nodeInfo": {"bootID": secrets.token_hex(16),
                                                              "kubeletVersion": version}}})  # fmt: skip
        core.patch_node(node, {"metadata": {"labels": {BOOT_STATE_LABEL: state}}})
        self.standin.set_node_ready(node, True)


def finish(client: Any, name: str, *, failed: str | None = None) -> None:
    """The Job controller's status once the upgrade Pod ended."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    counts: dict[str, Any]
    if failed:
        kinds, reason, message = ("FailureTarget", "Failed"), "BackoffLimitExceeded", failed
        counts = {"failed": 1}
    else:
        kinds, reason = ("SuccessCriteriaMet", "Complete"), "CompletionsReached"
        message = "Reached expected number of succeeded pods"
        counts = {"succeeded": 1, "completionTime": now}
    conditions = [{"type": kind, "status": "True", "reason": reason, "message": message,
                   "lastTransitionTime": now, "lastProbeTime": now} for kind in kinds]  # fmt: skip
    status = {"startTime": now, "conditions": conditions, **counts}
    kc.BatchV1Api(client).patch_namespaced_job_status(name, UPGRADE_NAMESPACE, {"status": status})


def release_template(api: kc.CustomObjectsApi, namespace: str, name: str, version: str, oci: str) -> None:
    """A machine template of a release: its disk image (played: a volume named after the
    version) and the same release as an OCI image."""
    api.create_namespaced_custom_object(*INFRA, namespace, "c3osmachinetemplates", {
        "apiVersion": "/".join(INFRA), "kind": "C3osMachineTemplate", "metadata": {"name": name},
        "spec": {"template": {"spec": {"backend": {"libvirt": {}},
                                       "image": {"volume": standin_volume(version), "oci": oci}}}},
    })  # fmt: skip


def upgrade_to(api: kc.CustomObjectsApi, namespace: str, template: str, version: str) -> None:
    spec = {"version": version, "machineTemplate": {"spec": {"infrastructureRef": {"name": template}}}}
    api.patch_namespaced_custom_object(*CP, namespace, "c3oscontrolplanes", "shop-cp", {"spec": spec})


def status(api: kc.CustomObjectsApi, namespace: str) -> dict[str, Any]:
    obj = api.get_namespaced_custom_object(*CP, namespace, "c3oscontrolplanes", "shop-cp")
    return dict(obj.get("status") or {})


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    """`obj` is an object or its status."""
    found = obj.get("status", obj) or {}
    return next((c for c in found.get("conditions") or [] if c["type"] == type_), {})


def machines(api: kc.CustomObjectsApi, namespace: str) -> list[dict[str, Any]]:
    return list(api.list_namespaced_custom_object(*CAPI, namespace, "machines")["items"])


@contextmanager
def in_place_servers(k8s: Any, namespace: str, workdir: Path) -> Iterator[WorkloadStandIn]:
    """Three Ready servers of a control plane with strategy InPlace."""
    api = kc.CustomObjectsApi(k8s)
    with played_cluster(
        k8s, namespace, workdir, replicas=REPLICAS, version=VERSION, rollout={"strategy": {"type": "InPlace"}}
    ) as standin:
        eventually(lambda: status(api, namespace).get("readyReplicas") == REPLICAS,
                   "three servers Ready", timeout=180)  # fmt: skip
        yield standin


@pytest.fixture
def three_servers(
    k8s: Any, namespace: str, manager: Manager, tmp_path: Path
) -> Iterator[tuple[kc.CustomObjectsApi, WorkloadStandIn]]:
    with in_place_servers(k8s, namespace, tmp_path / "workload") as standin:
        yield kc.CustomObjectsApi(k8s), standin


def test_servers_are_upgraded_in_place_one_at_a_time_and_a_failed_upgrade_stops_the_rollout(
    three_servers: tuple[kc.CustomObjectsApi, WorkloadStandIn], namespace: str
) -> None:
    api, standin = three_servers
    before = {m["metadata"]["name"] for m in machines(api, namespace)}
    release_template(api, namespace, "cp-next", NEXT, f"{REGISTRY}:{image_tag(NEXT)}")

    with UpgradePlayer(standin, api, namespace) as player:
        # One server not Ready: no upgrade starts (etcd would lose quorum with a second
        # server down while one reboots).
        waiting = sorted(before)[0]
        standin.set_node_ready(waiting, False)
        eventually(lambda: status(api, namespace).get("readyReplicas") == REPLICAS - 1, "a server not Ready")
        upgrade_to(api, namespace, "cp-next", NEXT)
        ready = eventually(
            lambda: (
                (c := condition(status(api, namespace), "Ready"))
                .get("message", "")
                .startswith("not upgrading")
                and c
            ),
            "the upgrade waits for every server to be Ready",
            explain=lambda: str(status(api, namespace)),
        )
        assert (ready["reason"], ready["message"].endswith(f"in place while {waiting} is not Ready")) == (
            "WaitingForHealthyServers",
            True,
        )
        assert player.handled == []
        standin.set_node_ready(waiting, True)

        def upgraded() -> bool:
            found = status(api, namespace)
            return (
                found.get("upToDateReplicas") == REPLICAS
                and found.get("versions") == [{"version": NEXT, "replicas": REPLICAS}]
                and all(m["spec"]["version"] == NEXT for m in machines(api, namespace))
            )

        eventually(upgraded, "every server upgraded in place", timeout=180,
                   explain=lambda: str(status(api, namespace)))  # fmt: skip
        assert player.machine_names == before, "a Machine was made or deleted"
        assert player.most_upgrading == 1
        assert len(player.handled) == REPLICAS
        assert any("in place to" in message for message in player.rolling_out), player.rolling_out
        for machine in machines(api, namespace):
            name = machine["metadata"]["name"]
            assert IN_PLACE_ANNOTATION not in (machine["metadata"].get("annotations") or {})
            infra = api.get_namespaced_custom_object(*INFRA, namespace, "c3osmachines", name)
            assert infra["spec"]["image"] == {**infra["spec"]["image"], "volume": standin_volume(NEXT),
                                              "oci": f"{REGISTRY}:{image_tag(NEXT)}"}  # fmt: skip
            assert infra["metadata"]["annotations"]["cluster.x-k8s.io/cloned-from-name"] == "cp-next"
        eventually(
            lambda: all(condition(m, "UpToDate").get("status") == "True" for m in machines(api, namespace)),
            "every Machine reported UpToDate",
        )
        assert set(node_versions(standin).values()) == {NEXT}
        assert condition(status(api, namespace), "VersionMismatch")["status"] == "False"
        failed_upgrades_stop_the_rollout(api, standin, namespace, player, before)


def failed_upgrades_stop_the_rollout(
    api: kc.CustomObjectsApi,
    standin: WorkloadStandIn,
    namespace: str,
    player: UpgradePlayer,
    before: set[str],
) -> None:
    # A release that does not boot: the node falls back, the rollout stops there.
    release_template(api, namespace, "cp-broken", LATER, f"{REGISTRY}:broken-{image_tag(LATER)}")
    upgrade_to(api, namespace, "cp-broken", LATER)
    failed = stopped(api, namespace)
    assert "fell back to the previous image (boot-state passive)" in failed["message"], failed
    assert len(player.handled) == REPLICAS + 1, "more than one server was upgraded"

    def failed_machine() -> dict[str, Any] | None:
        found = machines(api, namespace)
        return next(
            (m for m in found if condition(m, "UpToDate").get("reason") == "InPlaceUpgradeFailed"), None
        )

    victim = eventually(failed_machine, "the server's Machine reported InPlaceUpgradeFailed")
    assert IN_PLACE_ANNOTATION in victim["metadata"]["annotations"]
    assert victim["spec"]["version"] == NEXT
    assert set(node_versions(standin).values()) == {NEXT}

    # Another image instead: the failed target is dropped, the next one cannot be
    # pulled; the rollout stops again, nothing replaced.
    elsewhere = f"registry.c3os.test/other:{image_tag(LATER)}"
    release_template(api, namespace, "cp-elsewhere", LATER, elsewhere)
    upgrade_to(api, namespace, "cp-elsewhere", LATER)
    failed = stopped(api, namespace, "not found")
    assert f'Back-off pulling image "{elsewhere}"' in failed["message"]
    assert len(player.handled) == REPLICAS + 2
    assert player.machine_names == before
    assert player.most_upgrading == 1
    assert status(api, namespace)["versions"] == [{"version": NEXT, "replicas": REPLICAS}]

    # An OCI image whose tag names another version than the spec: caught before any
    # node installs it.
    named_later = f"{REGISTRY}:{image_tag(LATER_STILL)}"
    release_template(api, namespace, "cp-wrong", LATER, named_later)
    upgrade_to(api, namespace, "cp-wrong", LATER)

    def mismatch() -> dict[str, Any] | None:
        ready = condition(status(api, namespace), "Ready")
        return ready if ready.get("reason") == "VersionMismatch" else None

    ready = eventually(mismatch, "the mismatch reported", explain=lambda: str(status(api, namespace)))
    assert ready["message"] == (
        f"the oci image of template cp-wrong, {named_later}, ships {LATER_STILL} by its name, the version "
        f"is {LATER}: no server is upgraded in place until the template names an image of {LATER}"
    )
    reported = condition(status(api, namespace), "VersionMismatch")
    assert (reported["status"], reported["reason"]) == ("True", "ImageVersionMismatch")
    assert len(player.jobs) == REPLICAS + 2
    assert {m["metadata"]["name"] for m in machines(api, namespace)} == before


def stopped(api: kc.CustomObjectsApi, namespace: str, saying: str = "") -> dict[str, Any]:
    """The control plane's Ready condition once a failed in-place upgrade stopped the rollout."""

    def failed() -> dict[str, Any] | None:
        ready = condition(status(api, namespace), "Ready")
        return ready if ready.get("reason") == "InPlaceUpgradeFailed" and saying in ready["message"] else None

    ready = eventually(failed, "the rollout stopped at a failed in-place upgrade", timeout=120,
                       explain=lambda: str(status(api, namespace)))  # fmt: skip
    assert ready["status"] == "False"
    assert ready["message"].startswith("rollout stopped: ")
    return ready


@pytest.mark.parametrize("reboot", ["under-the-next-manager", "while-none-runs"])
def test_a_manager_killed_mid_upgrade_leaves_it_to_the_next_one_which_finishes_it(
    mgmt: ManagementPlane, k8s: Any, namespace: str, tmp_path: Path, reboot: str
) -> None:
    """Killed once the first upgrade Job is made, before its node rebooted; the node
    reboots into the new release either once the next manager runs, or while none runs
    (the next one finds the upgrade done and only writes it down). Either way: no second
    Job, no Machine made or deleted, every server upgraded."""
    api = kc.CustomObjectsApi(k8s)
    first = start_manager(mgmt, tmp_path / "first.log")
    second = None
    try:
        with in_place_servers(k8s, namespace, tmp_path / "workload") as standin:
            before = {m["metadata"]["name"] for m in machines(api, namespace)}
            release_template(api, namespace, "cp-next", NEXT, f"{REGISTRY}:{image_tag(NEXT)}")
            with UpgradePlayer(standin, api, namespace) as player:
                player.holding = True  # the first server's upgrade stays in flight
                upgrade_to(api, namespace, "cp-next", NEXT)
                eventually(lambda: player.jobs, "the first upgrade Job made")
                first.stop(timeout=5, sig=signal.SIGKILL)
                upgrading = [m for m in machines(api, namespace)
                             if IN_PLACE_ANNOTATION in (m["metadata"].get("annotations") or {})]  # fmt: skip
                assert len(upgrading) == 1
                name = upgrading[0]["metadata"]["name"]
                if reboot == "while-none-runs":
                    player.holding = False
                    eventually(lambda: player.handled, "the node rebooted into the new release")
                    second = start_manager(mgmt, tmp_path / "second.log")
                    done = f"upgraded control-plane Machine {namespace}/{name} in place"
                    log = second.log_path
                    eventually(lambda: done in log.read_text(), "the new manager wrote down the upgrade done")
                else:
                    second = start_manager(mgmt, tmp_path / "second.log")
                    finds_the_upgrade_in_flight(api, namespace, name, second)
                    assert len(player.jobs) == 1, "the new manager started another upgrade"
                    player.holding = False

                def upgraded() -> bool:
                    found = status(api, namespace)
                    return found.get("upToDateReplicas") == REPLICAS and found.get("versions") == [
                        {"version": NEXT, "replicas": REPLICAS}
                    ]

                eventually(upgraded, "every server upgraded in place after the restart", timeout=180,
                           explain=lambda: str(status(api, namespace)))  # fmt: skip
                assert len(player.handled) == len(player.jobs) == REPLICAS
                assert player.most_upgrading == 1
                assert player.machine_names == before
    finally:
        first.stop()
        if second is not None:
            assert second.stop() == 0, second.tail()


def test_a_hand_written_in_place_target_is_removed_and_never_run(
    k8s: Any, namespace: str, manager: Manager, tmp_path: Path
) -> None:
    """Whoever may edit Machines may write the target annotation; its image would run
    privileged on the node. One the manager did not sign is removed with a Warning Event,
    no upgrade Job is made and the C3osMachine keeps its image."""
    api = kc.CustomObjectsApi(k8s)
    with played_cluster(k8s, namespace, tmp_path / "workload", replicas=1, version=VERSION) as standin:
        eventually(lambda: status(api, namespace).get("readyReplicas") == 1, "the server Ready", timeout=120)
        [machine] = machines(api, namespace)
        name = machine["metadata"]["name"]
        infra_before = api.get_namespaced_custom_object(*INFRA, namespace, "c3osmachines", name)["spec"]
        forged = f"{REGISTRY}:{image_tag(NEXT)}"  # an image the player would install
        with UpgradePlayer(standin, api, namespace) as player:
            signature = "v1:" + "0" * 64
            target = {"image": forged, "version": NEXT, "template": "cp-forged", "signature": signature}
            api.patch_namespaced_custom_object(*CAPI, namespace, "machines", name, {
                "metadata": {"annotations": {IN_PLACE_ANNOTATION: json.dumps(target)}}})  # fmt: skip

            def removed() -> bool:
                found = api.get_namespaced_custom_object(*CAPI, namespace, "machines", name)
                return IN_PLACE_ANNOTATION not in (found["metadata"].get("annotations") or {})

            eventually(removed, "the forged annotation removed", timeout=60)
            assert player.jobs == set(), "an upgrade Job was made from a forged annotation"
            events = (
                kc.CoreV1Api(k8s)
                .list_namespaced_event(
                    namespace, field_selector=f"involvedObject.name={name},reason=InPlaceTargetIgnored"
                )
                .items
            )
            assert events and events[0].type == "Warning", "no Event says the annotation was ignored"
            assert IN_PLACE_ANNOTATION in events[0].message
        infra = api.get_namespaced_custom_object(*INFRA, namespace, "c3osmachines", name)
        assert infra["spec"] == infra_before
        after = api.get_namespaced_custom_object(*CAPI, namespace, "machines", name)
        assert after["spec"]["version"] == VERSION
        assert set(node_versions(standin).values()) == {VERSION}


def finds_the_upgrade_in_flight(
    api: kc.CustomObjectsApi, namespace: str, name: str, manager: Manager
) -> None:
    """The new manager (an empty view) finds the upgrade of `name` in flight and judges it."""

    def reported() -> bool:
        ready = condition(status(api, namespace), "Ready")
        return ready.get("reason") == "UpgradingInPlace" and f"upgrading {name} " in ready["message"]

    log = manager.log_path
    eventually(lambda: f"upgrading {name} in place to" in log.read_text(),
               "the new manager judged the upgrade in flight")  # fmt: skip
    eventually(reported, "the upgrade in flight reported", explain=lambda: str(status(api, namespace)))
