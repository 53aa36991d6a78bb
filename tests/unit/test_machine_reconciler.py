"""Pure parts of the infrastructure reconcilers: names, endpoint validation, the
backend registry, and what a template offers the autoscaler."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from capi_c3os.api.infrastructure import C3osMachineSpec, IronicSite, LibvirtSite, Site
from capi_c3os.backends.base import (
    BackendError,
    MachineIdentity,
    MachineIntent,
    Phase,
    Progress,
    SiteCredentials,
)
from capi_c3os.backends.registry import Backends, site_kind
from capi_c3os.capi.metadata import IN_PLACE_UPDATE_IN_PROGRESS_ANNOTATION
from capi_c3os.capi.outcome import Outcome
from capi_c3os.reconcilers.c3oscluster import valid_host
from capi_c3os.reconcilers.c3osmachine import (
    NODE_VERSION_POLL,
    MachineContext,
    hostname_for,
    paused_outcome,
    provider_id_for,
)
from capi_c3os.reconcilers.c3osmachine import _report_progress as report_progress
from capi_c3os.reconcilers.c3osmachinetemplate import offered
from capi_c3os.reconcilers.kube import MACHINES


def test_provider_id_names_the_object_not_its_uid() -> None:
    assert provider_id_for("edge", "cp-0") == "c3os://edge/cp-0"


@pytest.mark.parametrize(
    ("name", "hostname"),
    [("worker-0", "worker-0"), ("a.b.c", "a-b-c"), ("x" * 80, "x" * 63), ("-odd-", "odd")],
)
def test_hostnames_are_dns_labels(name: str, hostname: str) -> None:
    assert hostname_for(name) == hostname


@pytest.mark.parametrize("host", ["10.0.0.10", "fd00::1", "api.edge.example", "cp"])
def test_endpoint_hosts_that_a_kubeconfig_can_hold(host: str) -> None:
    assert valid_host(host)


@pytest.mark.parametrize("host", ["https://api", "api .example", "-bad.example", "a..b", "x" * 254])
def test_endpoint_hosts_that_are_rejected(host: str) -> None:
    assert not valid_host(host)


def test_deletion_keeps_asking_while_paused_but_nothing_else_does() -> None:
    assert paused_outcome(deleting=False).done
    assert paused_outcome(deleting=True).waiting


class Recorder:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.listeners: list[Any] = []

    def provision(self, intent: MachineIntent) -> Progress:
        self.calls.append(intent.identity.name)
        return Progress(Phase.RUNNING, "Up")

    def deprovision(self, identity: MachineIdentity, site: Site, credentials: SiteCredentials) -> Progress:
        return Progress(Phase.DELETED, "Gone")

    def watch(self, listener: Any) -> None:
        self.listeners.append(listener)


def test_sites_dispatch_to_one_backend_per_kind_made_once_and_watched() -> None:
    made: list[Recorder] = []

    def factory() -> Recorder:
        made.append(Recorder())
        return made[-1]

    backends = Backends({"libvirt": factory})

    def listener(namespace: str, name: str) -> None:
        return None

    backends.watch(listener)
    lab = Site(name="lab", libvirt=LibvirtSite(uri="test:///default"))
    other = Site(name="other", libvirt=LibvirtSite(uri="qemu:///system"))
    assert backends.for_site(lab) is backends.for_site(other)
    assert len(made) == 1 and made[0].listeners == [listener]
    metal = Site(name="metal", ironic=IronicSite(endpoint="http://127.0.0.1:6385"))
    assert site_kind(metal) == "ironic"
    with pytest.raises(BackendError) as err:
        backends.for_site(metal)
    assert err.value.reason == "UnsupportedSite" and err.value.retry_after is None


def test_template_offers_cpu_and_memory_of_a_vm_but_not_of_bare_metal() -> None:
    vm = C3osMachineSpec.model_validate(
        {"backend": {"libvirt": {}}, "image": {"volume": "b"}, "cpus": 4, "memoryMiB": 8192}
    )
    assert offered(vm) == {
        "capacity": {"cpu": "4", "memory": "8192Mi"},
        "nodeInfo": {"architecture": "amd64", "operatingSystem": "linux"},
    }
    metal = C3osMachineSpec.model_validate({"backend": {"ironic": {}}, "image": {"volume": "b"}})
    assert offered(metal) == {"nodeInfo": {"operatingSystem": "linux"}}


def _running(annotations: dict[str, str]) -> Outcome:
    """A running machine's reconcile as the backend reports it (look again in 300 s), its
    Machine wanting another version than its Node runs."""
    obj = {"metadata": {"namespace": "edge", "name": "md-0", "generation": 3, "annotations": annotations},
           "spec": {"image": {"url": "http://images.example/c3os-k3sv1.34.2-k3s1.qcow2"}}}  # fmt: skip
    machine = {
        "spec": {"version": "v1.34.2+k3s1"},
        "status": {"nodeInfo": {"kubeletVersion": "v1.34.1+k3s1"}},
    }
    ctx = MachineContext(kube=None, resource=MACHINES, obj=obj, backends=Backends({}),  # type: ignore[arg-type]
                         now=datetime.now(UTC), record_key=b"", machine=machine)  # fmt: skip
    site = Site(name="rack-1", ironic=IronicSite(endpoint="http://ironic.example:6385"))
    return report_progress(
        ctx, site, Progress(Phase.RUNNING, "Deployed", "node n-1 is active", requeue_after=300)
    )


def test_a_machine_updated_in_place_looks_at_its_node_version_again_before_the_health_interval() -> None:
    """CAPI changes the Machine's version after the C3osMachine's image, and the Node's
    after that: nothing of ours is woken by either, so while the update is in progress the
    VersionMismatch condition would stay what it was at the image change until the
    backend's next health look (Ironic: 5 minutes)."""
    updating = _running({IN_PLACE_UPDATE_IN_PROGRESS_ANNOTATION: ""})
    assert updating.after is not None and updating.after <= NODE_VERSION_POLL
    assert _running({}).after == 300, "otherwise the backend's health interval"
