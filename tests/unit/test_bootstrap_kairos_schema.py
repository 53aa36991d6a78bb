"""A checker for rendered cloud-configs: every key must be one the c3os/Kairos schema
knows, as listed in `shared/facts/c3os-kairos-config.md` (top-level keys, users,
install, k3s, p2p, kubevip), in yip's `Stage`/`File` structs (stage steps), and in
`shared/facts/k3s-bootstrap.md` plus the k3s configuration reference (config-file and
registries.yaml keys). Kairos and yip ignore unknown keys silently, so a typo would
render a config that "works" and does nothing: this checker is what catches it.

The tests at the bottom make sure the checker itself can fail."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

TOP = {"hostname", "users", "install", "k3s", "k3s-agent", "write_files", "stages", "bundles", "p2p",
       "kubevip", "config_url"}  # fmt: skip
USER = {"name", "groups", "ssh_authorized_keys", "lock_passwd"}  # `passwd` exists but we must never emit it
INSTALL = {"auto", "device", "reboot", "poweroff", "image", "partitions", "extra-partitions", "bind_mounts",
           "grub_options", "system", "nousers"}  # fmt: skip
K3S = {"enabled", "args", "env", "replace_args", "replace_env", "embedded_registry"}
P2P = {"network_token", "network_id", "role", "dns", "loglevel", "disable_dht", "minimum_nodes",
       "dynamic_roles", "vpn", "auto"}  # fmt: skip
P2P_VPN = {"create", "use", "env"}
P2P_AUTO = {"enable", "ha"}
P2P_HA = {"enable", "master_nodes", "external_db"}
KUBEVIP = {"eip", "interface", "enable", "manifest_url", "static_pod", "version", "image"}
STAGES = {"rootfs", "initramfs", "boot", "fs", "network", "reconcile", "before-install", "after-install",
          "after-upgrade"}  # fmt: skip
STEP = {"name", "commands", "files", "downloads", "directories", "if", "ensure_entities", "delete_entities",
        "dns", "hostname", "sysctl", "authorized_keys", "node", "users", "modules", "systemctl",
        "environment", "environment_file", "packages", "unpack_images", "after", "datasource", "layout",
        "systemd_firstboot", "timesyncd", "git", "only_os", "only_os_version", "only_arch",
        "only_service_manager", "if_files", "package_pins"}  # fmt: skip
FILE = {"path", "permissions", "owner", "group", "content", "encoding", "ownerstring"}
ENCODINGS = {"b64", "base64", "gz", "gzip", "gz+base64", "gzip+base64", "gz+b64", "gzip+b64"}
K3S_CONFIG = {
    # k3s-bootstrap.md, "k3s config keys commonly set"
    "tls-san", "cluster-init", "disable-cloud-controller", "kube-apiserver-arg",
    "kube-controller-manager-arg",
    "kube-scheduler-arg", "cluster-cidr", "service-cidr", "cluster-dns", "cluster-domain", "disable",
    "advertise-address", "bind-address", "https-listen-port", "system-default-registry", "secrets-encryption",
    "token", "server", "kubelet-arg", "node-label", "node-taint", "node-name", "node-ip", "kube-proxy-arg",
    "private-registry",
    # k3s server reference, embedded etcd options
    "etcd-expose-metrics", "etcd-disable-snapshots", "etcd-snapshot-schedule-cron",
    "etcd-snapshot-retention",
}  # fmt: skip
REGISTRIES = {"mirrors", "configs"}
MIRROR = {"endpoint", "rewrite"}
REGISTRY_CONFIG = {"auth", "tls"}
REGISTRY_AUTH = {"username", "password", "auth", "identity_token"}
REGISTRY_TLS = {"ca_file", "cert_file", "key_file", "insecure_skip_verify"}

_STAGE_NAME = re.compile(r"^(?P<stage>[a-z-]+)(\.(before|after))?$")


def _keys(where: str, obj: Any, allowed: set[str], problems: list[str]) -> dict[str, Any]:
    if not isinstance(obj, dict):
        problems.append(f"{where}: expected a mapping, got {type(obj).__name__}")
        return {}
    problems.extend(f"{where}.{key}: unknown key" for key in sorted(set(obj) - allowed))
    return obj


def check_k3s_config(where: str, doc: Any, problems: list[str]) -> None:
    # `key+` appends to the same key of an earlier file (k3s config.yaml.d merging).
    _keys(where, doc, K3S_CONFIG | {f"{k}+" for k in K3S_CONFIG}, problems)


def check_registries(where: str, doc: Any, problems: list[str]) -> None:
    doc = _keys(where, doc, REGISTRIES, problems)
    for name, mirror in (doc.get("mirrors") or {}).items():
        _keys(f"{where}.mirrors.{name}", mirror, MIRROR, problems)
    for host, raw in (doc.get("configs") or {}).items():
        config = _keys(f"{where}.configs.{host}", raw, REGISTRY_CONFIG, problems)
        if "auth" in config:
            _keys(f"{where}.configs.{host}.auth", config["auth"], REGISTRY_AUTH, problems)
        if "tls" in config:
            _keys(f"{where}.configs.{host}.tls", config["tls"], REGISTRY_TLS, problems)


def check_cloud_config(text: str) -> list[str]:
    """Problems with a rendered cloud-config (empty when it is well-formed)."""
    problems: list[str] = []
    if not text.startswith("#cloud-config\n"):
        problems.append("does not start with #cloud-config")
    doc = yaml.safe_load(text)
    doc = _keys("", doc, TOP, problems)
    if "k3s" in doc and "k3s-agent" in doc:
        problems.append("both k3s and k3s-agent are set")
    for index, user in enumerate(doc.get("users") or []):
        _keys(f".users[{index}]", user, USER, problems)
    if "install" in doc:
        _keys(".install", doc["install"], INSTALL, problems)
    for block in ("k3s", "k3s-agent"):
        if block in doc:
            _keys(f".{block}", doc[block], K3S, problems)
    if "p2p" in doc:
        p2p = _keys(".p2p", doc["p2p"], P2P, problems)
        if "vpn" in p2p:
            _keys(".p2p.vpn", p2p["vpn"], P2P_VPN, problems)
        auto = _keys(".p2p.auto", p2p.get("auto", {}), P2P_AUTO, problems)
        if "ha" in auto:
            _keys(".p2p.auto.ha", auto["ha"], P2P_HA, problems)
    if "kubevip" in doc:
        _keys(".kubevip", doc["kubevip"], KUBEVIP, problems)
    for stage, steps in (doc.get("stages") or {}).items():
        match = _STAGE_NAME.match(stage)
        if not match or match["stage"] not in STAGES:
            problems.append(f".stages.{stage}: unknown stage")
        for index, raw_step in enumerate(steps):
            step = _keys(f".stages.{stage}[{index}]", raw_step, STEP, problems)
            for findex, raw_file in enumerate(step.get("files") or []):
                where = f".stages.{stage}[{index}].files[{findex}]"
                file = _keys(where, raw_file, FILE, problems)
                if not isinstance(file.get("permissions"), int):
                    problems.append(f"{where}.permissions: yip wants an integer mode")
                if file.get("encoding", "") not in ENCODINGS | {""}:
                    problems.append(f"{where}.encoding: unknown encoding {file['encoding']!r}")
                path = str(file.get("path", ""))
                if path.startswith("/etc/rancher/k3s/config.yaml.d/") and not file.get("encoding"):
                    check_k3s_config(where, yaml.safe_load(file["content"]), problems)
                if path == "/etc/rancher/k3s/registries.yaml":
                    check_registries(where, yaml.safe_load(file["content"]), problems)
    if re.search(r"(^|\s)passwd:", text, re.MULTILINE):
        problems.append("a passwd key appears: no password is ever set")
    return problems


# ------------------------------------------------------------ the checker can fail

GOOD = """#cloud-config
hostname: n
k3s: {enabled: true, args: [--cluster-init]}
stages:
  initramfs:
  - name: x
    files:
    - {path: /etc/rancher/k3s/config.yaml.d/10.yaml, permissions: 420, content: "tls-san: [a]\\n"}
"""


def test_checker_accepts_a_well_formed_config() -> None:
    assert check_cloud_config(GOOD) == []


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (GOOD.replace("hostname", "host_name"), ".host_name: unknown key"),
        (GOOD.replace("#cloud-config", "#kairos"), "does not start with #cloud-config"),
        (GOOD.replace("enabled: true", "enable: true"), ".k3s.enable: unknown key"),
        (GOOD.replace("name: x", "nmae: x"), ".stages.initramfs[0].nmae: unknown key"),
        (GOOD.replace("initramfs:", "initrd:"), ".stages.initrd: unknown stage"),
        (GOOD.replace("permissions: 420", "permissions: '0644'"), "yip wants an integer mode"),
        (GOOD.replace("tls-san:", "tls-sans:"), ".tls-sans: unknown key"),
        (GOOD + "users: [{name: a, passwd: x}]\n", "no password is ever set"),
        (GOOD + "k3s-agent: {enabled: true}\n", "both k3s and k3s-agent are set"),
    ],
)
def test_checker_reports_unknown_or_forbidden_keys(text: str, problem: str) -> None:
    assert any(problem in p for p in check_cloud_config(text)), check_cloud_config(text)
