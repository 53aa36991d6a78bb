"""Enrolled hosts (infrastructure.cluster.x-k8s.io/v1alpha1): bare metal without a BMC
that registers itself.

A host boots a registration image that knows a site's registration URL, a registration
token and the CA to pin; its agent registers the host's hardware facts over HTTPS. The
manager records each host as a `C3osHost` in the namespace it registered into, labelled
with facts (`host.c3os.io/...`) so machines can select it. A C3osCluster site of kind
`enrolled` names the pool of hosts its machines may claim, the token that lets hosts
join that pool and whether a joining host is accepted at once or waits for approval; a
C3osMachine on such a site says which hosts it accepts (`backend.enrolled`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Final, Literal

from pydantic import ConfigDict, Field, StringConstraints, model_validator

from capi_c3os.api.base import ApiModel, KubeObject, list_atomic, validations
from capi_c3os.api.common import DNS_LABEL, LABEL_VALUE, QUALIFIED_NAME, SecretRef

GROUP = "infrastructure.cluster.x-k8s.io"
API_VERSION: Final = "infrastructure.cluster.x-k8s.io/v1alpha1"

HOST_LABEL_PREFIX = "host.c3os.io/"
POOL_LABEL = HOST_LABEL_PREFIX + "pool"
"""The pool a host registered into."""

# An SMBIOS system UUID as Linux prints it (/sys/class/dmi/id/product_uuid).
SYSTEM_UUID = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
MAC_ADDRESS = r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$"
DEVICE_PATH = r"^/dev/[A-Za-z0-9][-A-Za-z0-9_./:]{0,250}$"
# What a host reports as free text (models, serials): printable, no control characters.
PRINTABLE = r"^[ -~]*$"

MAX_DISKS = 64
MAX_NICS = 64

Printable = Annotated[str, StringConstraints(max_length=256, pattern=PRINTABLE)]


# --- hardware facts (reported by the host's agent) --------------------------------------


class HostCPU(ApiModel):
    """The host's processors."""

    arch: Literal["amd64", "arm64", "riscv64", "s390x", "ppc64le"]
    """CPU architecture, in Kubernetes' names."""
    model: Printable | None = None
    """Model name, e.g. `Intel(R) Core(TM) i5-8259U`."""
    cores: int = Field(ge=1, le=65536)
    """Physical cores."""
    threads: int = Field(ge=1, le=65536)
    """Logical CPUs (hardware threads)."""


class HostDisk(ApiModel):
    """One block device."""

    name: str = Field(min_length=6, max_length=256, pattern=DEVICE_PATH)
    """Device path, e.g. /dev/sda or /dev/nvme0n1."""
    size_bytes: int = Field(ge=0, le=2**62)
    """Size in bytes."""
    model: Printable | None = None
    """Device model."""
    serial: Printable | None = None
    """Serial number."""
    rotational: bool | None = None
    """True for spinning disks."""
    removable: bool = False
    """Removable media (a USB stick: the registration image itself); never an install target."""


class HostNIC(ApiModel):
    """One network interface."""

    name: str = Field(min_length=1, max_length=15, pattern=r"^[A-Za-z0-9][-A-Za-z0-9_.]*$")
    """Interface name, e.g. eth0 or enp3s0."""
    mac: str = Field(pattern=MAC_ADDRESS, min_length=17, max_length=17)
    """MAC address."""


class HostSystem(ApiModel):
    """The machine as SMBIOS describes it."""

    uuid: str = Field(min_length=36, max_length=36, pattern=SYSTEM_UUID)
    """System UUID: the host's identity (its C3osHost is named after it)."""
    serial: Printable | None = None
    """System serial number."""
    manufacturer: Printable | None = None
    """System manufacturer."""
    product: Printable | None = None
    """Product name."""

    @model_validator(mode="after")
    def _uuid_tells_hosts_apart(self) -> HostSystem:
        # Firmware without a real UUID reports one of these on every board: all such
        # hosts would be one C3osHost, each registration taking it from the last.
        if self.uuid.strip("0-") == "" or self.uuid.lower().strip("f-") == "":
            raise ValueError(f"system UUID {self.uuid} is a firmware placeholder: it cannot tell hosts apart")
        return self


class HostTPM(ApiModel):
    """The host's Trusted Platform Module."""

    present: bool = False
    """Whether the host has a TPM."""
    version: Literal["1.2", "2.0"] | None = None
    """TPM version, when present."""


