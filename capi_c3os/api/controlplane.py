"""controlplane.cluster.x-k8s.io/v1alpha1: C3osControlPlane and C3osControlPlaneTemplate.

An HA k3s control plane with embedded etcd: 1, 3 or 5 servers, each a Machine with a
C3osConfig built from `serverConfig` and an infrastructure machine cloned from
`machineTemplate.spec.infrastructureRef`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Final, Literal

from pydantic import Field, field_validator

from capi_c3os.api.base import ApiModel, KubeObject, list_map, validations
from capi_c3os.api.bootstrap import C3osConfigSpec
from capi_c3os.api.common import (
    Condition,
    ContractReference,
    ControlPlaneInitialization,
    TemplateMetadata,
    conditions_field,
)

GROUP = "controlplane.cluster.x-k8s.io"
VERSION = "v1alpha1"
API_VERSION: Final = "controlplane.cluster.x-k8s.io/v1alpha1"

# Semantic version with an optional k3s build suffix: v1.33.4, v1.33.4+k3s1, v1.34.0-rc1+k3s1.
K3S_VERSION = r"^v(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-[0-9A-Za-z.-]+)?(\+k3s[0-9]+)?$"
MAX_REPLICAS = 5
REPLICAS_MESSAGE = "replicas must be 1, 3 or 5: an odd number of servers keeps etcd quorum"


class MachineDeletion(ApiModel):
    """How long CAPI waits at each step of deleting a control-plane Machine. Changes reach
    existing Machines without a rollout."""

    node_drain_timeout_seconds: int | None = Field(None, ge=0)
    """Longest time to drain the node; unset or 0 waits forever."""
    node_volume_detach_timeout_seconds: int | None = Field(None, ge=0)
    """Longest time to wait for volumes to detach; unset or 0 waits forever."""
    node_deletion_timeout_seconds: int | None = Field(None, ge=0)
    """Longest time to retry deleting the Node once the machine is gone (CAPI default 10s)."""


class ControlPlaneMachineSpec(ApiModel):
    """Machine settings for the control plane's Machines."""

    infrastructure_ref: ContractReference
    """The infrastructure machine template to clone for each server (e.g. a
    C3osMachineTemplate)."""
    deletion: MachineDeletion | None = None
    """Deletion timeouts."""


class ControlPlaneMachineTemplate(ApiModel):
    """What the control plane's Machines look like."""

    metadata: TemplateMetadata | None = None
    """Labels and annotations for the Machines and their infrastructure and bootstrap
    objects; changes reach existing Machines without a rollout."""
    spec: ControlPlaneMachineSpec
    """Machine settings."""


class ControlPlaneTemplateMachineSpec(ApiModel):
    """Machine settings in a template; ClusterClass supplies the infrastructure reference."""

    deletion: MachineDeletion | None = None
    """Deletion timeouts."""


class ControlPlaneTemplateMachineTemplate(ApiModel):
    """What the control plane's Machines look like, in a template."""

    metadata: TemplateMetadata | None = None
    """Labels and annotations for the Machines."""
    spec: ControlPlaneTemplateMachineSpec | None = None
    """Machine settings."""


class RollingUpdate(ApiModel):
    """How servers are replaced."""

    max_surge: int = Field(
        1,
        ge=0,
        le=1,
        json_schema_extra=validations(
            (
                "self == 0 || self == 1",
                "maxSurge must be 0 (remove an old server first, for sites without a spare) "
                "or 1 (add the new server first)",
            )
        ),
    )
    """Extra servers created before an old one is removed: 1 (create, then delete) or 0
    (delete, then create; for bare metal without a spare server)."""


ROLLING_UPDATE: Final = "RollingUpdate"
IN_PLACE: Final = "InPlace"


class RolloutStrategy(ApiModel):
    """Rollout strategy."""

    type: Literal["RollingUpdate", "InPlace"] = ROLLING_UPDATE
    """RollingUpdate: an outdated server is replaced by a new machine. InPlace: a server
    whose only difference from the spec is its image (the new template's `image.oci` set)
    and with it the k3s version is upgraded on its own machine (A/B: the release is
    written to the other slot, the machine reboots into it; a release that does not boot
    falls back), one server at a time while every other server is Ready; any other
    difference (site, size, network, server config, rollout.after) still replaces it,
    as rollingUpdate says."""
    rolling_update: RollingUpdate | None = None
    """Rolling update settings (also for the servers InPlace replaces)."""


class Rollout(ApiModel):
    """When and how servers are replaced."""

    after: datetime | None = None
    """Replace every server created before this time (a rollout restart)."""
    strategy: RolloutStrategy | None = None
    """How servers are replaced."""


class Remediation(ApiModel):
    """Replacing servers a MachineHealthCheck marked unhealthy. Only done with more than
    one replica, nothing else provisioning or deleting, and etcd quorum kept."""

    max_retry: int | None = Field(None, ge=0, le=1000)
    """How many times in a row a failed server is replaced; unset means no limit."""
    retry_period_seconds: int = Field(0, ge=0)
    """Wait between two replacements of the same failed server."""
    min_healthy_period_seconds: int = Field(3600, ge=0)
    """A server healthy for this long resets the retry count."""


def _replicas_field() -> int:
    result: int = Field(
        1,
        ge=1,
        le=MAX_REPLICAS,
        json_schema_extra=validations(
            ("self % 2 == 1", REPLICAS_MESSAGE),
        ),
    )
    return result


