"""A workload cluster without k3s, for tests: the harness plays k3s.

No k3s binary or c3os image can run here, so the node side is stood in for as
faithfully as possible: a real etcd + kube-apiserver serving with a certificate from
**the cluster's own server CA** and trusting **its client CA** (the secrets the
providers created), listening on the control-plane endpoint's loopback port. So the
`<cluster>-kubeconfig` the control plane writes must work against it, and CAPI core
connects to it as to any workload cluster. Nodes are registered with the provider-id
each machine was given; k3s's behaviours the providers rely on (`kube-system/k3s-serving`
once the first server serves, the etcd member annotations of each server, etcd member
removal on request) are played on demand.

etcd member removal follows k3s (k3s-io/k3s `pkg/etcd/member_controller.go`, the
version with `rpctypes.ErrMemberNotEnoughStarted`, and `pkg/etcd/etcd.go` `setName`;
read from the source index, the release-1.34 tree itself was too large to fetch):

- a server's member is named `<node>-<8 hex>` and its Node carries it in
  `etcd.k3s.cattle.io/node-name` (with `node-address`) and the `node-role.kubernetes.io/etcd`
  label; Nodes without that label are skipped, and a `remove` request on a Node without
  the node-name/node-address annotations is not acted on (k3s returns an error and retries);
- `remove=true`: the member goes, the Node gets `removed-node-name=<member name>`, its
  `node-name` and `node-address` annotations are deleted (`remove` itself stays);
- the only voting member is refused (etcd's ErrMemberNotEnoughStarted): k3s deletes
  `remove` and sets nothing, so the requester may ask again once there are more members;
- a `removed-node-name` that is not the Node's current member name (it rejoined) clears
  `removed-node-name` and `remove`;
- a Node deleted while still a member: the member goes (k3s `onRemove`).
"""

from __future__ import annotations

import base64
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client as kc
from kubernetes.client.exceptions import ApiException

from capi_c3os.bootstrap.certificates import KeyPair
from capi_c3os.capi import conditions as cond
from capi_c3os.capi.metadata import MACHINE_CONTROL_PLANE_LABEL
from capi_c3os.capi.versions import image_tag, version_from_image_name
from capi_c3os.dev.mgmt import ManagementPlane, api_client
from capi_c3os.dev.processes import free_port

ETCD_REMOVE = "etcd.k3s.cattle.io/remove"
ETCD_REMOVED = "etcd.k3s.cattle.io/removed-node-name"
ETCD_NODE_NAME = "etcd.k3s.cattle.io/node-name"
ETCD_NODE_ADDRESS = "etcd.k3s.cattle.io/node-address"
CONTROL_PLANE_ROLE = "node-role.kubernetes.io/control-plane"
ETCD_ROLE = "node-role.kubernetes.io/etcd"
MASTER_ROLE = "node-role.kubernetes.io/master"


