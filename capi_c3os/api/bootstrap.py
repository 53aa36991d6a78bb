"""bootstrap.cluster.x-k8s.io/v1alpha1: C3osConfig and C3osConfigTemplate.

A C3osConfig describes one node's c3os/Kairos cloud-config: k3s settings (the `server`
part applies only when the Machine is a control-plane machine) and OS settings (users,
install, files, yip stages, p2p). The role is not part of the spec: it comes from the
Machine's `cluster.x-k8s.io/control-plane` label.
"""

from __future__ import annotations

import re
from typing import Annotated, Final, Literal

from pydantic import ConfigDict, Field, StringConstraints, field_validator, model_validator
from pydantic.config import JsonDict

from capi_c3os.api.base import (
    ApiModel,
    FreeFormObject,
    KubeObject,
    exactly_one,
    list_map,
    list_set,
    validations,
)
from capi_c3os.api.common import (
    DNS_LABEL,
    DNS_SUBDOMAIN,
    LABEL_VALUE,
    QUALIFIED_NAME,
    BootstrapInitialization,
    Condition,
    SecretKeyRef,
    SecretRef,
    TemplateMetadata,
    conditions_field,
    key_prefix_rule,
    qualified_name_problem,
    qualified_name_rules,
)

GROUP = "bootstrap.cluster.x-k8s.io"
VERSION = "v1alpha1"
API_VERSION: Final = "bootstrap.cluster.x-k8s.io/v1alpha1"

# k3s flags in `--name=value` form, one list item per flag, so a value can never be
# mistaken for a flag of its own.
K3S_FLAG = r"^--[a-z0-9][a-z0-9-]*(=.*)?$"
# Flags the provider sets itself: init vs join and the join token.
RESERVED_K3S_FLAG = (
    r"^--(cluster-init|cluster-reset|server|token|token-file|agent-token|agent-token-file)(=.*)?$"
)
# `--kubelet-arg` / `--kube-*-arg` values: `name=value`.
COMPONENT_ARG = r"^[a-z0-9][a-z0-9-]*(=.*)?$"
RESERVED_KUBELET_ARG = r"^provider-id(=.*)?$"
CIDR_LIST = r"^[0-9a-fA-F:.]+/[0-9]{1,3}(,[0-9a-fA-F:.]+/[0-9]{1,3})?$"
IP_LIST = r"^[0-9a-fA-F:.]+(,[0-9a-fA-F:.]+)?$"
REGISTRY_HOST = r"^[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?(:[0-9]{1,5})?$"
HTTP_URL = r"^https?://[^\s]+$"
UNIX_NAME = r"^[a-z_][a-z0-9_-]{0,31}$"
OWNER = r"^[a-z0-9_][a-z0-9_-]{0,31}(:[a-z0-9_][a-z0-9_-]{0,31})?$"
SINGLE_LINE = r"^[^\r\n]+$"
# An absolute path without NUL or control characters: a newline would end the path early
# in the rendered cloud-config/yip file and start another line of the file's own choosing.
FILE_PATH = r"^/[^\x00-\x1f\x7f]+$"
PATH_PARENT_SEGMENT = "(^|/)[.][.](/|$)"  # no backslashes: it is embedded in a CEL string too