class C3osControlPlaneSpec(ApiModel):
    """Desired state of a C3osControlPlane."""

    replicas: int = _replicas_field()
    """Number of servers: 1, 3 or 5."""
    version: str = Field(min_length=1, max_length=64, pattern=K3S_VERSION)
    """Kubernetes version of the servers, e.g. v1.33.4+k3s1 or v1.33.4."""
    machine_template: ControlPlaneMachineTemplate
    """What the servers' Machines look like."""
    server_config: C3osConfigSpec = Field(default_factory=C3osConfigSpec)
    """The bootstrap config of every server (its k3s.server part included); the provider
    adds init/join, token and certificates."""
    rollout: Rollout | None = None
    """When and how servers are replaced."""
    remediation: Remediation | None = None
    """Replacing unhealthy servers."""

    @field_validator("replicas")
    @classmethod
    def _odd(cls, replicas: int) -> int:
        if replicas % 2 != 1:
            raise ValueError(REPLICAS_MESSAGE)
        return replicas


class StatusVersion(ApiModel):
    """How many Machines run one version."""

    version: str = Field(min_length=1, max_length=64)
    """A Kubernetes version."""
    replicas: int = Field(ge=0)
    """Machines at that version."""


class LastRemediation(ApiModel):
    """The most recent remediation."""

    machine: str = Field(min_length=1, max_length=253)
    """Machine that was replaced."""
    time: datetime
    """When."""
    retry_count: int = Field(0, ge=0)
    """Replacements in a row so far."""


class C3osControlPlaneStatus(ApiModel):
    """Observed state of a C3osControlPlane."""

    initialization: ControlPlaneInitialization | None = None
    """Initialization progress (CAPI v1beta2 contract)."""
    selector: str | None = Field(None, max_length=4096)
    """Label selector of the servers' Machines, for the scale subresource."""
    replicas: int | None = Field(None, ge=0)
    """Machines of this control plane."""
    ready_replicas: int | None = Field(None, ge=0)
    """Machines whose Ready condition is true."""
    available_replicas: int | None = Field(None, ge=0)
    """Machines whose Available condition is true."""
    up_to_date_replicas: int | None = Field(None, ge=0)
    """Machines that match the current spec."""
    versions: list[StatusVersion] | None = Field(None, max_length=16, json_schema_extra=list_map("version"))
    """Kubernetes versions the servers run, with counts, oldest first: each Node's kubelet
    version (with k3s, what its image ships), or its Machine's spec.version until the Node
    reported one."""
    last_remediation: LastRemediation | None = None
    """The most recent remediation."""
    conditions: list[Condition] | None = conditions_field()
    """Conditions of the control plane: Available, RollingOut, ScalingUp, ScalingDown, ..."""
    observed_generation: int | None = Field(None, ge=0)
    """The metadata.generation this status was computed from."""


class C3osControlPlane(KubeObject):
    """A k3s control plane with embedded etcd, run on 1, 3 or 5 servers."""

    GROUP = GROUP
    KIND = "C3osControlPlane"
    PLURAL = "c3oscontrolplanes"

    api_version: Literal["controlplane.cluster.x-k8s.io/v1alpha1"] = API_VERSION
    """APIVersion defines the versioned schema of this representation of an object."""
    kind: Literal["C3osControlPlane"] = "C3osControlPlane"
    """Kind is a string value representing the REST resource this object represents."""
    spec: C3osControlPlaneSpec
    """Desired state."""
    status: C3osControlPlaneStatus | None = None
    """Observed state."""


class C3osControlPlaneTemplateResourceSpec(ApiModel):
    """The control plane settings a template carries; ClusterClass supplies replicas,
    version and the infrastructure reference."""

    machine_template: ControlPlaneTemplateMachineTemplate | None = None
    """What the servers' Machines look like."""
    server_config: C3osConfigSpec = Field(default_factory=C3osConfigSpec)
    """The bootstrap config of every server."""
    rollout: Rollout | None = None
    """When and how servers are replaced."""
    remediation: Remediation | None = None
    """Replacing unhealthy servers."""


class C3osControlPlaneTemplateResource(ApiModel):
    """What a C3osControlPlane made from this template looks like."""

    metadata: TemplateMetadata | None = None
    """Labels and annotations for the created C3osControlPlane."""
    spec: C3osControlPlaneTemplateResourceSpec = Field(default_factory=C3osControlPlaneTemplateResourceSpec)
    """Spec of the created C3osControlPlane."""


class C3osControlPlaneTemplateSpec(ApiModel):
    """Desired state of a C3osControlPlaneTemplate."""

    template: C3osControlPlaneTemplateResource
    """The template for C3osControlPlanes."""


class C3osControlPlaneTemplate(KubeObject):
    """A template for C3osControlPlanes, used by ClusterClass."""

    GROUP = GROUP
    KIND = "C3osControlPlaneTemplate"
    PLURAL = "c3oscontrolplanetemplates"

    api_version: Literal["controlplane.cluster.x-k8s.io/v1alpha1"] = API_VERSION
    """APIVersion defines the versioned schema of this representation of an object."""
    kind: Literal["C3osControlPlaneTemplate"] = "C3osControlPlaneTemplate"
    """Kind is a string value representing the REST resource this object represents."""
    spec: C3osControlPlaneTemplateSpec
    """Desired state."""