class WorkloadStandIn:
    def __init__(self, root: Path, server_ca: KeyPair, client_ca: KeyPair, port: int) -> None:
        self.plane = ManagementPlane(root)
        self.plane.ports["apiserver"] = port
        pki = root / "pki"
        pki.mkdir(parents=True, exist_ok=True)
        # The plane reuses CAs it finds on disk: these make it serve as the cluster would.
        for name, pair in (("server-ca", server_ca), ("client-ca", client_ca)):
            (pki / f"{name}.crt").write_bytes(pair.cert_pem)
            key = pki / f"{name}.key"
            key.write_bytes(pair.key_pem)
            key.chmod(0o600)
        self._stop = threading.Event()
        self._etcd_thread: threading.Thread | None = None
        self.etcd_removed: list[str] = []
        """Nodes whose etcd member was removed on request, in order."""
        self.etcd_refused: list[str] = []
        """Nodes whose removal k3s refused (the only voting member), in order."""
        self.etcd_members: dict[str, str] = {}
        """The etcd cluster's voting members: member name -> Node name."""
        self.servers_join_etcd = True
        """Whether servers registered from now on get an etcd member (False: their etcd
        never joins, as when k3s fails before it)."""

    @property
    def kubeconfig(self) -> Path:
        """An admin kubeconfig (client certificate from the cluster's client CA)."""
        return self.plane.kubeconfig

    @property
    def port(self) -> int:
        return self.plane.ports["apiserver"]

    def start(self) -> WorkloadStandIn:
        self.plane.start(controller_manager=False, capi=False)
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._etcd_thread is not None:
            self._etcd_thread.join(timeout=10)
        self.plane.stop()

    def _core(self, client: Any) -> kc.CoreV1Api:
        return kc.CoreV1Api(client)

    def register_node(
        self,
        name: str,
        provider_id: str,
        *,
        control_plane: bool,
        ready: bool = True,
        etcd: bool | None = None,
        address: str = "127.0.0.1",
        kubelet_version: str | None = None,
    ) -> None:
        """What a kubelet does when k3s starts on a machine: a Node with the provider-id
        the machine's config drive gave it, then its Ready condition. A server's etcd
        joins too (`etcd`, default: servers while `servers_join_etcd`): k3s's metadata
        controller labels and annotates its Node with its member. `kubelet_version`: the
        k3s version the machine's image ships, reported in `status.nodeInfo`."""
        labels = {"kubernetes.io/hostname": name}
        if control_plane:
            labels[CONTROL_PLANE_ROLE] = "true"
        with api_client(self.kubeconfig) as client:
            core = self._core(client)
            try:
                core.create_node(kc.V1Node(
                    metadata=kc.V1ObjectMeta(name=name, labels=labels),
                    spec=kc.V1NodeSpec(provider_id=provider_id),
                ))  # fmt: skip
            except ApiException as exc:
                if exc.status != 409:
                    raise
            else:
                if (control_plane and self.servers_join_etcd) if etcd is None else etcd:
                    self.join_etcd(name, address)
            if kubelet_version:
                info = {"kubeletVersion": kubelet_version, "kubeProxyVersion": kubelet_version,
                        "operatingSystem": "linux", "architecture": "amd64", "osImage": "c3os stand-in",
                        "containerRuntimeVersion": "containerd://2.0.5-k3s1"}  # fmt: skip
                core.patch_node_status(name, {"status": {"nodeInfo": info}})
        self.set_node_ready(name, ready)

    def report_boot(
        self,
        name: str,
        boot_id: str,
        kubelet_version: str | None,
        labels: dict[str, str],
        annotations: dict[str, str],
    ) -> None:
        """What a node reports after a boot: the kubelet its nodeInfo (bootID from
        /proc/sys/kernel/random/boot_id, the version of the k3s it runs), the Kairos node
        labeler its labels and annotations (capi_c3os/dev/nodeupgrade.py node_report)."""
        info: dict[str, str] = {"bootID": boot_id}
        if kubelet_version:
            info |= {"kubeletVersion": kubelet_version, "kubeProxyVersion": kubelet_version}
        with api_client(self.kubeconfig) as client:
            core = self._core(client)
            core.patch_node(name, {"metadata": {"labels": labels, "annotations": annotations}})
            core.patch_node_status(name, {"status": {"nodeInfo": info}})

    def join_etcd(self, name: str, address: str = "127.0.0.1") -> str:
        """A server's etcd joins: k3s's metadata controller labels its Node and puts the
        new member on it (k3s pkg/etcd/etcd.go setName: ServerNodeName + "-" + uuid[:8]).
        Returns the member name."""
        member = f"{name}-{secrets.token_hex(4)}"
        labels = {ETCD_ROLE: "true", MASTER_ROLE: "true"}
        annotations = {ETCD_NODE_NAME: member, ETCD_NODE_ADDRESS: address}
        with api_client(self.kubeconfig) as client:
            self._core(client).patch_node(name, {"metadata": {"labels": labels, "annotations": annotations}})
        self.etcd_members[member] = name
        return member

    def set_node_ready(self, name: str, ready: bool) -> None:
        """The kubelet's status report: Ready, and the pressure conditions a kubelet
        always reports (CAPI's NodeHealthy waits for them). Call only on a change:
        MachineHealthCheck times unhealthiness from the transition."""
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        reported = [
            ("Ready", "True" if ready else "False", "KubeletReady" if ready else "KubeletNotReady"),
            ("MemoryPressure", "False", "KubeletHasSufficientMemory"),
            ("DiskPressure", "False", "KubeletHasNoDiskPressure"),
            ("PIDPressure", "False", "KubeletHasSufficientPID"),
        ]
        conditions = [
            {"type": kind, "status": status, "reason": reason, "message": "stand-in kubelet",
             "lastTransitionTime": now, "lastHeartbeatTime": now}
            for kind, status, reason in reported
        ]  # fmt: skip
        with api_client(self.kubeconfig) as client:
            self._core(client).patch_node_status(name, {"status": {"conditions": conditions}})

    def mark_serving(self) -> None:
        """k3s creates kube-system/k3s-serving once the first server serves."""
        with api_client(self.kubeconfig) as client:
            try:
                self._core(client).create_namespaced_secret("kube-system", kc.V1Secret(
                    metadata=kc.V1ObjectMeta(name="k3s-serving"), type="kubernetes.io/tls",
                    data={"tls.crt": "", "tls.key": ""},
                ))  # fmt: skip
            except ApiException as exc:
                if exc.status != 409:
                    raise

    def answer_etcd_removals(self) -> list[str]:
        """One pass of k3s's etcd member removal controller over every Node (see the
        module docstring). Returns the nodes whose member was removed this time."""
        answered = []
        with api_client(self.kubeconfig) as client:
            core = self._core(client)
            nodes = core.list_node().items
            present = {node.metadata.name for node in nodes}
            for member, node_name in list(self.etcd_members.items()):
                if node_name not in present:  # onRemove: a deleted member Node leaves etcd
                    del self.etcd_members[member]
            for node in nodes:
                patch = self._removal_patch(node)
                if patch is not None:
                    core.patch_node(node.metadata.name, {"metadata": {"annotations": patch}})
                    if patch.get(ETCD_REMOVED):
                        answered.append(node.metadata.name)
        self.etcd_removed.extend(answered)
        return answered

    def _removal_patch(self, node: kc.V1Node) -> dict[str, str | None] | None:
        """k3s etcdMemberHandler.sync for one Node: the annotation change, or None."""
        name = node.metadata.name
        labels = node.metadata.labels or {}
        annotations = node.metadata.annotations or {}
        if ETCD_ROLE not in labels or ETCD_REMOVE not in annotations:
            return None
        member, address = annotations.get(ETCD_NODE_NAME), annotations.get(ETCD_NODE_ADDRESS)
        if member is None or address is None:
            return None  # k3s: "node name annotation for node ... not found", retried
        removed = annotations.get(ETCD_REMOVED)
        if removed is not None:
            # Rejoined under a new member name: the old removal no longer applies.
            return None if removed == member else {ETCD_REMOVED: None, ETCD_REMOVE: None}
        if annotations[ETCD_REMOVE].lower() != "true":
            return None
        if set(self.etcd_members) <= {member}:
            # etcd rejects removing the only voting member; k3s drops the request.
            self.etcd_refused.append(name)
            return {ETCD_REMOVE: None}
        self.etcd_members.pop(member, None)
        return {ETCD_REMOVED: member, ETCD_NODE_NAME: None, ETCD_NODE_ADDRESS: None}

    def keep_answering_etcd_removals(self, every: float = 0.5) -> None:
        def loop() -> None:
            while not self._stop.wait(every):
                try:
                    self.answer_etcd_removals()
                except Exception:  # the server may be restarting; the next round retries
                    continue

        self._etcd_thread = threading.Thread(target=loop, name="k3s-etcd-standin", daemon=True)
        self._etcd_thread.start()


