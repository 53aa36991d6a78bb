"""The k3s stand-in's bare-metal machines (capi_c3os.dev.k3s_ironic): a node deployed by the
backend is up, with what Ironic holds as its config drive (and what yip leaves when it runs
Kairos's boot stages over it), until it is undeployed."""

from __future__ import annotations

import json
import shutil

import pytest

from capi_c3os.api.infrastructure import IronicMachine
from capi_c3os.backends.base import Phase
from capi_c3os.backends.ironic import IronicBackend
from capi_c3os.dev.k3s import OEM_USERDATA, shipped_k3s_version
from capi_c3os.dev.k3s_ironic import IronicMachines
from capi_c3os.dev.workload import STANDIN_K3S_VERSION
from tests.integration.ironic.lab import IronicLab, drive, new_resource_class

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not any(shutil.which(t) for t in ("genisoimage", "mkisofs", "xorrisofs")),
        reason="Ironic masters config drives with genisoimage, mkisofs or xorrisofs (apt: xorriso)",
    ),
]


def test_a_deployed_node_is_up_with_its_config_drive_until_undeployed(
    lab: IronicLab, backend: IronicBackend
) -> None:
    rc = new_resource_class()
    (node_uuid,) = lab.enroll(1, rc)
    node_name = lab.node(node_uuid)["name"]
    source = IronicMachines(lab.server)
    assert not [n for n in source.running() if n.startswith(f"ironic/{node_name}/")], "enrolled, not deployed"

    intent = lab.intent("metal-1", IronicMachine(resource_class=rc))
    drive(lambda: backend.provision(intent), {Phase.RUNNING})
    name = f"ironic/{node_name}/{intent.identity.uuid}"
    assert source.running()[name] is True
    received = source.received(name)
    assert received is not None
    assert received["USER-DATA"] == intent.user_data
    meta = json.loads(received["META-DATA"])
    assert (meta["provider-id"], meta["local-hostname"]) == (intent.identity.provider_id, "metal-1")
    # The k3s its image ships: the image URL's name carries none, so the stand-in's default.
    assert shipped_k3s_version(received["KAIROS-RELEASE"].decode()) == STANDIN_K3S_VERSION
    # What k3s starts from: what yip's datasource step and stages left on the machine.
    booted = source.booted(name)
    assert booted is not None and booted.k3s_version == STANDIN_K3S_VERSION
    assert booted.files[OEM_USERDATA] == intent.user_data

    drive(lambda: backend.deprovision(intent.identity, intent.site, intent.credentials), {Phase.DELETED})
    assert name not in source.running()
