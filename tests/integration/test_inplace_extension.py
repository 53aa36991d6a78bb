"""The in-place upgrade extension with the real CAPI core (RuntimeSDK and InPlaceUpdates
gates on): CAPI discovers it, plans a MachineDeployment's image change in place through
CanUpdateMachineSet, and drives UpdateMachine until the node rebooted into the new
image; hostile requests over the wire are refused.

The node side is played here as kubelet, Job controller and Kairos node labeler would
write it (Job status, a new bootID, the new kubelet version)."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import ssl
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from kubernetes import client as kc
from kubernetes.client.exceptions import ApiException

from capi_c3os.bootstrap.certificates import KeyPair, issue_certificate, new_ca
from capi_c3os.capi.metadata import IN_PLACE_UPDATE_IN_PROGRESS_ANNOTATION
from capi_c3os.dev import manager as our_manager
from capi_c3os.dev.manager import Manager
from capi_c3os.dev.mgmt import ManagementPlane, api_client, apply, wait_for_crds_established
from capi_c3os.dev.processes import free_port
from capi_c3os.dev.workload import WorkloadStandIn, played_cluster, standin_volume
from capi_c3os.operator.connection import load_configuration
from capi_c3os.operator.extension import EXTENSION_CERT_SECRET, ExtensionServer, ExtensionSettings
from capi_c3os.runtime.hooks import PENDING_HOOKS_ANNOTATION, hook_path
from capi_c3os.workload.upgrade import UPGRADE_NAMESPACE, upgrade_job_name
from tests.conftest import RunManager, our_crds, provider_identity
from tests.support import eventually

pytestmark = pytest.mark.integration

RUNTIME = ("runtime.cluster.x-k8s.io", "v1beta2", "extensionconfigs")
CAPI = ("cluster.x-k8s.io", "v1beta2")
INFRA = ("infrastructure.cluster.x-k8s.io", "v1alpha1")
BOOT = ("bootstrap.cluster.x-k8s.io", "v1alpha1")
OLD, NEW = "v1.33.4+k3s1", "v1.34.1+k3s1"
OLD_OCI = "registry.c3os.test/c3os-standin:k3sv1.33.4-k3s1"
NEW_OCI = "registry.c3os.test/c3os-standin:k3sv1.34.1-k3s1"
BROKEN_OCI = "registry.c3os.test/c3os-standin:broken-k3sv1.34.1-k3s1"


@pytest.fixture
def extension_config(k8s: Any) -> Iterator[Callable[[], dict[str, Any]]]:
    """Reads ExtensionConfig `c3os`; deleted afterwards, so that no other test's
    MachineDeployment calls an extension that is gone."""
    api = kc.CustomObjectsApi(k8s)
    yield lambda: dict(api.get_cluster_custom_object(*RUNTIME, "c3os"))
    try:
        api.delete_cluster_custom_object(*RUNTIME, "c3os")
    except ApiException as exc:
        if exc.status != 404:
            raise


def discovered(config: dict[str, Any]) -> bool:
    conditions = (config.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Discovered" and c["status"] == "True" for c in conditions)


def secret_data(k8s: Any, namespace: str) -> dict[str, str]:
    return dict(kc.CoreV1Api(k8s).read_namespaced_secret(EXTENSION_CERT_SECRET, namespace).data)


def test_the_manager_serves_the_extension_and_capi_discovers_its_handlers(
    mgmt: ManagementPlane, k8s: Any, run_manager: RunManager, namespace: str, tmp_path: Path,
    extension_config: Callable[[], dict[str, Any]],
) -> None:  # fmt: skip
    """As the components' ServiceAccount: the generated RBAC is all it needs."""
    kubeconfig, components = provider_identity(mgmt, "infrastructure", tmp_path)
    own = next(d for d in components if d["kind"] == "ServiceAccount")["metadata"]["namespace"]
    port = free_port()
    flags = ("--extension-addr", f"127.0.0.1:{port}", "--extension-url", f"https://127.0.0.1:{port}")

    def start(name: str) -> Manager:
        return run_manager(name, kubeconfig, *flags, providers="infrastructure", namespace=namespace,
                           env={"POD_NAMESPACE": own}).wait_ready(60)  # fmt: skip

    first = start("first")
    eventually(lambda: discovered(extension_config()), "ExtensionConfig c3os discovered",
               explain=lambda: json.dumps(extension_config().get("status")))  # fmt: skip
    config = extension_config()
    assert [
        (h["name"], h["requestHook"]["hook"], h["failurePolicy"]) for h in config["status"]["handlers"]
    ] == [
        ("can-update-machineset.c3os", "CanUpdateMachineSet", "Ignore"),
        ("can-update-machine.c3os", "CanUpdateMachine", "Ignore"),
        ("update-machine.c3os", "UpdateMachine", "Fail"),
    ]
    data = secret_data(k8s, own)
    # CAPI trusts the CA of our Secret (and copies it again whenever the Secret changes).
    assert config["spec"]["clientConfig"] == {"url": f"https://127.0.0.1:{port}", "caBundle": data["ca.crt"]}
    assert config["metadata"]["annotations"]["runtime.cluster.x-k8s.io/inject-ca-from-secret"] == (
        f"{own}/{EXTENSION_CERT_SECRET}"
    )
    # Only the namespaces the manager serves are sent to it.
    assert config["spec"]["namespaceSelector"] == {"matchExpressions": [
        {"key": "kubernetes.io/metadata.name", "operator": "In", "values": [namespace]}]}  # fmt: skip
    assert first.stop() == 0, first.tail()
    # A restarted manager (or a second replica) serves the certificate of the Secret.
    second = start("second")
    assert secret_data(k8s, own) == data
    eventually(lambda: discovered(extension_config()), "discovered again",
               explain=lambda: json.dumps(extension_config().get("status")))  # fmt: skip
    assert second.stop() == 0, second.tail()
    for manager in (first, second):
        log = manager.process.log_path.read_text()
        assert "Forbidden" not in log and " 403" not in log, manager.process.tail(40)
    kc.CoreV1Api(k8s).delete_namespaced_secret(EXTENSION_CERT_SECRET, own)


