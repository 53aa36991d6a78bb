"""Render one node's c3os/Kairos `#cloud-config` that starts k3s.

Pure: everything the node needs (role, endpoint, token, CAs, the contents of the Secrets
the spec references) comes in as arguments; nothing here talks to Kubernetes. The
output is what Kairos reads (yip stages plus the Kairos keys `hostname`, `users`,
`install`, `k3s`/`k3s-agent`, `p2p`), not cloud-init.

Layout of what we render (every path is ours and fixed, so a person on the node can
find it):

- `k3s` (servers) or `k3s-agent` (agents): `enabled` and the role flags: `--cluster-init`
  on the first server, `--server=https://<endpoint>` on every other node, and
  `--token-file` pointing at a 0600 file holding the CA-pinned join token. User flags
  follow.
- `stages.initramfs`, step `cluster-api-k3s` (before systemd starts any unit):
  * the token file;
  * `/etc/rancher/k3s/config.yaml.d/10-cluster-api.yaml`: every structured setting
    (tls-san, labels, taints, component args, CIDRs, disabled components, registry...)
    under its documented k3s config-file key;
  * `/etc/rancher/k3s/registries.yaml` when mirrors or registry configs are given;
  * `/usr/local/bin/cluster-api-provider-id` and a systemd drop-in that runs it as
    `ExecStartPre` of the k3s unit: it reads `provider-id` from the config drive
    (NoCloud `cidata` `meta-data`, or OpenStack `config-2` `openstack/latest/meta_data.json`),
    falls back to `spec.providerIDFallback` (`{{hostname}}` replaced), and writes
    `/etc/rancher/k3s/config.yaml.d/90-cluster-api-provider-id.yaml` with
    `kubelet-arg+: [provider-id=<id>]` (`+` appends to the kubelet args of file 10);
  * `cluster-api-bootstrap-success.service`, pulled in by the same drop-in and ordered
    after k3s: it waits until k3s actually serves (servers: the API server's /readyz
    through `k3s kubectl`; agents: the kubelet's /healthz) and only then touches
    `/run/cluster-api/bootstrap-success.complete`.
- `stages.initramfs`, step `cluster-api-k3s-cas`, first server only: the cluster CAs at
  the paths k3s reads (under `/var/lib/rancher/k3s/server/tls`: `server-ca`, `client-ca`,
  `etcd/server-ca`, `etcd/peer-ca`, `request-header-ca` `.{crt,key}`, and the
  service-account key `service.key`), with an `if:` so they are written only while one is
  missing (first boot). Kairos runs `initramfs` at every boot; once the CAs in k3s's
  datastore differ from these (`k3s certificate rotate-ca`), rewriting them would make
  k3s refuse to start ("newer than datastore").
- `stages.initramfs`, step `cluster-api-kube-vip`, servers with `kubeVIP` only: a k3s
  static pod (`/var/lib/rancher/k3s/agent/pod-manifests/kube-vip.yaml`) announcing the VIP.
- `stages.initramfs`, step `cluster-api-files`: the spec's `files` (inline, or from a
  Secret key, base64-encoded so any bytes survive); a file whose owner is a user of
  `spec.users` goes to `stages.boot`, step `cluster-api-files-owned`, instead: yip's
  cloud-init loader creates top-level `users` in the first step of `boot`.
- our steps declare the directories above their files (`directories`, explicit modes):
  yip would otherwise create a missing parent with the file's own mode (+0100).
- `stages.boot`, step `cluster-api-user-groups` (first of ours in `boot`, after yip's
  user step): each user is added to its `groups` in /etc/group, which yip does only for
  users it creates (not for one the image has, such as `kairos`).
- `users` get `lock_passwd: true` (yip writes `passwd` to /etc/shadow as is: none would
  be an empty password); without a user in group `admin`, `install.nousers: true`
  (kairos-agent install/upgrade/reset refuse such a config otherwise).
- the spec's own `stages`, appended after ours, as written.

Secret material (token, CA keys, files from Secrets) is base64-encoded in the output;
registry credentials and the p2p token are plain because k3s and Kairos read them as
YAML. None of it is logged or put into an exception.

yip renders every file's content as a Go template (Kairos' `{{ .Values... }}` system
data). Our own files contain no `{{`; content from Secrets gets `{{` escaped so it lands
verbatim; inline `files` content keeps the templating Kairos documents.
"""

