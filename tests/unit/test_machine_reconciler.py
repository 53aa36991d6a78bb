"""Pure parts of the infrastructure reconcilers: names, endpoint validation, the
backend registry, and what a template offers the autoscaler."""

from __future__ import annotations

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
from capi_c3os.reconcilers.c3oscluster import valid_host
from capi_c3os.reconcilers.c3osmachine import hostname_for, paused_outcome, provider_id_for
from capi_c3os.reconcilers.c3osmachinetemplate import offered


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