# ------------------------------------------------------------------ the extension in this process


@contextmanager
def serving(settings: ExtensionSettings, kubeconfig: Path) -> Iterator[ExtensionServer]:
    """The manager's extension server on its own event loop thread."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = ExtensionServer(settings, load_configuration(str(kubeconfig)))
    try:
        asyncio.run_coroutine_threadsafe(server.start(), loop).result(60)
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(server.cleanup(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@pytest.fixture
def extension(
    mgmt: ManagementPlane, namespace: str, extension_config: Callable[[], dict[str, Any]]
) -> Iterator[int]:
    """Serves every namespace (as `capi-c3os run` without --namespace); yields its port."""
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    settings = ExtensionSettings(address=f"127.0.0.1:{port}", namespace=namespace,
                                 cert_secret=EXTENSION_CERT_SECRET, url=url)  # fmt: skip
    with serving(settings, mgmt.kubeconfig):
        eventually(lambda: discovered(extension_config()), "ExtensionConfig c3os discovered")
        yield port


def post(k8s: Any, namespace: str, port: int, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
    """What CAPI's runtime client does: POST JSON over TLS trusting the Secret's CA."""
    ca = base64.b64decode(secret_data(k8s, namespace)["ca.crt"]).decode()
    context = ssl.create_default_context(cadata=ca)
    request = urllib.request.Request(f"https://127.0.0.1:{port}{path}", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    try:
        with urllib.request.urlopen(request, context=context, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_hostile_requests_are_refused_over_the_wire(
    k8s: Any, namespace: str, new_namespace_name: str, extension: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="capi_c3os.operator.extension")
    update = hook_path("UpdateMachine", "update-machine")
    status, answer = post(k8s, namespace, extension, update, b"{not json")
    assert (status, answer["status"], answer["message"]) == (400, "Failure", "the request body is not JSON")
    # A Machine that exists in `namespace`, named in a request for another namespace.
    api = kc.CustomObjectsApi(k8s)
    api.create_namespaced_custom_object(*CAPI, namespace, "machines", {
        "apiVersion": "/".join(CAPI), "kind": "Machine", "metadata": {"name": "md-0-abc"},
        "spec": {"clusterName": "shop", "bootstrap": {"dataSecretName": "x"},
                 "infrastructureRef": {"apiGroup": INFRA[0], "kind": "C3osMachine",
                                       "name": "md-0-abc"}}})  # fmt: skip
    body = {"desired": {
        "machine": {"metadata": {"namespace": new_namespace_name, "name": "md-0-abc"}},
        "infrastructureMachine": {"metadata": {"namespace": namespace, "name": "md-0-abc"}}}}  # fmt: skip
    status, answer = post(k8s, namespace, extension, update, json.dumps(body).encode())
    assert (status, answer["status"], answer["message"]) == (
        200, "Failure", f"Machine {new_namespace_name}/md-0-abc not found")  # fmt: skip
    # The right namespace, but CAPI has no in-place update pending on it: nothing starts.
    body["desired"]["machine"]["metadata"]["namespace"] = namespace
    status, answer = post(k8s, namespace, extension, update, json.dumps(body).encode())
    assert answer["message"] == f"Machine {namespace}/md-0-abc has no in-place update pending"
    # A desired MachineSet in another site.
    can = hook_path("CanUpdateMachineSet", "can-update-machineset")
    template = {"apiVersion": "/".join(INFRA), "kind": "C3osMachineTemplate",
                "spec": {"template": {"spec": {"image": {"volume": "v", "oci": NEW_OCI}}}}}  # fmt: skip

    def machine_set(site: str) -> dict[str, Any]:
        return {"metadata": {"namespace": namespace, "name": f"md-{site}"},
                "spec": {"template": {"spec": {"version": NEW, "failureDomain": site}}}}  # fmt: skip

    sites: dict[str, Any] = {
        side: {"machineSet": machine_set(site), "infrastructureMachineTemplate": template}
        for side, site in (("current", "site-a"), ("desired", "site-b"))
    }
    status, answer = post(k8s, namespace, extension, can, json.dumps(sites).encode())
    assert (status, answer) == (200, {
        "apiVersion": "hooks.runtime.cluster.x-k8s.io/v1alpha1", "kind": "CanUpdateMachineSetResponse",
        "status": "Success",
        "message": 'cannot upgrade in place: the site (failureDomain) changes from "site-a" to "site-b": '
                   "a machine cannot move to another site"})  # fmt: skip
    # CAPI logs only its own diff: the reason is in our log.
    assert any(r.getMessage() == f"CanUpdateMachineSet MachineSet {namespace}/md-site-b: {answer['message']}"
               for r in caplog.records)  # fmt: skip


@pytest.fixture
def new_namespace_name() -> str:
    """A namespace name nothing lives in."""
    return f"elsewhere-{free_port()}"


# ------------------------------------------------------------------ a MachineDeployment upgraded in place


@pytest.fixture
def control_plane_manager(mgmt: ManagementPlane, tmp_path: Path) -> Iterator[Manager]:
    process = our_manager.start_manager(mgmt.kubeconfig, tmp_path / "manager.log", metrics=False,
                                        providers="bootstrap,control-plane", name="manager")  # fmt: skip
    yield process.wait_ready(60)
    assert process.stop() == 0, process.tail()


def worker_template(api: kc.CustomObjectsApi, namespace: str, name: str, version: str, oci: str) -> None:
    api.create_namespaced_custom_object(*INFRA, namespace, "c3osmachinetemplates", {
        "apiVersion": "/".join(INFRA), "kind": "C3osMachineTemplate", "metadata": {"name": name},
        "spec": {"template": {"spec": {"backend": {"libvirt": {}},
                                       "image": {"volume": standin_volume(version),
                                                 "oci": oci}}}}})  # fmt: skip


def reboot(standin: WorkloadStandIn, node: str, boot_id: str, version: str) -> None:
    """The node (re)booted: kubelet's nodeInfo, Kairos's node labeler."""
    with api_client(standin.kubeconfig) as client:
        core = kc.CoreV1Api(client)
        core.patch_node_status(node, {"status": {"nodeInfo": {"bootID": boot_id, "kubeletVersion": version}}})
        core.patch_node(node, {"metadata": {"labels": {"kairos.io/boot-state": "active"}}})


def complete_job(standin: WorkloadStandIn, name: str) -> None:
    """The Job controller, after the upgrade Pod exited 0 (the node is about to reboot)."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    conditions = [{"type": kind, "status": "True", "reason": "CompletionsReached", "message": "done",
                   "lastTransitionTime": now, "lastProbeTime": now}
                  for kind in ("SuccessCriteriaMet", "Complete")]  # fmt: skip
    with api_client(standin.kubeconfig) as client:
        kc.BatchV1Api(client).patch_namespaced_job_status(name, UPGRADE_NAMESPACE, {"status": {
            "startTime": now, "completionTime": now, "succeeded": 1, "conditions": conditions}})  # fmt: skip