_INFRA = ("infrastructure.cluster.x-k8s.io", "v1alpha1")
_CAPI = ("cluster.x-k8s.io", "v1beta2")
_CP = ("controlplane.cluster.x-k8s.io", "v1alpha1")
_SITES = [{"name": n, "libvirt": {"uri": "qemu:///system"}} for n in ("site-a", "site-b", "site-c")]


class MachinePlayer:
    """Plays an infrastructure provider and each machine's k3s, in a thread: a Machine
    whose bootstrap data exists gets its infrastructure machine reported provisioned
    (with providerID `c3os://<namespace>/<name>`), then a Ready Node in the stand-in and
    `k3s-serving`. For control-plane tests and benchmarks where booting VMs is not the point."""

    def __init__(self, k8s: Any, namespace: str) -> None:
        self.api = kc.CustomObjectsApi(k8s)
        self.namespace = namespace
        self.standin: WorkloadStandIn | None = None
        self.registered: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def provision_cluster(self, name: str, failure_domains: tuple[str, ...] = ("site-a",)) -> None:
        """What an infrastructure provider reports for a C3osCluster that is ready."""
        status = {
            "initialization": {"provisioned": True},
            "failureDomains": [{"name": d, "controlPlane": True} for d in failure_domains],
            "conditions": [cond.new_condition("Ready", cond.TRUE, "Provisioned", now=datetime.now(UTC))],
        }
        self.api.patch_namespaced_custom_object_status(
            *_INFRA, self.namespace, "c3osclusters", name, {"status": status}
        )

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            try:
                self.step()
            except ApiException:
                continue  # objects come and go under us; the next round sees them settled

    def step(self) -> None:
        machines = self.api.list_namespaced_custom_object(*_CAPI, self.namespace, "machines")["items"]
        for machine in machines:
            name = machine["metadata"]["name"]
            if machine["metadata"].get("deletionTimestamp"):
                continue
            provider_id = f"c3os://{self.namespace}/{name}"
            infra = self.api.get_namespaced_custom_object(*_INFRA, self.namespace, "c3osmachines", name)
            if not (infra.get("status") or {}).get("initialization", {}).get("provisioned"):
                # Like our infrastructure provider: wait for the bootstrap data first.
                if not machine["spec"].get("bootstrap", {}).get("dataSecretName"):
                    continue
                self.api.patch_namespaced_custom_object(
                    *_INFRA, self.namespace, "c3osmachines", name, {"spec": {"providerID": provider_id}}
                )
                ready = cond.new_condition("Ready", cond.TRUE, "Provisioned", now=datetime.now(UTC))
                status = {
                    "initialization": {"provisioned": True},
                    "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
                    "conditions": [ready],
                }
                self.api.patch_namespaced_custom_object_status(
                    *_INFRA, self.namespace, "c3osmachines", name, {"status": status}
                )
            if self.standin is not None and name not in self.registered:
                # k3s came up on the machine: its kubelet registers, the first server serves.
                server = MACHINE_CONTROL_PLANE_LABEL in (machine["metadata"].get("labels") or {})
                self.standin.register_node(
                    name, provider_id, control_plane=server, kubelet_version=image_k3s_version(infra)
                )
                if server:
                    self.standin.mark_serving()
                self.registered.add(name)


