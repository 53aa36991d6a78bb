"""What the Ironic backend asks of Ironic, built from the intent (no server needed)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from capi_c3os.api.infrastructure import (
    IronicMachine,
    IronicSite,
    LibvirtSite,
    MachineImage,
    RootDeviceHints,
    Site,
)
from capi_c3os.backends.base import BackendError, MachineIdentity, MachineIntent, SiteCredentials
from capi_c3os.backends.ironic import IronicBackend
from capi_c3os.backends.ironic.client import Node
from capi_c3os.backends.ironic.instance import (
    CLEAN_ATTEMPTS,
    CLUSTER,
    DEPLOY_ATTEMPTS,
    MARKER,
    addresses,
    allocation_request,
    attempts,
    claim,
    configdrive,
    deploy_interface_for,
    instance_info,
    marked_for,
    owner_label,
    root_device,
    tags,
)

CHECKSUM = "cd" * 32
IDENTITY = MachineIdentity("edge", "cp-0", "c3os://edge/cp-0")
SITE = Site(name="rack", ironic=IronicSite(endpoint="http://127.0.0.1:1"))


def intent(
    machine: IronicMachine | None = None,
    image: MachineImage | None = None,
    user_data: bytes = b"#cloud-config\n",
    network: dict[str, Any] | None = None,
    site: Site = SITE,
) -> MachineIntent:
    return MachineIntent(
        identity=IDENTITY,
        site=site,
        credentials=SiteCredentials(),
        image=image or MachineImage(url="https://img.example/c3os.qcow2", checksum=CHECKSUM),
        cpus=2,
        memory_mib=4096,
        disk_gib=20,
        hostname="cp-0",
        user_data=user_data,
        meta_data={"instance-id": IDENTITY.uuid, "provider-id": IDENTITY.provider_id, "cluster": "edge-1"},
        network_config=network,
        ironic=machine if machine is not None else IronicMachine(),
    )


def test_allocation_is_named_and_numbered_after_the_machine() -> None:
    machine = IronicMachine(
        resource_class="gpu-large", traits=["CUSTOM_GPU"], candidate_nodes=["r1-n4", "r1-n5"]
    )
    request = allocation_request(IDENTITY, machine)
    assert request["name"] == IDENTITY.resource_name and request["uuid"] == IDENTITY.uuid
    assert request["resource_class"] == "gpu-large"
    assert request["traits"] == ["CUSTOM_GPU"] and request["candidate_nodes"] == ["r1-n4", "r1-n5"]
    assert request["extra"]["c3os_provider_id"] == "c3os://edge/cp-0"
    assert "traits" not in allocation_request(IDENTITY, IronicMachine())


OTHER = MachineIdentity("edge", "cp-1", "c3os://edge/cp-1")
FORGED = MachineIdentity("tenant-b", "thief", IDENTITY.provider_id)
"""Claims cp-0's provider ID from another namespace: the same UUID, other names."""


def marks(identity: MachineIdentity, **counters: Any) -> dict[str, Any]:
    return {MARKER: identity.uuid, **tags(identity, "edge/c1"), **counters}


def test_only_a_marker_and_tags_naming_the_machine_make_a_node_its_own() -> None:
    assert marked_for(marks(IDENTITY), IDENTITY)
    assert not marked_for(marks(OTHER), IDENTITY)
    assert FORGED.uuid == IDENTITY.uuid and not marked_for(marks(IDENTITY), FORGED)
    assert not marked_for({MARKER: IDENTITY.uuid}, IDENTITY), "a marker without tags is no one's"
    assert owner_label(marks(OTHER)) == "edge/cp-1"
    assert owner_label({}, marks(OTHER)) == "edge/cp-1"
    assert "cannot name" in owner_label({}, {MARKER: "x"})


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (marks(IDENTITY, c3os_deploy_attempts=2), 2),
        (marks(OTHER, c3os_deploy_attempts=4), 0),
        (marks(IDENTITY, c3os_deploy_attempts=4) | {MARKER: OTHER.uuid}, 0),
        (marks(IDENTITY), 0),
        (marks(IDENTITY, c3os_deploy_attempts="many"), 0),
        (marks(IDENTITY, c3os_deploy_attempts=-3), 0),
    ],
)
def test_only_the_machines_own_counters_count(extra: dict[str, Any], expected: int) -> None:
    assert attempts(extra, DEPLOY_ATTEMPTS, IDENTITY) == expected
    assert attempts(extra, DEPLOY_ATTEMPTS, FORGED) == 0


def test_claiming_a_node_writes_the_machines_keys_and_strips_every_other_c3os_key() -> None:
    extra = {**marks(OTHER, c3os_deploy_attempts=4, c3os_clean_attempts=2), "rack": "r1"}

    patch = claim(extra, IDENTITY, {DEPLOY_ATTEMPTS: 1})

    written = {op["path"].removeprefix("/extra/"): op.get("value") for op in patch if op["op"] == "add"}
    removed = {op["path"].removeprefix("/extra/") for op in patch if op["op"] == "remove"}
    assert written == {MARKER: IDENTITY.uuid, **tags(IDENTITY, ""), DEPLOY_ATTEMPTS: 1}
    assert removed == {CLUSTER, CLEAN_ATTEMPTS}, "the other machine's cluster and counters go"
    assert all(op["path"] != "/extra/rack" for op in patch), "keys not ours are an operator's"
    assert not [op for op in claim({}, IDENTITY, {}) if op["op"] == "remove"]


