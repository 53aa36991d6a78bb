"""The rendered cloud-config: golden files (reviewed like code; regenerate with
UPDATE_GOLDEN=1 and read the diff), its structure, and the node-side scripts it
carries, run here with stand-ins for blkid/mount/k3s/curl.

No k3s binary or Kairos node runs in these tests: what they check is that we render
exactly what k3s and Kairos document (see the facts files), not that a node boots."""

from __future__ import annotations

import base64
import copy
import dataclasses
import os
import re
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from capi_c3os.api.bootstrap import C3osConfigSpec
from capi_c3os.bootstrap.certificates import KeyPair
from capi_c3os.bootstrap.cloudconfig import (
    CONFIG_FILE,
    KUBE_VIP_MANIFEST,
    PROVIDER_ID_SCRIPT,
    SENTINEL_SCRIPT,
    TOKEN_FILE,
    ClusterCAs,
    RenderError,
    RenderInput,
    Role,
    ca_paths,
    first_boot_condition,
    referenced_secrets,
    render_cloud_config,
)
from tests.examples import CONFIG_SPEC
from tests.unit.test_bootstrap_kairos_schema import check_cloud_config

GOLDEN = Path(__file__).parent / "golden_bootstrap"
TOKEN = "K10" + "ab" * 32 + "::server:" + "cd" * 32
CAS = ClusterCAs(
    server=KeyPair(b"-----BEGIN CERTIFICATE-----\nSERVER\n-----END CERTIFICATE-----\n", b"SERVER-KEY\n"),
    client=KeyPair(b"-----BEGIN CERTIFICATE-----\nCLIENT\n-----END CERTIFICATE-----\n", b"CLIENT-KEY\n"),
    etcd=KeyPair(b"-----BEGIN CERTIFICATE-----\nETCD\n-----END CERTIFICATE-----\n", b"ETCD-KEY\n"),
)
ALL_CAS = dataclasses.replace(
    CAS,
    etcd_peer=KeyPair(b"-----BEGIN CERTIFICATE-----\nPEER\n-----END CERTIFICATE-----\n", b"PEER-KEY\n"),
    request_header=KeyPair(
        b"-----BEGIN CERTIFICATE-----\nPROXY\n-----END CERTIFICATE-----\n", b"PROXY-KEY\n"
    ),
    service_account_key=b"SA-KEY\n",
)
FULL_SPEC: dict[str, Any] = copy.deepcopy(CONFIG_SPEC)
FULL_SPEC["k3s"]["registries"]["configs"] = {
    "registry.local:5000": {
        "authSecretRef": {"name": "reg-auth"},
        "caBundleSecretRef": {"name": "reg-ca", "key": "ca.crt"},
        "insecureSkipVerify": False,
    }
}
FULL_SPEC["k3s"]["server"]["kubeAPIServerArgs"] = ["audit-log-maxage=30"]
FULL_SPEC["k3s"]["server"]["args"] = ["--write-kubeconfig-mode=0640"]
FULL_SPEC["k3s"]["kubeProxyArgs"] = ["metrics-bind-address=0.0.0.0"]
FULL_SPEC["p2p"]["dns"] = True
SECRETS = {
    "s": {"k": b"from-a-secret\n"},
    "p2p": {"token": b"p2p-network-token\n"},
    "reg-auth": {"username": b"pull", "password": b"registry-password"},
    "reg-ca": {"ca.crt": b"-----BEGIN CERTIFICATE-----\nREGISTRY\n-----END CERTIFICATE-----\n"},
}
SECRET_VALUES = [b"registry-password", b"p2p-network-token", b"from-a-secret", b"SERVER-KEY", TOKEN.encode()]


def inputs(role: Role, spec: dict[str, Any] | None = None, **changes: Any) -> RenderInput:
    values: dict[str, Any] = {
        "role": role,
        "spec": C3osConfigSpec.model_validate(spec or {}),
        "hostname": "edge-cp-abc12",
        "endpoint_host": "10.0.0.10",
        "endpoint_port": 6443,
        "token": TOKEN,
        "cas": CAS if role is Role.INIT_SERVER else None,
        "secrets": SECRETS,
    }
    values.update(changes)
    return RenderInput(**values)