def fail_job(standin: WorkloadStandIn, name: str, message: str) -> None:
    """The Job controller, after the upgrade Pod failed (backoffLimit 0)."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    conditions = [{"type": kind, "status": "True", "reason": "PodFailed", "message": message,
                   "lastTransitionTime": now, "lastProbeTime": now}
                  for kind in ("FailureTarget", "Failed")]  # fmt: skip
    with api_client(standin.kubeconfig) as client:
        kc.BatchV1Api(client).patch_namespaced_job_status(name, UPGRADE_NAMESPACE, {"status": {
            "startTime": now, "failed": 1, "conditions": conditions}})  # fmt: skip


def create_machine_deployment(api: kc.CustomObjectsApi, namespace: str) -> None:
    """Workers `md` of cluster `shop` on template md-old, one machine."""
    worker_template(api, namespace, "md-old", OLD, OLD_OCI)
    api.create_namespaced_custom_object(*BOOT, namespace, "c3osconfigtemplates", {
        "apiVersion": "/".join(BOOT), "kind": "C3osConfigTemplate", "metadata": {"name": "md"},
        "spec": {"template": {"spec": {}}}})  # fmt: skip
    api.create_namespaced_custom_object(*CAPI, namespace, "machinedeployments", {
        "apiVersion": "/".join(CAPI), "kind": "MachineDeployment", "metadata": {"name": "md"},
        "spec": {"clusterName": "shop", "replicas": 1, "selector": {"matchLabels": {"pool": "md"}},
                 # Machines being updated count as unavailable (CAPI): allow one, or CAPI adds one first.
                 "rollout": {"strategy": {"type": "RollingUpdate",
                                          "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}},
                 "template": {"metadata": {"labels": {"pool": "md"}}, "spec": {
                     "clusterName": "shop", "version": OLD,
                     "bootstrap": {"configRef": {"apiGroup": BOOT[0], "kind": "C3osConfigTemplate",
                                                 "name": "md"}},
                     "infrastructureRef": {"apiGroup": INFRA[0], "kind": "C3osMachineTemplate",
                                           "name": "md-old"}}}}})  # fmt: skip


class Worker:
    """The MachineDeployment's one Machine and its Node, as the test looks at them."""

    def __init__(self, k8s: Any, namespace: str, standin: WorkloadStandIn) -> None:
        self.api, self.core = kc.CustomObjectsApi(k8s), kc.CoreV1Api(k8s)
        self.namespace, self.standin = namespace, standin
        self.name = ""

    def machines(self) -> list[dict[str, Any]]:
        listed = self.api.list_namespaced_custom_object(
            *CAPI, self.namespace, "machines", label_selector="pool=md"
        )
        return list(listed["items"])

    def with_node(self) -> dict[str, Any] | None:
        machines = self.machines()
        return (
            machines[0] if len(machines) == 1 and (machines[0].get("status") or {}).get("nodeRef") else None
        )

    def machine(self) -> dict[str, Any]:
        return dict(self.api.get_namespaced_custom_object(*CAPI, self.namespace, "machines", self.name))

    def updating(self) -> dict[str, Any] | None:
        found = [
            c for c in self.machine().get("status", {}).get("conditions") or [] if c["type"] == "Updating"
        ]
        return found[0] if found and found[0]["status"] == "True" else None

    def annotations(self) -> str:
        return json.dumps(self.machine()["metadata"].get("annotations"))

    def jobs(self) -> list[str]:
        with api_client(self.standin.kubeconfig) as client:
            return [
                j.metadata.name for j in kc.BatchV1Api(client).list_namespaced_job(UPGRADE_NAMESPACE).items
            ]

    def done(self) -> dict[str, Any] | None:
        machine = self.machine()
        pending = "in-place-updates.internal.cluster.x-k8s.io/update-in-progress" in machine["metadata"].get(
            "annotations", {})  # fmt: skip
        return None if pending or self.updating() else machine

    def failure_events(self) -> list[str]:
        events = self.core.list_namespaced_event(
            self.namespace, field_selector=f"involvedObject.name={self.name},reason=InPlaceUpdateFailed"
        )
        return [e.message for e in events.items]  # fmt: skip

    def roll_to(self, template: str, version: str | None = None) -> None:
        spec: dict[str, Any] = {"infrastructureRef": {"name": template}}
        if version:
            spec["version"] = version
        change = {"spec": {"template": {"spec": spec}}}
        self.api.patch_namespaced_custom_object(*CAPI, self.namespace, "machinedeployments", "md", change)


