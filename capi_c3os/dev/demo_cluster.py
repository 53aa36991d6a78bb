"""The demo's workload cluster: rendered with `clusterctl generate cluster --flavor
topology` from our offline repository (as a user makes one), applied, and watched.

The image is the self-booting stand-in (hack/standin-image.sh, `boot.qcow2`) unless
`C3OS_IMAGE` names a real c3os qcow2 or ISO (a file or a URL; `C3OS_IMAGE_SHA256` is
needed for a URL, `C3OS_IMAGE_FORMAT` overrides the format guessed from the name).
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import subprocess
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from kubernetes import client as kc
from kubernetes.client.exceptions import ApiException

from capi_c3os.capi import conditions as cond
from capi_c3os.dev import binaries

CAPI = ("cluster.x-k8s.io", "v1beta2")
INFRA = ("infrastructure.cluster.x-k8s.io", "v1alpha1")
NAME = "edge-1"
NAMESPACE = "demo"
CLASS = "c3os-libvirt"
KUBERNETES_VERSION = "v1.33.4+k3s1"
CONTROL_PLANE_LABEL = "cluster.x-k8s.io/control-plane"
STANDIN_VM = {"cpus": 1, "memoryMiB": 256, "diskGiB": 1}  # the stand-in needs no more
REPO = Path(__file__).resolve().parents[2]
_WAITING_ON = re.compile(r"^\* ([A-Za-z]+):", re.M)  # the condition names an Available message lists


class DemoError(RuntimeError):
    """Something the user can fix; the message says what."""


@dataclass(frozen=True)
class Image:
    url: str
    sha256: str
    format: str
    standin: bool
    """The stand-in boots and prints what it received: the k3s stand-in plays k3s for it."""

    @property
    def file_dir(self) -> str | None:
        """The directory of a file:// image (the manager's --image-file-dir)."""
        if not self.url.startswith("file://"):
            return None
        return os.path.dirname(urllib.request.url2pathname(urllib.parse.urlsplit(self.url).path))


def standin_image() -> Path:
    """hack/standin-image.sh's output directory (built once, cached)."""
    done = subprocess.run(
        [str(REPO / "hack" / "standin-image.sh")], capture_output=True, text=True, check=False, timeout=1800
    )
    if done.returncode != 0:
        raise DemoError(f"building the stand-in image failed:\n{done.stderr.strip()}")
    return Path(done.stdout.strip().splitlines()[-1])


def choose_image(env: dict[str, str]) -> Image:
    given = env.get("C3OS_IMAGE", "").strip()
    if not given:
        print("the stand-in c3os image (built once, then cached) ...", flush=True)
        boot = standin_image() / "boot.qcow2"
        return Image(boot.as_uri(), _sha256(boot), "qcow2", standin=True)
    fmt = env.get("C3OS_IMAGE_FORMAT") or ("iso" if given.lower().endswith(".iso") else "qcow2")
    if "://" in given:
        digest = env.get("C3OS_IMAGE_SHA256", "").strip().lower()
        if len(digest) != 64:
            raise DemoError("C3OS_IMAGE is a URL: set C3OS_IMAGE_SHA256 to its sha256 (64 hex digits)")
        return Image(given, digest, fmt, standin=False)
    path = Path(given).expanduser().resolve()
    if not path.is_file():
        raise DemoError(f"C3OS_IMAGE={given}: no such file")
    return Image(path.as_uri(), _sha256(path), fmt, standin=False)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def ssh_public_key(root: Path, env: dict[str, str]) -> str:
    """C3OS_SSH_AUTHORIZED_KEY, else the user's first ~/.ssh/*.pub, else a key made for
    the demo (private half in `root/ssh/id_ed25519`)."""
    if env.get("C3OS_SSH_AUTHORIZED_KEY"):
        return env["C3OS_SSH_AUTHORIZED_KEY"]
    for name in ("id_ed25519.pub", "id_ecdsa.pub", "id_rsa.pub"):
        own = Path.home() / ".ssh" / name
        if own.is_file():
            return own.read_text().strip()
    public = root / "ssh" / "id_ed25519.pub"
    if not public.exists():
        key = Ed25519PrivateKey.generate()
        public.parent.mkdir(parents=True, exist_ok=True)
        private = public.with_suffix("")
        private.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
            )
        )
        private.chmod(0o600)
        openssh = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        public.write_text(openssh.decode() + " capi-c3os-demo\n")
    return public.read_text().strip()


