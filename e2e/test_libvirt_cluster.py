"""A cluster from the libvirt ClusterClass, made the way a user makes it, carried through
its life in one module (scenarios run in file order and build on each other, as a user's
cluster does; each scenario's own waits fail it with what is missing):

1. create: `clusterctl generate cluster shop-17 --flavor topology` from the offline
   repository (`capi-c3os manifests` output), 3 servers + 2 workers on the private
   libvirtd, booting the self-booting stand-in image by URL + checksum;
1b. `clusterctl describe cluster` shows our objects with their conditions;
2. upgrade: a new k3s version through the topology, first with the old image entered for
   it by mistake: the first new server's Node runs the old k3s, VersionMismatch is
   reported on its C3osMachine and the control plane, and the rollout stops there (the
   workers untouched); with the stand-in image that ships the version, the control plane
   rolls with surge 1, then the workers, and every Node reports the new version;
2b. upgrade again (another image, another version) with the ClusterClass's
   controlPlaneMaxSurge variable at 0: the servers roll remove-first (never more than
   3), each old server's etcd member removed, every Node on the new version;
2c. kubeconfig rotation: a `<cluster>-kubeconfig` whose admin certificate is past half
   its life is rewritten by the control plane, and the new one lists the Nodes;
3. remediation by MachineHealthCheck of a worker and of a server whose VM was destroyed
   (the server's etcd member removed first); while the worker waits for it, `clusterctl
   describe cluster` says why its C3osMachine is not Ready;
4. scale: workers 2 -> 4 -> 1, control plane 3 -> 1 (removed servers' etcd members
   removed first);
5. delete: nothing left behind (domains, volumes, NVRAM, cluster Secrets).

One cluster carried through keeps the run short (each VM boot is tens of seconds under
TCG) and is what a cluster lives through; the price is that a failing scenario fails the
later ones, which then say so in their first wait.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import os
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from kubernetes import client as kc
from kubernetes.client.exceptions import ApiException

from capi_c3os.bootstrap.kubeconfig import render_admin_kubeconfig
from capi_c3os.capi import conditions as cond
from capi_c3os.capi.versions import image_tag
from capi_c3os.dev import binaries
from capi_c3os.dev.k3s import console_blocks, serial_log
from capi_c3os.dev.libvirtd import NETWORK_NAME
from capi_c3os.dev.mgmt import api_client, apply
from capi_c3os.dev.processes import free_port
from capi_c3os.dev.workload import cluster_ca, node_versions
from e2e.conftest import E2eEnv
from tests.integration.libvirt.conftest import UPLOADED_VOLUMES
from tests.integration.test_templates import VERSION, await_class_accepted, render
from tests.support import eventually

CREATE_TIMEOUT = 1500  # 5 VMs under TCG on a shared 2-core machine: a safety net only
ROLL_TIMEOUT = 1500
# pytest-timeout must outlast the scenarios' own waits, so a stuck one fails with
# `cluster.summary` (where every Machine stands) instead of a bare timeout.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(CREATE_TIMEOUT + 300)]

CAPI = ("cluster.x-k8s.io", "v1beta2")
INFRA = ("infrastructure.cluster.x-k8s.io", "v1alpha1")
NAME = "shop-17"  # what tests.integration.test_templates.render generates
CONTROL_PLANE_LABEL = "cluster.x-k8s.io/control-plane"
CLUSTER_LABEL = "cluster.x-k8s.io/cluster-name"
SMALL_VM = {"cpus": 1, "memoryMiB": 256, "diskGiB": 1}  # the stand-in needs no more
OLD_VERSION = VERSION  # what boot.qcow2 ships (hack/standin-image.sh DEFAULT_K3S)
NEW_VERSION = "v1.33.5+k3s1"
SURGE_ZERO_VERSION = "v1.33.6+k3s1"


def standin_entry(cluster: Cluster, version: str) -> dict[str, Any]:
    """The `images` entry of the stand-in image that ships `version`."""
    path = cluster.env.standin_image / f"boot-{image_tag(version)}.qcow2"
    return {
        "url": path.as_uri(),
        "checksum": hashlib.sha256(path.read_bytes()).hexdigest(),
        "format": "qcow2",
    }


class Cluster:
    """The objects of one cluster in its namespace, read fresh on every call."""

    def __init__(self, env: E2eEnv, namespace: str, port: int) -> None:
        self.env = env
        self.namespace = namespace
        self.port = port
        self.api = kc.CustomObjectsApi(env.k8s)
        self.core = kc.CoreV1Api(env.k8s)

    def items(self, gv: tuple[str, str], plural: str) -> list[dict[str, Any]]:
        return list(self.api.list_namespaced_custom_object(*gv, self.namespace, plural)["items"])

    def get(self, gv: tuple[str, str], plural: str, name: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = self.api.get_namespaced_custom_object(*gv, self.namespace, plural, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return found

    def machines(self) -> list[dict[str, Any]]:
        return self.items(CAPI, "machines")

    def servers(self) -> list[dict[str, Any]]:
        return [m for m in self.machines() if CONTROL_PLANE_LABEL in m["metadata"].get("labels", {})]

    def workers(self) -> list[dict[str, Any]]:
        return [m for m in self.machines() if CONTROL_PLANE_LABEL not in m["metadata"].get("labels", {})]

    def patch_topology(self, patch: dict[str, Any]) -> None:
        if "version" in patch:
            # With CAPI's RuntimeSDK gate on (our in-place extension), a finished upgrade
            # keeps the version locked until CAPI has called AfterClusterUpgrade and
            # dropped it from the pending hooks; its webhook refuses a new version until then.
            eventually(
                lambda: "AfterClusterUpgrade" not in self._pending_hooks(),
                "AfterClusterUpgrade done",
                timeout=300,
            )
        self.api.patch_namespaced_custom_object(
            *CAPI, self.namespace, "clusters", NAME, {"spec": {"topology": patch}}
        )

    def _pending_hooks(self) -> str:
        obj = self.get(CAPI, "clusters", NAME) or {}
        return str(
            (obj["metadata"].get("annotations") or {}).get("runtime.cluster.x-k8s.io/pending-hooks", "")
        )

    def settled(self, servers: int, workers: int, version: str | None = None) -> bool:
        """Exactly these many Machines, none deleting, all Running with a Ready Node."""
        ms = self.machines()
        obj = self.get(CAPI, "clusters", NAME)
        return (
            obj is not None
            and cond.is_true(obj, "Available")
            and len([m for m in ms if CONTROL_PLANE_LABEL in m["metadata"].get("labels", {})]) == servers
            and len(ms) == servers + workers
            and all(_healthy(m) and (version is None or m["spec"].get("version") == version) for m in ms)
        )

    def control_plane(self) -> dict[str, Any]:
        (found,) = self.items(("controlplane.cluster.x-k8s.io", "v1alpha1"), "c3oscontrolplanes")
        return found

    def images(self) -> dict[str, Any]:
        """The `images` variable: version -> image."""
        obj = self.get(CAPI, "clusters", NAME) or {}
        return next(dict(v["value"]) for v in obj["spec"]["topology"]["variables"] if v["name"] == "images")

    def with_image(self, version: str, image: dict[str, Any]) -> list[dict[str, Any]]:
        """The topology's variables with `image` entered for `version`, as a user edits them."""
        obj = self.get(CAPI, "clusters", NAME) or {}
        variables = list(obj["spec"]["topology"]["variables"])
        for variable in variables:
            if variable["name"] == "images":
                variable["value"] = {**variable["value"], version: image}
        return variables

    def rollout_stopped(self) -> bool:
        """The control plane holds its rollout for a VersionMismatch, its 3 servers Ready."""
        ready = cond.get_condition(self.control_plane(), "Ready") or {}
        servers = self.servers()
        return ready.get("reason") == "VersionMismatch" and len(servers) == 3 and all(map(_healthy, servers))

    def assert_nodes_run(self, version: str) -> None:
        """Every Node (the stand-in's kubelet: the version its VM's image printed) and the
        control plane's status.versions say `version`."""
        running = node_versions(self.workload())
        nodes = {m["status"]["nodeRef"]["name"] for m in self.machines()}
        assert {running[n] for n in nodes} == {version}, running
        eventually(
            lambda: self.control_plane()["status"].get("versions") == [{"version": version, "replicas": 3}],
            "status.versions from the Nodes",
            explain=lambda: str(self.control_plane()["status"]),
        )

    def workload(self) -> Any:
        found = self.env.k3s.cluster("127.0.0.1", self.port)
        assert found is not None, "the k3s stand-in runs no cluster on the endpoint"
        return found

    def domain_of(self, machine: dict[str, Any]) -> str | None:
        infra = self.get(INFRA, "c3osmachines", machine["spec"]["infrastructureRef"]["name"])
        libvirt_status = ((infra or {}).get("status") or {}).get("backend", {}).get("libvirt", {})
        name = libvirt_status.get("domainName")
        return str(name) if name else None

    def summary(self) -> str:
        """Where things stand, for a timed-out wait."""
        cluster = self.get(CAPI, "clusters", NAME) or {}
        lines = [
            f"Cluster: {c['type']}={c['status']} {c.get('reason', '')} {c.get('message', '')}"
            for c in (cluster.get("status") or {}).get("conditions", [])
            if c["status"] != "True"
        ]
        for m in self.machines():
            status = m.get("status") or {}
            lines.append(
                f"Machine {m['metadata']['name']}: {status.get('phase')} node={status.get('nodeRef')}"
            )
        lines += self.env.k3s.events[-10:]
        return "\n".join(lines)


