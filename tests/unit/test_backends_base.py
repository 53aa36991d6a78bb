from __future__ import annotations

from capi_c3os.backends.base import MachineIdentity, SiteCredentials


def test_identity_uuid_depends_only_on_the_provider_id() -> None:
    a = MachineIdentity("ns", "m1", "c3os://ns/m1")
    moved = MachineIdentity("ns", "m1", "c3os://ns/m1")  # same object after clusterctl move
    other = MachineIdentity("ns", "m2", "c3os://ns/m2")
    assert a.uuid == moved.uuid != other.uuid


def test_resource_names_stay_short_readable_and_distinct() -> None:
    long_a = MachineIdentity("n" * 63, "m" * 253, "c3os://a")
    long_b = MachineIdentity("n" * 63, "m" * 253, "c3os://b")
    assert len(long_a.resource_name) <= 63
    assert long_a.resource_name != long_b.resource_name
    assert MachineIdentity("edge", "cp-0", "c3os://edge/cp-0").resource_name.startswith("edge-cp-0-")


def test_credentials_never_show_their_values() -> None:
    creds = SiteCredentials({"ssh-privatekey": b"-----BEGIN OPENSSH PRIVATE KEY-----"}, b"CA")
    assert "PRIVATE" not in repr(creds) and "PRIVATE" not in str(creds)
    assert "ssh-privatekey" in repr(creds)
