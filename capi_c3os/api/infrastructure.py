"""infrastructure.cluster.x-k8s.io/v1alpha1: C3osCluster, C3osMachine and their templates
(C3osHost, the enrolled hosts, is in hosts.py).

A C3osCluster names the *sites* (libvirt hosts, Ironic installations, pools of enrolled
hosts) its machines may go to; CAPI sees them as failure domains. A C3osMachine says what
to run (image, size) and how (`backend.libvirt`, `backend.ironic` or `backend.enrolled`);
its site comes from the Machine's failure domain, or the cluster's default site.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Final, Literal

from pydantic import ConfigDict, Field, StringConstraints, model_validator

from capi_c3os.api.base import (
    ApiModel,
    KubeObject,
    Quantity,
    exactly_one,
    list_map,
    list_set,
    validations,
)
from capi_c3os.api.common import (
    DNS_LABEL,
    APIEndpoint,
    Condition,
    FailureDomain,
    InfrastructureInitialization,
    MachineAddress,
    SecretKeyRef,
    SecretRef,
    TemplateMetadata,
    addresses_field,
    conditions_field,
)
from capi_c3os.api.hosts import EnrolledMachine, EnrolledMachineStatus, EnrolledSite

GROUP = "infrastructure.cluster.x-k8s.io"
VERSION = "v1alpha1"
API_VERSION: Final = "infrastructure.cluster.x-k8s.io/v1alpha1"

# Transports that keep the hypervisor connection authenticated and private; plain TCP is
# left out on purpose. `test://` is libvirt's in-process fake, for tests only.
LIBVIRT_URI = r"^(qemu(\+(ssh|libssh|libssh2|tls|unix))?|test)://[^\s]*$"
LIBVIRT_NAME = r"^[A-Za-z0-9][-A-Za-z0-9_.]*$"
INTERFACE_NAME = r"^[A-Za-z0-9][-A-Za-z0-9_.]{0,14}$"
HTTP_URL = r"^https?://[^\s]+$"
IMAGE_URL = r"^(https?|file)://[^\s]+$"
HEX_DIGEST = r"^([a-f0-9]{64}|[a-f0-9]{128})$"
# An OCI image reference with a tag or a digest (never an implied :latest): what
# `kairos-agent upgrade --source oci:<ref>` pulls. Registry host[:port], then path
# components as the distribution spec's reference grammar allows them.
_OCI_COMPONENT = r"[a-z0-9]+(([._]|__|-+)[a-z0-9]+)*"
_OCI_TAG = r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}"
OCI_REFERENCE = (
    r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]{1,5})?"
    rf"(/{_OCI_COMPONENT})*"
    rf"(:{_OCI_TAG}|@sha256:[a-f0-9]{{64}}|:{_OCI_TAG}@sha256:[a-f0-9]{{64}})$"
)

PROVIDER_ID_SCHEME = "c3os://"
# c3os://<namespace>/<name>, or on an enrolled host c3os://<namespace>/<host>/<name>: a
# namespace is a DNS label, a host `host-<system UUID>`, a name holds no slash.
PROVIDER_ID = (
    r"^c3os://[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?/"
    r"(host-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/)?[^/]+$"
)


def own_provider_id(namespace: str, name: str) -> str:
    """A C3osMachine's identity: from its own namespace and name, never chosen by anyone."""
    return f"{PROVIDER_ID_SCHEME}{namespace}/{name}"


def host_provider_id(namespace: str, host: str, name: str) -> str:
    """The providerID of a machine on the enrolled host `host` (its C3osHost, named after
    the system UUID): it shows the host, and stays one machine's (a reused host gives
    the next machine another providerID)."""
    return f"{PROVIDER_ID_SCHEME}{namespace}/{host}/{name}"


ABSOLUTE_PATH = r"^/[^\s]*$"

MAX_SITES = 32
ONE_OF_THREE = "[has(self.libvirt), has(self.ironic), has(self.enrolled)].filter(x, x).size() == 1"

IronicTrait = Annotated[str, StringConstraints(min_length=1, max_length=255, pattern=r"^[A-Z][A-Z0-9_]*$")]
IronicNodeName = Annotated[str, StringConstraints(min_length=1, max_length=255)]