from __future__ import annotations

import base64
import enum
import ipaddress
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from capi_c3os.api.bootstrap import C3osConfigSpec, File, K3sServer
from capi_c3os.bootstrap.certificates import KeyPair
from capi_c3os.bootstrap.yip_steps import STEP_KEYS, step_problems

HEADER = "#cloud-config"
FORMAT = "cloud-config"

K3S_DIR = "/etc/rancher/k3s"
TOKEN_FILE = f"{K3S_DIR}/cluster-api/token"
CONFIG_FILE = f"{K3S_DIR}/config.yaml.d/10-cluster-api.yaml"
PROVIDER_ID_FILE = f"{K3S_DIR}/config.yaml.d/90-cluster-api-provider-id.yaml"
REGISTRIES_FILE = f"{K3S_DIR}/registries.yaml"
REGISTRY_CA_DIR = f"{K3S_DIR}/cluster-api/registry-ca"
TLS_DIR = "/var/lib/rancher/k3s/server/tls"
CA_STEMS = ("server-ca", "client-ca", "etcd/server-ca")
"""Under TLS_DIR: the server, client and etcd server CAs of `ClusterCAs`, in that order."""
PROVIDER_ID_SCRIPT = "/usr/local/bin/cluster-api-provider-id"
SENTINEL_SCRIPT = "/usr/local/bin/cluster-api-bootstrap-success"
SENTINEL_UNIT = "cluster-api-bootstrap-success.service"
SENTINEL = "/run/cluster-api/bootstrap-success.complete"

HOSTNAME_PLACEHOLDER = "{{hostname}}"
"""In `spec.providerIDFallback`: replaced with the node's hostname at boot."""

MODE_SECRET = 0o600
MODE_CERT = 0o640
MODE_CONFIG = 0o644
MODE_SCRIPT = 0o755
MODE_DIR = 0o755
MODE_PRIVATE_DIR = 0o700


class Role(enum.Enum):
    INIT_SERVER = "init-server"
    """The one server that creates the cluster (`--cluster-init`)."""
    JOIN_SERVER = "join-server"
    AGENT = "agent"

    @property
    def server(self) -> bool:
        return self is not Role.AGENT


@dataclass(frozen=True)
class ClusterCAs:
    """The CAs and keys the first server is given (joiners fetch them from the datastore).
    Without the optional ones k3s generates its own, kept only in its datastore."""

    server: KeyPair
    client: KeyPair
    etcd: KeyPair
    etcd_peer: KeyPair | None = None
    request_header: KeyPair | None = None
    """The front-proxy CA."""
    service_account_key: bytes | None = field(default=None, repr=False)
    """PEM private key signing service-account tokens."""


class RenderError(ValueError):
    """The spec cannot be rendered as given (e.g. a referenced Secret key is missing).
    The message names fields and Secrets, never their values."""


@dataclass(frozen=True)
class RenderInput:
    role: Role
    spec: C3osConfigSpec
    hostname: str
    endpoint_host: str
    endpoint_port: int
    token: str = field(repr=False)
    cas: ClusterCAs | None = field(default=None, repr=False)
    """Required for the first server, ignored otherwise."""
    secrets: Mapping[str, Mapping[str, bytes]] = field(default_factory=dict, repr=False)
    """Contents of the Secrets the spec references: name -> key -> bytes."""

    @property
    def server_url(self) -> str:
        host = self.endpoint_host
        if ":" in host and not host.startswith("["):  # an IPv6 literal
            host = f"[{host}]"
        return f"https://{host}:{self.endpoint_port}"


YIP_STEP_KEYS = STEP_KEYS
"""The keys of one yip stage step (re-exported; the checks live in `yip_steps`)."""


def _check_stages(spec: C3osConfigSpec) -> None:
    for stage, steps in sorted((spec.stages or {}).items()):
        for index, step in enumerate(steps):
            problems = step_problems(step)
            if problems:
                raise RenderError(
                    "; ".join(f"spec.stages.{stage}[{index}].{problem}" for problem in problems)
                    + " (yip ignores an unknown key, and runs none of a document's stages when"
                    + " a value has the wrong type)"
                )


