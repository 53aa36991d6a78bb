"""Rollouts: a new infrastructure template, a changed server config and `rollout.after`
passing each replace every server, one at a time (surge 1: never more than replicas + 1
Machines, never two going at once); a version change whose image does not ship it is
reported (VersionMismatch) and stops after the first server, then an image that ships it
finishes the upgrade. With the real CAPI core manager and our manager; the test plays
infrastructure and nodes (MachinePlayer: each Node reports the k3s version its image's
name carries)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as kc

from capi_c3os.dev.manager import Manager
from capi_c3os.dev.workload import WorkloadStandIn, image_template, node_versions, played_cluster
from tests.support import eventually

pytestmark = pytest.mark.integration

INFRA = ("infrastructure.cluster.x-k8s.io", "v1alpha1")
BOOTSTRAP = ("bootstrap.cluster.x-k8s.io", "v1alpha1")
CP = ("controlplane.cluster.x-k8s.io", "v1alpha1")
CAPI = ("cluster.x-k8s.io", "v1beta2")
REPLICAS = 3
VERSION = "v1.33.4+k3s1"
NEXT = "v1.34.1+k3s1"


class Rollout:
    """Watches one rollout: which Machines were there, the most at once, the most
    deleting at once."""

    def __init__(self, api: kc.CustomObjectsApi, namespace: str) -> None:
        self.api, self.namespace = api, namespace
        self.before = {m["metadata"]["name"] for m in self.machines()}
        self.most = self.most_deleting = 0
        self.not_up_to_date: set[str] = set()
        """Machines seen with UpToDate=False (the control plane reports it on each)."""

    def machines(self) -> list[dict[str, Any]]:
        return list(self.api.list_namespaced_custom_object(*CAPI, self.namespace, "machines")["items"])

    def status(self) -> dict[str, Any]:
        obj = self.api.get_namespaced_custom_object(*CP, self.namespace, "c3oscontrolplanes", "shop-cp")
        return dict(obj.get("status") or {})

    def done(self) -> bool:
        machines = self.machines()
        self.most = max(self.most, len(machines))
        deleting = sum(1 for m in machines if m["metadata"].get("deletionTimestamp"))
        self.most_deleting = max(self.most_deleting, deleting)
        self.not_up_to_date |= {m["metadata"]["name"] for m in machines if up_to_date(m) == "False"}
        names = {m["metadata"]["name"] for m in machines}
        status = self.status()
        return (
            not names & self.before
            and len(names) == REPLICAS
            and status.get("readyReplicas") == REPLICAS
            and status.get("upToDateReplicas") == REPLICAS
        )

    def run(self, change: Callable[[], None], what: str) -> list[dict[str, Any]]:
        change()
        eventually(self.done, what, timeout=300, explain=lambda: str(self.status()))
        assert self.most <= REPLICAS + 1, f"{what}: {self.most} Machines at once"
        assert self.most_deleting <= 1, f"{what}: {self.most_deleting} Machines deleting at once"
        assert self.not_up_to_date <= self.before, f"{what}: new Machines reported not up to date"
        assert self.not_up_to_date, f"{what}: no replaced Machine was reported UpToDate=False"
        eventually(
            lambda: all(up_to_date(m) == "True" for m in self.machines()),
            f"{what}: every new Machine reported UpToDate=True",
        )
        return self.machines()


def up_to_date(machine: dict[str, Any]) -> str | None:
    """The Machine's UpToDate condition status, as its owner (the control plane) reports it."""
    conditions = (machine.get("status") or {}).get("conditions") or []
    return next((c["status"] for c in conditions if c["type"] == "UpToDate"), None)


@pytest.fixture
def three_servers(
    k8s: Any, namespace: str, manager: Manager, tmp_path: Path
) -> Iterator[tuple[kc.CustomObjectsApi, WorkloadStandIn]]:
    api = kc.CustomObjectsApi(k8s)
    with played_cluster(k8s, namespace, tmp_path / "workload", replicas=REPLICAS, version=VERSION) as standin:
        eventually(lambda: Rollout(api, namespace).status().get("readyReplicas") == REPLICAS,
                   "three servers Ready", timeout=180)  # fmt: skip
        yield api, standin


def patch_spec(api: kc.CustomObjectsApi, namespace: str, spec: dict[str, Any]) -> Callable[[], None]:
    return lambda: api.patch_namespaced_custom_object(
        *CP, namespace, "c3oscontrolplanes", "shop-cp", {"spec": spec}
    )