# --- sites (C3osCluster) ---------------------------------------------------------------


class LibvirtSite(ApiModel):
    """A libvirt host (local or remote) that runs this site's machines as VMs."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            ("!(has(self.network) && has(self.bridge))", "set at most one of network or bridge"),
        )
    )

    uri: str = Field(min_length=1, max_length=2048, pattern=LIBVIRT_URI)
    """libvirt connection URI: qemu:///system, qemu+ssh://user@host/system,
    qemu+tls://host/system (also qemu+unix:// with a socket parameter, and test:///default
    for tests). SSH connections check the host key against known_hosts."""
    credentials_secret_ref: SecretRef | None = None
    """Secret with the connection's credentials: keys `ssh-privatekey` and `known_hosts`
    for qemu+ssh, or `tls.crt`, `tls.key` and `ca.crt` for qemu+tls. Not needed for
    local connections."""
    pool: str = Field("default", min_length=1, max_length=253, pattern=LIBVIRT_NAME)
    """Storage pool for machine disks, config drives and cached base images."""
    network: str | None = Field(None, min_length=1, max_length=253, pattern=LIBVIRT_NAME)
    """libvirt network the machines' first NIC joins. Set at most one of network and
    bridge; with neither, machines get no NIC unless they list their own."""
    bridge: str | None = Field(None, min_length=1, max_length=15, pattern=INTERFACE_NAME)
    """Host bridge the machines' first NIC joins, instead of a libvirt network."""
    domain_type: Literal["auto", "kvm", "qemu"] = "auto"
    """Virtualisation type: kvm (hardware), qemu (emulation), or auto (kvm only where a
    boot check proved it works on this host)."""

    @model_validator(mode="after")
    def _network_or_bridge(self) -> LibvirtSite:
        if self.network is not None and self.bridge is not None:
            raise ValueError("set at most one of network or bridge")
        return self


class IronicSite(ApiModel):
    """A standalone OpenStack Ironic that deploys this site's bare-metal machines."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            (
                "self.authType == 'none' || has(self.credentialsSecretRef)",
                "credentialsSecretRef is required unless authType is none",
            ),
        )
    )

    endpoint: str = Field(min_length=1, max_length=2048, pattern=HTTP_URL)
    """Ironic API endpoint, e.g. https://ironic.example:6385."""
    auth_type: Literal["none", "basic", "keystone"] = "none"
    """How to authenticate to Ironic: none (noauth), basic (HTTP basic) or keystone."""
    credentials_secret_ref: SecretRef | None = None
    """Secret with the credentials: `username` and `password` for basic; for keystone
    `auth-url`, `username`, `password`, `project-name`, `user-domain-name` and
    `project-domain-name` (or `application-credential-id` and
    `application-credential-secret`)."""
    ca_bundle_secret_ref: SecretKeyRef | None = None
    """Secret key holding the PEM CA bundle that signs the endpoint's certificate; unset
    means the system trust store."""
    insecure_skip_verify: bool = False
    """Skip TLS certificate verification. Only for labs."""
    max_concurrent_provisioning: int = Field(20, ge=1, le=1000)
    """How many nodes of this site may be deploying or cleaning at once."""

    @model_validator(mode="after")
    def _credentials_when_authenticated(self) -> IronicSite:
        if self.auth_type != "none" and self.credentials_secret_ref is None:
            raise ValueError("credentialsSecretRef is required unless authType is none")
        return self