def doc_of(text: str) -> dict[str, Any]:
    result: dict[str, Any] = yaml.safe_load(text)
    return result


def files_of(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["path"]: f for step in doc["stages"]["initramfs"] for f in step.get("files", [])}


def content(file: dict[str, Any]) -> bytes:
    if file.get("encoding") == "b64":
        return base64.b64decode(file["content"])
    return str(file["content"]).encode()


CASES = {
    "init-server": inputs(Role.INIT_SERVER),
    "join-server": inputs(Role.JOIN_SERVER),
    "agent": inputs(Role.AGENT),
    "init-server-all-options": inputs(Role.INIT_SERVER, FULL_SPEC, cas=ALL_CAS),
    "join-server-all-options": inputs(Role.JOIN_SERVER, FULL_SPEC),
    "agent-all-options": inputs(Role.AGENT, FULL_SPEC),
}


@pytest.mark.parametrize("case", list(CASES))
def test_rendered_cloud_config_matches_its_golden_file(case: str) -> None:
    text = render_cloud_config(CASES[case])
    golden = GOLDEN / f"{case}.yaml"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text(), f"{case} differs from {golden}; UPDATE_GOLDEN=1 and review the diff"


@pytest.mark.parametrize("case", list(CASES))
def test_rendered_cloud_config_uses_only_keys_kairos_knows(case: str) -> None:
    assert check_cloud_config(render_cloud_config(CASES[case])) == []


def test_first_server_initialises_with_the_cluster_cas_and_a_0600_token_file() -> None:
    doc = doc_of(render_cloud_config(inputs(Role.INIT_SERVER)))
    assert doc["k3s"] == {"enabled": True, "args": ["--cluster-init", f"--token-file={TOKEN_FILE}"]}
    assert "k3s-agent" not in doc
    files = files_of(doc)
    assert content(files[TOKEN_FILE]) == TOKEN.encode() + b"\n"
    assert files[TOKEN_FILE]["permissions"] == 0o600
    tls = "/var/lib/rancher/k3s/server/tls"
    expected = {
        f"{tls}/server-ca.crt": (CAS.server.cert_pem, 0o640),
        f"{tls}/server-ca.key": (CAS.server.key_pem, 0o600),
        f"{tls}/client-ca.crt": (CAS.client.cert_pem, 0o640),
        f"{tls}/client-ca.key": (CAS.client.key_pem, 0o600),
        f"{tls}/etcd/server-ca.crt": (CAS.etcd.cert_pem, 0o640),
        f"{tls}/etcd/server-ca.key": (CAS.etcd.key_pem, 0o600),
    }
    for path, (data, mode) in expected.items():
        # Byte for byte: the token pins the SHA-256 of exactly these server CA bytes.
        assert content(files[path]) == data and files[path]["permissions"] == mode, path
        assert (files[path]["owner"], files[path]["group"]) == (0, 0)
    assert doc_of(content(files[CONFIG_FILE]).decode()) == {"tls-san": ["10.0.0.10"]}


def test_first_server_cas_are_written_only_at_first_boot() -> None:
    # Kairos runs initramfs at every boot: rewriting CAs k3s has since rotated in its
    # datastore would stop k3s ("newer than datastore"). One guarded step holds them all.
    doc = doc_of(render_cloud_config(inputs(Role.INIT_SERVER)))
    steps = {step["name"]: step for step in doc["stages"]["initramfs"]}
    cas = steps["cluster-api-k3s-cas"]
    assert cas["if"] == first_boot_condition(ca_paths())
    assert [f["path"] for f in cas["files"]] == ca_paths()
    assert "if" not in steps["cluster-api-k3s"]
    assert not [f for f in steps["cluster-api-k3s"]["files"] if f["path"] in ca_paths()]


