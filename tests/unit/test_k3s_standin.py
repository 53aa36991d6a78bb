"""The k3s stand-in starts k3s from what Kairos's executor (yip, run here by
`yipnode.apply` over a config drive's files) leaves on a node, and refuses what k3s could
not start from."""

from __future__ import annotations

import pytest
import yaml

from capi_c3os.api.bootstrap import C3osConfigSpec
from capi_c3os.bootstrap import tokens
from capi_c3os.bootstrap.certificates import new_ca
from capi_c3os.bootstrap.cloudconfig import (
    ClusterCAs,
    RenderInput,
    Role,
    ca_paths,
    render_cloud_config,
)
from capi_c3os.dev import yipnode
from capi_c3os.dev.k3s import (
    OEM_USERDATA,
    BootData,
    BootDataError,
    Disk,
    console_blocks,
    console_files,
    k3s_config,
)
from tests.support import with_unloadable_stage

META = yaml.safe_dump({"local-hostname": "n", "provider-id": "c3os://a/n"}).encode()


def node(user_data: str | bytes, seed: dict[str, bytes] | None = None) -> dict[str, bytes]:
    """The node's files after yip ran Kairos's boot stages over a NoCloud drive."""
    data = user_data.encode() if isinstance(user_data, str) else user_data
    files, _log = yipnode.apply({"user-data": data, "meta-data": META}, config_2=False, seed=seed)
    return files


def test_boot_data_from_what_yip_wrote_for_a_rendered_first_server() -> None:
    cas = ClusterCAs(new_ca("s"), new_ca("c"), new_ca("e"))
    token = tokens.pinned_token(cas.server.cert_pem, tokens.new_secret())
    rendered = render_cloud_config(
        RenderInput(Role.INIT_SERVER, C3osConfigSpec(), "n", "10.0.0.5", 6443, token, cas)
    )
    data = BootData.from_node(node(rendered))
    # The provider ID is what our ExecStartPre read from the drive's meta-data.
    assert (data.role, data.hostname, data.provider_id, data.server_url) == (
        Role.INIT_SERVER,
        "n",
        "c3os://a/n",
        None,
    )
    assert data.token == token and "10.0.0.5" in data.tls_sans
    assert data.server_ca == cas.server and data.client_ca == cas.client


def test_boot_data_from_what_yip_wrote_for_a_joining_agent() -> None:
    token = tokens.pinned_token(new_ca("s").cert_pem, tokens.new_secret())
    rendered = render_cloud_config(RenderInput(Role.AGENT, C3osConfigSpec(), "n", "10.0.0.5", 7443, token))
    data = BootData.from_node(node(rendered))
    assert (data.role, data.server_url, data.server_ca) == (Role.AGENT, "https://10.0.0.5:7443", None)
    assert data.token == token and data.provider_id == "c3os://a/n"


def test_a_document_yip_cannot_load_leaves_nothing_k3s_could_start_from() -> None:
    """A user stage with `permissions: "0644"` (a string; yip's is a uint32): PyYAML reads
    the document (the stand-in used to, and joined the node). yip keeps the document (its
    datasource step saves it, so provider-kairos still starts k3s) and sets the hostname,
    but runs none of its stages: no token file, no k3s config, and k3s, pointed at a token
    file that is not there, does not start."""
    token = tokens.pinned_token(new_ca("s").cert_pem, tokens.new_secret())
    rendered = render_cloud_config(RenderInput(Role.AGENT, C3osConfigSpec(), "n", "10.0.0.5", 7443, token))
    rendered = with_unloadable_stage(rendered)
    assert yaml.safe_load(rendered)["k3s-agent"]["enabled"] is True
    files = node(rendered)
    assert OEM_USERDATA in files and files["/etc/hostname"] == b"n\n"
    assert not [p for p in files if p.startswith("/etc/rancher")]
    with pytest.raises(BootDataError, match="no token file /etc/rancher/k3s/cluster-api/token on the node"):
        BootData.from_node(files)