class HostHardware(ApiModel):
    """Hardware facts as the host's agent reported them at registration."""

    cpu: HostCPU
    """Processors."""
    memory_mib: int = Field(alias="memoryMiB", ge=1, le=2**40)
    """Memory in MiB."""
    disks: list[HostDisk] = Field(max_length=MAX_DISKS, json_schema_extra=list_atomic())
    """Block devices."""
    nics: list[HostNIC] = Field(max_length=MAX_NICS, json_schema_extra=list_atomic())
    """Network interfaces."""
    system: HostSystem
    """SMBIOS system information."""
    tpm: HostTPM = Field(default_factory=HostTPM)
    """TPM presence."""


# --- C3osHost ----------------------------------------------------------------------------

HostPhase = Literal[
    "Available", "Claimed", "Installing", "Installed", "Provisioned", "Failed", "Resetting", "Lost"
]


class C3osHostSpec(ApiModel):
    """What people decide about a host."""

    accepted: bool = False
    """Whether machines may claim the host. The registration endpoint sets it when the
    host first registers, from its site's acceptance policy (true under Token, false
    under Approval); set it to true to approve a host, false to take it out of the pool
    (a host already claimed stays with its machine)."""


class HostClaim(ApiModel):
    """The machine a host belongs to. Written only by the manager, with optimistic
    concurrency on the host: of two machines racing for it exactly one wins."""

    machine: str = Field(min_length=1, max_length=253)
    """Name of the C3osMachine (same namespace) that claimed the host."""
    cluster: str | None = Field(None, max_length=253)
    """Name of that machine's Cluster: a cluster finds the hosts its deleted machines held."""
    id: str = Field(min_length=1, max_length=64)
    """This claim's id: the host's reports name it, so a report from before a release
    never reaches the next machine."""
    install_disk: str = Field(max_length=256)
    """The disk chosen from the facts (and the machine's hints) to install onto."""
    time: datetime
    """When the host was claimed."""


class HostReset(ApiModel):
    """A release in progress: the host must wipe what the machine installed."""

    machine: str = Field(min_length=1, max_length=253)
    """The C3osMachine that released the host."""
    id: str = Field(min_length=1, max_length=64)
    """The released claim's id."""
    time: datetime
    """When the reset was requested; after the manager's reset timeout without a report
    the host is marked Lost and the machine's deletion completes."""


class HostCredential(ApiModel):
    """The host's own credential, stored only as a digest: the credential itself (256
    random bits) went once to the host in the registration response."""

    sha256: str = Field(min_length=64, max_length=64, pattern=r"^[a-f0-9]{64}$")
    """SHA-256 of the credential."""
    time: datetime
    """When it was issued (each registration issues a new one and voids the last)."""


class C3osHostStatus(ApiModel):
    """What the manager knows about a host."""

    phase: HostPhase | None = None
    """Available (idle, may be claimed if accepted), Claimed, Installing, Installed,
    Provisioned (booted the installed system), Failed (the install failed; the machine
    says why), Resetting (released, wiping), Lost (did not report its reset in time)."""
    pool: str | None = Field(None, max_length=63)
    """The pool the host registered into."""
    hardware: HostHardware | None = None
    """Facts from the last registration."""
    claim: HostClaim | None = None
    """The machine the host belongs to."""
    reset: HostReset | None = None
    """The release the host must still confirm."""
    reason: str | None = Field(None, max_length=64)
    """CamelCase reason of the last change (a report of the host or a manager decision)."""
    message: str | None = Field(None, max_length=1024)
    """What the host last reported, for people."""
    last_report_time: datetime | None = None
    """When the host last reported progress."""
    registrations: int | None = Field(None, ge=0)
    """How often the host registered (each registration voids the previous credential)."""
    last_registration_time: datetime | None = None
    """When the host last registered."""
    credential: HostCredential | None = None
    """Digest of the host's current credential."""


class C3osHost(KubeObject):
    """One enrolled bare-metal host: made by the registration endpoint when the host
    registers, named after its system UUID; claimed by one C3osMachine at a time."""

    GROUP = GROUP
    KIND = "C3osHost"
    PLURAL = "c3oshosts"

    api_version: Literal["infrastructure.cluster.x-k8s.io/v1alpha1"] = API_VERSION
    """APIVersion defines the versioned schema of this representation of an object."""
    kind: Literal["C3osHost"] = "C3osHost"
    """Kind is a string value representing the REST resource this object represents."""
    spec: C3osHostSpec = Field(default_factory=C3osHostSpec)
    """What people decide."""
    status: C3osHostStatus | None = None
    """What the manager knows."""