def test_first_boot_condition_runs_the_step_while_any_file_is_missing(tmp_path: Path) -> None:
    # As yip runs an `if`: `sh -c`, the step runs on exit 0 (pkg/plugins/if.go, v1.25.1).
    paths = [str(tmp_path / "a.crt"), str(tmp_path / "b.key")]

    def runs() -> bool:
        return subprocess.run(["sh", "-c", first_boot_condition(paths)], check=False).returncode == 0

    assert runs()  # first boot: nothing there
    Path(paths[0]).write_text("x")
    assert runs()  # a first boot cut short: the rest still gets written
    Path(paths[1]).write_text("")
    assert runs()  # an empty file is no CA
    Path(paths[1]).write_text("y")
    assert not runs()  # every boot after: the files k3s may have rotated stay


def test_first_server_gets_the_peer_and_front_proxy_cas_and_service_account_key() -> None:
    # Otherwise k3s makes its own, kept only in its datastore.
    doc = doc_of(render_cloud_config(inputs(Role.INIT_SERVER, cas=ALL_CAS)))
    step = {step["name"]: step for step in doc["stages"]["initramfs"]}["cluster-api-k3s-cas"]
    files = {f["path"]: f for f in step["files"]}
    tls = "/var/lib/rancher/k3s/server/tls"
    expected = {
        f"{tls}/etcd/peer-ca.crt": (b"-----BEGIN CERTIFICATE-----\nPEER\n-----END CERTIFICATE-----\n", 0o640),
        f"{tls}/etcd/peer-ca.key": (b"PEER-KEY\n", 0o600),
        f"{tls}/request-header-ca.crt": (
            b"-----BEGIN CERTIFICATE-----\nPROXY\n-----END CERTIFICATE-----\n",
            0o640,
        ),
        f"{tls}/request-header-ca.key": (b"PROXY-KEY\n", 0o600),
        f"{tls}/service.key": (b"SA-KEY\n", 0o600),
    }
    for path, (data, mode) in expected.items():
        assert content(files[path]) == data and files[path]["permissions"] == mode, path
    assert step["if"] == first_boot_condition(list(files))  # every file: first boot only


def test_joining_server_points_at_the_endpoint_and_gets_no_ca_files() -> None:
    doc = doc_of(render_cloud_config(inputs(Role.JOIN_SERVER, endpoint_host="api.edge", endpoint_port=7443)))
    assert doc["k3s"]["args"] == ["--server=https://api.edge:7443", f"--token-file={TOKEN_FILE}"]
    assert not [p for p in files_of(doc) if p.startswith("/var/lib/rancher/k3s/server/tls")]


def test_servers_run_kube_vip_as_a_static_pod_announcing_the_endpoint() -> None:
    # provider-kairos v2.16.4 deploys kube-vip only on its p2p auto path (oneTimeBootstrap
    # in internal/provider/bootstrap.go never does): its `kubevip` block did nothing.
    spec = {"k3s": {"server": {"kubeVIP": {"interface": "eth1", "image": "mirror.local/kube-vip:v1"}}}}
    for role in (Role.INIT_SERVER, Role.JOIN_SERVER):
        doc = doc_of(render_cloud_config(inputs(role, spec)))
        assert "kubevip" not in doc
        pod = doc_of(content(files_of(doc)[KUBE_VIP_MANIFEST]).decode())
        container = pod["spec"]["containers"][0]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert container["image"] == "mirror.local/kube-vip:v1" and container["args"] == ["manager"]
        assert env["address"] == "10.0.0.10" and env["vip_interface"] == "eth1" and env["port"] == "6443"
        assert env["vip_arp"] == env["cp_enable"] == env["vip_leaderelection"] == "true"
        assert env["vip_subnet"] == "32"
        assert pod["spec"]["hostNetwork"] is True
        assert pod["spec"]["volumes"][0]["hostPath"] == {"path": "/etc/rancher/k3s/k3s.yaml", "type": "File"}
    assert KUBE_VIP_MANIFEST not in files_of(doc_of(render_cloud_config(inputs(Role.AGENT, spec))))
    # Another VIP than the endpoint host: in the serving certificate too; IPv6 is a /128.
    spec = {"k3s": {"server": {"kubeVIP": {"address": "fd00::10"}}}}
    doc = doc_of(render_cloud_config(inputs(Role.INIT_SERVER, spec, endpoint_host="api.edge")))
    pod = doc_of(content(files_of(doc)[KUBE_VIP_MANIFEST]).decode())
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert env["address"] == "fd00::10" and env["vip_subnet"] == "128" and "vip_interface" not in env
    assert pod["spec"]["containers"][0]["image"] == "ghcr.io/kube-vip/kube-vip:v1.2.3"
    assert doc_of(content(files_of(doc)[CONFIG_FILE]).decode())["tls-san"] == ["api.edge", "fd00::10"]


