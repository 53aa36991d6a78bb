"""The config drive ISO: labels, file names and the user-data byte for byte, read back
with pycdlib (as a separate reader) and, where available, with blkid."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from pathlib import Path

import pycdlib
import pytest
import yaml

from capi_c3os.backends.configdrive import build_config_drive

# Bytes a YAML round trip would change: a comment, trailing spaces, CRLF, no final newline.
USER_DATA = b"#cloud-config\r\n# keep me  \nk3s:\n  enabled: true\n\xe2\x9c\x93 not-yaml: [\n"
META = {"instance-id": "7d0e-uuid", "local-hostname": "m-0", "provider-id": "c3os://ns/m-0"}


def read(iso_bytes: bytes, path: str, kind: str = "rr_path") -> bytes:
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(iso_bytes))
    out = io.BytesIO()
    iso.get_file_from_iso_fp(out, **{kind: path})
    iso.close()
    return out.getvalue()


def label(iso_bytes: bytes) -> str:
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(iso_bytes))
    ident = str(iso.pvd.volume_identifier.decode()).strip()
    iso.close()
    return ident


def test_nocloud_drive_carries_user_data_byte_for_byte_under_rock_ridge_and_joliet_names() -> None:
    drive = build_config_drive(USER_DATA, META)
    assert label(drive) == "cidata"
    assert read(drive, "/user-data") == USER_DATA
    assert read(drive, "/user-data", "joliet_path") == USER_DATA
    assert yaml.safe_load(read(drive, "/meta-data")) == META


def test_nocloud_network_config_only_when_given() -> None:
    without = build_config_drive(USER_DATA, META)
    with pytest.raises(pycdlib.pycdlibexception.PyCdlibInvalidInput):
        read(without, "/network-config")
    net: dict[str, object] = {"version": 2, "ethernets": {"eth0": {"dhcp4": True}}}
    with_net = build_config_drive(USER_DATA, META, network_config=net)
    assert yaml.safe_load(read(with_net, "/network-config")) == net


def test_openstack_layout_is_labelled_config_2_with_json_meta_data() -> None:
    net: dict[str, list[str]] = {"links": [], "networks": [], "services": []}
    drive = build_config_drive(USER_DATA, META, network_config=net, layout="configdrive")
    assert label(drive) == "config-2"
    assert read(drive, "/openstack/latest/user_data") == USER_DATA
    meta = json.loads(read(drive, "/openstack/latest/meta_data.json"))
    assert meta["uuid"] == "7d0e-uuid"
    assert meta["hostname"] == "m-0"
    assert meta["provider-id"] == "c3os://ns/m-0"
    assert json.loads(read(drive, "/openstack/latest/network_data.json")) == net


@pytest.mark.skipif(shutil.which("blkid") is None, reason="blkid (util-linux) not installed")
@pytest.mark.parametrize(("layout", "expected"), [("nocloud", "cidata"), ("configdrive", "config-2")])
def test_blkid_sees_the_label_the_guest_searches_for(tmp_path: Path, layout: str, expected: str) -> None:
    path = tmp_path / "drive.iso"
    path.write_bytes(build_config_drive(USER_DATA, META, layout=layout))  # type: ignore[arg-type]
    out = subprocess.run(
        ["blkid", "-p", "-o", "export", str(path)], check=True, capture_output=True, text=True
    ).stdout
    assert f"LABEL={expected}" in out.splitlines()
    assert "TYPE=iso9660" in out.splitlines()


def _busybox_findfs_works() -> bool:
    return shutil.which("busybox") is not None and shutil.which("losetup") is not None


@pytest.mark.skipif(not _busybox_findfs_works(), reason="needs busybox and losetup")
def test_busybox_findfs_finds_the_drive_by_label(tmp_path: Path) -> None:
    """busybox (the stand-in image, many initramfs tools) ignores ISOs under 128 KiB."""
    path = tmp_path / "drive.iso"
    path.write_bytes(build_config_drive(USER_DATA, META))
    attach = subprocess.run(
        ["losetup", "-f", "--show", str(path)], check=False, capture_output=True, text=True
    )
    if attach.returncode != 0:
        pytest.skip(f"no loop devices here: {attach.stderr.strip()}")
    device = attach.stdout.strip()
    try:
        found = subprocess.run(
            ["busybox", "findfs", "LABEL=cidata"], check=False, capture_output=True, text=True
        )
        assert found.stdout.strip() == device
    finally:
        subprocess.run(["losetup", "-d", device], check=True)