@pytest.fixture(scope="module")
def namespace(e2e: E2eEnv) -> Iterator[str]:
    name = "e2e-libvirt"
    core = kc.CoreV1Api(e2e.k8s)
    core.create_namespace(kc.V1Namespace(metadata=kc.V1ObjectMeta(name=name)))
    yield name
    core.delete_namespace(name)


@pytest.fixture(scope="module")
def cluster(e2e: E2eEnv, namespace: str, tmp_path_factory: pytest.TempPathFactory) -> Cluster:
    """The rendered cluster, applied: the ClusterClass and its templates, then the Cluster."""
    port = free_port()
    image = e2e.standin_image / "boot.qcow2"
    rendered = render(
        "topology",
        namespace,
        tmp_path_factory.mktemp("clusterctl"),
        e2e.mgmt.kubeconfig,
        C3OS_CONTROL_PLANE_ENDPOINT_HOST="127.0.0.1",
        C3OS_CONTROL_PLANE_ENDPOINT_PORT=str(port),
        C3OS_LIBVIRT_URI=e2e.libvirtd.uri,
        C3OS_LIBVIRT_POOL=e2e.libvirtd.pool_name,
        C3OS_LIBVIRT_NETWORK=NETWORK_NAME,
        C3OS_IMAGE_URL=image.as_uri(),
        C3OS_IMAGE_SHA256=hashlib.sha256(image.read_bytes()).hexdigest(),
    )
    topology = next(d for d in rendered if d["kind"] == "Cluster")["spec"]["topology"]
    # What a user edits in the generated file: VM sizes (ClusterClass variables the
    # template leaves at their defaults).
    topology["variables"] += [
        {"name": "controlPlaneMachine", "value": SMALL_VM},
        {"name": "workerMachine", "value": SMALL_VM},
    ]
    assert topology["controlPlane"]["replicas"] == 3
    assert topology["workers"]["machineDeployments"][0]["replicas"] == 2
    e2e.k3s.add_endpoint("127.0.0.1", port)  # the stand-in load balancer of this endpoint
    apply(e2e.mgmt.kubeconfig, [d for d in rendered if d["kind"] != "Cluster"])
    made = Cluster(e2e, namespace, port)
    await_class_accepted(made.api, namespace, "c3os-libvirt")
    apply(e2e.mgmt.kubeconfig, [d for d in rendered if d["kind"] == "Cluster"])
    return made


