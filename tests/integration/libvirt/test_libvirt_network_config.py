"""spec.network for real: the API server enforces the CRD's rules (the CEL twins of the
model's checks), and the real private libvirtd stores a config drive whose
network-config / network_data.json names the MAC the domain's NIC really has. The ISO
is read back from the pool volume the guest boots with."""

from __future__ import annotations

import copy
import io
import json
import xml.etree.ElementTree as ET
from contextlib import closing
from dataclasses import replace
from pathlib import Path
from typing import Any

import pycdlib
import pytest
import yaml
from kubernetes import client as kc
from kubernetes.client.exceptions import ApiException

from capi_c3os.api.infrastructure import LibvirtNetworkInterface, MachineImage, MachineNetwork
from capi_c3os.backends.base import BackendError, Phase
from capi_c3os.backends.libvirt import LibvirtBackend
from capi_c3os.backends.libvirt import domain as dx
from capi_c3os.backends.registry import Backends
from capi_c3os.dev.libvirtd import NETWORK_NAME, PrivateLibvirtd
from capi_c3os.reconcilers import c3oscluster, c3osmachine
from capi_c3os.reconcilers.c3osmachine import C3OS_CLUSTERS
from capi_c3os.reconcilers.kube import Kube, Resource
from tests.integration.libvirt.conftest import BASE_VOLUME, CAPI, INFRA, Capi
from tests.integration.libvirt.test_libvirt_backend_daemon import intent
from tests.support import eventually

pytestmark = pytest.mark.integration

NETWORK: dict[str, Any] = {
    "interfaces": [
        {"addresses": ["10.20.0.5/24", "2001:db8:20::5/64"], "gateway4": "10.20.0.1", "gateway6": "fe80::1"},
        {"dhcp4": True},
    ],
    "nameservers": ["10.20.0.53"],
    "searchDomains": ["edge.example"],
}
SPEC: dict[str, Any] = {"backend": {"libvirt": {}}, "image": {"volume": "base"}, "network": NETWORK}


def machine(spec: dict[str, Any], kind: str = "C3osMachine") -> dict[str, Any]:
    body = {"apiVersion": "/".join(INFRA), "kind": kind, "metadata": {"name": "net"}}
    if kind == "C3osMachineTemplate":
        body["spec"] = {"template": {"spec": spec}}
    else:
        body["spec"] = spec
    return body


def create(k8s: Any, namespace: str, body: dict[str, Any]) -> None:
    plural = body["kind"].lower() + "s"
    kc.CustomObjectsApi(k8s).create_namespaced_custom_object(*INFRA, namespace, plural, body, dry_run="All")


def test_server_accepts_edge_settings(k8s: Any, namespace: str) -> None:
    create(k8s, namespace, machine(SPEC))
    dhcp = {**SPEC, "network": {"interfaces": [{"dhcp4": True}], "nameservers": ["10.20.0.53"]}}
    create(k8s, namespace, machine(dhcp, "C3osMachineTemplate"))


@pytest.mark.parametrize(
    ("interface", "says"),
    [
        ({}, "set dhcp4, dhcp6 or addresses"),
        ({"addresses": ["10.0.0.5"]}, "prefix length"),
        ({"addresses": ["10.0.0.500/24"]}, "prefix length"),
        ({"addresses": ["10.0.0.5/24"], "gateway4": "10.0.1.1"}, "gateway4 must be"),
        ({"addresses": ["2001:db8::5/64"], "gateway4": "10.0.0.1"}, "gateway4 must be"),
        ({"addresses": ["10.0.0.5/24"], "gateway6": "10.0.0.1"}, "gateway6 must be"),
        ({"dhcp4": True, "gateway4": "10.0.0.1"}, "gateway4 must be"),
    ],
)
def test_server_rejects_bad_interface_settings_with_the_models_message(
    k8s: Any, namespace: str, interface: dict[str, Any], says: str
) -> None:
    spec = copy.deepcopy(SPEC)
    spec["network"] = {"interfaces": [interface]}
    with pytest.raises(ApiException) as rejected:
        create(k8s, namespace, machine(spec))
    assert rejected.value.status == 422 and says in str(rejected.value.body), rejected.value.body


def test_server_rejects_static_addresses_in_a_template_and_bad_nameservers(k8s: Any, namespace: str) -> None:
    with pytest.raises(ApiException) as rejected:
        create(k8s, namespace, machine(SPEC, "C3osMachineTemplate"))
    assert "static addresses belong to one machine" in str(rejected.value.body)
    spec = copy.deepcopy(SPEC)
    spec["network"]["nameservers"] = ["dns.example"]
    with pytest.raises(ApiException) as rejected:
        create(k8s, namespace, machine(spec))
    assert "nameservers must be IP addresses" in str(rejected.value.body)


def read_iso(path: Path, *names: str) -> dict[str, bytes]:
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    label = iso.pvd.volume_identifier.decode().strip()
    found = {"label": label.encode()}
    for name in names:
        out = io.BytesIO()
        iso.get_file_from_iso_fp(out, rr_path=name)
        found[name] = out.getvalue()
    iso.close()
    return found