def referenced_secrets(spec: C3osConfigSpec) -> set[str]:
    """Names of the Secrets (same namespace) whose contents the rendering needs."""
    names: set[str] = set()
    for file in spec.files or []:
        if file.content_from is not None:
            names.add(file.content_from.secret.name)
    if spec.p2p is not None:
        names.add(spec.p2p.network_token_secret_ref.name)
    registries = spec.k3s.registries if spec.k3s else None
    for config in ((registries.configs if registries else None) or {}).values():
        if config.auth_secret_ref is not None:
            names.add(config.auth_secret_ref.name)
        if config.ca_bundle_secret_ref is not None:
            names.add(config.ca_bundle_secret_ref.name)
    return names


# ------------------------------------------------------------------ helpers


def _secret_value(inputs: RenderInput, name: str, key: str, where: str) -> bytes:
    data = inputs.secrets.get(name)
    if data is None:
        raise RenderError(f"{where}: Secret {name!r} not found")
    if key not in data:
        raise RenderError(f"{where}: Secret {name!r} has no key {key!r}")
    return data[key]


def _template_safe(data: bytes) -> bytes:
    """yip renders every file's content as a Go template (and on a template error logs
    the content in full): content that must land verbatim (from Secrets) gets its `{{`
    written as the template action `{{"{{"}}`, which renders back to `{{`."""
    return data.replace(b"{{", b'{{"{{"}}')


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _file(path: str, content: str | bytes, mode: int, *, encode: bool = False) -> dict[str, Any]:
    """A yip file entry. yip's `permissions` is an integer; we write it in decimal,
    which reads the same under YAML 1.1 and 1.2 (0600 would not)."""
    entry: dict[str, Any] = {"path": path, "permissions": mode, "owner": 0, "group": 0}
    if encode:
        raw = content.encode() if isinstance(content, str) else content
        entry["content"] = _b64(raw)
        entry["encoding"] = "b64"
    else:
        entry["content"] = content if isinstance(content, str) else content.decode()
    return entry


def _dir(path: str, mode: int) -> dict[str, Any]:
    """A yip directory entry. yip creates a missing parent of a file with the FILE's mode
    (+0100), e.g. /etc/rancher/k3s 0700 from the token file: we declare ours. yip also
    re-applies mode and owner of a declared directory that exists (each boot)."""
    return {"path": path, "permissions": mode, "owner": 0, "group": 0}


def _k3s_dirs(unit: str, registry_cas: bool) -> list[dict[str, Any]]:
    dirs = [
        _dir("/etc/rancher", MODE_DIR),
        _dir(K3S_DIR, MODE_DIR),
        _dir(f"{K3S_DIR}/config.yaml.d", MODE_DIR),
        _dir(f"{K3S_DIR}/cluster-api", MODE_PRIVATE_DIR),
    ]
    if registry_cas:
        dirs.append(_dir(REGISTRY_CA_DIR, MODE_PRIVATE_DIR))
    dirs.append(_dir(f"/etc/systemd/system/{unit}.d", MODE_DIR))
    return dirs


CA_DIRS = (
    ("/var/lib/rancher", MODE_DIR),
    ("/var/lib/rancher/k3s", MODE_DIR),
    ("/var/lib/rancher/k3s/server", MODE_PRIVATE_DIR),
    (TLS_DIR, MODE_PRIVATE_DIR),
    (f"{TLS_DIR}/etcd", MODE_PRIVATE_DIR),
)
"""The directories above the CA files, as k3s makes them (server data is private)."""
KUBE_VIP_DIRS = ("/var/lib/rancher", "/var/lib/rancher/k3s", "/var/lib/rancher/k3s/agent",
                 "/var/lib/rancher/k3s/agent/pod-manifests")  # fmt: skip


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (scripts, units, nested YAML) as literal blocks, so a person
    reading the Secret on the node sees them as they land on disk."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def _yaml(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=4096)


# ------------------------------------------------------------------ k3s


def _role_args(inputs: RenderInput) -> list[str]:
    args = [] if inputs.role is Role.INIT_SERVER else [f"--server={inputs.server_url}"]
    if inputs.role is Role.INIT_SERVER:
        args.append("--cluster-init")
    args.append(f"--token-file={TOKEN_FILE}")
    return args