def test_first_server_starts_again_after_its_cas_were_rotated() -> None:
    cas = ClusterCAs(new_ca("s"), new_ca("c"), new_ca("e"))
    token = tokens.pinned_token(cas.server.cert_pem, tokens.new_secret())
    user_data = render_cloud_config(
        RenderInput(Role.INIT_SERVER, C3osConfigSpec(), "n", "10.0.0.5", 6443, token, cas)
    )
    disk = Disk()
    disk.boot(node(user_data))
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
    # The next boot: yip runs the same document over the persisted files; the CA step's
    # `if:` is yip's own answer.
    disk.boot(node(user_data, seed=disk.files))
    data = BootData.from_node(disk.files)
    assert disk.datastore_conflict(datastore) is None, "k3s would refuse to start"
    assert {path: disk.files[path] for path in ca_paths()} == datastore
    assert data.server_ca == rotated.server  # the token still carries the old pin: joiners need a new one


def test_k3s_config_merges_drop_ins_as_k3s_does() -> None:
    files = {
        "/etc/rancher/k3s/config.yaml": b"tls-san: [a]\nkubelet-arg: [x=1]\n",
        "/etc/rancher/k3s/config.yaml.d/10-a.yaml": b"tls-san: [b]\n",
        "/etc/rancher/k3s/config.yaml.d/90-b.yaml": b"kubelet-arg+: [provider-id=p]\n",
        "/etc/rancher/k3s/config.yaml.d/README": b"not: read",
    }
    assert k3s_config(files) == {"tls-san": ["b"], "kubelet-arg": ["x=1", "provider-id=p"]}
    with pytest.raises(BootDataError, match="k3s refuses to start"):
        k3s_config({"/etc/rancher/k3s/config.yaml.d/10-a.yaml": b"[1, 2]\n"})


CLOUD = b"#cloud-config\n"
FIRST = CLOUD + b"k3s: {enabled: true, args: [--cluster-init, --token-file=/t]}\n"


@pytest.mark.parametrize(
    ("files", "reason"),
    [
        ({}, "yip found no cloud-config"),
        ({OEM_USERDATA: CLOUD + b"hostname: n\n"}, "neither k3s nor k3s-agent"),
        ({OEM_USERDATA: FIRST, "/t": b"K10x::server:y"}, "no hostname"),
        ({OEM_USERDATA: FIRST, "/etc/hostname": b"n\n"}, "no token file /t"),
        ({OEM_USERDATA: FIRST, "/etc/hostname": b"n\n", "/t": b"K10x::server:y"}, "server-ca.crt"),
        (
            {OEM_USERDATA: CLOUD + b"k3s-agent: {enabled: true, args: [--token=x]}\n", "/etc/hostname": b"n"},
            "without --server",
        ),
    ],
)
def test_boot_data_refuses_what_k3s_could_not_start_from(files: dict[str, bytes], reason: str) -> None:
    with pytest.raises(BootDataError, match=reason):
        BootData.from_node(files)


def test_console_files_skip_a_block_cut_short() -> None:
    log = (
        "----- BEGIN FILE /etc/hostname 644 0 0 BASE64 -----\r\nbgo=\r\n----- END FILE -----\r\n"
        "----- BEGIN FILE /x 600 0 0 BASE64 -----\r\n!!!\r\n----- END FILE -----\r\n"
    )
    assert console_files(log) == {"/etc/hostname": b"n\n"}


def test_console_blocks_skip_a_block_cut_short() -> None:
    log = (
        "noise\r\n----- BEGIN USER-DATA BASE64 -----\r\naGVs\r\nbG8=\r\n----- END USER-DATA BASE64 -----\r\n"
        "----- BEGIN META-DATA BASE64 -----\r\n!!!\r\n----- END META-DATA BASE64 -----\r\n"
    )
    assert console_blocks(log) == {"USER-DATA": b"hello"}