def test_p2p_offers_only_what_provider_kairos_honours_on_our_path() -> None:
    # provider-kairos v2.16.4 oneTimeBootstrap (token + auto.enable false): k3s args
    # verbatim, VPN set up after k3s; p2p.vpn.use and p2p.network_id act only on the
    # auto path, so they are not in the API.
    spec = copy.deepcopy(FULL_SPEC)
    spec["p2p"]["vpn"] = {"create": False}
    doc = doc_of(render_cloud_config(inputs(Role.AGENT, spec)))
    assert doc["p2p"]["vpn"] == {"create": False} and "network_id" not in doc["p2p"]
    p2p_schema = C3osConfigSpec.model_json_schema(by_alias=True)["$defs"]
    assert "networkID" not in p2p_schema["P2p"]["properties"]
    assert set(p2p_schema["P2pVpn"]["properties"]) == {"create"}


def test_kube_vip_needs_an_ip_address() -> None:
    spec: dict[str, Any] = {"k3s": {"server": {"kubeVIP": {}}}}
    with pytest.raises(RenderError, match=r"kubeVIP\.address"):
        render_cloud_config(inputs(Role.JOIN_SERVER, spec, endpoint_host="api.edge"))


def test_agent_uses_k3s_agent_and_ignores_server_only_settings() -> None:
    doc = doc_of(render_cloud_config(inputs(Role.AGENT, FULL_SPEC)))
    assert "k3s" not in doc and "kubevip" not in doc
    assert KUBE_VIP_MANIFEST not in files_of(doc)
    assert doc["k3s-agent"]["args"][:2] == ["--server=https://10.0.0.10:6443", f"--token-file={TOKEN_FILE}"]
    assert "--write-kubeconfig-mode=0640" not in doc["k3s-agent"]["args"]
    config = doc_of(content(files_of(doc)[CONFIG_FILE]).decode())
    assert "tls-san" not in config and "cluster-cidr" not in config and "disable" not in config
    assert config["node-label"] == ["site=lab"]
    assert config["node-taint"] == ["dedicated=edge:NoSchedule"]
    assert "/etc/systemd/system/k3s-agent.service.d/10-cluster-api.conf" in files_of(doc)


def test_ipv6_endpoint_is_bracketed_in_the_server_url() -> None:
    doc = doc_of(render_cloud_config(inputs(Role.AGENT, endpoint_host="fd00::10")))
    assert doc["k3s-agent"]["args"][0] == "--server=https://[fd00::10]:6443"