def _server_config(server: K3sServer | None, inputs: RenderInput) -> dict[str, Any]:
    config: dict[str, Any] = {}
    vip = server.kube_vip.address if (server and server.kube_vip) else None
    sans = [inputs.endpoint_host, *([vip] if vip else []), *((server.tls_sans if server else None) or [])]
    config["tls-san"] = list(dict.fromkeys(sans))
    if server is None:
        return config
    scalar = {
        "cluster-cidr": server.cluster_cidr,
        "service-cidr": server.service_cidr,
        "cluster-dns": server.cluster_dns,
        "cluster-domain": server.cluster_domain,
        "system-default-registry": server.system_default_registry,
    }
    config.update({k: v for k, v in scalar.items() if v is not None})
    if server.disable_components:
        config["disable"] = list(server.disable_components)
    if server.disable_cloud_controller:
        config["disable-cloud-controller"] = True
    if server.secrets_encryption:
        config["secrets-encryption"] = True
    for key, values in (
        ("kube-apiserver-arg", server.kube_api_server_args),
        ("kube-controller-manager-arg", server.kube_controller_manager_args),
        ("kube-scheduler-arg", server.kube_scheduler_args),
    ):
        if values:
            config[key] = list(values)
    etcd = server.etcd
    if etcd is not None:
        if etcd.expose_metrics:
            config["etcd-expose-metrics"] = True
        if etcd.disable_snapshots:
            config["etcd-disable-snapshots"] = True
        if etcd.snapshot_schedule_cron is not None:
            config["etcd-snapshot-schedule-cron"] = etcd.snapshot_schedule_cron
        if etcd.snapshot_retention is not None:
            config["etcd-snapshot-retention"] = etcd.snapshot_retention
    return config


def render_k3s_config(inputs: RenderInput) -> dict[str, Any]:
    """The k3s config-file keys (`/etc/rancher/k3s/config.yaml.d/10-cluster-api.yaml`)."""
    k3s = inputs.spec.k3s
    config: dict[str, Any] = {}
    if inputs.role.server:
        config.update(_server_config(k3s.server if k3s else None, inputs))
    if k3s is None:
        return config
    if k3s.node_labels:
        config["node-label"] = [f"{k}={v}" for k, v in sorted(k3s.node_labels.items())]
    if k3s.node_taints:
        config["node-taint"] = [
            f"{t.key}={t.value}:{t.effect}" if t.value else f"{t.key}:{t.effect}" for t in k3s.node_taints
        ]
    if k3s.kubelet_args:
        config["kubelet-arg"] = list(k3s.kubelet_args)
    if k3s.kube_proxy_args:
        config["kube-proxy-arg"] = list(k3s.kube_proxy_args)
    return config


def _registries(inputs: RenderInput) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """registries.yaml content and the CA bundle files it points at."""
    registries = inputs.spec.k3s.registries if inputs.spec.k3s else None
    if registries is None or not (registries.mirrors or registries.configs):
        return {}, []
    doc: dict[str, Any] = {}
    files: list[dict[str, Any]] = []
    if registries.mirrors:
        mirrors: dict[str, Any] = {}
        for name, mirror in sorted(registries.mirrors.items()):
            entry: dict[str, Any] = {"endpoint": list(mirror.endpoints)}
            if mirror.rewrites:
                entry["rewrite"] = dict(mirror.rewrites)
            mirrors[name] = entry
        doc["mirrors"] = mirrors
    if registries.configs:
        configs: dict[str, Any] = {}
        for host, config in sorted(registries.configs.items()):
            entry = {}
            where = f"spec.k3s.registries.configs[{host}]"
            if config.auth_secret_ref is not None:
                name = config.auth_secret_ref.name
                data = inputs.secrets.get(name)
                if data is None:
                    raise RenderError(f"{where}.authSecretRef: Secret {name!r} not found")
                auth: dict[str, str] = {}
                if "username" in data and "password" in data:
                    auth = {"username": data["username"].decode(), "password": data["password"].decode()}
                elif "auth" in data:
                    auth = {"auth": data["auth"].decode()}
                elif "identitytoken" in data:
                    auth = {"identity_token": data["identitytoken"].decode()}
                else:
                    raise RenderError(
                        f"{where}.authSecretRef: Secret {name!r} needs keys username and password, "
                        "or auth, or identitytoken"
                    )
                entry["auth"] = auth
            tls: dict[str, Any] = {}
            if config.ca_bundle_secret_ref is not None:
                ref = config.ca_bundle_secret_ref
                bundle = _secret_value(inputs, ref.name, ref.key, f"{where}.caBundleSecretRef")
                path = f"{REGISTRY_CA_DIR}/{host.replace(':', '_')}.crt"
                files.append(_file(path, _template_safe(bundle), MODE_CONFIG, encode=True))
                tls["ca_file"] = path
            if config.insecure_skip_verify:
                tls["insecure_skip_verify"] = True
            if tls:
                entry["tls"] = tls
            configs[host] = entry
        doc["configs"] = configs
    return doc, files


