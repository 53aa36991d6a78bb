"""The k3s stand-in reads a node's role, token and CAs from the cloud-config our
bootstrap provider renders, and refuses what k3s could not start from."""

from __future__ import annotations

import pytest
import yaml

from capi_c3os.api.bootstrap import C3osConfigSpec
from capi_c3os.bootstrap import tokens
from capi_c3os.bootstrap.certificates import new_ca
from capi_c3os.bootstrap.cloudconfig import ClusterCAs, RenderInput, Role, ca_paths, render_cloud_config
from capi_c3os.dev.k3s import BootData, BootDataError, Disk, console_blocks, if_holds

META = yaml.safe_dump({"local-hostname": "n", "provider-id": "c3os://a/n"}).encode()


def test_boot_data_parse_reads_a_rendered_first_server() -> None:
    cas = ClusterCAs(new_ca("s"), new_ca("c"), new_ca("e"))
    token = tokens.pinned_token(cas.server.cert_pem, tokens.new_secret())
    rendered = render_cloud_config(
        RenderInput(Role.INIT_SERVER, C3osConfigSpec(), "n", "10.0.0.5", 6443, token, cas)
    )
    meta = yaml.safe_dump({"local-hostname": "n", "provider-id": "c3os://a/n"}).encode()
    data = BootData.parse(rendered.encode(), meta)
    assert (data.role, data.hostname, data.provider_id, data.server_url) == (
        Role.INIT_SERVER,
        "n",
        "c3os://a/n",
        None,
    )
    assert data.token == token and "10.0.0.5" in data.tls_sans
    assert data.server_ca == cas.server and data.client_ca == cas.client


def test_boot_data_parse_reads_a_joining_agent() -> None:
    token = tokens.pinned_token(new_ca("s").cert_pem, tokens.new_secret())
    rendered = render_cloud_config(RenderInput(Role.AGENT, C3osConfigSpec(), "n", "10.0.0.5", 7443, token))
    data = BootData.parse(rendered.encode(), META)
    assert (data.role, data.server_url, data.server_ca) == (Role.AGENT, "https://10.0.0.5:7443", None)
    assert data.token == token


def test_first_server_starts_again_after_its_cas_were_rotated() -> None:
    cas = ClusterCAs(new_ca("s"), new_ca("c"), new_ca("e"))
    token = tokens.pinned_token(cas.server.cert_pem, tokens.new_secret())
    user_data = render_cloud_config(
        RenderInput(Role.INIT_SERVER, C3osConfigSpec(), "n", "10.0.0.5", 6443, token, cas)
    ).encode()
    disk = Disk()
    BootData.parse(user_data, META, disk)
    first = {path: disk.files[path] for path in ca_paths()}
    assert disk.datastore_conflict(first) is None  # first boot: k3s stores what it was given
    # `k3s certificate rotate-ca`: the datastore holds new CAs, k3s puts them on disk.
    rotated = ClusterCAs(new_ca("s2"), new_ca("c2"), new_ca("e2"))
    pems = [
        pem
        for pair in (rotated.server, rotated.client, rotated.etcd)
        for pem in (pair.cert_pem, pair.key_pem)
    ]
    datastore = dict(zip(ca_paths(), pems, strict=True))
    disk.files.update(datastore)
    # The next boot runs the same user-data's initramfs stage again.
    data = BootData.parse(user_data, META, disk)
    assert disk.datastore_conflict(datastore) is None, "k3s would refuse to start"
    assert {path: disk.files[path] for path in ca_paths()} == datastore
    assert data.server_ca == rotated.server  # the token still carries the old pin: joiners need a new one


def test_yip_if_is_evaluated_only_in_the_form_we_render() -> None:
    files = {"/a": b"x", "/b": b""}
    assert if_holds("[ ! -s /a ] || [ ! -s /b ]", files)  # /b empty
    assert not if_holds("[ ! -s /a ]", files)
    with pytest.raises(BootDataError, match="cannot evaluate"):
        if_holds("test -e /a", files)


@pytest.mark.parametrize(
    ("user_data", "meta", "reason"),
    [
        (b"#cloud-config\nhostname: n\n", META, "neither k3s nor k3s-agent"),
        (b"k3s: {enabled: true}\n", META, "not a #cloud-config"),
        (b"#cloud-config\nk3s: {enabled: true, args: [--cluster-init]}\n", b"{}", "local-hostname"),
        (b"#cloud-config\nk3s: {enabled: true, args: [--cluster-init]}\n", META, "no token"),
        (b"#cloud-config\nk3s-agent: {enabled: true, args: []}\n", META, "without --server"),
    ],
)
def test_boot_data_parse_refuses_what_k3s_could_not_start_from(
    user_data: bytes, meta: bytes, reason: str
) -> None:
    with pytest.raises(BootDataError, match=reason):
        BootData.parse(user_data, meta)


def test_console_blocks_skip_a_block_cut_short() -> None:
    log = (
        "noise\r\n----- BEGIN USER-DATA BASE64 -----\r\naGVs\r\nbG8=\r\n----- END USER-DATA BASE64 -----\r\n"
        "----- BEGIN META-DATA BASE64 -----\r\n!!!\r\n----- END META-DATA BASE64 -----\r\n"
    )
    assert console_blocks(log) == {"USER-DATA": b"hello"}