def deployed_worker(k8s: Any, namespace: str, standin: WorkloadStandIn) -> tuple[Worker, dict[str, Any]]:
    """The MachineDeployment of create_machine_deployment, its worker and Machine once it has a Node."""
    create_machine_deployment(kc.CustomObjectsApi(k8s), namespace)
    worker = Worker(k8s, namespace, standin)
    machine = eventually(worker.with_node, "the worker Machine with its Node", timeout=180)
    worker.name = machine["metadata"]["name"]
    return worker, machine


def test_a_machine_deployment_image_change_is_upgraded_in_place(
    k8s: Any, namespace: str, control_plane_manager: Manager, extension: int, tmp_path: Path
) -> None:
    api = kc.CustomObjectsApi(k8s)
    with played_cluster(k8s, namespace, tmp_path / "workload") as standin:
        worker, before = deployed_worker(k8s, namespace, standin)
        name = worker.name
        reboot(standin, name, "boot-1", OLD)

        # The upgrade: a template whose image (with its OCI reference) ships the new k3s, and the version.
        worker_template(api, namespace, "md-new", NEW, NEW_OCI)
        worker.roll_to("md-new", NEW)
        # CAPI planned it in place (CanUpdateMachineSet said yes) and called UpdateMachine.
        job = upgrade_job_name(name, NEW_OCI)
        eventually(lambda: worker.jobs() == [job], "the upgrade Job in the workload cluster", timeout=120,
                   explain=worker.annotations)  # fmt: skip
        condition = eventually(worker.updating, "the Machine reporting the in-place update", timeout=60)
        assert condition["reason"] == "InPlaceUpdating"
        assert condition["message"].startswith(
            f"In-place update in progress: node {name} is installing {NEW_OCI}"
        )
        image = api.get_namespaced_custom_object(*INFRA, namespace, "c3osmachines", name)["spec"]["image"]
        assert (image["volume"], image["oci"]) == (standin_volume(NEW), NEW_OCI)

        # The node: the Job succeeds, the machine reboots into the new slot.
        complete_job(standin, job)
        reboot(standin, name, "boot-2", NEW)
        after = eventually(worker.done, "the in-place update done", timeout=120)
        # The same Machine (nothing replaced), now at the new version.
        assert after["metadata"]["uid"] == before["metadata"]["uid"] and after["spec"]["version"] == NEW
        assert [m["metadata"]["name"] for m in worker.machines()] == [name]

        # An OS image that fails to install (its Job fails): the update fails, says why, same Machine.
        worker_template(api, namespace, "md-broken", NEW, BROKEN_OCI)
        worker.roll_to("md-broken")
        job = upgrade_job_name(name, BROKEN_OCI)
        # The node's Job for the earlier image goes when the new one is made.
        eventually(lambda: worker.jobs() == [job], "the second upgrade Job, alone", timeout=120,
                   explain=worker.annotations)  # fmt: skip
        fail_job(standin, job, "pod failed: kairos-agent upgrade exited with 1")
        message = (
            f"upgrade of node {name} to {BROKEN_OCI} failed: pod failed: kairos-agent upgrade exited with 1"
        )
        eventually(lambda: (worker.updating() or {}).get("reason") == "InPlaceUpdateFailed"
                   and message in worker.failure_events(),
                   "the failure on the Machine and in its Event", timeout=120,
                   explain=lambda: json.dumps(worker.updating()))  # fmt: skip
        assert worker.machine()["metadata"]["uid"] == before["metadata"]["uid"]