# ------------------------------------------------------------------ scripts


def _provider_id_script(fallback: str | None) -> str:
    # The config drive's label: `cidata` (NoCloud, libvirt) or `config-2` (OpenStack,
    # Ironic); vfat ISO labels may come upper-case. The id is checked against a
    # conservative character set before it goes into a YAML file.
    # yip runs every file's content through Go templates (`{{ .Values... }}`), so the
    # script must not contain `{{`: `{{hostname}}` becomes "$host" here, at render time.
    fallback_expr = '"$host"'.join(shlex.quote(part) for part in (fallback or "").split(HOSTNAME_PLACEHOLDER))
    return f"""#!/bin/sh
# Written by capi-c3os: give k3s's kubelet the provider ID Cluster API matches the Node by.
set -u
# The variables only let the tests run this script outside a node.
out=${{CLUSTER_API_PROVIDER_ID_FILE:-{PROVIDER_ID_FILE}}}
id=""
for label in cidata CIDATA config-2 CONFIG-2; do
  dev=$(blkid -L "$label" 2>/dev/null) || continue
  mnt=$(mktemp -d)
  if mount -o ro "$dev" "$mnt" 2>/dev/null; then
    if [ -f "$mnt/meta-data" ]; then
      id=$(sed -n 's/^provider-id:[[:space:]]*//p' "$mnt/meta-data" | head -n 1 | tr -d "\\"'\\r")
    elif [ -f "$mnt/openstack/latest/meta_data.json" ]; then
      id=$(tr -d '\\n' < "$mnt/openstack/latest/meta_data.json" \\
        | sed -n 's/.*"provider-id"[[:space:]]*:[[:space:]]*"\\([^"]*\\)".*/\\1/p')
    fi
    umount "$mnt"
  fi
  rmdir "$mnt"
  [ -n "$id" ] && break
done
if [ -z "$id" ]; then
  host=$(hostname)
  id={fallback_expr}
fi
if [ -z "$id" ]; then
  echo "cluster-api-provider-id: no provider-id in the config drive meta-data and no fallback" >&2
  exit 1
fi
case "$id" in
  *[!A-Za-z0-9:/._@-]*)
    echo "cluster-api-provider-id: refusing a provider-id with unexpected characters" >&2
    exit 1;;
esac
mkdir -p "$(dirname "$out")"
printf 'kubelet-arg+:\\n  - "provider-id=%s"\\n' "$id" > "$out.tmp" && mv "$out.tmp" "$out"
"""


def _sentinel_script(role: Role) -> str:
    if role.server:
        probe = "k3s kubectl --kubeconfig /etc/rancher/k3s/k3s.yaml get --raw=/readyz"
    else:
        probe = "curl -fs http://127.0.0.1:10248/healthz"
    return f"""#!/bin/sh
# Written by capi-c3os: Cluster API's bootstrap-success sentinel, only once k3s serves.
sentinel=${{CLUSTER_API_SENTINEL:-{SENTINEL}}}  # overridable for the tests only
until {probe} >/dev/null 2>&1; do sleep 5; done
mkdir -p "$(dirname "$sentinel")"
touch "$sentinel"
"""


def _sentinel_unit(unit: str) -> str:
    return f"""[Unit]
Description=Cluster API bootstrap success sentinel (capi-c3os)
After={unit}

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart={SENTINEL_SCRIPT}

[Install]
WantedBy=multi-user.target
"""


def _k3s_dropin() -> str:
    return f"""[Unit]
Wants={SENTINEL_UNIT}

[Service]
ExecStartPre={PROVIDER_ID_SCRIPT}
"""


# ------------------------------------------------------------------ the document


def ca_paths() -> list[str]:
    """The files of the three CAs every first server gets, in the order we write them."""
    return [f"{TLS_DIR}/{stem}.{ext}" for stem in CA_STEMS for ext in ("crt", "key")]