def host_name(system_uuid: str) -> str:
    """A host's C3osHost name: its system UUID, lower case (one object per host)."""
    return "host-" + system_uuid.lower()


# --- enrolled sites and machines ----------------------------------------------------------


class EnrolledSite(ApiModel):
    """A pool of self-enrolled hosts: bare metal without a BMC that registered itself."""

    pool: str = Field(min_length=1, max_length=63, pattern=DNS_LABEL)
    """The pool of hosts (in this namespace) the site's machines claim. Hosts register
    into it at `/enrollment/v1/namespaces/<namespace>/pools/<pool>/hosts` of the manager's
    enrollment endpoint."""
    registration_token_secret_ref: SecretRef
    """Secret whose key `token` lets hosts register into the pool; during a rotation the
    key `previous-token` is valid too. Revoke a token by removing it from the Secret."""
    acceptance: Literal["Token", "Approval"] = "Approval"
    """Token: a host with a valid token may be claimed at once. Approval: it waits until
    someone sets its C3osHost's spec.accepted to true. When several sites name one pool,
    Approval wins."""


SelectorOperator = Literal["In", "NotIn", "Exists", "DoesNotExist"]
LabelValue = Annotated[str, StringConstraints(max_length=63, pattern=LABEL_VALUE)]


class SelectorRequirement(ApiModel):
    """A label requirement, as in Kubernetes label selectors."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            (
                "(self.operator in ['In', 'NotIn']) == (has(self.values) && size(self.values) > 0)",
                "In and NotIn need values; Exists and DoesNotExist take none",
            ),
        )
    )

    key: str = Field(min_length=1, max_length=317, pattern=QUALIFIED_NAME)
    """The label key."""
    operator: SelectorOperator
    """In, NotIn, Exists or DoesNotExist."""
    values: list[LabelValue] | None = Field(None, max_length=64, json_schema_extra=list_atomic())
    """Values for In and NotIn."""

    @model_validator(mode="after")
    def _values_fit_operator(self) -> SelectorRequirement:
        if (self.operator in ("In", "NotIn")) != bool(self.values):
            raise ValueError("In and NotIn need values; Exists and DoesNotExist take none")
        return self


class HostSelector(ApiModel):
    """Which hosts qualify: all given requirements must hold for the host's labels."""

    match_labels: dict[str, LabelValue] | None = Field(None, max_length=32)
    """Labels the host must have with exactly these values."""
    match_expressions: list[SelectorRequirement] | None = Field(
        None, max_length=16, json_schema_extra=list_atomic()
    )
    """Further requirements."""

    def matches(self, labels: dict[str, str]) -> bool:
        for key, value in (self.match_labels or {}).items():
            if labels.get(key) != value:
                return False
        for req in self.match_expressions or []:
            present = req.key in labels
            found = labels.get(req.key)
            ok = {
                "In": present and found in (req.values or []),
                "NotIn": not present or found not in (req.values or []),
                "Exists": present,
                "DoesNotExist": not present,
            }[req.operator]
            if not ok:
                return False
        return True


class InstallDiskHints(ApiModel):
    """Which disk to install onto; all given hints must match. Without hints (or among
    several matches) the smallest fitting non-removable disk is chosen, ties by name."""

    device_name: str | None = Field(None, min_length=6, max_length=256, pattern=DEVICE_PATH)
    """Device path, e.g. /dev/sda."""
    model: Printable | None = None
    """Device model (exact)."""
    serial: Printable | None = None
    """Serial number (exact)."""
    min_size_gib: int | None = Field(None, alias="minSizeGiB", ge=1, le=1048576)
    """Smallest acceptable size in GiB."""
    rotational: bool | None = None
    """True for spinning disks, false for SSDs."""


class EnrolledMachine(ApiModel):
    """How to place the machine on an enrolled host of its site's pool."""

    host_selector: HostSelector | None = None
    """Which hosts qualify (by their labels, e.g. host.c3os.io/memory-gib); unset: any
    accepted, idle host of the pool."""
    install_disk: InstallDiskHints | None = None
    """Which of the host's disks to install onto; hosts without such a disk are not claimed."""


class EnrolledMachineStatus(ApiModel):
    """The host the machine claimed."""

    host: str | None = Field(None, max_length=253)
    """Name of the C3osHost."""
    system_uuid: str | None = Field(None, alias="systemUUID", max_length=36)
    """The host's system UUID."""
    install_disk: str | None = Field(None, max_length=256)
    """The disk the host installs onto."""
    host_phase: str | None = Field(None, max_length=32)
    """The host's phase as last seen."""