def test_a_hand_made_update_of_a_machine_installs_no_image_its_template_does_not_name(
    k8s: Any, namespace: str, control_plane_manager: Manager, extension: int, tmp_path: Path
) -> None:
    """CAPI's update-in-progress annotations and the C3osMachine's image are editable by
    whoever edits Machines; the image runs privileged on the node. One set by hand, not
    from the template of the Machine's MachineSet, is refused and nothing runs."""
    api = kc.CustomObjectsApi(k8s)
    with played_cluster(k8s, namespace, tmp_path / "workload") as standin:
        worker, _ = deployed_worker(k8s, namespace, standin)
        name = worker.name
        evil = "registry.evil.test/root:k3sv1.33.4-k3s1"
        api.patch_namespaced_custom_object(*INFRA, namespace, "c3osmachines", name,
                                           {"spec": {"image": {"oci": evil}}})  # fmt: skip
        pending = {IN_PLACE_UPDATE_IN_PROGRESS_ANNOTATION: "", PENDING_HOOKS_ANNOTATION: "UpdateMachine"}
        api.patch_namespaced_custom_object(*CAPI, namespace, "machines", name,
                                           {"metadata": {"annotations": pending}})  # fmt: skip
        body = {"desired": {"machine": {"metadata": {"namespace": namespace, "name": name}}}}
        update = hook_path("UpdateMachine", "update-machine")
        status, answer = post(k8s, namespace, extension, update, json.dumps(body).encode())
        assert (status, answer["status"]) == (200, "Failure"), answer
        assert answer["message"] == (
            f"the image of Machine {namespace}/{name}'s C3osMachine, {evil}, is not the image of "
            f"C3osMachineTemplate {namespace}/md-old of its MachineSet "
            f"{worker.machine()['metadata']['ownerReferences'][0]['name']} ({OLD_OCI}): not installing an "
            "image no template of the machine names"
        )
        assert worker.jobs() == [], "an upgrade Job runs an image no template names"