STANDIN_K3S_VERSION = "v1.33.4+k3s1"
"""What a played machine's k3s reports when its image name carries no k3s tag."""


def image_k3s_version(infra_machine: dict[str, Any]) -> str:
    """The k3s version a played machine runs: the one its image's name carries, Kairos
    style (`c3os-k3sv1.34.1-k3s1`), else STANDIN_K3S_VERSION. Never the Machine's
    spec.version: on c3os the image decides."""
    image = (infra_machine.get("spec") or {}).get("image") or {}
    name = str(image.get("volume") or image.get("url") or "")
    return version_from_image_name(name) or STANDIN_K3S_VERSION


def create_cluster(
    api: kc.CustomObjectsApi,
    namespace: str,
    port: int,
    replicas: int = 1,
    version: str = "v1.33.4+k3s1",
    **spec: Any,
) -> None:
    """Cluster `shop` + C3osControlPlane `shop-cp` + a C3osCluster reported provisioned (as
    an infrastructure provider would) with its endpoint on the stand-in's loopback port."""
    api.create_namespaced_custom_object(
        *_INFRA,
        namespace,
        "c3osclusters",
        {
            "apiVersion": "/".join(_INFRA),
            "kind": "C3osCluster",
            "metadata": {"name": "shop"},
            "spec": {"controlPlaneEndpoint": {"host": "127.0.0.1", "port": port}, "sites": _SITES},
        },
    )
    api.patch_namespaced_custom_object_status(
        *_INFRA,
        namespace,
        "c3osclusters",
        "shop",
        {
            "status": {
                "initialization": {"provisioned": True},
                "failureDomains": [{"name": s["name"], "controlPlane": True} for s in _SITES],
                "conditions": [cond.new_condition("Ready", cond.TRUE, "Provisioned", now=datetime.now(UTC))],
            }
        },
    )
    api.create_namespaced_custom_object(
        *_INFRA,
        namespace,
        "c3osmachinetemplates",
        {
            "apiVersion": "/".join(_INFRA),
            "kind": "C3osMachineTemplate",
            "metadata": {"name": "cp"},
            "spec": {
                "template": {
                    "spec": {"backend": {"libvirt": {}}, "image": {"volume": standin_volume(version)}}
                }
            },
        },
    )
    api.create_namespaced_custom_object(
        *_CP,
        namespace,
        "c3oscontrolplanes",
        {
            "apiVersion": "/".join(_CP),
            "kind": "C3osControlPlane",
            "metadata": {"name": "shop-cp"},
            "spec": {
                "replicas": replicas,
                "version": version,
                "machineTemplate": {
                    "spec": {
                        "infrastructureRef": {
                            "apiGroup": _INFRA[0],
                            "kind": "C3osMachineTemplate",
                            "name": "cp",
                        }
                    }
                },
                **spec,
            },
        },
    )
    api.create_namespaced_custom_object(*_CAPI, namespace, "clusters", {
        "apiVersion": "/".join(_CAPI), "kind": "Cluster", "metadata": {"name": "shop"},
        "spec": {"infrastructureRef": {"apiGroup": _INFRA[0], "kind": "C3osCluster", "name": "shop"},
                 "controlPlaneRef": {"apiGroup": _CP[0], "kind": "C3osControlPlane",
                                     "name": "shop-cp"}}})  # fmt: skip