def test_disk_images_are_deployed_with_their_checksum() -> None:
    info = instance_info(intent(IronicMachine(boot_mode="uefi", traits=["CUSTOM_X"])))
    assert info["image_source"] == "https://img.example/c3os.qcow2"
    assert info["image_disk_format"] == "qcow2"
    assert (info["image_os_hash_algo"], info["image_os_hash_value"]) == ("sha256", CHECKSUM)
    assert info["capabilities"] == {"boot_mode": "uefi"}
    assert info["traits"] == ["CUSTOM_X"]
    assert "boot_iso" not in info


def test_live_isos_boot_through_the_ramdisk_deploy() -> None:
    iso = MachineImage(url="https://img.example/c3os.iso", checksum=CHECKSUM, format="iso")
    info = instance_info(intent(image=iso))
    assert info["boot_iso"] == "https://img.example/c3os.iso" and "image_source" not in info
    assert deploy_interface_for(IronicMachine(), "iso", "direct") == "ramdisk"
    assert deploy_interface_for(IronicMachine(), "qcow2", "ramdisk") == "direct"
    assert deploy_interface_for(IronicMachine(), "qcow2", "direct") is None, "the node's own choice is kept"
    assert deploy_interface_for(IronicMachine(deploy_interface="direct"), "iso", "ramdisk") == "direct"


def test_root_device_hints_use_ironics_names() -> None:
    hints = RootDeviceHints(
        device_name="/dev/disk/by-path/pci-0000:00:1f.2-ata-1",
        min_size_gigabytes=100,
        serial_number="S1",
        rotational=False,
    )
    assert root_device(hints) == {
        "by_path": "/dev/disk/by-path/pci-0000:00:1f.2-ata-1",
        "size": ">= 100",
        "serial": "S1",
        "rotational": False,
    }
    assert root_device(RootDeviceHints(device_name="/dev/sda")) == {"name": "/dev/sda"}


def test_config_drive_carries_bootstrap_data_and_identity() -> None:
    drive = configdrive(
        intent(user_data=b"#cloud-config\nhostname: cp-0\n", network={"links": [], "networks": []})
    )
    assert drive["user_data"] == "#cloud-config\nhostname: cp-0\n"
    meta = drive["meta_data"]
    assert meta["uuid"] == meta["instance-id"] == IDENTITY.uuid
    assert meta["provider-id"] == "c3os://edge/cp-0" and meta["local-hostname"] == "cp-0"
    assert meta["cluster"] == "edge-1", "the reconciler's meta-data is passed on"
    assert drive["network_data"] == {"links": [], "networks": []}
    assert "network_data" not in configdrive(intent())


def test_addresses_are_the_hostname_and_static_ips_from_network_data() -> None:
    network = {
        "networks": [{"ip_address": "10.0.0.5"}, {"ip_address": "81.2.69.160"}, {"ip_address": "bogus"}]
    }
    assert [(a.type, a.address) for a in addresses(intent(network=network))] == [
        ("Hostname", "cp-0"),
        ("InternalIP", "10.0.0.5"),
        ("ExternalIP", "81.2.69.160"),
    ]


class NoConnection:
    def __call__(self, *_: object) -> object:
        raise AssertionError("bad input must be refused before Ironic is contacted")


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (intent(image=MachineImage(volume="base-image")), "UnsupportedImage"),
        (intent(user_data=b"\xff\xfe binary"), "InvalidBootstrapData"),
        (intent(site=Site(name="kvm", libvirt=LibvirtSite(uri="qemu:///system"))), "WrongBackend"),
    ],
)
def test_bad_input_is_refused_with_a_reason_before_anything_is_created(
    bad: MachineIntent, reason: str
) -> None:
    with pytest.raises(BackendError) as raised:
        IronicBackend(connector=NoConnection()).provision(bad)
    assert raised.value.reason == reason
    assert raised.value.retry_after is None, "waiting will not fix bad input"


def test_a_machine_without_ironic_settings_is_refused() -> None:
    missing = MachineIntent(**{**intent().__dict__, "ironic": None})
    with pytest.raises(BackendError) as raised:
        IronicBackend(connector=NoConnection()).provision(missing)
    assert raised.value.reason == "WrongBackend"


def test_requeue_delays_carry_up_to_a_quarter_of_jitter() -> None:
    backend = IronicBackend(connector=NoConnection())
    delays = [backend._jitter(10.0) for _ in range(200)]
    assert all(10.0 <= d <= 12.5 for d in delays)
    assert len(set(delays)) > 1


def ironic_node(state: str, updated: str | None) -> Node:
    return Node.from_api({"uuid": "n-1", "provision_state": state, "provision_updated_at": updated})


@pytest.mark.parametrize(
    ("state", "minutes_ago", "stalled"),
    [("deleting", 20, True), ("deleting", 1, False), ("cleaning", 20, False), ("clean wait", 60, False)],
)
def test_only_a_teardown_stuck_in_deleting_past_the_limit_is_called_stalled(
    state: str, minutes_ago: int, stalled: bool
) -> None:
    backend = IronicBackend(connector=NoConnection(), stalled_teardown_after=600)
    updated = (datetime.now(UTC) - timedelta(minutes=minutes_ago)).isoformat()

    progress = backend._stalled_teardown(ironic_node(state, updated))

    assert (progress is not None) is stalled
    if progress is not None:
        assert progress.reason == "TeardownStalled" and "restart the Ironic conductor" in progress.message
        assert progress.requeue_after is not None


def test_a_teardown_without_a_readable_timestamp_is_never_called_stalled() -> None:
    backend = IronicBackend(connector=NoConnection(), stalled_teardown_after=0)
    assert backend._stalled_teardown(ironic_node("deleting", None)) is None
    assert backend._stalled_teardown(ironic_node("deleting", "yesterday")) is None
    naive = (datetime.now(UTC) - timedelta(hours=1)).replace(tzinfo=None).isoformat()
    assert backend._stalled_teardown(ironic_node("deleting", naive)) is not None, "Ironic's times are UTC"