@pytest.mark.parametrize("layout", ["nocloud", "configdrive"])
def test_the_config_drive_names_the_macs_the_domain_really_has(
    libvirtd: PrivateLibvirtd, standin_image: Path, layout: str
) -> None:
    base = intent(libvirtd, standin_image, f"net-{layout}", MachineImage(volume=BASE_VOLUME))
    assert base.libvirt is not None
    nics = [LibvirtNetworkInterface(network=NETWORK_NAME), LibvirtNetworkInterface(network=NETWORK_NAME)]
    wanted = replace(
        base,
        network=MachineNetwork.model_validate(NETWORK),
        libvirt=base.libvirt.model_copy(update={"network_interfaces": nics, "config_drive_format": layout}),
    )
    backend = LibvirtBackend()
    try:
        progress = backend.provision(wanted)
        assert progress.phase is Phase.RUNNING
        assert {a.address for a in progress.addresses} >= {"10.20.0.5", "2001:db8:20::5"}
        with closing(libvirtd.connect()) as conn:
            dom = conn.lookupByName(dx.domain_name(wanted.identity))
            macs = [m.get("address") for m in ET.fromstring(dom.XMLDesc(0)).iterfind("devices/interface/mac")]
            drive = next(
                d.find("source").get("file")  # type: ignore[union-attr]
                for d in ET.fromstring(dom.XMLDesc(0)).iterfind("devices/disk")
                if d.get("device") == "cdrom"
            )
        assert macs == [dx.mac_address(wanted.identity, 0), dx.mac_address(wanted.identity, 1)]
        iso = Path(str(drive))
        assert iso.parent == libvirtd.pool_path  # the volume the guest reads

        if layout == "nocloud":
            got = read_iso(iso, "/network-config", "/user-data")
            assert got["label"] == b"cidata" and got["/user-data"] == wanted.user_data
            config = yaml.safe_load(got["/network-config"])
            assert config["version"] == 2
            eth0, eth1 = config["ethernets"]["eth0"], config["ethernets"]["eth1"]
            assert eth0["match"] == {"macaddress": macs[0]} and eth1["match"] == {"macaddress": macs[1]}
            assert eth0["addresses"] == ["10.20.0.5/24", "2001:db8:20::5/64"] and eth0["dhcp4"] is False
            assert {"to": "::/0", "via": "fe80::1"} in eth0["routes"]
            assert eth0["nameservers"] == {"addresses": ["10.20.0.53"], "search": ["edge.example"]}
            assert eth1["dhcp4"] is True
        else:
            got = read_iso(iso, "/openstack/latest/network_data.json", "/openstack/latest/user_data")
            assert got["label"] == b"config-2" and got["/openstack/latest/user_data"] == wanted.user_data
            data = json.loads(got["/openstack/latest/network_data.json"])
            assert [link["ethernet_mac_address"] for link in data["links"]] == macs
            v4 = next(n for n in data["networks"] if n["type"] == "ipv4")
            assert (v4["ip_address"], v4["netmask"], v4["link"]) == ("10.20.0.5", "255.255.255.0", "eth0")
            assert {"type": data["networks"][-1]["type"]} == {"type": "ipv4_dhcp"}
            assert data["services"] == [{"type": "dns", "address": "10.20.0.53"}]
    finally:
        backend.deprovision(wanted.identity, wanted.site, wanted.credentials)
        backend.connections.close()


def test_network_settings_on_an_ironic_site_are_a_condition_not_silently_ignored(
    capi: Capi, k8s: Any
) -> None:
    """The Ironic backend takes no spec.network yet: the reconciler (run in-process
    against the real API server and CAPI core, no backend ever made) says so."""
    kube = Kube(k8s)
    never = Backends({"ironic": _no_backend, "libvirt": _no_backend})
    capi.create(INFRA, "c3osclusters", {
        "apiVersion": "/".join(INFRA), "kind": "C3osCluster", "metadata": {"name": "bm"},
        "spec": {"controlPlaneEndpoint": {"host": "cp.example.test", "port": 6443},
                 "sites": [{"name": "rack", "ironic": {"endpoint": "http://127.0.0.1:9"}}]},
    })  # fmt: skip
    capi.create(CAPI, "clusters", {
        "apiVersion": "/".join(CAPI), "kind": "Cluster", "metadata": {"name": "bm"},
        "spec": {"infrastructureRef": {"apiGroup": INFRA[0], "kind": "C3osCluster", "name": "bm"}},
    })  # fmt: skip
    spec = {**SPEC, "backend": {"ironic": {}}, "image": {"url": "https://images.example/c3os.raw",
            "checksum": "a" * 64, "format": "raw"}}  # fmt: skip
    capi.create_machine("bm", "metal-0", spec, b"#cloud-config\n")

    def reconciled(resource: Resource, name: str, module: Any) -> dict[str, Any]:
        obj = capi.must_get(INFRA, resource.plural, name)
        signs = {"record_key": bytes(32)} if module is c3osmachine else {}  # the manager's key
        module.reconcile(kube, resource, obj, backends=never, **signs)
        return capi.must_get(INFRA, resource.plural, name)

    eventually(
        lambda: reconciled(C3OS_CLUSTERS, "bm", c3oscluster)["status"].get("initialization"),
        "C3osCluster provisioned",
        60,
    )
    machines = Resource(INFRA[0], INFRA[1], "c3osmachines", "C3osMachine")

    def reason() -> str | None:
        status = reconciled(machines, "metal-0", c3osmachine).get("status") or {}
        ready = [c for c in status.get("conditions") or [] if c["type"] == "Ready"]
        return ready[0]["reason"] if ready and ready[0]["reason"] == "NetworkConfigUnsupported" else None

    eventually(reason, "NetworkConfigUnsupported", 120, every=1.0)
    obj = capi.must_get(INFRA, "c3osmachines", "metal-0")
    ready = next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")
    assert "spec.network is applied on libvirt sites only" in ready["message"]
    assert "providerID" not in obj["spec"]  # nothing placed, nothing created


def _no_backend() -> Any:
    # The cluster's orphan sweep skips a site whose backend cannot be made; a machine
    # reconcile that got as far as its backend would show this reason instead.
    raise BackendError("NoBackendInThisTest", "no backend may be made here", retry_after=None)
