"""Reconciles and Kubernetes API requests per control-plane change.

Runs the real management plane (with a metadata-only audit log), our manager
(bootstrap + control-plane providers, under its own identity so its requests can be
told apart), the workload-cluster stand-in and the machine player, then walks one
cluster through scale 1 -> 3, a version rollout of 3 servers, and scale 3 -> 1.
For each phase it prints the changes (Machines created + deleted), the C3osControlPlane
reconciles and the API requests our manager made, and both per change — side by side
for the manager reading everything from the API server (`--no-watch-cache`) and
reading through the watch-fed view (the default). ROUNDS (default 1) alternates them.

    .venv/bin/python bench/controlplane.py [ROUNDS]
"""

from __future__ import annotations

import base64
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as kc

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from capi_c3os.bootstrap.certificates import KeyPair  # noqa: E402
from capi_c3os.dev.manager import Manager, start_manager  # noqa: E402
from capi_c3os.dev.mgmt import ManagementPlane, api_client, apply, wait_for_crds_established  # noqa: E402
from capi_c3os.dev.processes import free_port  # noqa: E402
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


def reconciles(manager: Manager) -> float:
    return manager.metric_sum("capi_c3os_reconcile_total", kind="C3osControlPlane")


MODES = (("API reads", ["--no-watch-cache"]), ("watch view", []))
"""The manager as it was (every read a request) and with the watch-fed view."""


def run_mode(
    plane: ManagementPlane, root: Path, namespace: str, flags: list[str]
) -> list[tuple[str, int, float, int, float]]:
    standin: WorkloadStandIn | None = None
    player: MachinePlayer | None = None
    manager: Manager | None = None
    rows: list[tuple[str, int, float, int, float]] = []
    try:
        kubeconfig = plane.write_kubeconfig(root / "manager.kubeconfig", USER, ("system:masters",))
        manager = start_manager(
            kubeconfig, root / f"manager-{namespace}.log", *flags, providers="bootstrap,control-plane",
            namespace=namespace,
        )  # fmt: skip
        manager.wait_ready(60)
        with api_client(plane.kubeconfig) as client:
            api, core = kc.CustomObjectsApi(client), kc.CoreV1Api(client)
            core.create_namespace(kc.V1Namespace(metadata=kc.V1ObjectMeta(name=namespace)))
            port = free_port()
            create_cluster(api, namespace, port)

            def secret(name: str) -> KeyPair | None:
                try:
                    data = core.read_namespaced_secret(name, namespace).data
                except kc.exceptions.ApiException:
                    return None
                return KeyPair(base64.b64decode(data["tls.crt"]), base64.b64decode(data["tls.key"]))

            wait(lambda: secret("shop-cca") is not None, "cluster CAs")
            server_ca, client_ca = secret("shop-ca"), secret("shop-cca")
            assert server_ca and client_ca
            standin = WorkloadStandIn(root / f"workload-{namespace}", server_ca, client_ca, port).start()
            standin.keep_answering_etcd_removals()
            player = MachinePlayer(client, namespace)
            player.standin = standin
            player.start()

            def status() -> dict[str, Any]:
                obj = api.get_namespaced_custom_object(*CP, namespace, "c3oscontrolplanes", "shop-cp")
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
            for name, patch, changes, done in phases:
                r0, q0, t0 = reconciles(manager), our_requests(plane.audit_log), time.monotonic()
                api.patch_namespaced_custom_object(
                    *CP, namespace, "c3oscontrolplanes", "shop-cp", {"spec": patch}
                )
                wait(done, name)
                r, q = reconciles(manager) - r0, our_requests(plane.audit_log) - q0
                rows.append((name, changes, r, q, time.monotonic() - t0))
    finally:
        if player:
            player.stop()
        if standin:
            standin.stop()
        if manager:
            manager.stop()
    return rows


def main() -> int:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    with tempfile.TemporaryDirectory(prefix="bench-cp-") as tmp:
        root = Path(tmp)
        plane = ManagementPlane(root / "mgmt", audit=True).start()
        try:
            crds = [yaml.safe_load(p.read_text()) for p in sorted((REPO / "config" / "crd").glob("*.yaml"))]
            apply(plane.kubeconfig, crds)
            wait_for_crds_established(plane.kubeconfig, crds)
            results: dict[tuple[str, str], list[tuple[int, float, int, float]]] = {}
            # The modes alternate in one management plane, one manager at a time, each on
            # its own namespace and cluster, so both see the same machine and load.
            for round_ in range(rounds):
                for index, (mode, flags) in enumerate(MODES):
                    for phase, changes, r, q, seconds in run_mode(
                        plane, root, f"bench-{round_}-{index}", flags
                    ):
                        results.setdefault((phase, mode), []).append((changes, r, q, seconds))
        finally:
            plane.stop()
    print(f"{'phase':<22}{'mode':<12}{'changes':>8}{'reconciles':>12}{'requests':>10}{'rec/chg':>9}"
          f"{'req/chg':>9}{'req/rec':>9}{'seconds':>9}")  # fmt: skip
    for (phase, mode), runs in results.items():
        changes = sum(c for c, _, _, _ in runs)
        r = sum(x for _, x, _, _ in runs)
        q = sum(x for _, _, x, _ in runs)
        seconds = sum(x for _, _, _, x in runs) / len(runs)
        print(f"{phase:<22}{mode:<12}{changes:>8}{r:>12.0f}{q:>10}{r / changes:>9.1f}{q / changes:>9.1f}"
              f"{q / max(r, 1):>9.1f}{seconds:>9.1f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
