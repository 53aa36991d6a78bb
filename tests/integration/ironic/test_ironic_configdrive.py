"""What a fake-hardware "bare-metal machine" would boot: the config-2 drive Ironic masters
from what the backend sent, read back from Ironic's own storage and decoded from the ISO."""

from __future__ import annotations

import shutil

import pytest

from capi_c3os.api.infrastructure import IronicMachine
from capi_c3os.backends.base import Phase
from capi_c3os.backends.ironic import IronicBackend
from capi_c3os.dev.ironic import read_configdrive
from tests.integration.ironic.lab import IronicLab, drive, new_resource_class

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not any(shutil.which(t) for t in ("genisoimage", "mkisofs", "xorrisofs")),
        reason="Ironic masters config drives with genisoimage, mkisofs or xorrisofs (apt: xorriso)",
    ),
]


def test_the_bootstrap_data_and_provider_id_arrive_through_ironic_byte_for_byte(
    lab: IronicLab, backend: IronicBackend
) -> None:
    rc = new_resource_class()
    lab.enroll(1, rc)
    intent = lab.intent("booted", IronicMachine(resource_class=rc))
    running = drive(lambda: backend.provision(intent), {Phase.RUNNING})
    node_uuid = running.details["nodeUUID"]
    assert lab.node(node_uuid)["instance_info"]["configdrive"] == "******", "the API masks it"

    user_data, meta_data = read_configdrive(lab.server, node_uuid)

    assert user_data == intent.user_data
    assert meta_data["provider-id"] == intent.identity.provider_id == "c3os://edge/booted"
    assert meta_data["uuid"] == meta_data["instance-id"] == intent.identity.uuid
    assert meta_data["hostname"] == meta_data["local-hostname"] == "booted"

    drive(lambda: backend.deprovision(intent.identity, intent.site, intent.credentials), {Phase.DELETED})
    with pytest.raises(LookupError, match="holds no config drive"):
        read_configdrive(lab.server, node_uuid)