def first_boot_condition(paths: list[str]) -> str:
    """A yip step `if:`: true while any of `paths` is missing or empty.

    yip v1.25.1 `pkg/plugins/if.go` (`IfConditional`) runs the `if` text with `sh -c`
    (`pkg/console/console.go`) and `pkg/executor/default.go` (`applyStage`) skips the
    step when it exits non-zero. "Any missing", not yip's `if_files: {none: ...}` ("all
    missing"): a first boot cut short after some files would otherwise never get the
    rest, and k3s would make its own CAs for them."""
    return " || ".join(f"[ ! -s {shlex.quote(path)} ]" for path in paths)


def _ca_files(cas: ClusterCAs) -> list[dict[str, Any]]:
    files = []
    pairs = [*zip((cas.server, cas.client, cas.etcd), CA_STEMS, strict=True)]
    pairs += [
        (pair, stem)
        for pair, stem in ((cas.etcd_peer, "etcd/peer-ca"), (cas.request_header, "request-header-ca"))
        if pair
    ]
    for pair, stem in pairs:
        files.append(_file(f"{TLS_DIR}/{stem}.crt", pair.cert_pem, MODE_CERT, encode=True))
        files.append(_file(f"{TLS_DIR}/{stem}.key", pair.key_pem, MODE_SECRET, encode=True))
    if cas.service_account_key is not None:
        files.append(_file(f"{TLS_DIR}/service.key", cas.service_account_key, MODE_SECRET, encode=True))
    return files


def _user_file(inputs: RenderInput, index: int, file: File) -> dict[str, Any]:
    mode = int(file.permissions, 8)
    if file.content_from is not None:
        ref = file.content_from.secret
        data = _secret_value(inputs, ref.name, ref.key, f"spec.files[{index}] ({file.path})")
        entry = _file(file.path, _template_safe(data), mode, encode=True)
    else:
        entry = _file(file.path, file.content or "", mode)
    if file.owner:
        del entry["owner"], entry["group"]
        entry["ownerstring"] = file.owner
    return entry


def _users(spec: C3osConfigSpec) -> list[dict[str, Any]]:
    users = []
    for user in spec.users or []:
        # yip writes `passwd` to /etc/shadow as is: without a lock the user would have an
        # empty password (console login through pam nullok, sudo via %admin).
        entry: dict[str, Any] = {"name": user.name, "lock_passwd": True}
        if user.groups:
            entry["groups"] = list(user.groups)
        if user.ssh_authorized_keys:
            entry["ssh_authorized_keys"] = list(user.ssh_authorized_keys)
        users.append(entry)
    return users