class Site(ApiModel):
    """One place machines can go, reported to CAPI as a failure domain."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            (ONE_OF_THREE, "exactly one of libvirt, ironic or enrolled must be set"),
        )
    )

    name: str = Field(min_length=1, max_length=63, pattern=DNS_LABEL)
    """Name of the site; it is the failure domain name Machines refer to."""
    control_plane: bool = True
    """Whether control-plane machines may be placed here."""
    attributes: dict[str, str] | None = Field(None, max_length=32)
    """Attributes reported with the failure domain."""
    libvirt: LibvirtSite | None = None
    """The site is a libvirt host."""
    ironic: IronicSite | None = None
    """The site is an Ironic installation."""
    enrolled: EnrolledSite | None = None
    """The site is a pool of self-enrolled hosts (C3osHost)."""

    @model_validator(mode="after")
    def _one_kind(self) -> Site:
        exactly_one(self, "libvirt", "ironic", "enrolled")
        return self


class C3osClusterSpec(ApiModel):
    """Desired state of a C3osCluster."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            (
                "!has(self.defaultSite) || self.sites.exists(s, s.name == self.defaultSite)",
                "defaultSite must name one of sites",
            ),
            (
                "self.sites.exists(s, s.controlPlane)",
                "at least one site must allow control-plane machines",
            ),
            (
                "!has(oldSelf.controlPlaneEndpoint) || (has(self.controlPlaneEndpoint)"
                " && self.controlPlaneEndpoint == oldSelf.controlPlaneEndpoint)",
                "controlPlaneEndpoint is immutable once set",
            ),
        )
    )

    control_plane_endpoint: APIEndpoint | None = None
    """The cluster's API endpoint (a VIP or DNS name). CAPI copies it to the Cluster.
    Immutable once set."""
    sites: list[Site] = Field(min_length=1, max_length=MAX_SITES, json_schema_extra=list_map("name"))
    """Places the cluster's machines can go, reported as failure domains."""
    default_site: str | None = Field(None, min_length=1, max_length=63, pattern=DNS_LABEL)
    """Site for machines whose Machine has no failure domain; unset means the first site."""

    @model_validator(mode="after")
    def _sites_consistent(self) -> C3osClusterSpec:
        names = [site.name for site in self.sites]
        if len(set(names)) != len(names):
            raise ValueError("site names must be unique")
        if self.default_site is not None and self.default_site not in names:
            raise ValueError("defaultSite must name one of sites")
        if not any(site.control_plane for site in self.sites):
            raise ValueError("at least one site must allow control-plane machines")
        return self

    def site(self, name: str | None) -> Site | None:
        """The named site, or the default site for None."""
        wanted = name if name is not None else (self.default_site or self.sites[0].name)
        return next((site for site in self.sites if site.name == wanted), None)


class C3osClusterStatus(ApiModel):
    """Observed state of a C3osCluster."""

    initialization: InfrastructureInitialization | None = None
    """Initialization progress (CAPI v1beta2 contract)."""
    conditions: list[Condition] | None = conditions_field()
    """Conditions of the cluster infrastructure; Ready is mirrored to the Cluster."""
    failure_domains: list[FailureDomain] | None = Field(
        None, max_length=MAX_SITES, json_schema_extra=list_map("name")
    )
    """The sites, as CAPI failure domains."""
    observed_generation: int | None = Field(None, ge=0)
    """The metadata.generation this status was computed from."""


class C3osCluster(KubeObject):
    """The infrastructure of one c3os cluster: its sites and API endpoint."""

    GROUP = GROUP
    KIND = "C3osCluster"
    PLURAL = "c3osclusters"

    api_version: Literal["infrastructure.cluster.x-k8s.io/v1alpha1"] = API_VERSION
    """APIVersion defines the versioned schema of this representation of an object."""
    kind: Literal["C3osCluster"] = "C3osCluster"
    """Kind is a string value representing the REST resource this object represents."""
    spec: C3osClusterSpec
    """Desired state."""
    status: C3osClusterStatus | None = None
    """Observed state."""


class C3osClusterTemplateResource(ApiModel):
    """What a C3osCluster made from this template looks like."""

    metadata: TemplateMetadata | None = None
    """Labels and annotations for the created C3osCluster."""
    spec: C3osClusterSpec
    """Spec of the created C3osCluster."""


class C3osClusterTemplateSpec(ApiModel):
    """Desired state of a C3osClusterTemplate."""

    template: C3osClusterTemplateResource
    """The template for C3osClusters."""


class C3osClusterTemplate(KubeObject):
    """A template for C3osClusters, used by ClusterClass."""

    GROUP = GROUP
    KIND = "C3osClusterTemplate"
    PLURAL = "c3osclustertemplates"

    api_version: Literal["infrastructure.cluster.x-k8s.io/v1alpha1"] = API_VERSION
    """APIVersion defines the versioned schema of this representation of an object."""
    kind: Literal["C3osClusterTemplate"] = "C3osClusterTemplate"
    """Kind is a string value representing the REST resource this object represents."""
    spec: C3osClusterTemplateSpec
    """Desired state."""


