"""Reconciles and Kubernetes API requests per control-plane change.

Runs the real management plane (with a metadata-only audit log), our manager
(bootstrap + control-plane providers, under its own identity so its requests can be
told apart), the workload-cluster stand-in and the machine player, then walks one
cluster through scale 1 -> 3, a version rollout of 3 servers, and scale 3 -> 1.
For each phase it prints the changes (Machines created + deleted), the C3osControlPlane
reconciles and the API requests our manager made, and both per change.

    .venv/bin/python bench/controlplane.py
"""

from __future__ import annotations

import base64
import json
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as kc
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from capi_c3os.bootstrap.certificates import KeyPair  # noqa: E402
from capi_c3os.dev.mgmt import ManagementPlane, api_client, apply, wait_for_crds_established  # noqa: E402
from capi_c3os.dev.processes import ManagedProcess, free_port, http_ok  # noqa: E402
from capi_c3os.dev.workload import MachinePlayer, WorkloadStandIn, create_cluster  # noqa: E402

USER = "capi-c3os-bench-manager"
CP = ("controlplane.cluster.x-k8s.io", "v1alpha1")


def wait(probe: Callable[[], bool], what: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.25)


def our_requests(audit_log: Path) -> int:
    count = 0
    with audit_log.open() as log:
        for line in log:
            if json.loads(line).get("user", {}).get("username") == USER:
                count += 1
    return count


def reconciles(metrics_port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return sum(
        s.value for f in text_string_to_metric_families(text) for s in f.samples
        if s.name == "capi_c3os_reconcile_total" and s.labels.get("kind") == "C3osControlPlane"
    )  # fmt: skip


def main() -> int:  # noqa: PLR0915 — one linear scenario reads best as one function
    with tempfile.TemporaryDirectory(prefix="bench-cp-") as tmp:
        root = Path(tmp)
        plane = ManagementPlane(root / "mgmt", audit=True).start()
        standin: WorkloadStandIn | None = None
        player: MachinePlayer | None = None
        manager: ManagedProcess | None = None
        try:
            crds = [yaml.safe_load(p.read_text()) for p in sorted((REPO / "config" / "crd").glob("*.yaml"))]
            apply(plane.kubeconfig, crds)
            wait_for_crds_established(plane.kubeconfig, crds)
            kubeconfig = plane.write_kubeconfig(root / "manager.kubeconfig", USER, ("system:masters",))
            health, metrics = free_port(), free_port()
            manager = ManagedProcess("manager", [
                sys.executable, "-m", "capi_c3os", "run", "--kubeconfig", str(kubeconfig),
                "--providers=bootstrap,control-plane",
                f"--health-addr=127.0.0.1:{health}", f"--metrics-addr=127.0.0.1:{metrics}",
            ], root / "manager.log")  # fmt: skip
            manager.start()
            manager.wait_until(lambda: http_ok(f"http://127.0.0.1:{health}/readyz"), "manager ready")
            with api_client(plane.kubeconfig) as client:
                api, core = kc.CustomObjectsApi(client), kc.CoreV1Api(client)
                core.create_namespace(kc.V1Namespace(metadata=kc.V1ObjectMeta(name="bench")))
                port = free_port()
                create_cluster(api, "bench", port)

                def secret(name: str) -> KeyPair | None:
                    try:
                        data = core.read_namespaced_secret(name, "bench").data
                    except kc.exceptions.ApiException:
                        return None
                    return KeyPair(base64.b64decode(data["tls.crt"]), base64.b64decode(data["tls.key"]))

                wait(lambda: secret("shop-cca") is not None, "cluster CAs")
                server_ca, client_ca = secret("shop-ca"), secret("shop-cca")
                assert server_ca and client_ca
                standin = WorkloadStandIn(root / "workload", server_ca, client_ca, port).start()
                standin.keep_answering_etcd_removals()
                player = MachinePlayer(client, "bench")
                player.standin = standin
                player.start()

                def status() -> dict[str, Any]:
                    obj = api.get_namespaced_custom_object(*CP, "bench", "c3oscontrolplanes", "shop-cp")
                    return dict(obj.get("status") or {})

                def settled(replicas: int, version: str) -> Callable[[], bool]:
                    return lambda: (
                        status().get("readyReplicas") == replicas
                        and status().get("replicas") == replicas
                        and status().get("versions") == [{"version": version, "replicas": replicas}]
                    )

                wait(settled(1, "v1.33.4+k3s1"), "first server")
                phases: list[tuple[str, dict[str, Any], int, Callable[[], bool]]] = [
                    ("scale 1 -> 3", {"replicas": 3}, 2, settled(3, "v1.33.4+k3s1")),
                    ("rollout of 3 servers", {"version": "v1.34.1+k3s1"}, 6, settled(3, "v1.34.1+k3s1")),
                    ("scale 3 -> 1", {"replicas": 1}, 2, settled(1, "v1.34.1+k3s1")),
                ]
                print(f"{'phase':<22}{'changes':>8}{'reconciles':>12}{'requests':>10}{'rec/chg':>9}"
                      f"{'req/chg':>9}{'seconds':>9}")  # fmt: skip
                for name, patch, changes, done in phases:
                    r0, q0, t0 = reconciles(metrics), our_requests(plane.audit_log), time.monotonic()
                    api.patch_namespaced_custom_object(
                        *CP, "bench", "c3oscontrolplanes", "shop-cp", {"spec": patch}
                    )
                    wait(done, name)
                    r, q = reconciles(metrics) - r0, our_requests(plane.audit_log) - q0
                    print(f"{name:<22}{changes:>8}{r:>12.0f}{q:>10}{r / changes:>9.1f}{q / changes:>9.1f}"
                          f"{time.monotonic() - t0:>9.1f}")  # fmt: skip
        finally:
            if player:
                player.stop()
            if standin:
                standin.stop()
            if manager:
                manager.stop()
            plane.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