K3sFlag = Annotated[str, StringConstraints(min_length=3, max_length=1024, pattern=K3S_FLAG)]
ComponentArg = Annotated[str, StringConstraints(min_length=1, max_length=1024, pattern=COMPONENT_ARG)]
TlsSan = Annotated[str, StringConstraints(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9:.*-]+$")]
MirrorEndpoint = Annotated[str, StringConstraints(min_length=1, max_length=2048, pattern=HTTP_URL)]
UnixName = Annotated[str, StringConstraints(min_length=1, max_length=32, pattern=UNIX_NAME)]
AuthorizedKey = Annotated[str, StringConstraints(min_length=1, max_length=16384, pattern=SINGLE_LINE)]
LabelValue = Annotated[str, StringConstraints(max_length=63, pattern=LABEL_VALUE)]
MAX_NODE_LABELS = 64
# provider-kairos (v2.16.4, internal/provider/bootstrap.go) joins k3s args with spaces into
# an unquoted systemd `ExecStart=`: whitespace splits a value, `$` and `%` are expanded,
# quotes and backslashes are systemd's. Such values belong in the structured fields
# (written to config.yaml.d) or in `files` as a config.yaml.d fragment.
K3S_ARG_UNSAFE = r"""[[:space:]$%\\\\\'"]"""  # CEL single-quoted: RE2 [[:space:]$%\\'"]
K3S_ARG_UNSAFE_MESSAGE = (
    "k3s args end up unquoted in a systemd ExecStart= line (provider-kairos): values must not contain "
    "whitespace, $, %, quotes or backslashes; write such settings as a file under "
    "/etc/rancher/k3s/config.yaml.d/ instead"
)
StageSteps = Annotated[list[FreeFormObject], Field(max_length=64)]
K3sComponent = Literal["coredns", "servicelb", "traefik", "local-storage", "metrics-server", "runtimes"]

MAX_ARGS = 64


def _args_rules(reserved: str, what: str) -> tuple[str, str]:
    # The same regex in CEL and in the model; CEL's matches() is RE2.
    return (
        f"self.all(a, !a.matches('{reserved}'))",
        f"{what} are set by the provider and cannot be given here",
    )


def _check_args(args: list[str] | None, reserved: str, what: str) -> list[str] | None:
    for arg in args or []:
        if re.search(reserved, arg):
            raise ValueError(f"{arg!r}: {what} are set by the provider and cannot be given here")
    return args


def _check_k3s_args(args: list[str] | None) -> list[str] | None:
    for arg in _check_args(args, RESERVED_K3S_FLAG, "init, join and token flags") or []:
        if re.search(r"[\s$%\\'\"]", arg):
            raise ValueError(K3S_ARG_UNSAFE_MESSAGE)
    return args


def _list_atomic_rules(*rules: tuple[str, str]) -> JsonDict:
    return {"x-kubernetes-list-type": "atomic", **validations(*rules)}


def _k3s_args_field() -> list[str] | None:
    result: list[str] | None = Field(
        None,
        max_length=MAX_ARGS,
        json_schema_extra=_list_atomic_rules(
            _args_rules(RESERVED_K3S_FLAG, "init, join and token flags"),
            (f"self.all(a, !a.matches('{K3S_ARG_UNSAFE}'))", K3S_ARG_UNSAFE_MESSAGE),
        ),
    )
    return result


def _labels_field() -> dict[str, str] | None:
    # Map keys have no schema of their own (no propertyNames in a structural schema): a CEL
    # rule per key, cheap enough because maxProperties bounds the loop.
    rules = [(f"self.all(k, {rule})", message) for rule, message in qualified_name_rules("k")]
    result: dict[str, str] | None = Field(
        None, max_length=MAX_NODE_LABELS, json_schema_extra=validations(*rules)
    )
    return result


class Taint(ApiModel):
    """A taint the node registers with."""

    model_config = ConfigDict(json_schema_extra=validations(key_prefix_rule("self.key")))

    key: str = Field(min_length=1, max_length=317, pattern=QUALIFIED_NAME)
    """Taint key: an optional DNS-subdomain prefix and '/', then a name of at most 63
    characters."""
    value: LabelValue | None = None
    """Taint value: at most 63 alphanumerics, '-', '_', '.', alphanumeric at both ends."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"]
    """Taint effect."""

    @field_validator("key")
    @classmethod
    def _qualified_key(cls, key: str) -> str:
        problem = qualified_name_problem(key)
        if problem:
            raise ValueError(problem)
        return key


class RegistryMirror(ApiModel):
    """Where to pull images of one registry from (k3s registries.yaml `mirrors`)."""

    endpoints: list[MirrorEndpoint] = Field(min_length=1, max_length=16)
    """Mirror endpoints, tried in order (the upstream registry is tried last)."""
    rewrites: dict[str, str] | None = Field(None, max_length=16)
    """Regular expression rewrites of image names for this mirror."""


class RegistryConfig(ApiModel):
    """How to reach one registry host (k3s registries.yaml `configs`)."""

    auth_secret_ref: SecretRef | None = None
    """Secret with `username` and `password` (or `auth`, or `identitytoken`)."""
    ca_bundle_secret_ref: SecretKeyRef | None = None
    """Secret key holding the PEM CA bundle that signs the registry's certificate."""
    insecure_skip_verify: bool = False
    """Skip TLS certificate verification."""


class Registries(ApiModel):
    """Private registry mirrors and credentials, for air-gapped sites."""

    mirrors: dict[str, RegistryMirror] | None = Field(None, max_length=32)
    """Mirrors per registry name (e.g. docker.io, or * for all)."""
    configs: dict[str, RegistryConfig] | None = Field(None, max_length=32)
    """Credentials and TLS settings per registry host."""


class Etcd(ApiModel):
    """Embedded etcd settings."""

    expose_metrics: bool = False
    """Expose etcd metrics on the client interface."""
    disable_snapshots: bool = False
    """Turn off scheduled etcd snapshots."""
    snapshot_schedule_cron: str | None = Field(None, min_length=1, max_length=64)
    """Snapshot schedule in cron syntax (k3s default: every 12 hours)."""
    snapshot_retention: int | None = Field(None, ge=1, le=1000)
    """How many snapshots to keep."""


class KubeVip(ApiModel):
    """kube-vip on the servers, announcing the control-plane endpoint as a virtual IP by
    ARP: a k3s static pod with leader election through the server's local API server."""

    address: str | None = Field(None, min_length=2, max_length=45, pattern=r"^[0-9a-fA-F:.]+$")
    """The VIP (an IP address); unset means the cluster's controlPlaneEndpoint host,
    which must then be an IP address."""
    interface: str | None = Field(None, min_length=1, max_length=15, pattern=r"^[A-Za-z0-9][-A-Za-z0-9_.]*$")
    """Network interface to announce on; unset lets kube-vip pick the default route's."""
    image: str | None = Field(None, min_length=1, max_length=512, pattern=r"^[A-Za-z0-9][A-Za-z0-9._/:@-]*$")
    """kube-vip image; unset means ghcr.io/kube-vip/kube-vip:v1.2.3 (provider-kairos's
    default). Air-gapped sites: a mirror's copy (a static pod, so system-default-registry
    does not apply)."""


class K3sServer(ApiModel):
    """Settings only servers (control-plane machines) use."""

    args: list[K3sFlag] | None = _k3s_args_field()
    """Extra k3s server flags, each as --name=value."""
    tls_sans: list[TlsSan] | None = Field(None, alias="tlsSANs", max_length=32, json_schema_extra=list_set())
    """Extra names and addresses for the API server certificate (the endpoint is added
    by the provider)."""
    cluster_cidr: str | None = Field(None, alias="clusterCIDR", max_length=128, pattern=CIDR_LIST)
    """Pod network CIDR(s), one per IP family."""
    service_cidr: str | None = Field(None, alias="serviceCIDR", max_length=128, pattern=CIDR_LIST)
    """Service network CIDR(s), one per IP family."""
    cluster_dns: str | None = Field(None, alias="clusterDNS", max_length=128, pattern=IP_LIST)
    """Cluster DNS service IP(s)."""
    cluster_domain: str | None = Field(None, max_length=253, pattern=DNS_SUBDOMAIN)
    """Cluster domain (k3s default cluster.local)."""
    disable_components: list[K3sComponent] | None = Field(None, max_length=8, json_schema_extra=list_set())
    """Packaged components not to deploy."""
    disable_cloud_controller: bool = False
    """Turn off k3s's embedded cloud controller manager."""
    kube_api_server_args: list[ComponentArg] | None = Field(
        None, alias="kubeAPIServerArgs", max_length=MAX_ARGS
    )
    """Extra kube-apiserver flags, each as name=value."""
    kube_controller_manager_args: list[ComponentArg] | None = Field(None, max_length=MAX_ARGS)
    """Extra kube-controller-manager flags, each as name=value."""
    kube_scheduler_args: list[ComponentArg] | None = Field(None, max_length=MAX_ARGS)
    """Extra kube-scheduler flags, each as name=value."""
    etcd: Etcd | None = None
    """Embedded etcd settings."""
    secrets_encryption: bool = False
    """Encrypt Secrets at rest."""
    system_default_registry: str | None = Field(None, min_length=1, max_length=253, pattern=REGISTRY_HOST)
    """Registry that all k3s system images are pulled from (air-gapped sites)."""
    kube_vip: KubeVip | None = Field(None, alias="kubeVIP")
    """Run kube-vip on the servers for the endpoint VIP."""

    @field_validator("args")
    @classmethod
    def _no_reserved_flags(cls, args: list[str] | None) -> list[str] | None:
        return _check_k3s_args(args)


class K3s(ApiModel):
    """k3s settings for every node; `server` adds the settings only servers use."""

    args: list[K3sFlag] | None = _k3s_args_field()
    """Extra k3s flags for every node (server and agent), each as --name=value."""
    node_labels: dict[str, LabelValue] | None = _labels_field()
    """Labels the node registers with: keys and values as Kubernetes labels (an optional
    DNS-subdomain prefix and '/', a name of at most 63 characters; values at most 63)."""
    node_taints: list[Taint] | None = Field(None, max_length=32)
    """Taints the node registers with."""
    kubelet_args: list[ComponentArg] | None = Field(
        None,
        max_length=MAX_ARGS,
        json_schema_extra=_list_atomic_rules(
            _args_rules(RESERVED_KUBELET_ARG, "provider-id kubelet args"),
        ),
    )
    """Extra kubelet flags, each as name=value (provider-id is set by the provider)."""
    kube_proxy_args: list[ComponentArg] | None = Field(None, max_length=MAX_ARGS)
    """Extra kube-proxy flags, each as name=value."""
    registries: Registries | None = None
    """Private registry mirrors and credentials."""
    server: K3sServer | None = None
    """Settings for servers only; ignored on workers."""

    @field_validator("args")
    @classmethod
    def _no_reserved_flags(cls, args: list[str] | None) -> list[str] | None:
        return _check_k3s_args(args)

    @field_validator("node_labels")
    @classmethod
    def _label_keys(cls, labels: dict[str, str] | None) -> dict[str, str] | None:
        for key in labels or {}:
            problem = qualified_name_problem(key)
            if problem:
                raise ValueError(problem)
        return labels

    @field_validator("kubelet_args")
    @classmethod
    def _no_provider_id(cls, args: list[str] | None) -> list[str] | None:
        return _check_args(args, RESERVED_KUBELET_ARG, "provider-id kubelet args")


class User(ApiModel):
    """An OS user, created with a locked password (there is no password field: log in with
    SSH keys)."""

    name: str = Field(min_length=1, max_length=32, pattern=UNIX_NAME)
    """User name."""
    groups: list[UnixName] | None = Field(None, max_length=32, json_schema_extra=list_set())
    """Supplementary groups, e.g. admin; groups that exist on the node. Also applied to a
    user the image already has (e.g. kairos), which Kairos itself does not do."""
    ssh_authorized_keys: list[AuthorizedKey] | None = Field(None, max_length=64)
    """SSH public keys (authorized_keys lines), or github:<user> / gitlab:<user>."""


class Install(ApiModel):
    """Install c3os to disk from a live ISO (Kairos `install`). Leave unset for machines
    that boot an installed disk image."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            ("!(self.reboot && self.poweroff)", "set at most one of reboot and poweroff"),
        )
    )

    device: str = Field("auto", min_length=1, max_length=256, pattern=r"^(auto|/dev/[^\s]+)$")
    """Disk to install to: auto (the largest disk) or a /dev path."""
    auto: bool = True
    """Start the installation without asking."""
    reboot: bool = True
    """Reboot into the installed system afterwards."""
    poweroff: bool = False
    """Power off afterwards instead (set reboot to false)."""

    @model_validator(mode="after")
    def _one_ending(self) -> Install:
        if self.reboot and self.poweroff:
            raise ValueError("set at most one of reboot and poweroff")
        return self


class FileSource(ApiModel):
    """Where a file's content comes from."""

    secret: SecretKeyRef
    """A key of a Secret in the same namespace."""


class File(ApiModel):
    """A file written on the node before k3s starts."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            (
                "has(self.content) != has(self.contentFrom)",
                "exactly one of content or contentFrom must be set",
            ),
            (f"!self.path.matches('{PATH_PARENT_SEGMENT}')", "path must not contain .. segments"),
            (
                "!self.path.matches('[[:cntrl:]]')",
                "path must not contain control characters (newline, tab, ...)",
            ),
        )
    )

    path: str = Field(min_length=2, max_length=4096, pattern=FILE_PATH)
    """Absolute path of the file, without control characters."""
    content: str | None = Field(None, max_length=1048576)
    """Inline content."""
    content_from: FileSource | None = None
    """Content from a Secret key."""
    permissions: str = Field("0644", pattern=r"^0?[0-7]{3}$")
    """Octal file mode."""
    owner: str | None = Field(None, max_length=65, pattern=OWNER)
    """Owner as user or user:group (default root). A file owned by a user of spec.users
    is written in Kairos's boot stage, after that user is created (not before k3s)."""

    @model_validator(mode="after")
    def _well_formed(self) -> File:
        exactly_one(self, "content", "content_from")
        if re.search(PATH_PARENT_SEGMENT, self.path):
            raise ValueError("path must not contain .. segments")
        return self


class P2pVpn(ApiModel):
    """The p2p VPN interface."""

    create: bool = True
    """Create the VPN interface (edgevpn0)."""


class P2p(ApiModel):
    """A c3os/Kairos p2p (edgevpn) mesh between the nodes. Its automatic cluster
    formation stays off: CAPI decides who is a server. On that path provider-kairos
    starts the VPN after k3s and does not route k3s over it (its vpn.use and network_id
    only act on the p2p auto path, so they are not offered here)."""

    network_token_secret_ref: SecretKeyRef
    """Secret key holding the p2p network token."""
    dns: bool = False
    """Serve DNS over the mesh."""
    log_level: Literal["debug", "info", "warn", "error"] | None = None
    """Log level of the p2p service."""
    disable_dht: bool = Field(False, alias="disableDHT")
    """Do not use the DHT for peer discovery (LAN-only meshes)."""
    vpn: P2pVpn | None = None
    """VPN interface settings."""


class C3osConfigSpec(ApiModel):
    """The node's c3os/Kairos cloud-config, role-independent."""

    k3s: K3s | None = None
    """k3s settings."""
    hostname: str | None = Field(None, min_length=1, max_length=63, pattern=DNS_LABEL)
    """Hostname of the node; unset means the Machine's name."""
    users: list[User] | None = Field(None, max_length=16, json_schema_extra=list_map("name"))
    """OS users with SSH keys, passwords locked. Without a user in group admin, Kairos is
    told so (install.nousers), as its install and upgrade otherwise refuse the config."""
    install: Install | None = None
    """Install to disk (live-ISO machines only)."""
    files: list[File] | None = Field(None, max_length=64, json_schema_extra=list_map("path"))
    """Files written before k3s starts (except those owned by a user of users, see owner)."""
    stages: dict[str, StageSteps] | None = Field(None, max_length=32)
    """Extra yip stages, passed through as written: stage name (boot, network,
    after-install, ...) to its steps."""
    p2p: P2p | None = None
    """p2p mesh between the nodes."""
    provider_id_fallback: str | None = Field(None, alias="providerIDFallback", min_length=1, max_length=512)
    """Provider ID for the kubelet when the config drive carries no provider-id meta-data
    (e.g. with another infrastructure provider). {{hostname}} is replaced with the node's
    hostname at boot."""


class C3osConfigStatus(ApiModel):
    """Observed state of a C3osConfig."""

    initialization: BootstrapInitialization | None = None
    """Initialization progress (CAPI v1beta2 contract)."""
    data_secret_name: str | None = Field(None, min_length=1, max_length=253)
    """Name of the Secret holding the bootstrap data (key value)."""
    conditions: list[Condition] | None = conditions_field()
    """Conditions of the config; Ready is mirrored to the Machine."""
    observed_generation: int | None = Field(None, ge=0)
    """The metadata.generation this status was computed from."""


class C3osConfig(KubeObject):
    """Bootstrap data for one machine: a c3os cloud-config that starts k3s."""

    GROUP = GROUP
    KIND = "C3osConfig"
    PLURAL = "c3osconfigs"

    api_version: Literal["bootstrap.cluster.x-k8s.io/v1alpha1"] = API_VERSION
    """APIVersion defines the versioned schema of this representation of an object."""
    kind: Literal["C3osConfig"] = "C3osConfig"
    """Kind is a string value representing the REST resource this object represents."""
    spec: C3osConfigSpec = Field(default_factory=C3osConfigSpec)
    """Desired state."""
    status: C3osConfigStatus | None = None
    """Observed state."""


class C3osConfigTemplateResource(ApiModel):
    """What a C3osConfig made from this template looks like."""

    metadata: TemplateMetadata | None = None
    """Labels and annotations for the created C3osConfig."""
    spec: C3osConfigSpec = Field(default_factory=C3osConfigSpec)
    """Spec of the created C3osConfig."""


class C3osConfigTemplateSpec(ApiModel):
    """Desired state of a C3osConfigTemplate."""

    template: C3osConfigTemplateResource
    """The template for C3osConfigs."""


class C3osConfigTemplate(KubeObject):
    """A template for C3osConfigs, used by MachineDeployments and ClusterClass."""

    GROUP = GROUP
    KIND = "C3osConfigTemplate"
    PLURAL = "c3osconfigtemplates"

    api_version: Literal["bootstrap.cluster.x-k8s.io/v1alpha1"] = API_VERSION
    """APIVersion defines the versioned schema of this representation of an object."""
    kind: Literal["C3osConfigTemplate"] = "C3osConfigTemplate"
    """Kind is a string value representing the REST resource this object represents."""
    spec: C3osConfigTemplateSpec
    """Desired state."""