def test_create_three_servers_two_workers_from_the_clusterclass(cluster: Cluster, tmp_path: Path) -> None:
    env = cluster.env
    started = time.monotonic()

    def available() -> bool:
        obj = cluster.get(CAPI, "clusters", NAME)
        ms = cluster.machines()
        return (
            obj is not None
            and cond.is_true(obj, "Available")
            and len(ms) == 5
            and all((m.get("status") or {}).get("phase") == "Running" for m in ms)
            and all((m.get("status") or {}).get("nodeRef") for m in ms)
        )

    eventually(available, "Cluster Available, 5 Machines Running with Nodes", CREATE_TIMEOUT, 2.0,
               explain=cluster.summary)  # fmt: skip
    print(f"\ncreate: {time.monotonic() - started:.0f}s until Available with 5 Running Machines")
    machines = cluster.machines()
    servers = [m for m in machines if CONTROL_PLANE_LABEL in m["metadata"].get("labels", {})]
    assert len(servers) == 3

    # Every VM read exactly its Machine's bootstrap data; k3s joined from it.
    for m in machines:
        domain = cluster.domain_of(m)
        assert domain, m["metadata"]["name"]
        secret = cluster.core.read_namespaced_secret(
            m["spec"]["bootstrap"]["dataSecretName"], cluster.namespace
        )
        blocks = console_blocks(serial_log(env.libvirtd, domain))
        assert blocks["USER-DATA"] == base64.b64decode(secret.data["value"]), m["metadata"]["name"]
        meta = yaml.safe_load(blocks["META-DATA"])
        assert meta["provider-id"] == m["spec"]["providerID"]
        assert env.k3s.node_of(domain) == m["status"]["nodeRef"]["name"] == meta["local-hostname"]
        print(f"boot {m['metadata']['name']}: {env.k3s.boot_seconds.get(domain, float('nan')):.0f}s")

    # C3osMachines report the addresses the VMs got from DHCP.
    for infra in cluster.items(INFRA, "c3osmachines"):
        assert (infra.get("status") or {}).get("addresses"), infra["metadata"]["name"]

    # The kubeconfig the control plane wrote works against the cluster k3s runs.
    secret = cluster.core.read_namespaced_secret(f"{NAME}-kubeconfig", cluster.namespace)
    kubeconfig = tmp_path / "workload.kubeconfig"
    kubeconfig.write_bytes(base64.b64decode(secret.data["value"]))
    with api_client(kubeconfig) as client:
        nodes = {n.metadata.name for n in kc.CoreV1Api(client).list_node().items}
    assert nodes == {m["status"]["nodeRef"]["name"] for m in machines}