# --- machines (C3osMachine) ------------------------------------------------------------


class LibvirtNetworkInterface(ApiModel):
    """A NIC of a libvirt VM."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            ("has(self.network) != has(self.bridge)", "exactly one of network or bridge must be set"),
        )
    )

    network: str | None = Field(None, min_length=1, max_length=253, pattern=LIBVIRT_NAME)
    """libvirt network to join."""
    bridge: str | None = Field(None, min_length=1, max_length=15, pattern=INTERFACE_NAME)
    """Host bridge to join."""
    model: Literal["virtio", "e1000e", "rtl8139"] = "virtio"
    """Emulated NIC model."""

    @model_validator(mode="after")
    def _one_attachment(self) -> LibvirtNetworkInterface:
        exactly_one(self, "network", "bridge")
        return self


class DirectKernelBoot(ApiModel):
    """Boot a kernel and initrd directly instead of the disk (netboot-style images, the
    test stand-in image). Paths are on the libvirt host."""

    kernel: str = Field(min_length=2, max_length=4096, pattern=ABSOLUTE_PATH)
    """Absolute path of the kernel on the libvirt host."""
    initrd: str | None = Field(None, min_length=2, max_length=4096, pattern=ABSOLUTE_PATH)
    """Absolute path of the initrd on the libvirt host."""
    cmdline: str | None = Field(None, max_length=4096)
    """Kernel command line."""


class LibvirtMachine(ApiModel):
    """How to run the machine as a libvirt VM."""

    firmware: Literal["bios", "uefi"] = "bios"
    """Firmware: bios (SeaBIOS) or uefi (OVMF, with its own NVRAM)."""
    network_interfaces: list[LibvirtNetworkInterface] | None = Field(None, max_length=8)
    """NICs of the VM. Unset: one virtio NIC on the site's network or bridge (none if the
    site names neither)."""
    config_drive_format: Literal["nocloud", "configdrive"] = "nocloud"
    """Layout of the config drive: nocloud (ISO labelled cidata) or configdrive (OpenStack
    config-2)."""
    direct_kernel_boot: DirectKernelBoot | None = None
    """Boot a kernel and initrd from the libvirt host instead of the disk."""


class RootDeviceHints(ApiModel):
    """Which disk Ironic deploys to (Ironic's root_device hints); all given hints must match."""

    device_name: str | None = Field(None, max_length=256, pattern=r"^/dev/[^\s]+$")
    """Linux device name, e.g. /dev/sda, or a /dev/disk/by-path/ link."""
    hctl: str | None = Field(None, max_length=64, pattern=r"^[0-9]+:[0-9]+:[0-9]+:[0-9]+$")
    """SCSI address Host:Channel:Target:Lun."""
    model: str | None = Field(None, max_length=256)
    """Vendor-specific device model."""
    vendor: str | None = Field(None, max_length=256)
    """Device vendor."""
    serial_number: str | None = Field(None, max_length=256)
    """Disk serial number."""
    min_size_gigabytes: int | None = Field(None, ge=0, le=1048576)
    """Smallest acceptable disk size in GB."""
    wwn: str | None = Field(None, max_length=256)
    """World Wide Name."""
    wwn_with_extension: str | None = Field(None, max_length=256)
    """World Wide Name with vendor extension."""
    wwn_vendor_extension: str | None = Field(None, max_length=256)
    """World Wide Name vendor extension."""
    rotational: bool | None = None
    """True for spinning disks, false for SSDs."""


class IronicMachine(ApiModel):
    """How to deploy the machine on a bare-metal node through Ironic. The node is chosen
    by Ironic's allocation API, so no host inventory object is needed."""

    resource_class: str = Field("baremetal", min_length=1, max_length=80)
    """Ironic resource class the node must have (its hardware flavour)."""
    traits: list[IronicTrait] | None = Field(None, max_length=50, json_schema_extra=list_set())
    """Traits the node must have, e.g. CUSTOM_GPU or HW_CPU_X86_AVX2."""
    candidate_nodes: list[IronicNodeName] | None = Field(None, max_length=100, json_schema_extra=list_set())
    """Restrict the choice to these Ironic nodes (names or UUIDs)."""
    root_device_hints: RootDeviceHints | None = None
    """Which disk to deploy to."""
    automated_cleaning: bool = True
    """Let Ironic clean (wipe) the node after the machine is deleted, before reuse."""
    deploy_interface: Literal["direct", "ramdisk"] | None = None
    """Ironic deploy interface: direct writes a disk image; ramdisk boots a live ISO that
    installs itself. Unset: the node's own interface, changed only where it cannot deploy
    the image (to ramdisk for iso images, to direct for disk images on a ramdisk node)."""
    boot_mode: Literal["uefi", "bios"] | None = None
    """Boot mode requested from the node; unset leaves the node's own setting."""


class MachineBackend(ApiModel):
    """Where the machine runs. Must match the kind of the machine's site."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            (ONE_OF_THREE, "exactly one of libvirt, ironic or enrolled must be set"),
        )
    )

    libvirt: LibvirtMachine | None = None
    """A VM on the site's libvirt host."""
    ironic: IronicMachine | None = None
    """A bare-metal node of the site's Ironic."""
    enrolled: EnrolledMachine | None = None
    """A self-enrolled host (C3osHost) of the site's pool."""

    @model_validator(mode="after")
    def _one_backend(self) -> MachineBackend:
        exactly_one(self, "libvirt", "ironic", "enrolled")
        return self


class MachineImage(ApiModel):
    """The c3os/Kairos image the machine boots."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            ("has(self.url) != has(self.volume)", "exactly one of url or volume must be set"),
            ("!has(self.url) || has(self.checksum)", "checksum is required with url"),
            (
                "!has(self.checksum) || size(self.checksum) =="
                " (has(self.checksumAlgorithm) && self.checksumAlgorithm == 'sha512' ? 128 : 64)",
                "checksum must have 64 hex digits for sha256 or 128 for sha512",
            ),
        )
    )

    url: str | None = Field(None, min_length=1, max_length=2048, pattern=IMAGE_URL)
    """Where to get the image (http, https, or file on the host that fetches it: the
    manager for libvirt, only under a directory its --image-file-dir allows; the Ironic
    conductor for Ironic)."""
    checksum: str | None = Field(None, min_length=64, max_length=128, pattern=HEX_DIGEST)
    """Hex digest of the image file, checked before use."""
    checksum_algorithm: Literal["sha256", "sha512"] = "sha256"
    """Algorithm of checksum."""
    format: Literal["qcow2", "raw", "iso"] = "qcow2"
    """Image format. iso means a live ISO that installs c3os onto the machine's disk
    (give the C3osConfig an install block)."""
    volume: str | None = Field(None, min_length=1, max_length=253, pattern=LIBVIRT_NAME)
    """An existing volume in the site's storage pool to use as the base image (libvirt only)."""
    oci: str | None = Field(None, min_length=3, max_length=1024, pattern=OCI_REFERENCE)
    """The same c3os release as an OCI image (`registry/repo:tag` or `@sha256:…`): what
    an in-place A/B upgrade installs into the running machine's other slot
    (`kairos-agent upgrade`). The disk image above is what a new machine is installed from."""

    @model_validator(mode="after")
    def _source_consistent(self) -> MachineImage:
        exactly_one(self, "url", "volume")
        if self.url is not None and self.checksum is None:
            raise ValueError("checksum is required with url")
        if self.checksum is not None:
            expected = 128 if self.checksum_algorithm == "sha512" else 64
            if len(self.checksum) != expected:
                raise ValueError("checksum must have 64 hex digits for sha256 or 128 for sha512")
        return self


IpAddress = Annotated[str, StringConstraints(min_length=2, max_length=45)]
IpInterface = Annotated[str, StringConstraints(min_length=4, max_length=49)]
SearchDomain = Annotated[
    str, StringConstraints(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?$")
]


class InterfaceNetwork(ApiModel):
    """How the guest configures one of its NICs."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            (
                "self.dhcp4 || self.dhcp6 || (has(self.addresses) && size(self.addresses) > 0)",
                "set dhcp4, dhcp6 or addresses",
            ),
            (
                "!has(self.addresses) || self.addresses.all(a, isCIDR(a))",
                "addresses must be IP addresses with a prefix length, e.g. 10.0.0.5/24",
            ),
            (
                "!has(self.gateway4) || (isIP(self.gateway4) && ip(self.gateway4).family() == 4"
                " && has(self.addresses) && self.addresses.exists(a, isCIDR(a)"
                " && cidr(a).ip().family() == 4 && cidr(a).containsIP(self.gateway4)))",
                "gateway4 must be an IPv4 address inside one of the IPv4 addresses' subnets",
            ),
            (
                "!has(self.gateway6) || (isIP(self.gateway6) && ip(self.gateway6).family() == 6"
                " && has(self.addresses) && self.addresses.exists(a, isCIDR(a)"
                " && cidr(a).ip().family() == 6 && (cidr(a).containsIP(self.gateway6)"
                " || ip(self.gateway6).isLinkLocalUnicast())))",
                "gateway6 must be an IPv6 address inside one of the IPv6 addresses' subnets (or link-local)",
            ),
        )
    )

    dhcp4: bool = False
    """Ask DHCP for an IPv4 address."""
    dhcp6: bool = False
    """Ask DHCPv6 for an IPv6 address."""
    addresses: list[IpInterface] | None = Field(None, max_length=16, json_schema_extra=list_set())
    """Static addresses with their prefix length, e.g. 10.0.0.5/24 or 2001:db8::5/64."""
    gateway4: IpAddress | None = None
    """IPv4 default gateway; must lie in one of the IPv4 addresses' subnets."""
    gateway6: IpAddress | None = None
    """IPv6 default gateway."""

    @model_validator(mode="after")
    def _consistent(self) -> InterfaceNetwork:
        nets = []
        for text in self.addresses or []:
            try:
                nets.append(ipaddress.ip_interface(text))
            except ValueError:
                raise ValueError(
                    "addresses must be IP addresses with a prefix length, e.g. 10.0.0.5/24"
                ) from None
            if "/" not in text:
                raise ValueError("addresses must be IP addresses with a prefix length, e.g. 10.0.0.5/24")
        if not (self.dhcp4 or self.dhcp6 or nets):
            raise ValueError("set dhcp4, dhcp6 or addresses")
        for version, gateway in ((4, self.gateway4), (6, self.gateway6)):
            if gateway is None:
                continue
            try:
                address = ipaddress.ip_address(gateway)
            except ValueError:
                raise ValueError(f"gateway{version} {gateway!r} is not an IP address") from None
            if address.version != version or not any(
                n.version == version and (address in n.network or (address.is_link_local and version == 6))
                for n in nets
            ):
                raise ValueError(
                    f"gateway{version} must be an IPv{version} address inside one of the "
                    f"IPv{version} addresses' subnets"
                )
        return self


class MachineNetwork(ApiModel):
    """Network settings the guest applies at boot (NoCloud network-config v2 or config-2
    network_data.json on its config drive), e.g. static addresses at an edge site
    without DHCP. Without it, the image's own defaults apply (usually DHCP)."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            (
                "!has(self.nameservers) || self.nameservers.all(n, isIP(n))",
                "nameservers must be IP addresses",
            ),
        )
    )

    interfaces: list[InterfaceNetwork] = Field(min_length=1, max_length=8)
    """Settings of the machine's NICs, in order: the first entry configures the first NIC
    (of backend.libvirt.networkInterfaces, or the site's network/bridge)."""
    nameservers: list[IpAddress] | None = Field(None, max_length=3)
    """DNS servers."""
    search_domains: list[SearchDomain] | None = Field(None, max_length=6)
    """DNS search domains."""

    @model_validator(mode="after")
    def _nameservers(self) -> MachineNetwork:
        for server in self.nameservers or []:
            try:
                ipaddress.ip_address(server)
            except ValueError:
                raise ValueError("nameservers must be IP addresses") from None
        return self

    @property
    def has_static_addresses(self) -> bool:
        return any(i.addresses for i in self.interfaces)


class C3osMachineSpec(ApiModel):
    """Desired state of a C3osMachine: what to run, how big, and on which backend."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            (
                "!has(oldSelf.providerID) || (has(self.providerID) && self.providerID == oldSelf.providerID)",
                "providerID is immutable once set",
            ),
        )
    )

    provider_id: str | None = Field(
        None, alias="providerID", min_length=1, max_length=512, pattern=PROVIDER_ID
    )
    """Identity of the machine, c3os://<its namespace>/<its name>, on an enrolled host
    c3os://<its namespace>/<host>/<its name> (host: its C3osHost, host-<system UUID>): set
    by the controller (before anything is created; on an enrolled host once it claimed
    the host) and never changed; CAPI matches the Node by it. Leave it unset: any other
    value is refused (the server checks the form and the name, the controller the
    namespace and the host)."""
    backend: MachineBackend
    """Where the machine runs: exactly one of libvirt, ironic or enrolled."""
    image: MachineImage
    """The image the machine boots."""
    cpus: int = Field(2, ge=1, le=512)
    """Virtual CPUs (libvirt). Bare-metal nodes have what they have: choose them with
    resourceClass and traits."""
    memory_mib: int = Field(4096, alias="memoryMiB", ge=256, le=4194304)
    """Memory in MiB (libvirt)."""
    disk_gib: int = Field(20, alias="diskGiB", ge=1, le=65536)
    """Size of the machine's disk in GiB (libvirt; never smaller than the base image)."""
    network: MachineNetwork | None = None
    """Network settings written to the config drive (libvirt sites). Static addresses
    belong to one machine: a template may use DHCP and nameservers only."""


class LibvirtMachineStatus(ApiModel):
    """What the libvirt backend made."""

    domain_name: str | None = Field(None, max_length=253)
    """Name of the libvirt domain."""
    domain_uuid: str | None = Field(None, alias="domainUUID", max_length=36)
    """UUID of the libvirt domain."""
    domain_type: str | None = Field(None, max_length=16)
    """The domain's type (kvm, qemu): with the site's `domainType: auto`, what the host's
    boot check chose."""
    domain_type_reason: str | None = Field(None, max_length=1024)
    """Why the domain has that type (the site's setting, or the boot check's verdict)."""


class IronicMachineStatus(ApiModel):
    """What the Ironic backend holds."""

    node_uuid: str | None = Field(None, alias="nodeUUID", max_length=36)
    """UUID of the Ironic node deployed for this machine."""
    node_name: str | None = Field(None, max_length=255)
    """Name of that node."""
    provision_state: str | None = Field(None, max_length=64)
    """The node's provision state as Ironic last reported it."""


class MachineBackendStatus(ApiModel):
    """For people reading the status. Controllers find their resources from the machine's
    identity, never from here (clusterctl move does not carry status)."""

    libvirt: LibvirtMachineStatus | None = None
    """libvirt details."""
    ironic: IronicMachineStatus | None = None
    """Ironic details."""
    enrolled: EnrolledMachineStatus | None = None
    """The enrolled host claimed."""


class C3osMachineStatus(ApiModel):
    """Observed state of a C3osMachine."""

    initialization: InfrastructureInitialization | None = None
    """Initialization progress (CAPI v1beta2 contract)."""
    addresses: list[MachineAddress] | None = addresses_field()
    """Addresses of the machine; CAPI copies them to the Machine."""
    failure_domain: str | None = Field(None, max_length=256)
    """The site the machine was placed in; CAPI copies it to the Machine."""
    backend: MachineBackendStatus | None = None
    """Backend details, for information only."""
    conditions: list[Condition] | None = conditions_field()
    """Conditions of the machine; Ready is mirrored to the Machine."""
    observed_generation: int | None = Field(None, ge=0)
    """The metadata.generation this status was computed from."""


class C3osMachine(KubeObject):
    """One machine (a libvirt VM or a bare-metal node) running a c3os image."""

    # At the root, CEL sees metadata.name (not the namespace): a providerID naming
    # another object is refused here, one naming another namespace by the reconciler.
    # One stored before this rule existed may stay (optionalOldSelf: the rule also runs
    # on create), or such an object could never lose its finalizers again.
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.spec.providerID)"
                    " || self.spec.providerID.endsWith('/' + self.metadata.name)"
                    " || (oldSelf.hasValue() && has(oldSelf.value().spec.providerID)"
                    " && oldSelf.value().spec.providerID == self.spec.providerID)",
                    "message": "spec.providerID must be c3os://<namespace>/[<host>/]<metadata.name>: "
                    "leave it unset, the controller sets it",
                    "optionalOldSelf": True,
                }
            ]
        }
    )

    GROUP = GROUP
    KIND = "C3osMachine"
    PLURAL = "c3osmachines"

    api_version: Literal["infrastructure.cluster.x-k8s.io/v1alpha1"] = API_VERSION
    """APIVersion defines the versioned schema of this representation of an object."""
    kind: Literal["C3osMachine"] = "C3osMachine"
    """Kind is a string value representing the REST resource this object represents."""
    spec: C3osMachineSpec
    """Desired state."""
    status: C3osMachineStatus | None = None
    """Observed state."""

    @model_validator(mode="after")
    def _own_provider_id(self) -> C3osMachine:
        pid, meta = self.spec.provider_id, self.metadata
        if pid is None or meta.name is None:
            return self
        if not pid.endswith(f"/{meta.name}") or (
            meta.namespace is not None
            and pid != own_provider_id(meta.namespace, meta.name)
            and not pid.startswith(f"{PROVIDER_ID_SCHEME}{meta.namespace}/host-")
        ):
            raise ValueError("spec.providerID must be c3os://<metadata.namespace>/[<host>/]<metadata.name>")
        return self