def render(
    root: Path, kubeconfig: Path, image: Image, site: dict[str, Any], port: int, ssh_key: str
) -> list[dict[str, Any]]:
    """`clusterctl generate cluster` for 1 server + 1 worker; the file is kept in `root`."""
    env = {
        **os.environ,
        "HOME": str(root / "clusterctl-home"),  # clusterctl's cache and config stay in the demo
        "CLUSTERCTL_DISABLE_VERSIONCHECK": "true",  # no release lookup on the internet
        "C3OS_REPOSITORY": str(REPO / "config" / "clusterctl"),
        "C3OS_CONTROL_PLANE_ENDPOINT_HOST": "127.0.0.1",
        "C3OS_CONTROL_PLANE_ENDPOINT_PORT": str(port),
        "C3OS_LIBVIRT_URI": site["uri"],
        "C3OS_LIBVIRT_POOL": site["pool"],
        "C3OS_LIBVIRT_NETWORK": site["network"],
        "C3OS_IMAGE_URL": image.url,
        "C3OS_IMAGE_SHA256": image.sha256,
        "C3OS_IMAGE_FORMAT": image.format,
        "C3OS_SSH_AUTHORIZED_KEY": ssh_key,
    }
    done = subprocess.run(
        [str(binaries.locate("clusterctl")), "generate", "cluster", NAME, "--flavor", "topology",
         "--infrastructure", "c3os:v0.1.0",
         "--config", str(REPO / "config" / "clusterctl" / "clusterctl.yaml"),
         "--kubeconfig", str(kubeconfig), "--kubernetes-version", KUBERNETES_VERSION,
         "--control-plane-machine-count", "1", "--worker-machine-count", "1",
         "--target-namespace", NAMESPACE],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise DemoError(f"clusterctl generate cluster failed:\n{done.stderr.strip()}")
    docs = [d for d in yaml.safe_load_all(done.stdout) if d]
    if image.standin:
        # What a user edits in the generated file: VM sizes (variables left at defaults).
        topology = next(d for d in docs if d["kind"] == "Cluster")["spec"]["topology"]
        topology["variables"] += [
            {"name": "controlPlaneMachine", "value": STANDIN_VM},
            {"name": "workerMachine", "value": STANDIN_VM},
        ]
    (root / f"{NAME}.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return docs


class Watch:
    """Reads the demo cluster's objects; `changes()` says what moved since last time."""

    def __init__(self, api: Any, k3s_log: Path | None) -> None:
        self.custom = kc.CustomObjectsApi(api)
        self.core = kc.CoreV1Api(api)
        self.k3s_log = k3s_log
        self._seen: dict[str, str] = {}
        self._k3s_lines = 0

    def items(self, gv: tuple[str, str], plural: str) -> list[dict[str, Any]]:
        return list(self.custom.list_namespaced_custom_object(*gv, NAMESPACE, plural)["items"])

    def cluster(self) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = self.custom.get_namespaced_custom_object(
                *CAPI, NAMESPACE, "clusters", NAME
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return found

    def class_accepted(self) -> bool:
        try:
            cc = self.custom.get_namespaced_custom_object(*CAPI, NAMESPACE, "clusterclasses", CLASS)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return cond.is_true(cc, "VariablesReady")

    def up(self, servers: int = 1, workers: int = 1, need_nodes: bool = True) -> bool:
        """Available with every Machine Running with a Node. Without k3s (a real image
        whose k3s cannot serve the loopback endpoint) only the servers' VMs can start:
        workers get bootstrap data once the control plane is initialized."""
        cluster, machines = self.cluster(), self.items(CAPI, "machines")
        if cluster is None or len(machines) != servers + workers:
            return False
        if not need_nodes:
            return all(
                (m.get("status") or {}).get("phase") in ("Provisioned", "Running")
                for m in machines
                if CONTROL_PLANE_LABEL in m["metadata"].get("labels", {})
            )
        return (
            cond.is_true(cluster, "Available")
            and all(
                (m.get("status") or {}).get("phase") == "Running" and (m.get("status") or {}).get("nodeRef")
                for m in machines
            )
            and _counted(cluster, "controlPlane", servers)
            and _counted(cluster, "workers", workers)
        )

    def changes(self) -> list[str]:
        """One line per change since the last call: Cluster Available, Machine phases,
        VMs started, Nodes joined, and what the k3s stand-in logged."""
        now: dict[str, str] = {}
        cluster = self.cluster()
        if cluster is not None:
            available = next(
                (c for c in (cluster.get("status") or {}).get("conditions", []) if c["type"] == "Available"),
                None,
            )
            if available is not None:
                state = available["status"]
                waiting = _WAITING_ON.findall(available.get("message") or "")
                if state != "True" and waiting:
                    state += f" (waiting on {', '.join(dict.fromkeys(waiting))})"
                now[f"cluster {NAME} Available"] = state
        for m in self.items(CAPI, "machines"):
            status = m.get("status") or {}
            role = "control-plane" if CONTROL_PLANE_LABEL in m["metadata"].get("labels", {}) else "worker"
            key = f"machine {m['metadata']['name']} ({role})"
            now[f"{key} phase"] = str(status.get("phase") or "-")
            node = (status.get("nodeRef") or {}).get("name")
            if node:
                now[f"{key} node"] = f"{node} joined"
        for infra in self.items(INFRA, "c3osmachines"):
            libvirt = ((infra.get("status") or {}).get("backend") or {}).get("libvirt") or {}
            if libvirt.get("domainName"):
                addresses = [
                    a["address"]
                    for a in (infra.get("status") or {}).get("addresses") or []
                    if a.get("type") in ("InternalIP", "ExternalIP")
                ]
                vm = f"VM {libvirt['domainName']} started"
                now[f"c3osmachine {infra['metadata']['name']}"] = vm + (
                    f" ({', '.join(addresses)})" if addresses else ""
                )
        lines = [f"{k}: {v}" for k, v in now.items() if self._seen.get(k) != v]
        lines += [
            f"{k.removesuffix(' phase')}: gone" + (" (its VM removed)" if k.startswith("c3osmachine") else "")
            for k in self._seen
            if k not in now and not k.endswith(" node")
        ]
        self._seen = now
        lines += [f"k3s: {line}" for line in self._new_k3s_lines()]
        stamp = time.strftime("%H:%M:%S")
        return [f"{stamp}  {line}" for line in lines]

    def _new_k3s_lines(self) -> list[str]:
        if self.k3s_log is None or not self.k3s_log.exists():
            return []
        lines = self.k3s_log.read_text(errors="replace").splitlines()
        new = [line.split(" ", 1)[-1] for line in lines[self._k3s_lines :]]
        self._k3s_lines = len(lines)
        return new

    def kubeconfig(self, path: Path) -> Path | None:
        """The workload kubeconfig from `<cluster>-kubeconfig`, written to `path`."""
        try:
            secret = self.core.read_namespaced_secret(f"{NAME}-kubeconfig", NAMESPACE)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        path.write_bytes(base64.b64decode(secret.data["value"]))
        path.chmod(0o600)
        return path


def _counted(cluster: dict[str, Any], group: str, wanted: int) -> bool:
    """The Cluster's own counters (what `clusterctl describe` prints as replicas, available,
    ready) have caught up with its Machines: CAPI updates them a little later."""
    counts = (cluster.get("status") or {}).get(group) or {}
    fields = ("desiredReplicas", "replicas", "readyReplicas", "availableReplicas", "upToDateReplicas")
    return all(counts.get(f) == wanted for f in fields)


def describe(kubeconfig: Path) -> str:
    done = subprocess.run(
        [str(binaries.locate("clusterctl")), "describe", "cluster", NAME, "-n", NAMESPACE,
         "--kubeconfig", str(kubeconfig)],
        env={**os.environ, "CLUSTERCTL_DISABLE_VERSIONCHECK": "true"},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    return done.stdout if done.returncode == 0 else f"clusterctl describe failed: {done.stderr.strip()}"