def test_every_option_maps_to_its_documented_key() -> None:
    doc = doc_of(render_cloud_config(inputs(Role.INIT_SERVER, FULL_SPEC)))
    assert doc["hostname"] == "edge-cp-abc12"
    assert doc["users"] == [
        {
            "name": "kairos",
            "lock_passwd": True,
            "groups": ["admin"],
            "ssh_authorized_keys": ["ssh-ed25519 AAAA me@host"],
        }
    ]
    assert doc["install"] == {"auto": True, "device": "/dev/vda", "reboot": True, "poweroff": False}
    assert doc["k3s"]["args"] == [
        "--cluster-init", f"--token-file={TOKEN_FILE}", "--flannel-backend=wireguard-native",
        "--write-kubeconfig-mode=0640",
    ]  # fmt: skip
    assert doc["p2p"] == {
        "network_token": "p2p-network-token", "dns": True, "disable_dht": False,
        "vpn": {"create": True}, "auto": {"enable": False, "ha": {"enable": False}},
    }  # fmt: skip
    assert "kubevip" not in doc  # provider-kairos ignores it on our path: see the kube-vip test
    assert KUBE_VIP_MANIFEST in files_of(doc)
    files = files_of(doc)
    config = doc_of(content(files[CONFIG_FILE]).decode())
    assert config == {
        "tls-san": ["10.0.0.10", "api.example"],
        "cluster-cidr": "10.42.0.0/16",
        "service-cidr": "10.43.0.0/16",
        "system-default-registry": "registry.local:5000",
        "disable": ["traefik", "servicelb"],
        "kube-apiserver-arg": ["audit-log-maxage=30"],
        "etcd-snapshot-retention": 5,
        "node-label": ["site=lab"],
        "node-taint": ["dedicated=edge:NoSchedule"],
        "kubelet-arg": ["max-pods=200"],
        "kube-proxy-arg": ["metrics-bind-address=0.0.0.0"],
    }
    registries = doc_of(content(files["/etc/rancher/k3s/registries.yaml"]).decode())
    assert files["/etc/rancher/k3s/registries.yaml"]["permissions"] == 0o600  # holds credentials
    assert registries == {
        "mirrors": {"docker.io": {"endpoint": ["https://mirror.local"]}},
        "configs": {
            "registry.local:5000": {
                "auth": {"username": "pull", "password": "registry-password"},
                "tls": {"ca_file": "/etc/rancher/k3s/cluster-api/registry-ca/registry.local_5000.crt"},
            }
        },
    }
    assert (
        content(files["/etc/rancher/k3s/cluster-api/registry-ca/registry.local_5000.crt"])
        == (SECRETS["reg-ca"]["ca.crt"])
    )
    steps = {step["name"]: step for step in doc["stages"]["initramfs"]}
    user_files = {f["path"]: f for f in steps["cluster-api-files"]["files"]}
    assert content(user_files["/etc/motd"]) == b"hello" and user_files["/etc/motd"]["permissions"] == 0o644
    assert content(user_files["/etc/secret"]) == b"from-a-secret\n"
    assert (
        user_files["/etc/secret"]["permissions"] == 0o600 and user_files["/etc/secret"]["encoding"] == "b64"
    )
    assert doc["stages"]["boot"][0]["name"] == "cluster-api-user-groups"
    assert doc["stages"]["boot"][1:] == [{"name": "say hi", "commands": ["echo hi"], "if": "[ -e /x ]"}]
    assert "id=k3s://\"$host\"''" in content(files[PROVIDER_ID_SCRIPT]).decode()


def test_no_content_yip_would_treat_as_a_go_template() -> None:
    """yip renders every file's content with Go templates; `{{` of ours would be
    executed (or, failing, logged in full by yip)."""
    for case in CASES.values():
        doc = doc_of(render_cloud_config(case))
        for step in doc["stages"]["initramfs"]:
            if step["name"] == "cluster-api-files":
                continue  # the user's own files: Kairos templating is theirs to use
            assert "{{" not in step.get("if", ""), step["name"]  # yip templates `if` too
            for file in step["files"]:
                assert b"{{" not in content(file), file["path"]


def test_no_secret_appears_in_clear_text_except_where_kairos_needs_it() -> None:
    """Token, CA keys and file contents from Secrets are base64 in the document, so a
    glance at the Secret (or a debug dump) does not show them; the p2p token and the
    registry password must be plain because Kairos/k3s read them from YAML."""
    text = render_cloud_config(inputs(Role.INIT_SERVER, FULL_SPEC))
    for value in (TOKEN.encode(), b"SERVER-KEY", b"from-a-secret"):
        assert value.decode() not in text
    assert not re.search(r"(^|\s)passwd:", text)


def test_users_get_a_locked_password_not_an_empty_one() -> None:
    # yip (plugins/user.go createUser) writes `passwd` to /etc/shadow as is: no passwd
    # and no lock_passwd is an EMPTY password (console login, sudo via %admin).
    doc = doc_of(render_cloud_config(inputs(Role.AGENT, {"users": [{"name": "ops"}, {"name": "kairos"}]})))
    assert [user["lock_passwd"] for user in doc["users"]] == [True, True]


