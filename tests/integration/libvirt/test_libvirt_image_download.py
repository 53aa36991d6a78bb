"""A slow image download runs in the background: the machine that wants it says so in
its Ready condition and requeues, and another machine's reconcile goes ahead meanwhile.
In-process against the real API server, CAPI core and the private libvirtd; the image is
the stand-in's base served over HTTP on 127.0.0.1 by a server that holds after a third
until the test lets it go on.

Before downloads ran in the background, the first reconcile held its worker until the
download ended (here: never, until released)."""

from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from capi_c3os.api.infrastructure import LibvirtSite, Site
from capi_c3os.backends.base import BackendError, MachineIdentity, SiteCredentials
from capi_c3os.backends.libvirt import LibvirtBackend
from capi_c3os.backends.libvirt import domain as dx
from capi_c3os.backends.registry import Backends
from capi_c3os.capi.outcome import Outcome
from capi_c3os.dev.libvirtd import PrivateLibvirtd
from capi_c3os.reconcilers import c3oscluster, c3osmachine
from capi_c3os.reconcilers.c3osmachine import C3OS_CLUSTERS
from capi_c3os.reconcilers.kube import Kube, Resource
from tests.integration.libvirt.conftest import INFRA, Capi
from tests.integration.libvirt.test_libvirt_machine import USER_DATA, domain_names, machine_spec, pool_volumes
from tests.support import eventually

pytestmark = pytest.mark.integration

MACHINES = Resource(INFRA[0], INFRA[1], "c3osmachines", "C3osMachine")
BOUND = 60.0
"""Seconds a reconcile gets to return while the download is held (a bound on a hang,
not on speed)."""


class HeldImage:
    """Serves `data` on 127.0.0.1, a third at once and the rest after `release`."""

    def __init__(self, data: bytes) -> None:
        self.release = threading.Event()
        self.requests = 0
        held = self.release
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests += 1
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                third = len(data) // 3
                self.wfile.write(data[:third])
                self.wfile.flush()
                held.wait(600)
                self.wfile.write(data[third:])

            def log_message(self, *_args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/base.qcow2"

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def held_image(standin_image: Path) -> Iterator[HeldImage]:
    server = HeldImage((standin_image / "base.qcow2").read_bytes())
    yield server
    server.close()


def _no_backend() -> Any:
    raise BackendError("NoBackendInThisTest", "no backend for the C3osCluster here", retry_after=None)


def ready(capi: Capi, name: str) -> dict[str, Any]:
    obj = capi.must_get(INFRA, "c3osmachines", name)
    (condition,) = [c for c in obj["status"]["conditions"] if c["type"] == "Ready"]
    return dict(condition)


def test_a_slow_image_download_reports_progress_and_blocks_no_other_machine(
    capi: Capi, k8s: Any, libvirtd: PrivateLibvirtd, standin_image: Path, held_image: HeldImage
) -> None:
    kube = Kube(k8s)
    backend = LibvirtBackend()
    backends = Backends({"libvirt": lambda: backend})
    never = Backends({"libvirt": _no_backend})
    data = (standin_image / "base.qcow2").read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    shared = dx.base_volume_name(digest, "qcow2")
    capi.create_cluster("dl", {"libvirt": {"uri": libvirtd.uri}})
    slow_spec = machine_spec(libvirtd, standin_image)
    slow_spec["image"] = {"url": held_image.url, "checksum": digest}
    capi.create_machine("dl", "m-slow", slow_spec, USER_DATA)
    capi.create_machine("dl", "m-fast", machine_spec(libvirtd, standin_image), USER_DATA)
    identities = [
        MachineIdentity(capi.namespace, n, f"c3os://{capi.namespace}/{n}") for n in ("m-slow", "m-fast")
    ]
    site = Site(name="lab", libvirt=LibvirtSite(uri=libvirtd.uri))

    def cluster_up() -> Any:
        c3oscluster.reconcile(kube, C3OS_CLUSTERS, capi.must_get(INFRA, "c3osclusters", "dl"), backends=never)
        return (capi.must_get(INFRA, "c3osclusters", "dl").get("status") or {}).get("initialization")

    def reconcile(name: str) -> Outcome:
        """One reconcile of `name`, which must end within `BOUND` whatever the download does."""
        result: list[Outcome] = []
        worker = threading.Thread(
            target=lambda: result.append(
                c3osmachine.reconcile(
                    kube,
                    MACHINES,
                    capi.must_get(INFRA, "c3osmachines", name),
                    backends=backends,
                    record_key=bytes(32),  # stands in for the manager's key
                )
            ),
            daemon=True,
        )
        worker.start()
        worker.join(BOUND)
        assert result, f"the reconcile of {name} still runs after {BOUND:.0f} s: it waits for the download"
        return result[0]

    def provisioned(name: str, when: str) -> None:
        eventually(
            lambda: reconcile(name).done and capi.provisioned(name),
            f"{name} provisioned {when}",
            120,
            every=1.0,
            explain=lambda: capi.ready_message(name),
        )

    try:
        eventually(cluster_up, "C3osCluster provisioned", 60)
        eventually(
            lambda: reconcile("m-slow").reason == "DownloadingImage",
            "m-slow downloading (once CAPI made it a Machine's)",
            60,
            every=1.0,
            explain=lambda: capi.ready_message("m-slow"),
        )
        for _ in range(2):  # later reconciles find the download running, not a new one
            outcome = reconcile("m-slow")
            assert not outcome.done and outcome.reason == "DownloadingImage" and outcome.after
            condition = ready(capi, "m-slow")
            assert (condition["status"], condition["reason"]) == ("False", "DownloadingImage")
            assert held_image.url in condition["message"] and "% of" in condition["message"]
        assert shared not in pool_volumes(libvirtd)  # nothing half-written in the pool

        provisioned("m-fast", "while m-slow's image is still downloading")
        assert not held_image.release.is_set() and ready(capi, "m-slow")["reason"] == "DownloadingImage"

        held_image.release.set()
        provisioned("m-slow", "once its image arrived")
        assert {shared, shared + ".verified"} <= pool_volumes(libvirtd)
        assert dx.domain_name(identities[0]) in domain_names(libvirtd)
        assert held_image.requests == 1, "one download, however many reconciles asked"
    finally:
        for identity in identities:
            backend.deprovision(identity, site, SiteCredentials())
        backend.connections.close()
        with libvirtd.connect() as conn:
            pool = conn.storagePoolLookupByName("default")
            for name in (shared, shared + ".verified"):
                if name in pool.listVolumes():
                    pool.storageVolLookupByName(name).delete(0)
