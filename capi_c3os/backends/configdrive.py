"""Config drives: the ISO a machine reads its bootstrap data from, built in-process.

Two layouts, both understood by c3os/Kairos (and cloud-init):

- NoCloud: volume label `cidata`, files `user-data`, `meta-data` (YAML) and optionally
  `network-config`.
- OpenStack config drive: volume label `config-2`, files `openstack/latest/user_data`,
  `openstack/latest/meta_data.json` and optionally `openstack/latest/network_data.json`
  (Ironic's own config drives look like this).

`user-data` is the bootstrap data byte for byte: it is never parsed or re-encoded here.
Files carry Rock Ridge and Joliet names, so Linux sees the lowercase, hyphenated names
whatever it mounts with.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from typing import Any, Literal

import pycdlib
import yaml

Layout = Literal["nocloud", "configdrive"]

MIN_SIZE = 256 * 1024
"""Drives are padded to at least this: busybox's `findfs`/volume_id (in many initramfs
tools, and our stand-in image) does not recognise an ISO smaller than 128 KiB, and a
few zero sectors at the end are invisible to every other reader."""

NOCLOUD_LABEL = "cidata"
CONFIG_2_LABEL = "config-2"


def render_meta_data(meta_data: Mapping[str, Any], layout: Layout) -> bytes:
    """meta-data as YAML (NoCloud) or meta_data.json (config-2; keys as OpenStack names
    them: `uuid`, `hostname`, plus ours as given)."""
    if layout == "nocloud":
        return yaml.safe_dump(dict(meta_data), sort_keys=True, default_flow_style=False).encode()
    data = dict(meta_data)
    if "instance-id" in data:
        data.setdefault("uuid", data["instance-id"])
    if "local-hostname" in data:
        data.setdefault("hostname", data["local-hostname"])
        data.setdefault("name", data["local-hostname"])
    return json.dumps(data, sort_keys=True, indent=2).encode()


def build_config_drive(
    user_data: bytes,
    meta_data: Mapping[str, Any],
    network_config: Mapping[str, Any] | None = None,
    layout: Layout = "nocloud",
) -> bytes:
    """The ISO image, as bytes (config drives are small: kilobytes)."""
    files: list[tuple[str, str, bytes]] = []  # (iso9660 path, real path, content)
    if layout == "nocloud":
        label = NOCLOUD_LABEL
        files.append(("/USERDATA.;1", "/user-data", user_data))
        files.append(("/METADATA.;1", "/meta-data", render_meta_data(meta_data, layout)))
        if network_config is not None:
            rendered = yaml.safe_dump(dict(network_config), sort_keys=True).encode()
            files.append(("/NETWORKC.;1", "/network-config", rendered))
        dirs: list[tuple[str, str]] = []
    else:
        label = CONFIG_2_LABEL
        dirs = [("/OPENSTAC", "/openstack"), ("/OPENSTAC/LATEST", "/openstack/latest")]
        files.append(("/OPENSTAC/LATEST/USERDATA.;1", "/openstack/latest/user_data", user_data))
        files.append(
            (
                "/OPENSTAC/LATEST/METADATA.;1",
                "/openstack/latest/meta_data.json",
                render_meta_data(meta_data, layout),
            )
        )
        if network_config is not None:
            rendered = json.dumps(dict(network_config), sort_keys=True, indent=2).encode()
            files.append(("/OPENSTAC/LATEST/NETWORKD.;1", "/openstack/latest/network_data.json", rendered))

    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident=label)
    for iso_path, real in dirs:
        iso.add_directory(iso_path, rr_name=real.rsplit("/", 1)[1], joliet_path=real)
    for iso_path, real, content in files:
        iso.add_fp(
            io.BytesIO(content), len(content), iso_path, rr_name=real.rsplit("/", 1)[1], joliet_path=real
        )
    out = io.BytesIO()
    iso.write_fp(out)
    iso.close()
    data = out.getvalue()
    return data + b"\0" * max(0, MIN_SIZE - len(data))