def test_without_an_admin_user_kairos_agent_is_told_there_are_none() -> None:
    # kairos-agent install/upgrade/reset refuse a config without a user in group admin
    # unless install.nousers is set (pkg/config/config.go CheckConfigForUsers).
    for spec in ({}, {"users": [{"name": "ops", "groups": ["wheel"]}]}):
        assert doc_of(render_cloud_config(inputs(Role.AGENT, spec)))["install"] == {"nousers": True}
    installing = doc_of(render_cloud_config(inputs(Role.AGENT, {"install": {"device": "/dev/vda"}})))
    assert installing["install"]["nousers"] is True and installing["install"]["auto"] is True
    admin = doc_of(render_cloud_config(inputs(Role.AGENT, {"users": [{"name": "a", "groups": ["admin"]}]})))
    assert "install" not in admin


def test_a_file_owned_by_a_spec_user_is_written_in_boot_after_the_user_exists() -> None:
    # yip creates top-level users in the first step of `boot`; `initramfs` runs before.
    spec = {
        "users": [{"name": "app", "groups": ["admin"]}],
        "files": [
            {"path": "/etc/a", "content": "a", "owner": "app:app"},
            {"path": "/etc/b", "content": "b", "owner": "root:adm"},
            {"path": "/etc/c", "content": "c"},
        ],
        "stages": {"boot": [{"name": "mine", "commands": ["true"]}]},
    }
    doc = doc_of(render_cloud_config(inputs(Role.AGENT, spec)))
    early = next(s for s in doc["stages"]["initramfs"] if s["name"] == "cluster-api-files")
    assert [f["path"] for f in early["files"]] == ["/etc/b", "/etc/c"]
    assert [step["name"] for step in doc["stages"]["boot"]] == [
        "cluster-api-user-groups", "cluster-api-files-owned", "mine",
    ]  # fmt: skip
    assert doc["stages"]["boot"][1] == {
        "name": "cluster-api-files-owned",
        "files": [{"path": "/etc/a", "permissions": 0o644, "content": "a", "ownerstring": "app:app"}],
    }


IMAGE_DIRS = {"/etc", "/etc/systemd/system", "/usr/local/bin", "/var/lib"}
"""Directories every Kairos image has; anything else above our files we declare."""


@pytest.mark.parametrize("case", list(CASES))
def test_our_files_have_every_parent_directory_declared_with_an_explicit_mode(case: str) -> None:
    # yip gives a missing parent the file's mode (+0100): /etc/rancher/k3s would be 0700
    # from the token file, /var/lib/rancher/k3s/server/tls 0740 from a certificate.
    doc = doc_of(render_cloud_config(CASES[case]))
    for step in doc["stages"]["initramfs"]:
        if step["name"] == "cluster-api-files":
            continue  # the user's own paths: declaring them would chmod e.g. /root
        declared = {d["path"]: d["permissions"] for d in step.get("directories", [])}
        for file in step["files"]:
            parent = os.path.dirname(file["path"])
            while parent not in IMAGE_DIRS:
                assert parent in declared, (step["name"], file["path"], parent)
                parent = os.path.dirname(parent)
    dirs = {
        d["path"]: d["permissions"]
        for step in doc["stages"]["initramfs"]
        for d in step.get("directories", [])
    }
    assert dirs["/etc/rancher/k3s"] == 0o755 and dirs["/etc/rancher/k3s/cluster-api"] == 0o700


def test_user_stages_may_use_every_yip_step_key() -> None:
    spec = {"stages": {"boot": [{"name": "x", "if_files": {"any": ["/x"]}, "package_pins": {"k3s": "1"}}]}}
    doc = doc_of(render_cloud_config(inputs(Role.AGENT, spec)))
    assert doc["stages"]["boot"][0]["if_files"] == {"any": ["/x"]}


def test_referenced_secrets_lists_every_secret_the_spec_names() -> None:
    spec = C3osConfigSpec.model_validate(FULL_SPEC)
    assert referenced_secrets(spec) == {"s", "p2p", "reg-auth", "reg-ca"}


