"""The contract between the backend-neutral C3osMachine reconciler and a backend.

The reconciler hands a backend one `MachineIntent` (what the machine must be) and gets
back `Progress` (where the machine stands). Backends never touch Kubernetes: secrets
arrive already read, as `SiteCredentials`; status and conditions are the reconciler's.

Every call is idempotent and safe to repeat after a crash at any line: backend resources
are named and tagged from `MachineIdentity`, so a later call finds, adopts or removes what
an earlier one started. Calls are blocking; the reconciler runs them off the event loop.
A call that would wait for slow work (an Ironic deploy) returns `Progress` with
`requeue_after` instead of waiting.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from capi_c3os.api.common import MachineAddress
from capi_c3os.api.hosts import EnrolledMachine
from capi_c3os.api.infrastructure import IronicMachine, LibvirtMachine, MachineImage, MachineNetwork, Site

# Fixed namespace for deterministic UUIDs: the same identity gives the same UUID on every
# management cluster, so `clusterctl move` keeps domain and Ironic instance UUIDs.
_IDENTITY_NAMESPACE = uuid.UUID("5f0b4a8e-3c1d-4f53-9d0a-6c3f0e7a2b11")


@dataclass(frozen=True)
class MachineIdentity:
    """Who the machine is, independent of metadata.uid (which changes on clusterctl move)."""

    namespace: str
    name: str
    provider_id: str
    """c3os://<namespace>/<name>: C3osMachine.spec.providerID on every site but an enrolled
    one (there spec.providerID also names the host; this stays the machine's identity)."""

    @property
    def uuid(self) -> str:
        """Deterministic: libvirt domain UUID, NoCloud instance-id, Ironic instance_uuid."""
        return str(uuid.uuid5(_IDENTITY_NAMESPACE, self.provider_id))

    @property
    def resource_name(self) -> str:
        """Base for backend resource names (domain, volumes, allocation): readable and
        unique per identity, within the 63 characters most backends accept."""
        readable = f"{self.namespace}-{self.name}"[:50].rstrip("-.")
        return f"{readable}-{self.uuid[:8]}"


@dataclass(frozen=True)
class SiteCredentials:
    """Secret data a site needs (SSH key and known_hosts, TLS client material, Ironic
    credentials, CA bundle), keyed as in the referenced Secret. Never logged."""

    data: Mapping[str, bytes] = field(default_factory=dict)
    ca_bundle: bytes | None = None

    def __repr__(self) -> str:  # keeps secrets out of logs and tracebacks
        return f"SiteCredentials(keys={sorted(self.data)}, ca_bundle={self.ca_bundle is not None})"


@dataclass(frozen=True)
class MachineIntent:
    """Everything a backend needs to make one machine real."""

    identity: MachineIdentity
    site: Site
    credentials: SiteCredentials
    image: MachineImage
    cpus: int
    memory_mib: int
    disk_gib: int
    hostname: str
    user_data: bytes = field(repr=False)
    """The bootstrap data, delivered byte for byte (it may hold secrets: never logged)."""
    meta_data: Mapping[str, Any]
    """instance-id, local-hostname, provider-id, ... (NoCloud meta-data / meta_data.json)."""
    network_config: Mapping[str, Any] | None = None
    """OpenStack network_data, passed through as is (the Ironic backend)."""
    network: MachineNetwork | None = None
    """The machine's network settings (spec.network); a backend renders them for its
    guests (the libvirt backend: network-config / network_data.json with its NICs' MACs)."""
    libvirt: LibvirtMachine | None = None
    ironic: IronicMachine | None = None
    enrolled: EnrolledMachine | None = None
    cluster: str = ""
    """`<namespace>/<Cluster name>`, tagged on backend resources so a cluster can find
    what its deleted machines left behind."""
    provisioned: bool = False
    """The machine was reported provisioned before: a backend must not silently create
    it again when it is gone, but report MISSING (a MachineHealthCheck replaces it)."""


class Phase(enum.Enum):
    """Where a machine stands, in the backend's own world translated to ours."""

    PROVISIONING = "Provisioning"
    """Work is under way; call again after `requeue_after`."""
    RUNNING = "Running"
    """Up: addresses (if any) are known."""
    STOPPED = "Stopped"
    """Exists but is not running (shut down, crashed): a health check may act."""
    MISSING = "Missing"
    """Was created but has vanished outside our control."""
    FAILED = "Failed"
    """Will not heal by waiting (bad input, a backend failure state)."""
    DELETING = "Deleting"
    """Removal under way; call deprovision again after `requeue_after`."""
    DELETED = "Deleted"
    """Nothing of this machine remains in the backend."""


@dataclass(frozen=True)
class Progress:
    phase: Phase
    reason: str
    """CamelCase, for the condition's reason (scripts match it)."""
    message: str = ""
    """For people: what is happening or what to fix (never secret material)."""
    addresses: tuple[MachineAddress, ...] = ()
    requeue_after: float | None = None
    """Seconds until the reconciler should call again; None when nothing is pending."""
    details: Mapping[str, str] = field(default_factory=dict)
    """Informational, shown in C3osMachine.status.backend (domain name, node UUID, ...)."""

    @property
    def done(self) -> bool:
        return self.phase in (Phase.RUNNING, Phase.DELETED)


class BackendError(Exception):
    """A failure with a CamelCase reason and a readable message; `retry_after` is None
    when waiting will not help (bad input), else the delay before trying again."""

    def __init__(self, reason: str, message: str, retry_after: float | None = 30.0) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.retry_after = retry_after


class Backend(Protocol):
    """One implementation per kind of site (libvirt, Ironic, enrolled hosts)."""

    def provision(self, intent: MachineIntent) -> Progress:
        """Create, adopt or advance the machine towards RUNNING; report where it stands."""
        ...

    def deprovision(self, identity: MachineIdentity, site: Site, credentials: SiteCredentials) -> Progress:
        """Remove everything the machine owns; DELETED only when nothing remains."""
        ...