def test_new_template_server_config_and_rollout_after_each_replace_every_server_one_at_a_time(
    three_servers: tuple[kc.CustomObjectsApi, WorkloadStandIn], namespace: str
) -> None:
    api, standin = three_servers
    template = api.get_namespaced_custom_object(*INFRA, namespace, "c3osmachinetemplates", "cp")
    spec = template["spec"]["template"]["spec"]
    api.create_namespaced_custom_object(*INFRA, namespace, "c3osmachinetemplates", {
        "apiVersion": "/".join(INFRA), "kind": "C3osMachineTemplate", "metadata": {"name": "cp-2"},
        "spec": {"template": {"spec": {**spec, "image": {"volume": "c3os-2"}}}},
    })  # fmt: skip

    # A new infrastructure template (templates are immutable in CAPI: a change is a new name).
    machines = Rollout(api, namespace).run(
        patch_spec(api, namespace, {"machineTemplate": {"spec": {"infrastructureRef": {"name": "cp-2"}}}}),
        "every server on the new template",
    )
    for machine in machines:
        infra = api.get_namespaced_custom_object(
            *INFRA, namespace, "c3osmachines", machine["metadata"]["name"]
        )
        assert infra["metadata"]["annotations"]["cluster.x-k8s.io/cloned-from-name"] == "cp-2"
        assert infra["spec"]["image"]["volume"] == "c3os-2"

    # A server config change.
    machines = Rollout(api, namespace).run(
        patch_spec(api, namespace, {"serverConfig": {"k3s": {"nodeLabels": {"tier": "server"}}}}),
        "every server with the new server config",
    )
    for machine in machines:
        config = api.get_namespaced_custom_object(
            *BOOTSTRAP, namespace, "c3osconfigs", machine["metadata"]["name"]
        )
        assert config["spec"]["k3s"]["nodeLabels"] == {"tier": "server"}

    # rollout.after a little ahead: nothing changes until it passes, then every server
    # created before it is replaced (the manager wakes itself at that time).
    after = datetime.now(UTC) + timedelta(seconds=10)
    rollout = Rollout(api, namespace)
    patch_spec(api, namespace, {"rollout": {"after": after.strftime("%Y-%m-%dT%H:%M:%SZ")}})()

    def scheduled() -> bool:
        ready = [c for c in rollout.status().get("conditions") or [] if c["type"] == "Ready"]
        return bool(ready) and ready[0]["reason"] == "RolloutScheduled"

    eventually(lambda: scheduled() or datetime.now(UTC) >= after, "the rollout.after change seen")
    if datetime.now(UTC) < after:  # on a slow machine the time may have passed already
        assert {m["metadata"]["name"] for m in rollout.machines()} == rollout.before
    machines = rollout.run(lambda: None, "every server created before rollout.after replaced")
    created = [
        datetime.fromisoformat(m["metadata"]["creationTimestamp"].replace("Z", "+00:00")) for m in machines
    ]
    assert min(created) >= after.replace(microsecond=0)

    a_version_without_its_image_is_reported_and_stops_the_rollout(api, standin, namespace)


def a_version_without_its_image_is_reported_and_stops_the_rollout(
    api: kc.CustomObjectsApi, standin: WorkloadStandIn, namespace: str
) -> None:
    # The version alone changes: the template's image (volume c3os-2) still ships VERSION.
    rollout = Rollout(api, namespace)
    patch_spec(api, namespace, {"version": NEXT})()

    def stopped() -> bool:
        status = rollout.status()
        ready = condition(status, "Ready")
        return ready.get("reason") == "VersionMismatch" and len(rollout.machines()) == REPLICAS

    eventually(
        stopped,
        "the rollout stopped at a VersionMismatch",
        timeout=180,
        explain=lambda: str(rollout.status()),
    )
    (new,) = [m for m in rollout.machines() if m["metadata"]["name"] not in rollout.before]
    name = new["metadata"]["name"]
    reported = condition(rollout.status(), "VersionMismatch")
    assert (reported["status"], reported["reason"]) == ("True", "VersionMismatch")
    assert reported["message"] == f"{name}: image volume c3os-2 runs {VERSION}, Machine wants {NEXT}"
    machine_up_to_date = condition(new, "UpToDate")
    assert (machine_up_to_date["status"], machine_up_to_date["reason"]) == ("False", "VersionMismatch")
    status = rollout.status()
    assert status["versions"] == [{"version": VERSION, "replicas": REPLICAS}]  # what the Nodes run
    assert status["upToDateReplicas"] == 0
    assert node_versions(standin)[name] == VERSION

    # An image that ships NEXT: every server is replaced, the mismatched one too.
    machines = Rollout(api, namespace).run(
        patch_spec(api, namespace, {"machineTemplate": {"spec": {"infrastructureRef": {
            "name": image_template(api, namespace, NEXT)}}}}),
        "every server on an image that ships the new version",
    )  # fmt: skip
    running = node_versions(standin)
    assert {running[m["metadata"]["name"]] for m in machines} == {NEXT}, running
    eventually(lambda: rollout.status().get("versions") == [{"version": NEXT, "replicas": REPLICAS}],
               "status.versions from the Nodes")  # fmt: skip
    assert condition(rollout.status(), "VersionMismatch")["status"] == "False"


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    """`obj` is an object or its status."""
    status = obj.get("status", obj) or {}
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), {})