@pytest.mark.parametrize(
    ("secrets", "message"),
    [
        ({**SECRETS, "s": {}}, "spec.files[1] (/etc/secret): Secret 's' has no key 'k'"),
        ({k: v for k, v in SECRETS.items() if k != "p2p"},
         "spec.p2p.networkTokenSecretRef: Secret 'p2p' not found"),
        ({**SECRETS, "reg-auth": {"user": b"x"}},
         "needs keys username and password, or auth, or identitytoken"),
    ],
)  # fmt: skip
def test_unusable_secret_reference_is_a_readable_error_without_values(
    secrets: dict[str, dict[str, bytes]], message: str
) -> None:
    with pytest.raises(RenderError) as raised:
        render_cloud_config(inputs(Role.AGENT, FULL_SPEC, secrets=secrets))
    assert message in str(raised.value)
    assert not any(v.decode() in str(raised.value) for v in SECRET_VALUES)


def test_unknown_yip_step_key_in_user_stages_is_rejected() -> None:
    spec = {"stages": {"boot": [{"name": "x", "comands": ["echo"]}]}}
    with pytest.raises(RenderError, match=r"spec.stages.boot\[0\].comands: unknown yip step key"):
        render_cloud_config(inputs(Role.AGENT, spec))


def test_first_server_without_cas_is_refused() -> None:
    with pytest.raises(RenderError, match="needs the cluster CAs"):
        render_cloud_config(inputs(Role.INIT_SERVER, cas=None))


def test_rendering_is_deterministic() -> None:
    assert render_cloud_config(inputs(Role.INIT_SERVER, FULL_SPEC)) == render_cloud_config(
        inputs(Role.INIT_SERVER, FULL_SPEC)
    )


def test_render_input_repr_hides_token_and_keys() -> None:
    text = repr(inputs(Role.INIT_SERVER, FULL_SPEC))
    assert TOKEN not in text and "SERVER-KEY" not in text and "registry-password" not in text


# ------------------------------------------------------------ the node-side scripts