@dataclass
class Row:
    """One condition as `clusterctl describe cluster --show-conditions` prints it."""

    status: str
    reason: str
    message: str


_OBJECT_ROW = re.compile(r"^(?:!! DELETED !! )?(?P<kind>[A-Za-z0-9]+) [\w.-]+/(?P<name>[\w.-]+)(?:, .*)?$")
_CONDITION_ROW = re.compile(r"^[A-Z][A-Za-z0-9]*$")


def describe(cluster: Cluster, home: Path, label: str, *flags: str) -> str:
    """`clusterctl describe cluster` as a user runs it against the management plane; the
    output is kept with the test logs as `describe-<label>.txt`."""
    done = subprocess.run(
        [str(binaries.locate("clusterctl")), "describe", "cluster", NAME, "-n", cluster.namespace,
         "--kubeconfig", str(cluster.env.mgmt.kubeconfig), "--show-conditions", "all", *flags],
        env={**os.environ, "HOME": str(home), "NO_COLOR": "1",
             "CLUSTERCTL_DISABLE_VERSIONCHECK": "true"},  # no look-up of the latest release
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr + done.stdout
    keep = Path(os.environ.get("CAPI_C3OS_TEST_LOGS") or home) / "e2e"
    keep.mkdir(parents=True, exist_ok=True)
    (keep / f"describe-{label}.txt").write_text(done.stdout)
    return done.stdout


def describe_rows(output: str) -> dict[str, dict[str, Row]]:
    """`Kind/name` -> condition type -> what the table says (columns found from the
    header; a message wrapped over several lines joined again)."""
    lines = output.splitlines()
    header = lines[0]
    col = {c: header.index(c) for c in ("REPLICAS", "STATUS", "REASON", "SINCE", "MESSAGE")}
    objects: dict[str, dict[str, Row]] = {}
    current: dict[str, Row] | None = None
    last: Row | None = None
    for line in lines[1:]:
        name = line[: col["REPLICAS"]].strip().lstrip("│├└─ ")
        status, message = line[col["STATUS"] : col["REASON"]].strip(), line[col["MESSAGE"] :].strip()
        found = _OBJECT_ROW.match(name)
        if found:
            current, last = objects.setdefault(f"{found['kind']}/{found['name']}", {}), None
        elif current is not None and _CONDITION_ROW.match(name) and status in cond.STATUSES:
            last = current[name] = Row(status, line[col["REASON"] : col["SINCE"]].strip(), message)
        elif not name and last is not None:
            last.message = f"{last.message} {message}".strip()
        else:  # a virtual row (Workers, a group of Machines)
            current = last = None
    return objects


OUR_KINDS = ("C3osCluster", "C3osControlPlane", "C3osMachine", "C3osConfig")


def test_clusterctl_describe_shows_our_objects_and_their_conditions(cluster: Cluster, tmp_path: Path) -> None:
    obj = cluster.get(CAPI, "clusters", NAME)
    assert obj is not None
    control_plane = f"C3osControlPlane/{obj['spec']['controlPlaneRef']['name']}"

    def settled_rows() -> dict[str, dict[str, Row]] | None:
        # --echo and no grouping: every Machine with its C3osMachine and C3osConfig, Ready or not.
        rows = describe_rows(describe(cluster, tmp_path, "after-create", "--echo", "--grouping=false"))
        available = rows.get(control_plane, {}).get("Available")
        # CAPI mirrors it onto the Cluster a moment later.
        mirrored = rows.get(f"Cluster/{NAME}", {}).get("ControlPlaneAvailable")
        settled = all(
            row is not None and row.message == "3 of 3 servers Ready" for row in (available, mirrored)
        )
        return rows if settled else None

    rows = eventually(settled_rows, f"{control_plane} Available with 3 of 3 servers", 120, 2.0,
                      explain=cluster.summary)  # fmt: skip
    infra = rows[f"C3osCluster/{obj['spec']['infrastructureRef']['name']}"]["Ready"]
    assert (infra.status, infra.reason) == ("True", "Provisioned") and "site-a" in infra.message, infra
    cp = rows[control_plane]
    assert (cp["Available"].status, cp["Available"].reason) == ("True", "Available"), cp
    for negative in ("RollingOut", "ScalingUp", "ScalingDown"):
        assert (cp[negative].status, cp[negative].reason) == ("False", f"Not{negative}"), cp
    assert rows[f"Cluster/{NAME}"]["ControlPlaneAvailable"].message == "3 of 3 servers Ready"
    for machine in cluster.machines():
        name = machine["metadata"]["name"]
        vm = rows[f"C3osMachine/{machine['spec']['infrastructureRef']['name']}"]["Ready"]
        assert (vm.status, vm.reason) == ("True", "DomainRunning"), vm
        assert f"domain {cluster.domain_of(machine)} is running" in vm.message, vm
        assert rows[f"Machine/{name}"]["InfrastructureReady"].reason == "DomainRunning"  # CAPI mirrors ours
        config = rows[f"C3osConfig/{machine['spec']['bootstrap']['configRef']['name']}"]["Ready"]
        assert (config.status, config.reason) == ("True", "DataSecretAvailable"), config
        if CONTROL_PLANE_LABEL in machine["metadata"]["labels"]:  # the control plane says so
            assert rows[f"Machine/{name}"]["UpToDate"].status == "True", name
    ours = {k: v for k, v in rows.items() if k.split("/")[0] in OUR_KINDS}
    assert len(ours) == 2 + 2 * 5, sorted(ours)
    for key, conditions in ours.items():
        assert (conditions["Paused"].status, conditions["Paused"].reason) == ("False", "NotPaused"), key
        for type_, row in conditions.items():
            assert cond.is_camel_case(row.reason), (key, type_, row)


def _healthy(machine: dict[str, Any]) -> bool:
    status = machine.get("status") or {}
    return (
        not machine["metadata"].get("deletionTimestamp")
        and status.get("phase") == "Running"
        and bool(status.get("nodeRef"))
        and cond.is_true(machine, "Ready")
    )


class Watch:
    """Records every Machine seen (name -> creation time, version, role) and the most
    Machines of each role existing at once, polling in a thread during a change."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.seen: dict[str, dict[str, Any]] = {}
        self.most = {"servers": 0, "workers": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop.wait(1.0):
            try:
                ms = self.cluster.machines()
            except ApiException:
                continue
            servers = [m for m in ms if CONTROL_PLANE_LABEL in m["metadata"].get("labels", {})]
            self.most["servers"] = max(self.most["servers"], len(servers))
            self.most["workers"] = max(self.most["workers"], len(ms) - len(servers))
            for m in ms:
                self.seen.setdefault(m["metadata"]["name"], {
                    "created": m["metadata"]["creationTimestamp"], "version": m["spec"].get("version"),
                    "server": m in servers,
                })  # fmt: skip


def _wait(cluster: Cluster, probe: Callable[[], bool], what: str, timeout: float = ROLL_TIMEOUT) -> float:
    started = time.monotonic()
    eventually(probe, what, timeout, 2.0, explain=cluster.summary)
    return time.monotonic() - started


def test_upgrade_rolls_servers_with_surge_one_then_workers(cluster: Cluster) -> None:
    before = {m["metadata"]["name"] for m in cluster.machines()}
    workers = {m["metadata"]["name"] for m in cluster.workers()}
    old_image = cluster.images()[OLD_VERSION]
    with Watch(cluster) as watch:
        # A mistake: the new version with the old image (which ships OLD_VERSION).
        cluster.patch_topology(
            {"version": NEW_VERSION, "variables": cluster.with_image(NEW_VERSION, old_image)}
        )
        _wait(cluster, cluster.rollout_stopped, "the rollout stopped at a VersionMismatch")
        reported = cond.get_condition(cluster.control_plane(), "VersionMismatch") or {}
        assert reported.get("status") == "True", reported
        (wrong,) = [m for m in cluster.servers() if m["metadata"]["name"] not in before]
        expected = f"image {old_image['url']} runs {OLD_VERSION}, Machine wants {NEW_VERSION}"
        assert reported["message"] == f"{wrong['metadata']['name']}: {expected}"
        infra_name = wrong["spec"]["infrastructureRef"]["name"]

        def machine_reports() -> bool:
            infra = cluster.get(INFRA, "c3osmachines", infra_name) or {}
            return (cond.get_condition(infra, "VersionMismatch") or {}).get("message") == expected

        eventually(machine_reports, "VersionMismatch on the C3osMachine", timeout=120)
        assert {m["metadata"]["name"] for m in cluster.workers()} == workers, (
            "workers wait for the control plane"
        )

        # The image that ships the version: every Machine replaced, the wrong one too.
        cluster.patch_topology(
            {"variables": cluster.with_image(NEW_VERSION, standin_entry(cluster, NEW_VERSION))}
        )
        took = _wait(cluster, lambda: cluster.settled(3, 2, NEW_VERSION), f"every Machine at {NEW_VERSION}")
    print(f"\nupgrade: {took:.0f}s for 3 servers and 2 workers after the image was fixed")
    assert not before & {m["metadata"]["name"] for m in cluster.machines()}, "every Machine replaced"
    assert watch.most["servers"] <= 4, watch.most  # surge 1 over 3 replicas
    new = {n: m for n, m in watch.seen.items() if m["version"] == NEW_VERSION}
    new_servers = sorted(m["created"] for m in new.values() if m["server"])
    new_workers = sorted(m["created"] for m in new.values() if not m["server"])
    assert len(new_servers) == 4 and len(new_workers) == 2, new  # the wrong server, then 3
    assert new_workers[0] >= new_servers[-1], "workers rolled only after the control plane"
    cluster.assert_nodes_run(NEW_VERSION)


def test_upgrade_with_surge_zero_removes_each_server_first(cluster: Cluster) -> None:
    old_servers = {m["metadata"]["name"]: m["status"]["nodeRef"]["name"] for m in cluster.servers()}
    old_workers = {m["metadata"]["name"] for m in cluster.workers()}
    obj = cluster.get(CAPI, "clusters", NAME)
    assert obj is not None
    # What a user edits: the class's variable and the version, in one change.
    variables = [
        v
        for v in cluster.with_image(SURGE_ZERO_VERSION, standin_entry(cluster, SURGE_ZERO_VERSION))
        if v["name"] != "controlPlaneMaxSurge"
    ]
    variables.append({"name": "controlPlaneMaxSurge", "value": 0})
    with Watch(cluster) as watch:
        cluster.patch_topology({"version": SURGE_ZERO_VERSION, "variables": variables})
        took = _wait(cluster, lambda: cluster.settled(3, 2, SURGE_ZERO_VERSION),
                     f"every Machine at {SURGE_ZERO_VERSION}")  # fmt: skip
    print(f"\nupgrade with surge 0: {took:.0f}s for 3 servers and 2 workers")
    control_plane = cluster.get(("controlplane.cluster.x-k8s.io", "v1alpha1"), "c3oscontrolplanes",
                                obj["spec"]["controlPlaneRef"]["name"])  # fmt: skip
    assert control_plane is not None
    assert control_plane["spec"]["rollout"]["strategy"]["rollingUpdate"]["maxSurge"] == 0
    assert not set(old_servers) & {m["metadata"]["name"] for m in cluster.servers()}, "every server replaced"
    assert not old_workers & {m["metadata"]["name"] for m in cluster.workers()}, "every worker replaced"
    assert watch.most["servers"] <= 3, watch.most  # surge 0: an old server goes before a new one comes
    new_servers = [m for m in watch.seen.values() if m["server"] and m["version"] == SURGE_ZERO_VERSION]
    assert len(new_servers) == 3, watch.seen
    removed = cluster.workload().etcd_removed
    for node in old_servers.values():
        assert node in removed, f"{node} left etcd before its Machine went"
    cluster.assert_nodes_run(SURGE_ZERO_VERSION)


def test_control_plane_rotates_an_aging_kubeconfig(cluster: Cluster, tmp_path: Path) -> None:
    secret_name = f"{NAME}-kubeconfig"
    server_ca = cluster_ca(cluster.core, cluster.namespace, f"{NAME}-ca")
    client_ca = cluster_ca(cluster.core, cluster.namespace, f"{NAME}-cca")
    # A good kubeconfig from the cluster's own CAs whose admin certificate is past half
    # of its life (valid 4 more minutes of 9, counting the 5 minutes it is backdated).
    aging = render_admin_kubeconfig(NAME, "127.0.0.1", cluster.port, server_ca.cert_pem, client_ca,
                                    valid_for=dt.timedelta(minutes=4))  # fmt: skip
    old_path = tmp_path / "aging.kubeconfig"
    old_path.write_text(aging)
    nodes = {m["status"]["nodeRef"]["name"] for m in cluster.machines()}
    with api_client(old_path) as client:  # it still works: a rotation, not a repair
        assert {n.metadata.name for n in kc.CoreV1Api(client).list_node().items} == nodes
    stale = base64.b64encode(aging.encode()).decode()
    started = time.monotonic()
    cluster.core.patch_namespaced_secret(secret_name, cluster.namespace, {"data": {"value": stale}})

    def rewritten() -> bool:
        return bool(
            cluster.core.read_namespaced_secret(secret_name, cluster.namespace).data["value"] != stale
        )

    eventually(rewritten, "the kubeconfig rewritten", 300, 1.0, explain=cluster.summary)
    print(f"\nkubeconfig rotation: {time.monotonic() - started:.0f}s until rewritten")
    fresh = base64.b64decode(
        cluster.core.read_namespaced_secret(secret_name, cluster.namespace).data["value"]
    )
    config = yaml.safe_load(fresh)
    cert = x509.load_pem_x509_certificate(
        base64.b64decode(config["users"][0]["user"]["client-certificate-data"])
    )
    assert cert.not_valid_after_utc - dt.datetime.now(dt.UTC) > dt.timedelta(days=3), (
        "a new week-long certificate"
    )
    new_path = tmp_path / "rotated.kubeconfig"
    new_path.write_bytes(fresh)
    with api_client(new_path) as client:
        assert {n.metadata.name for n in kc.CoreV1Api(client).list_node().items} == nodes
    obj = cluster.get(CAPI, "clusters", NAME)
    assert obj is not None and cond.is_true(obj, "Available"), cluster.summary()


def test_machinehealthcheck_replaces_a_destroyed_worker_and_server(cluster: Cluster, tmp_path: Path) -> None:
    env = cluster.env
    cluster.api.create_namespaced_custom_object(*CAPI, cluster.namespace, "machinehealthchecks", {
        "apiVersion": "/".join(CAPI), "kind": "MachineHealthCheck", "metadata": {"name": NAME},
        "spec": {"clusterName": NAME, "selector": {"matchLabels": {CLUSTER_LABEL: NAME}},
                 "checks": {"nodeStartupTimeoutSeconds": 900, "unhealthyNodeConditions": [
                     {"type": "Ready", "status": "False", "timeoutSeconds": 20},
                     {"type": "Ready", "status": "Unknown", "timeoutSeconds": 20}]}},
    })  # fmt: skip
    for victim in (cluster.workers()[0], cluster.servers()[0]):
        name = victim["metadata"]["name"]
        node = victim["status"]["nodeRef"]["name"]
        domain = cluster.domain_of(victim)
        with env.libvirtd.connect() as conn:
            conn.lookupByName(domain).destroy()  # the VM dies; its kubelet goes silent
        if CONTROL_PLANE_LABEL not in victim["metadata"]["labels"]:
            _describe_says_why(cluster, victim, domain, tmp_path)

        def replaced(name: str = name) -> bool:
            return cluster.get(CAPI, "machines", name) is None and cluster.settled(3, 2)

        took = _wait(cluster, replaced, f"{name} replaced")
        print(f"\nremediation of {name}: {took:.0f}s until replaced and settled")
        if CONTROL_PLANE_LABEL in victim["metadata"]["labels"]:
            assert node in cluster.workload().etcd_removed, "a server leaves etcd before it goes"
    cluster.api.delete_namespaced_custom_object(*CAPI, cluster.namespace, "machinehealthchecks", NAME)


def _describe_says_why(cluster: Cluster, victim: dict[str, Any], domain: str | None, home: Path) -> None:
    """While the Machine waits for its remediation, `clusterctl describe cluster` (as a
    user runs it: Ready objects folded into their Machine) shows its C3osMachine not
    Ready, with our reason and a message naming the stopped domain."""
    key = f"C3osMachine/{victim['spec']['infrastructureRef']['name']}"

    def not_ready() -> Row | None:
        if cluster.get(INFRA, "c3osmachines", key.split("/")[1]) is None:
            raise AssertionError(f"{key} went before describe showed it not Ready")
        row = describe_rows(describe(cluster, home, "remediation")).get(key, {}).get("Ready")
        return row if row is not None and row.status == "False" else None

    row = eventually(not_ready, f"describe to show {key} not Ready", 300, 1.0, explain=cluster.summary)
    assert row.reason == "DomainStopped", row
    assert row.message == f"domain {domain} is shut off (destroyed)", row


def test_scale_workers_2_4_1_and_servers_3_1(cluster: Cluster) -> None:
    took = {}
    for servers, workers in ((3, 4), (3, 1), (1, 1)):
        removed_servers = [m["status"]["nodeRef"]["name"] for m in cluster.servers()]
        md = {"class": "default-worker", "name": "md-0", "replicas": workers}
        cluster.patch_topology(
            {"controlPlane": {"replicas": servers}, "workers": {"machineDeployments": [md]}}
        )

        def scaled(s: int = servers, w: int = workers) -> bool:
            return cluster.settled(s, w)

        took[f"{servers}+{workers}"] = _wait(cluster, scaled, f"{servers} servers, {workers} workers")
        kept = {m["status"]["nodeRef"]["name"] for m in cluster.servers()}
        for node in set(removed_servers) - kept:
            assert node in cluster.workload().etcd_removed, f"{node} left etcd before its Machine went"
    print("\nscale: " + ", ".join(f"to {k}: {v:.0f}s" for k, v in took.items()))


def test_delete_the_cluster_leaves_nothing_behind(cluster: Cluster) -> None:
    env = cluster.env
    started = time.monotonic()
    cluster.api.delete_namespaced_custom_object(*CAPI, cluster.namespace, "clusters", NAME)
    eventually(lambda: cluster.get(CAPI, "clusters", NAME) is None, "the Cluster gone", 900, 2.0,
               explain=cluster.summary)  # fmt: skip
    print(f"\ndelete: {time.monotonic() - started:.0f}s until the Cluster is gone")
    assert cluster.machines() == []
    assert cluster.items(INFRA, "c3osmachines") == []

    with env.libvirtd.connect() as conn:
        assert [d.name() for d in conn.listAllDomains(0)] == []
        pool = conn.storagePoolLookupByName(env.libvirtd.pool_name)
        pool.refresh(0)
        volumes = set(pool.listVolumes())
    # Only base images stay: the two the environment uploaded, and the one the manager
    # downloaded from the image URL (shared by every machine of the pool that names it).
    left = {v for v in volumes if v not in UPLOADED_VOLUMES and not v.startswith("c3os-base-")}
    assert left == set()
    nvram = env.libvirtd.root / "lib" / "qemu" / "nvram"
    assert not nvram.exists() or list(nvram.iterdir()) == []

    # k3s went with its last server.
    eventually(lambda: env.k3s.cluster("127.0.0.1", cluster.port) is None, "the k3s cluster stopped")

    secrets = cluster.core.list_namespaced_secret(cluster.namespace, label_selector=f"{CLUSTER_LABEL}={NAME}")
    assert [s.metadata.name for s in secrets.items] == []
