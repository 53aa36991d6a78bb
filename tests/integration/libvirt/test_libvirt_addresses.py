"""Address discovery against the real private libvirtd (inside the test run's network
namespace): a NIC on a libvirt network without DHCP never gets a lease, and the stand-in's
guest agent (not connected yet right after the start: libvirt's "agent not connected"
error, which must not fail the machine; later: only a link-local address) has nothing
either. The machine stays provisioned; looks get rarer and, after a while, the Ready
reason says so."""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import libvirt  # type: ignore[import-untyped]
import pytest

from capi_c3os.api.infrastructure import LibvirtNetworkInterface, MachineImage
from capi_c3os.backends.base import Phase
from capi_c3os.backends.libvirt import LibvirtBackend
from capi_c3os.backends.libvirt import domain as dx
from capi_c3os.backends.libvirt.backend import ADDRESS_PATIENCE, ADDRESS_RETRY, ADDRESS_RETRY_MAX
from capi_c3os.dev.libvirtd import PrivateLibvirtd
from tests.integration.libvirt.conftest import BASE_VOLUME
from tests.integration.libvirt.test_libvirt_backend_daemon import intent

pytestmark = pytest.mark.integration

NO_DHCP = "c3os-nodhcp"
NO_DHCP_XML = f"""<network>
  <name>{NO_DHCP}</name>
  <bridge name='c3osbr9' stp='off'/>
  <ip address='192.168.159.1' netmask='255.255.255.0'/>
</network>"""


@pytest.fixture
def no_dhcp_network(libvirtd: PrivateLibvirtd) -> Iterator[str]:
    """An isolated network (no forward, no DHCP) in the daemon's network namespace."""
    with closing(libvirtd.connect()) as conn:
        net = conn.networkCreateXML(NO_DHCP_XML)  # transient: gone when destroyed
        try:
            yield NO_DHCP
        finally:
            net.destroy()


def test_a_nic_that_never_gets_a_lease_is_polled_ever_less_often_and_reported(
    libvirtd: PrivateLibvirtd, standin_image: Path, no_dhcp_network: str
) -> None:
    base = intent(libvirtd, standin_image, "nolease-0", MachineImage(volume=BASE_VOLUME))
    assert base.libvirt is not None
    machine = replace(
        base,
        libvirt=base.libvirt.model_copy(
            update={"network_interfaces": [LibvirtNetworkInterface(network=no_dhcp_network)]}
        ),
    )
    backend = LibvirtBackend()
    try:
        first = backend.provision(machine)
        assert first.phase is Phase.RUNNING and first.reason == "DomainRunning"
        assert "waiting for its address" in first.message
        assert first.requeue_after == ADDRESS_RETRY
        assert [a.type for a in first.addresses] == ["Hostname"]

        with closing(libvirtd.connect()) as conn:
            dom = conn.lookupByName(dx.domain_name(machine.identity))
            mac = dx.mac_address(machine.identity, 0)
            try:  # the stand-in's agent, if already up, knows no address worth reporting
                seen = dom.interfaceAddresses(libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT, 0)
            except libvirt.libvirtError:  # not connected yet
                seen = {}
            nic_addrs = [a["addr"] for i in seen.values() if i["hwaddr"] == mac for a in i["addrs"] or []]
            assert all(a.startswith("fe80:") for a in nic_addrs)
            # As if the domain had been running for an hour: rewrite the start time we
            # recorded in its metadata (the only clock the backoff reads).
            tag = ET.fromstring(dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, dx.METADATA_NS, 0))
            started_at = tag.find("startedAt")
            assert started_at is not None and abs(float(started_at.text or 0) - time.time()) < 600
            started_at.text = str(int(time.time() - 3600))
            dom.setMetadata(
                libvirt.VIR_DOMAIN_METADATA_ELEMENT,
                ET.tostring(tag, encoding="unicode"),
                dx.METADATA_PREFIX,
                dx.METADATA_NS,
                libvirt.VIR_DOMAIN_AFFECT_CONFIG | libvirt.VIR_DOMAIN_AFFECT_LIVE,
            )

        later = backend.provision(machine)
        assert later.phase is Phase.RUNNING  # still provisioned
        assert later.reason == "NoAddress" and ADDRESS_PATIENCE < 3600
        assert "no NIC has an address after 60 min" in later.message
        assert later.requeue_after == ADDRESS_RETRY_MAX
    finally:
        backend.deprovision(machine.identity, machine.site, machine.credentials)
        backend.connections.close()