def standin_volume(version: str) -> str:
    """The played image that ships `version`."""
    return f"c3os-{image_tag(version)}"


def image_template(api: kc.CustomObjectsApi, namespace: str, version: str) -> str:
    """A copy of `create_cluster`'s machine template whose image ships `version`, as a
    user makes one for an upgrade (CAPI templates are immutable: a new one, a new name).
    Returns its name."""
    base = api.get_namespaced_custom_object(*_INFRA, namespace, "c3osmachinetemplates", "cp")
    spec = {**base["spec"]["template"]["spec"], "image": {"volume": standin_volume(version)}}
    name = f"cp-{image_tag(version).replace('.', '-')}"
    api.create_namespaced_custom_object(*_INFRA, namespace, "c3osmachinetemplates", {
        "apiVersion": "/".join(_INFRA), "kind": "C3osMachineTemplate", "metadata": {"name": name},
        "spec": {"template": {"spec": spec}}})  # fmt: skip
    return name


def node_versions(standin: WorkloadStandIn) -> dict[str, str]:
    """Node name -> the kubelet version it reports."""
    with api_client(standin.kubeconfig) as client:
        nodes = kc.CoreV1Api(client).list_node().items
    return {
        n.metadata.name: (n.status.node_info.kubelet_version if n.status.node_info else "") for n in nodes
    }


def cluster_ca(core: kc.CoreV1Api, namespace: str, name: str) -> KeyPair:
    """A CA the providers keep in a cluster Secret (`<cluster>-ca`, `-cca`, ...)."""
    data = core.read_namespaced_secret(name, namespace).data
    return KeyPair(base64.b64decode(data["tls.crt"]), base64.b64decode(data["tls.key"]))


@contextmanager
def played_cluster(
    k8s: Any, namespace: str, workdir: Path, *, answer_etcd_removals: bool = True, **create: Any
) -> Iterator[WorkloadStandIn]:
    """`create_cluster(**create)`, then, once the providers made the cluster CAs, the
    workload stand-in serving with them on the endpoint's port and a `MachinePlayer`
    playing infrastructure and nodes; both stopped on exit. For control-plane tests and
    benchmarks."""
    api, core = kc.CustomObjectsApi(k8s), kc.CoreV1Api(k8s)
    port = free_port()
    create_cluster(api, namespace, port, **create)
    deadline = time.monotonic() + 60
    while True:
        try:
            server_ca, client_ca = (cluster_ca(core, namespace, f"shop-{n}") for n in ("ca", "cca"))
            break
        except ApiException as exc:
            if exc.status != 404 or time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    standin = WorkloadStandIn(workdir, server_ca, client_ca, port).start()
    if answer_etcd_removals:
        standin.keep_answering_etcd_removals()
    player = MachinePlayer(k8s, namespace)
    player.standin = standin
    player.start()
    try:
        yield standin
    finally:
        player.stop()
        standin.stop()
