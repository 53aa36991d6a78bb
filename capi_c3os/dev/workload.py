"""A workload cluster without k3s, for tests: the harness plays k3s.

No k3s binary or c3os image can run here, so the node side is stood in for as
faithfully as possible: a real etcd + kube-apiserver serving with a certificate from
**the cluster's own server CA** and trusting **its client CA** (the secrets the
providers created), listening on the control-plane endpoint's loopback port. So the
`<cluster>-kubeconfig` the control plane writes must work against it, and CAPI core
connects to it as to any workload cluster. Nodes are registered with the provider-id
each machine was given; k3s's behaviours the providers rely on (`kube-system/k3s-serving`
once the first server serves, etcd member removal on request) are played on demand.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from kubernetes import client as kc
from kubernetes.client.exceptions import ApiException

from capi_c3os.bootstrap.certificates import KeyPair
from capi_c3os.dev.mgmt import ManagementPlane, api_client

ETCD_REMOVE = "etcd.k3s.cattle.io/remove"
ETCD_REMOVED = "etcd.k3s.cattle.io/removed-node-name"
CONTROL_PLANE_ROLE = "node-role.kubernetes.io/control-plane"


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

    def register_node(self, name: str, provider_id: str, *, control_plane: bool, ready: bool = True) -> None:
        """What a kubelet does when k3s starts on a machine: a Node with the provider-id
        the machine's config drive gave it, then its Ready condition."""
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
        self.set_node_ready(name, ready)

    def set_node_ready(self, name: str, ready: bool) -> None:
        condition = {
            "type": "Ready",
            "status": "True" if ready else "False",
            "reason": "KubeletReady" if ready else "KubeletNotReady",
            "message": "stand-in kubelet",
        }
        with api_client(self.kubeconfig) as client:
            self._core(client).patch_node_status(name, {"status": {"conditions": [condition]}})

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
        """Do what k3s's etcd controller does for Nodes annotated for removal: drop the
        member and say so on the Node. Returns the nodes answered this time."""
        answered = []
        with api_client(self.kubeconfig) as client:
            core = self._core(client)
            for node in core.list_node().items:
                annotations = node.metadata.annotations or {}
                if annotations.get(ETCD_REMOVE) == "true" and ETCD_REMOVED not in annotations:
                    core.patch_node(node.metadata.name, {"metadata": {"annotations": {
                        ETCD_REMOVED: node.metadata.name}}})  # fmt: skip
                    answered.append(node.metadata.name)
        self.etcd_removed.extend(answered)
        return answered

    def keep_answering_etcd_removals(self, every: float = 0.5) -> None:
        def loop() -> None:
            while not self._stop.wait(every):
                try:
                    self.answer_etcd_removals()
                except Exception:  # the server may be restarting; the next round retries
                    continue

        self._etcd_thread = threading.Thread(target=loop, name="k3s-etcd-standin", daemon=True)
        self._etcd_thread.start()