# ------------------------------------------------------------------ a certificate someone else keeps


def served_certificate(port: int) -> x509.Certificate:
    pem = ssl.get_server_certificate(("127.0.0.1", port), timeout=10)
    return x509.load_pem_x509_certificate(pem.encode())


def test_with_a_cert_manager_secret_capi_injects_its_ca_and_renewed_files_are_served(
    mgmt: ManagementPlane, k8s: Any, namespace: str, tmp_path: Path,
    extension_config: Callable[[], dict[str, Any]],
) -> None:  # fmt: skip
    """What cert-manager does: a Secret with ca.crt/tls.crt/tls.key, mounted as files, and
    renewed in both places; the manager writes neither and makes no certificate."""
    ca = new_ca("user-ca")
    certs = tmp_path / "certs"
    certs.mkdir()

    def issue() -> KeyPair:
        pair = issue_certificate(ca, "extension", ip_addresses=("127.0.0.1",), server=True)
        (certs / "tls.crt").write_bytes(pair.cert_pem)
        (certs / "tls.key").write_bytes(pair.key_pem)
        return pair

    first = issue()
    data = {"ca.crt": ca.cert_pem, "tls.crt": first.cert_pem, "tls.key": first.key_pem}
    kc.CoreV1Api(k8s).create_namespaced_secret(namespace, {
        "metadata": {"name": "shop-extension-tls"}, "type": "kubernetes.io/tls",
        "data": {k: base64.b64encode(v).decode() for k, v in data.items()}})  # fmt: skip
    port = free_port()
    settings = ExtensionSettings(address=f"127.0.0.1:{port}", namespace=namespace,
                                 cert_secret="shop-extension-tls", cert_dir=str(certs),
                                 url=f"https://127.0.0.1:{port}", refresh_seconds=0.5)  # fmt: skip
    with serving(settings, mgmt.kubeconfig):
        eventually(lambda: discovered(extension_config()), "ExtensionConfig c3os discovered",
                   explain=lambda: json.dumps(extension_config().get("status")))  # fmt: skip
        # The bundle is CAPI's copy of the Secret's ca.crt (inject-ca-from-secret).
        bundle = extension_config()["spec"]["clientConfig"]["caBundle"]
        assert bundle == base64.b64encode(ca.cert_pem).decode()
        assert served_certificate(port).serial_number == first.certificate.serial_number
        renewed = issue()
        eventually(lambda: served_certificate(port).serial_number == renewed.certificate.serial_number,
                   "the renewed certificate served without a restart")  # fmt: skip
    with pytest.raises(ApiException) as absent:
        kc.CoreV1Api(k8s).read_namespaced_secret(EXTENSION_CERT_SECRET, namespace)
    assert absent.value.status == 404