def _boot_steps(spec: C3osConfigSpec, owned_files: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Our steps after yip's user step (the first of `boot`)."""
    steps: list[dict[str, Any]] = []
    memberships = [(user.name, group) for user in spec.users or [] for group in user.groups or []]
    if memberships:
        # yip (pkg/plugins/user.go, v1.25.1) adds a user to its groups only when it
        # creates the user: one the image already has (kairos) would never get them.
        commands = [_join_group(user, group) for user, group in memberships]
        steps.append({"name": "cluster-api-user-groups", "commands": commands})
    if owned_files:
        steps.append({"name": "cluster-api-files-owned", "files": owned_files})
    return steps


def _join_group(user: str, group: str) -> str:
    """A shell command adding `user` to the member list of `group` in /etc/group, if the
    group exists and the user is not a member yet; busybox awk is enough (both names are
    validated Unix names: nothing to quote)."""
    program = '$1==g{n=split($4,m,",");for(i=1;i<=n;i++)if(m[i]==u)f=1;if(!f)$4=($4==""?u:$4","u)}1'
    return (
        f"awk -F: -v OFS=: -v g={group} -v u={user} '{program}' /etc/group > /etc/group.cluster-api"
        " && cat /etc/group.cluster-api > /etc/group && rm -f /etc/group.cluster-api"
    )


def _p2p(inputs: RenderInput) -> dict[str, Any] | None:
    p2p = inputs.spec.p2p
    if p2p is None:
        return None
    ref = p2p.network_token_secret_ref
    token = _secret_value(inputs, ref.name, ref.key, "spec.p2p.networkTokenSecretRef")
    block: dict[str, Any] = {"network_token": token.decode().strip()}
    block["dns"] = p2p.dns
    if p2p.log_level:
        block["loglevel"] = p2p.log_level
    block["disable_dht"] = p2p.disable_dht
    vpn = p2p.vpn
    # provider-kairos v2.16.4 honours only vpn.create on its one-time bootstrap path
    # (oneTimeBootstrap: k3s args verbatim, VPN set up after k3s starts).
    block["vpn"] = {"create": vpn.create if vpn else True}
    # CAPI decides who is a server: p2p's own cluster formation stays off.
    block["auto"] = {"enable": False, "ha": {"enable": False}}
    return block


KUBE_VIP_IMAGE = "ghcr.io/kube-vip/kube-vip:v1.2.3"
"""provider-kairos v2.16.4's default (internal/role/p2p/kubevip.go)."""
KUBE_VIP_MANIFEST = "/var/lib/rancher/k3s/agent/pod-manifests/kube-vip.yaml"
"""A k3s static pod: k3s points its kubelet's pod-manifest-path at agent/pod-manifests."""
K3S_KUBECONFIG = "/etc/rancher/k3s/k3s.yaml"


def _kube_vip_pod(inputs: RenderInput) -> dict[str, Any] | None:
    """kube-vip as a static pod on every server, announcing the endpoint by ARP with
    leader election through the local API server (k3s's admin kubeconfig).

    provider-kairos deploys kube-vip only on its p2p auto path, never on the one-time
    bootstrap path our documents take, so its `kubevip` block would do nothing. The pod
    is what `kube-vip manifest pod` (v1.2.3 pkg/kubevip/config_generator.go,
    generatePodSpec) makes for provider-kairos's settings: ARP, control plane, leader
    election 5/3/1 s, lease plndr-cp-lock, the kubeconfig at /etc/kubernetes/admin.conf."""
    k3s = inputs.spec.k3s
    kube_vip = k3s.server.kube_vip if (k3s and k3s.server) else None
    if not inputs.role.server or kube_vip is None:
        return None
    address = kube_vip.address or inputs.endpoint_host
    try:
        subnet = "32" if ipaddress.ip_address(address).version == 4 else "128"
    except ValueError:
        raise RenderError(
            "spec.k3s.server.kubeVIP: the VIP must be an IP address; set kubeVIP.address "
            "(the control-plane endpoint host is not one)"
        ) from None
    env = [
        {"name": "vip_arp", "value": "true"},
        {"name": "port", "value": str(inputs.endpoint_port)},
        {"name": "vip_nodename", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
    ]
    if kube_vip.interface:
        env.append({"name": "vip_interface", "value": kube_vip.interface})
    env += [
        {"name": "vip_subnet", "value": subnet},
        {"name": "cp_enable", "value": "true"},
        {"name": "cp_namespace", "value": "kube-system"},
        {"name": "vip_leaderelection", "value": "true"},
        {"name": "vip_leasename", "value": "plndr-cp-lock"},
        {"name": "vip_leaseduration", "value": "5"},
        {"name": "vip_renewdeadline", "value": "3"},
        {"name": "vip_retryperiod", "value": "1"},
        {"name": "address", "value": address},
        {"name": "prometheus_server", "value": ":2112"},
    ]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "kube-vip", "namespace": "kube-system"},
        "spec": {
            "containers": [{
                "name": "kube-vip",
                "image": kube_vip.image or KUBE_VIP_IMAGE,
                "imagePullPolicy": "IfNotPresent",
                "args": ["manager"],
                "env": env,
                "securityContext": {"capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]}},
                "volumeMounts": [{"name": "kubeconfig", "mountPath": "/etc/kubernetes/admin.conf"}],
            }],
            "hostNetwork": True,
            "hostAliases": [{"ip": "127.0.0.1", "hostnames": ["kubernetes"]}],
            # `File`: wait for k3s to write its kubeconfig (an unset type would make the
            # runtime create a directory in its place).
            "volumes": [{"name": "kubeconfig", "hostPath": {"path": K3S_KUBECONFIG, "type": "File"}}],
        },
    }  # fmt: skip


def _k3s_files(inputs: RenderInput, unit: str) -> list[dict[str, Any]]:
    files = [_file(TOKEN_FILE, inputs.token + "\n", MODE_SECRET, encode=True)]
    k3s_config = render_k3s_config(inputs)
    if k3s_config:
        files.append(_file(CONFIG_FILE, _yaml(k3s_config), MODE_CONFIG))
    registries, registry_files = _registries(inputs)
    if registries:
        files.append(_file(REGISTRIES_FILE, _template_safe(_yaml(registries).encode()), MODE_SECRET))
        files += registry_files
    files += [
        _file(PROVIDER_ID_SCRIPT, _provider_id_script(inputs.spec.provider_id_fallback), MODE_SCRIPT),
        _file(SENTINEL_SCRIPT, _sentinel_script(inputs.role), MODE_SCRIPT),
        _file(f"/etc/systemd/system/{SENTINEL_UNIT}", _sentinel_unit(unit), MODE_CONFIG),
        _file(f"/etc/systemd/system/{unit}.d/10-cluster-api.conf", _k3s_dropin(), MODE_CONFIG),
    ]
    return files


def render_document(inputs: RenderInput) -> dict[str, Any]:
    """The cloud-config as a mapping (what `render_cloud_config` serialises)."""
    spec = inputs.spec
    if inputs.role is Role.INIT_SERVER and inputs.cas is None:
        raise RenderError("the first server needs the cluster CAs")
    _check_stages(spec)
    doc: dict[str, Any] = {"hostname": inputs.hostname}
    if spec.users:
        doc["users"] = _users(spec)
    install: dict[str, Any] = {}
    if spec.install is not None:
        install = {
            "auto": spec.install.auto,
            "device": spec.install.device,
            "reboot": spec.install.reboot,
            "poweroff": spec.install.poweroff,
        }
    if not any("admin" in (user.groups or []) for user in spec.users or []):
        # kairos-agent install, upgrade and reset refuse a config without a user in group
        # admin (pkg/config CheckConfigForUsers) unless told there are none on purpose.
        install["nousers"] = True
    if install:
        doc["install"] = install
    k3s = spec.k3s
    args = _role_args(inputs) + list((k3s.args if k3s else None) or [])
    if inputs.role.server and k3s and k3s.server and k3s.server.args:
        args += list(k3s.server.args)
    unit = "k3s.service" if inputs.role.server else "k3s-agent.service"
    doc["k3s" if inputs.role.server else "k3s-agent"] = {"enabled": True, "args": args}
    p2p = _p2p(inputs)
    if p2p is not None:
        doc["p2p"] = p2p

    k3s_files = _k3s_files(inputs, unit)
    registry_cas = any(f["path"].startswith(REGISTRY_CA_DIR + "/") for f in k3s_files)
    initramfs: list[dict[str, Any]] = [
        {"name": "cluster-api-k3s", "directories": _k3s_dirs(unit, registry_cas), "files": k3s_files}
    ]
    pod = _kube_vip_pod(inputs)
    if pod is not None:
        initramfs.append({
            "name": "cluster-api-kube-vip",
            "directories": [_dir(path, MODE_DIR) for path in KUBE_VIP_DIRS],
            "files": [_file(KUBE_VIP_MANIFEST, _template_safe(_yaml(pod).encode()), MODE_CONFIG)],
        })  # fmt: skip
    if inputs.role is Role.INIT_SERVER:
        assert inputs.cas is not None
        ca_files = _ca_files(inputs.cas)
        initramfs.append({
            "name": "cluster-api-k3s-cas",
            "if": first_boot_condition([f["path"] for f in ca_files]),
            "directories": [_dir(path, mode) for path, mode in CA_DIRS],
            "files": ca_files,
        })  # fmt: skip
    stages: dict[str, list[dict[str, Any]]] = {"initramfs": initramfs}
    # yip creates the top-level `users` in the first step of `boot` (its cloud-init
    # loader); a file owned by one of them can only be written after that step.
    created = {user.name for user in spec.users or []}
    early: list[dict[str, Any]] = []
    late: list[dict[str, Any]] = []
    for index, file in enumerate(spec.files or []):
        owned_later = bool(file.owner) and (file.owner or "").split(":")[0] in created
        (late if owned_later else early).append(_user_file(inputs, index, file))
    if early:
        initramfs.append({"name": "cluster-api-files", "files": early})
    if boot := _boot_steps(spec, late):
        stages["boot"] = boot
    for stage, steps in (spec.stages or {}).items():
        stages.setdefault(stage, []).extend(steps)
    doc["stages"] = stages
    return doc


def render_cloud_config(inputs: RenderInput) -> str:
    """`#cloud-config` followed by the YAML document; deterministic for equal inputs."""
    return f"{HEADER}\n{_yaml(render_document(inputs))}"