def _stub(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def _script(role: Role, path: str, fallback: str | None = None) -> str:
    spec = {"providerIDFallback": fallback} if fallback else {}
    return content(files_of(doc_of(render_cloud_config(inputs(role, spec))))[path]).decode()


def _run_provider_id(
    tmp_path: Path, drive: dict[str, str] | None, label: str = "cidata", fallback: str | None = None
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """Run the provider-id script with blkid/mount/umount/hostname stand-ins: the
    "config drive" is a directory whose files are copied on mount."""
    bin_dir, drive_dir, out = tmp_path / "bin", tmp_path / "drive", tmp_path / "out" / "90.yaml"
    bin_dir.mkdir()
    drive_dir.mkdir()
    for rel, text in (drive or {}).items():
        (drive_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (drive_dir / rel).write_text(text)
    found = (
        f'[ "$2" = "{label}" ] && [ -n "{"y" if drive is not None else ""}" ] && echo {drive_dir} && exit 0'
    )
    _stub(bin_dir, "blkid", found + "\nexit 2")
    _stub(bin_dir, "mount", 'cp -r "$3"/. "$4"/')
    _stub(bin_dir, "umount", 'rm -rf "$1"/* "$1"/.[!.]* 2>/dev/null; true')
    _stub(bin_dir, "hostname", "echo node-7")
    script = tmp_path / "provider-id.sh"
    script.write_text(_script(Role.AGENT, PROVIDER_ID_SCRIPT, fallback))
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "CLUSTER_API_PROVIDER_ID_FILE": str(out)}
    result = subprocess.run(
        ["sh", str(script)], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    return result, out


def test_provider_id_comes_from_nocloud_meta_data(tmp_path: Path) -> None:
    meta = "instance-id: 5b0c\nlocal-hostname: node-7\nprovider-id: c3os://ns/edge-md-0-x7\n"
    result, out = _run_provider_id(tmp_path, {"meta-data": meta})
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(out.read_text()) == {"kubelet-arg+": ["provider-id=c3os://ns/edge-md-0-x7"]}


def test_provider_id_comes_from_openstack_config_drive_meta_data_json(tmp_path: Path) -> None:
    meta = '{\n  "uuid": "5b0c",\n  "provider-id": "c3os://ns/bm-0",\n  "hostname": "bm-0"\n}\n'
    result, out = _run_provider_id(tmp_path, {"openstack/latest/meta_data.json": meta}, label="config-2")
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(out.read_text()) == {"kubelet-arg+": ["provider-id=c3os://ns/bm-0"]}


def test_provider_id_falls_back_to_the_configured_value_with_the_hostname(tmp_path: Path) -> None:
    result, out = _run_provider_id(tmp_path, None, fallback="k3s://{{hostname}}")
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(out.read_text()) == {"kubelet-arg+": ["provider-id=k3s://node-7"]}


def test_provider_id_fallback_is_quoted_not_executed(tmp_path: Path) -> None:
    result, out = _run_provider_id(tmp_path, None, fallback="x-{{hostname}}-$(reboot)'`id`")
    # The value itself is refused (characters outside the provider-id set), never run.
    assert result.returncode != 0 and "unexpected characters" in result.stderr
    (tmp_path / "2").mkdir()
    result, out = _run_provider_id(tmp_path / "2", None, fallback="c3os://{{hostname}}/{{hostname}}")
    assert yaml.safe_load(out.read_text()) == {"kubelet-arg+": ["provider-id=c3os://node-7/node-7"]}


def test_provider_id_script_fails_loudly_without_meta_data_or_fallback(tmp_path: Path) -> None:
    result, out = _run_provider_id(tmp_path, {"meta-data": "instance-id: x\n"})
    assert result.returncode != 0 and "no provider-id" in result.stderr
    assert not out.exists()


def test_provider_id_with_unexpected_characters_is_refused(tmp_path: Path) -> None:
    result, out = _run_provider_id(tmp_path, {"meta-data": "provider-id: c3os://ns/a b$(reboot)\n"})
    assert result.returncode != 0 and "unexpected characters" in result.stderr
    assert not out.exists()


@pytest.mark.parametrize(("role", "probe"), [(Role.INIT_SERVER, "k3s"), (Role.AGENT, "curl")])
def test_sentinel_is_written_only_once_k3s_serves(tmp_path: Path, role: Role, probe: str) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    counter, sentinel = tmp_path / "probes", tmp_path / "run" / "bootstrap-success.complete"
    # The probe fails twice (k3s not up yet), then succeeds; it checks the sentinel is
    # still absent each time it is asked.
    _stub(
        bin_dir, probe, f'echo x >> {counter}\n[ -e {sentinel} ] && exit 99\n[ "$(wc -l < {counter})" -ge 3 ]'
    )
    _stub(bin_dir, "sleep", "true")
    script = tmp_path / "sentinel.sh"
    script.write_text(_script(role, SENTINEL_SCRIPT))
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "CLUSTER_API_SENTINEL": str(sentinel)}
    result = subprocess.run(
        ["sh", str(script)], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    assert sentinel.exists()
    assert len(counter.read_text().splitlines()) == 3


def test_node_scripts_are_valid_posix_shell(tmp_path: Path) -> None:
    for role in Role:
        for path in (PROVIDER_ID_SCRIPT, SENTINEL_SCRIPT):
            script = tmp_path / "s.sh"
            script.write_text(_script(role, path))
            result = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True, check=False)
            assert result.returncode == 0, (role, path, result.stderr)


def test_secret_content_is_protected_from_yips_go_templating_inline_content_is_not() -> None:
    spec = {
        "files": [
            {"path": "/etc/a", "contentFrom": {"secret": {"name": "s", "key": "k"}}},
            {"path": "/etc/b", "content": "host {{ .Values.node.hostname }}"},
        ]
    }
    secrets = {"s": {"k": b"pa{{ss}}word"}}
    doc = doc_of(render_cloud_config(inputs(Role.AGENT, spec, secrets=secrets)))
    user_files = {f["path"]: f for f in doc["stages"]["initramfs"][1]["files"]}
    # Go's text/template renders {{"{{"}} as {{, so the node gets the Secret verbatim.
    assert content(user_files["/etc/a"]) == b'pa{{"{{"}}ss}}word'
    # Inline content keeps Kairos' documented templating.
    assert content(user_files["/etc/b"]) == b"host {{ .Values.node.hostname }}"
