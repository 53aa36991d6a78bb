"""Benchmark of the bootstrap provider: `python bench/bootstrap.py [--no-api]`.

- CA generation (three CAs + the pinned token), once per cluster;
- rendering one cloud-config (init server, joining server, agent; every option set),
  without CA generation;
- API requests per C3osConfig reconcile, counted on the way out of `Kube` against a
  real management plane (etcd + kube-apiserver + CAPI core, started here on loopback):
  first server, waiting worker, joining worker, and a config that is already done.

Figures are printed as a small table; they measure this machine, not a promise.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from capi_c3os.bootstrap.certificates import new_ca
from capi_c3os.bootstrap.cloudconfig import ClusterCAs, Role
from capi_c3os.bootstrap.tokens import new_secret, pinned_token
from capi_c3os.reconcilers.kube import Kube


def _timed(fn: Callable[[], Any], repeat: int) -> list[float]:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return samples


def _row(what: str, samples: list[float]) -> str:
    ms = [s * 1000 for s in samples]
    return f"{what:<44} median {statistics.median(ms):8.3f} ms   p90 {sorted(ms)[int(len(ms) * 0.9)]:8.3f} ms"


def bench_rendering() -> None:
    from capi_c3os.bootstrap.cloudconfig import render_cloud_config  # noqa: PLC0415
    from tests.unit.test_bootstrap_cloudconfig import FULL_SPEC, inputs  # noqa: PLC0415

    def cluster_material() -> None:
        server = new_ca("k3s-server-ca")
        ClusterCAs(server=server, client=new_ca("k3s-client-ca"), etcd=new_ca("k3s-etcd-ca"))
        pinned_token(server.cert_pem, new_secret())

    print(_row("CA generation + token (once per cluster)", _timed(cluster_material, 50)))
    for role in Role:
        case = inputs(role, FULL_SPEC)
        print(
            _row(
                f"render {role.value}, every option",
                _timed(functools.partial(render_cloud_config, case), 2000),
            )
        )


class CountingKube(Kube):
    """Counts requests by verb and resource as they leave for the API server."""

    def __init__(self, api_client: Any) -> None:
        super().__init__(api_client)
        self.calls: Counter[str] = Counter()

    def _count(self, verb: str, resource: Any) -> None:
        self.calls[f"{verb} {resource.plural}"] += 1

    def get(self, resource: Any, namespace: str, name: str) -> Any:
        self._count("get", resource)
        return super().get(resource, namespace, name)

    def create(self, resource: Any, namespace: str, body: dict[str, Any]) -> Any:
        self._count("create", resource)
        return super().create(resource, namespace, body)

    def patch_status(self, resource: Any, namespace: str, name: str, patch: dict[str, Any]) -> Any:
        self._count("patch-status", resource)
        return super().patch_status(resource, namespace, name, patch)

    def delete(self, resource: Any, namespace: str, name: str, **kw: Any) -> bool:
        self._count("delete", resource)
        return super().delete(resource, namespace, name, **kw)


def bench_api() -> None:
    from kubernetes import client as kc  # noqa: PLC0415

    from capi_c3os.dev.mgmt import ManagementPlane, api_client, apply, wait_for_crds_established  # noqa: PLC0415
    from capi_c3os.operator.handlers.bootstrap import C3OS_CONFIG  # noqa: PLC0415
    from capi_c3os.reconcilers import c3osconfig  # noqa: PLC0415
    from tests.conftest import our_crds  # noqa: PLC0415
    from tests.integration.bootstrap.conftest import Capi  # noqa: PLC0415
    from tests.support import eventually  # noqa: PLC0415

    with tempfile.TemporaryDirectory() as root:
        plane = ManagementPlane(Path(root)).start()
        try:
            crds = our_crds()
            apply(plane.kubeconfig, crds)
            wait_for_crds_established(plane.kubeconfig, crds)
            with api_client(plane.kubeconfig) as client:
                kc.CoreV1Api(client).create_namespace({"metadata": {"name": "bench"}})
                capi = Capi(client, "bench")
                capi.create_cluster("edge")
                eventually(lambda: capi.infrastructure_provisioned("edge"), "infrastructure provisioned")
                capi.create_machine("edge", "cp-0", control_plane=True)
                capi.create_machine("edge", "w-0", control_plane=False)
                for name in ("cp-0", "w-0"):
                    eventually(lambda name=name: capi.config(name)["metadata"].get("ownerReferences"), name)  # type: ignore[misc]
                kube = CountingKube(client)

                def measure(what: str, name: str) -> None:
                    kube.calls.clear()
                    outcome = c3osconfig.reconcile(kube, C3OS_CONFIG, capi.config(name))
                    detail = ", ".join(f"{k} {v}" for k, v in sorted(kube.calls.items()))
                    print(f"{what:<44} {sum(kube.calls.values()):3d} requests ({outcome.reason}): {detail}")

                measure("first server (creates CAs, token, lock)", "cp-0")
                measure("first server again (already done)", "cp-0")
                measure("worker before the control plane is up", "w-0")
                capi.initialise_control_plane("edge")
                eventually(lambda: capi.control_plane_initialised("edge"), "control plane initialised")
                measure("worker joining", "w-0")
                measure("worker again (already done)", "w-0")
        finally:
            plane.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-api", action="store_true", help="skip the API request counts (no servers)")
    args = parser.parse_args()
    bench_rendering()
    if not args.no_api:
        bench_api()


if __name__ == "__main__":
    main()
