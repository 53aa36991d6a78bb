"""A real Cluster API management plane on loopback: etcd, kube-apiserver,
kube-controller-manager and the CAPI core manager, each a local process.

Used by the test fixtures and by `capi-c3os dev up` (`make demo`). Nothing here is a fake:
the binaries are the upstream ones, built by `capi_c3os.dev.binaries`.
"""

from __future__ import annotations

import base64
import json
import ssl
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s
from kubernetes import config
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import NotFoundError

from capi_c3os.bootstrap.certificates import (
    KeyPair,
    issue_certificate,
    new_ca,
    new_service_account_key,
)
from capi_c3os.dev import binaries
from capi_c3os.dev.processes import ManagedProcess, free_port, http_ok

LOOPBACK = "127.0.0.1"
ADMIN = "capi-c3os-admin"
CAPI_FEATURE_GATES = "ClusterTopology=true,RuntimeSDK=true,InPlaceUpdates=true"
"""RuntimeSDK + InPlaceUpdates (both alpha in CAPI v1.14, feature/feature.go): our
extension's in-place update hooks."""


@dataclass
class ManagementPlane:
    """Owns a work directory with certificates, data, logs, kubeconfigs and a state file."""

    root: Path
    processes: dict[str, ManagedProcess] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    audit: bool = False
    """Write a metadata-only audit log (who called what; no bodies) to `audit_log`."""
    detached: bool = False
    """Servers outlive this process (`make demo`); otherwise they die with it."""
    capi_feature_gates: str = CAPI_FEATURE_GATES

    @property
    def audit_log(self) -> Path:
        return self.root / "audit.log"

    @property
    def kubeconfig(self) -> Path:
        return self.root / "kubeconfig"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def api_url(self) -> str:
        return f"https://{LOOPBACK}:{self.ports['apiserver']}"

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    # ---------------------------------------------------------------- certificates

    def _ca(self, name: str) -> KeyPair:
        crt, key = self.pki / f"{name}.crt", self.pki / f"{name}.key"
        if crt.exists():
            return KeyPair(crt.read_bytes(), key.read_bytes())
        pair = new_ca(f"capi-c3os-dev-{name}")
        _write_pair(pair, crt, key)
        return pair

    def client_identity(self, user: str, groups: tuple[str, ...] = ()) -> KeyPair:
        """A client certificate the API server maps to `user` in `groups` (for RBAC tests)."""
        return issue_certificate(self._ca("client-ca"), user, organizations=groups, client=True)

    def write_kubeconfig(self, path: Path, user: str, groups: tuple[str, ...] = ()) -> Path:
        """A kubeconfig authenticating as `user` in `groups` by client certificate."""
        pair = self.client_identity(user, groups)
        credentials = {"client-certificate-data": _b64(pair.cert_pem), "client-key-data": _b64(pair.key_pem)}
        return self._write_kubeconfig(path, user, credentials)

    def write_service_account_kubeconfig(self, path: Path, namespace: str, name: str) -> Path:
        """A kubeconfig with a token the API server issues for a ServiceAccount (TokenRequest):
        the identity a Deployment's pod gets, so RBAC is checked as in a real cluster."""
        with api_client(self.kubeconfig) as client:
            # A day: the kubeconfig serves a whole test session, which under load has
            # outlasted an hour (the manager then met 401 at its start).
            request = k8s.AuthenticationV1TokenRequest(
                spec=k8s.V1TokenRequestSpec(audiences=[], expiration_seconds=86400)
            )
            issued = k8s.CoreV1Api(client).create_namespaced_service_account_token(name, namespace, request)
        # The context's namespace is the account's, as a pod's would be (the manager
        # keeps its own Secrets there).
        return self._write_kubeconfig(
            path, f"{namespace}-{name}", {"token": issued.status.token}, namespace=namespace
        )

    def _write_kubeconfig(
        self, path: Path, user: str, credentials: dict[str, str], namespace: str | None = None
    ) -> Path:
        server_ca = (self.pki / "server-ca.crt").read_bytes()
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "mgmt",
                    "cluster": {"server": self.api_url, "certificate-authority-data": _b64(server_ca)},
                }
            ],
            "users": [{"name": user, "user": credentials}],
            "contexts": [
                {
                    "name": "mgmt",
                    "context": {
                        "cluster": "mgmt",
                        "user": user,
                        **({"namespace": namespace} if namespace else {}),
                    },
                }
            ],
            "current-context": "mgmt",
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path

    def _ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki / "server-ca.crt"))
        ctx.load_cert_chain(self.pki / "admin.crt", self.pki / "admin.key")
        return ctx

    # ---------------------------------------------------------------- processes

    def spawn(self, name: str, argv: list[str]) -> ManagedProcess:
        proc = ManagedProcess(name, argv, self.logs / f"{name}.log", die_with_parent=not self.detached)
        proc.start()
        return self.adopt(proc)

    def adopt(self, proc: ManagedProcess) -> ManagedProcess:
        """Count a process started elsewhere as one of this plane's (`stop` and, when
        detached, the saved state reach it)."""
        self.processes[proc.name] = proc
        self.save_state()
        return proc

    def start_etcd(self) -> None:
        client, peer = free_port(), free_port()
        self.ports.update(etcd=client, etcd_peer=peer)
        proc = self.spawn(
            "etcd",
            [
                str(binaries.locate("etcd")),
                "--name=default",
                f"--data-dir={self.root / 'etcd'}",
                f"--listen-client-urls=http://{LOOPBACK}:{client}",
                f"--advertise-client-urls=http://{LOOPBACK}:{client}",
                f"--listen-peer-urls=http://{LOOPBACK}:{peer}",
                f"--initial-advertise-peer-urls=http://{LOOPBACK}:{peer}",
                f"--initial-cluster=default=http://{LOOPBACK}:{peer}",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        proc.wait_until(lambda: http_ok(f"http://{LOOPBACK}:{client}/health"), "etcd /health")

    def start_apiserver(self) -> None:
        self.pki.mkdir(parents=True, exist_ok=True)
        server_ca = self._ca("server-ca")
        self._ca("client-ca")
        serving = issue_certificate(
            server_ca,
            "kube-apiserver",
            dns_names=("localhost", "kubernetes", "kubernetes.default"),
            ip_addresses=(LOOPBACK, "10.0.0.1"),
            server=True,
        )
        _write_pair(serving, self.pki / "apiserver.crt", self.pki / "apiserver.key")
        _write_pair(
            self.client_identity(ADMIN, ("system:masters",)), self.pki / "admin.crt", self.pki / "admin.key"
        )
        sa_key = self.pki / "sa.key"
        if not sa_key.exists():
            sa_key.write_bytes(new_service_account_key())
            sa_key.chmod(0o600)
        # A port chosen beforehand (a workload stand-in behind a known endpoint) is kept.
        port = self.ports.setdefault("apiserver", free_port())
        proc = self.spawn(
            "kube-apiserver",
            [
                str(binaries.locate("kube-apiserver")),
                f"--etcd-servers=http://{LOOPBACK}:{self.ports['etcd']}",
                f"--bind-address={LOOPBACK}",
                f"--advertise-address={LOOPBACK}",
                f"--secure-port={port}",
                f"--cert-dir={self.pki}",
                f"--tls-cert-file={self.pki / 'apiserver.crt'}",
                f"--tls-private-key-file={self.pki / 'apiserver.key'}",
                f"--client-ca-file={self.pki / 'client-ca.crt'}",
                "--service-cluster-ip-range=10.0.0.0/24",
                "--allow-privileged=true",
                "--disable-admission-plugins=ServiceAccount",
                "--authorization-mode=RBAC",
                f"--service-account-issuer=https://{LOOPBACK}:{port}/",
                f"--service-account-key-file={sa_key}",
                f"--service-account-signing-key-file={sa_key}",
                *self._audit_flags(),
            ],
        )
        self.write_kubeconfig(self.kubeconfig, ADMIN, ("system:masters",))
        ctx = self._ssl_context()
        proc.wait_until(lambda: http_ok(f"{self.api_url}/readyz", ctx), "kube-apiserver /readyz", 120)

    def _audit_flags(self) -> list[str]:
        if not self.audit:
            return []
        policy = self.root / "audit-policy.yaml"
        policy.write_text(yaml.safe_dump({
            "apiVersion": "audit.k8s.io/v1", "kind": "Policy", "omitStages": ["RequestReceived"],
            "rules": [{"level": "Metadata"}],
        }))  # fmt: skip
        return [
            f"--audit-policy-file={policy}",
            f"--audit-log-path={self.audit_log}",
            "--audit-log-format=json",
        ]

    def start_controller_manager(self) -> None:
        """Garbage collection (ownerReferences) and namespace deletion need it."""
        port = free_port()
        self.ports["kube-controller-manager"] = port
        kubeconfig = self.write_kubeconfig(
            self.root / "kcm.kubeconfig", "system:kube-controller-manager", ("system:masters",)
        )
        proc = self.spawn(
            "kube-controller-manager",
            [
                str(binaries.locate("kube-controller-manager")),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                f"--bind-address={LOOPBACK}",
                f"--secure-port={port}",
                f"--cert-dir={self.root / 'kcm-certs'}",
                "--controllers=garbage-collector-controller,namespace-controller,"
                "serviceaccount-controller,serviceaccount-token-controller,clusterrole-aggregation-controller",
                f"--service-account-private-key-file={self.pki / 'sa.key'}",
                f"--root-ca-file={self.pki / 'server-ca.crt'}",
                "--leader-elect=false",
            ],
        )
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE  # its self-signed serving cert; loopback only
        proc.wait_until(
            lambda: http_ok(f"https://{LOOPBACK}:{port}/healthz", insecure),
            "kube-controller-manager /healthz",
            120,
        )

    def start_capi(self) -> None:
        """The CAPI core manager, its CRDs, and its webhooks served on loopback."""
        webhook_port, health, diag = free_port(), free_port(), free_port()
        self.ports.update(capi_webhook=webhook_port, capi_health=health)
        cert_dir = self.root / "capi-webhook"
        webhook_ca = self._ca("capi-webhook-ca")
        serving = issue_certificate(
            webhook_ca, "capi-webhook", dns_names=("localhost",), ip_addresses=(LOOPBACK,), server=True
        )
        _write_pair(serving, cert_dir / "tls.crt", cert_dir / "tls.key")
        objects = capi_core_objects(f"https://{LOOPBACK}:{webhook_port}", webhook_ca.cert_pem)
        repoint_webhooks(self.kubeconfig, objects)
        apply(self.kubeconfig, objects)
        wait_for_crds_established(self.kubeconfig, objects)
        proc = self.spawn(
            "capi-manager",
            [
                str(binaries.locate("capi-manager")),
                f"--kubeconfig={self.kubeconfig}",
                f"--webhook-port={webhook_port}",
                f"--webhook-cert-dir={cert_dir}",
                f"--health-addr={LOOPBACK}:{health}",
                f"--diagnostics-address={LOOPBACK}:{diag}",
                "--insecure-diagnostics",
                "--leader-elect=false",
                f"--feature-gates={self.capi_feature_gates}",
            ],
        )
        proc.wait_until(lambda: http_ok(f"http://{LOOPBACK}:{health}/readyz"), "CAPI manager /readyz", 180)

    def start(self, *, controller_manager: bool = True, capi: bool = True) -> ManagementPlane:
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            self.start_etcd()
            self.start_apiserver()
            if controller_manager:
                self.start_controller_manager()
            if capi:
                self.start_capi()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for proc in reversed(list(self.processes.values())):
            proc.stop()
        self.save_state()

    def save_state(self) -> None:
        state = {"ports": self.ports, "pids": {n: p.pid for n, p in self.processes.items() if p.alive()}}
        (self.root / "state.json").write_text(json.dumps(state, indent=2))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _write_pair(pair: KeyPair, crt: Path, key: Path) -> None:
    crt.parent.mkdir(parents=True, exist_ok=True)
    crt.write_bytes(pair.cert_pem)
    key.write_bytes(pair.key_pem)
    key.chmod(0o600)


# -------------------------------------------------------------------- objects


def _yaml_documents(paths: Iterable[Path]) -> Iterator[dict[str, Any]]:
    for path in sorted(paths):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield doc


def capi_core_objects(webhook_url: str, ca_pem: bytes) -> list[dict[str, Any]]:
    """CAPI's CRDs and webhook configurations, pointed at a webhook server on loopback."""
    config = binaries.capi_source() / "core" / "config"
    ca_bundle = base64.b64encode(ca_pem).decode()
    objects: list[dict[str, Any]] = []
    for crd in _yaml_documents((config / "crd" / "bases").glob("*.yaml")):
        if len(crd["spec"]["versions"]) > 1:
            crd["spec"]["conversion"] = {
                "strategy": "Webhook",
                "webhook": {
                    "conversionReviewVersions": ["v1"],
                    "clientConfig": {"url": f"{webhook_url}/convert", "caBundle": ca_bundle},
                },
            }
        objects.append(crd)
    for hook_config in _yaml_documents([config / "webhook" / "manifests.yaml"]):
        hook_config["metadata"]["name"] = "capi-" + hook_config["metadata"]["name"]
        for hook in hook_config["webhooks"]:
            path = hook["clientConfig"]["service"]["path"]
            hook["clientConfig"] = {"url": webhook_url + path, "caBundle": ca_bundle}
        objects.append(hook_config)
    return objects


def api_client(kubeconfig: Path) -> Any:
    return config.new_client_from_config(config_file=str(kubeconfig))


def apply(kubeconfig: Path, objects: Iterable[dict[str, Any]], manager: str = "capi-c3os-dev") -> None:
    """Server-side apply of arbitrary objects (what `kubectl apply --server-side` does)."""
    with api_client(kubeconfig) as client:
        dynamic = DynamicClient(client)
        for obj in objects:
            resource = dynamic.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
            namespace = obj["metadata"].get("namespace")
            resource.server_side_apply(
                body=obj,
                name=obj["metadata"]["name"],
                namespace=namespace,
                field_manager=manager,
                force_conflicts=True,
            )


def repoint_webhooks(kubeconfig: Path, objects: Iterable[dict[str, Any]]) -> None:
    """Point webhooks that already exist (installed by clusterctl, aimed at a Service no
    pod backs here) at the given objects' loopback URLs. A merge patch, because a URL and
    a Service together are invalid and server-side apply would keep the other owner's."""
    with api_client(kubeconfig) as client:
        dynamic = DynamicClient(client)
        for obj in objects:
            resource = dynamic.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
            try:
                resource.get(name=obj["metadata"]["name"])
            except NotFoundError:
                continue
            if obj["kind"] == "CustomResourceDefinition":
                conversion = obj["spec"].get("conversion")
                if not conversion:
                    continue
                hook = conversion["webhook"]
                patch: dict[str, Any] = {
                    "spec": {
                        "conversion": {
                            **conversion,
                            "webhook": {**hook, "clientConfig": {**hook["clientConfig"], "service": None}},
                        }
                    }
                }
            else:
                patch = {"webhooks": obj["webhooks"]}
            resource.patch(
                body=patch, name=obj["metadata"]["name"], content_type="application/merge-patch+json"
            )


def wait_for_crds_established(
    kubeconfig: Path, crds: Iterable[dict[str, Any]], timeout: float = 60.0
) -> None:
    """Wait until the API server serves every CRD in `crds` (as applied)."""
    names = {crd["metadata"]["name"] for crd in crds if crd.get("kind") == "CustomResourceDefinition"}
    with api_client(kubeconfig) as client:
        ext = k8s.ApiextensionsV1Api(client)
        deadline = time.monotonic() + timeout
        while True:
            established = {
                c.metadata.name
                for c in ext.list_custom_resource_definition().items
                if any(
                    cond.type == "Established" and cond.status == "True"
                    for cond in (c.status.conditions or [])
                )
            }
            pending = names - established
            if not pending:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"CRDs not established after {timeout:.0f}s: {sorted(pending)}")
            time.sleep(0.2)