# ------------------------------------------------------------------ CAPI without the gates


def test_without_capi_runtime_sdk_the_manager_runs_on_and_says_why(
    tmp_path: Path, run_manager: RunManager
) -> None:
    """CAPI's webhook refuses every ExtensionConfig while its RuntimeSDK gate is off (the
    default): the infrastructure manager must not crash-loop over it."""
    plane = ManagementPlane(tmp_path / "plane", capi_feature_gates="ClusterTopology=true").start()
    try:
        crds = our_crds()
        apply(plane.kubeconfig, crds)
        wait_for_crds_established(plane.kubeconfig, crds)
        port = free_port()
        manager = run_manager("no-gates", plane.kubeconfig, "--extension-addr", f"127.0.0.1:{port}",
                              "--extension-url", f"https://127.0.0.1:{port}", providers="infrastructure",
                              env={"POD_NAMESPACE": "default"}).wait_ready(60)  # fmt: skip

        def said() -> str | None:
            text = manager.process.log_path.read_text()
            return text if "the extension is not registered" in text else None

        log = eventually(said, "the manager saying why the extension is not registered")
        assert "can be set only if the RuntimeSDK feature flag is enabled" in log
        assert manager.alive() and manager.ready()
        assert manager.stop() == 0, manager.tail()
    finally:
        plane.stop()