class C3osMachineTemplateResource(ApiModel):
    """What a C3osMachine made from this template looks like."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            (
                "!has(self.spec.providerID)",
                "providerID is chosen per machine and must not be set in a template",
            ),
            (
                "!has(self.spec.network) || self.spec.network.interfaces.all(i, !has(i.addresses))",
                "static addresses belong to one machine and must not be set in a template",
            ),
        )
    )

    metadata: TemplateMetadata | None = None
    """Labels and annotations for the created C3osMachine."""
    spec: C3osMachineSpec
    """Spec of the created C3osMachine."""

    @model_validator(mode="after")
    def _no_provider_id(self) -> C3osMachineTemplateResource:
        if self.spec.provider_id is not None:
            raise ValueError("providerID is chosen per machine and must not be set in a template")
        if self.spec.network is not None and self.spec.network.has_static_addresses:
            raise ValueError("static addresses belong to one machine and must not be set in a template")
        return self


class C3osMachineTemplateSpec(ApiModel):
    """Desired state of a C3osMachineTemplate."""

    template: C3osMachineTemplateResource
    """The template for C3osMachines."""


class NodeInfo(ApiModel):
    """What nodes made from the template run, for autoscaling from zero."""

    architecture: Literal["amd64", "arm64", "s390x", "ppc64le"] | None = None
    """CPU architecture of the nodes."""
    operating_system: Literal["linux", "windows"] | None = None
    """Operating system of the nodes."""


class C3osMachineTemplateStatus(ApiModel):
    """What machines made from the template offer (read by the cluster autoscaler)."""

    capacity: dict[str, Quantity] | None = Field(None, max_length=32)
    """Resources of one machine, e.g. cpu: 2, memory: 4Gi."""
    node_info: NodeInfo | None = None
    """Architecture and operating system of the nodes."""


class C3osMachineTemplate(KubeObject):
    """A template for C3osMachines, used by MachineDeployments, the control plane and
    ClusterClass."""

    GROUP = GROUP
    KIND = "C3osMachineTemplate"
    PLURAL = "c3osmachinetemplates"

    api_version: Literal["infrastructure.cluster.x-k8s.io/v1alpha1"] = API_VERSION
    """APIVersion defines the versioned schema of this representation of an object."""
    kind: Literal["C3osMachineTemplate"] = "C3osMachineTemplate"
    """Kind is a string value representing the REST resource this object represents."""
    spec: C3osMachineTemplateSpec
    """Desired state."""
    status: C3osMachineTemplateStatus | None = None
    """Observed state."""
