"""API pieces shared by the three groups: CAPI's condition and reference shapes,
secret references, endpoints, addresses, failure domains, template metadata."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Literal

from pydantic import Field

from capi_c3os.api.base import ApiModel, list_atomic, list_map

# Patterns Kubernetes itself uses; all RE2-compatible (no look-around, no back-references).
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
SECRET_KEY = r"^[-._a-zA-Z0-9]+$"
_PREFIX = r"([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
CONDITION_TYPE = r"^" + _PREFIX + r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"
CONDITION_REASON = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"
KIND = r"^[a-zA-Z][a-zA-Z0-9]*$"
# A label (or taint) key as Kubernetes checks it: an optional DNS-subdomain prefix of at
# most 253 characters (LABEL_KEY_PREFIX_SIZE, a second rule: RE2 has no look-ahead) and a
# name of at most 63. `[.]`, not a backslash: the patterns are embedded in CEL strings.
QUALIFIED_NAME = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
LABEL_KEY_PREFIX_SIZE = r"^[^/]{1,253}/"
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$"


def qualified_name_problem(key: str) -> str | None:
    """Why `key` is not a valid label/taint key, or None (the model's twin of the CEL rules
    `qualified_name_rules` makes)."""
    if not re.fullmatch(QUALIFIED_NAME, key):  # fullmatch: `$` also matches before a final newline
        return (
            f"{key!r} is not a label key: an optional DNS-subdomain prefix and '/', then a name of "
            "at most 63 characters (alphanumerics, '-', '_', '.'; alphanumeric at both ends)"
        )
    if "/" in key and not re.match(LABEL_KEY_PREFIX_SIZE, key):
        return f"{key!r}: the prefix of a label key must be at most 253 characters"
    return None


def key_prefix_rule(value: str) -> tuple[str, str]:
    """CEL rule: the prefix of the label/taint key `value` (a CEL expression) is at most
    253 characters."""
    return (
        f"!{value}.contains('/') || {value}.matches('{LABEL_KEY_PREFIX_SIZE}')",
        "the prefix of a key must be at most 253 characters",
    )


def qualified_name_rules(value: str) -> list[tuple[str, str]]:
    """CEL rules checking the string expression `value` as a label/taint key, for strings
    that cannot carry a pattern (map keys)."""
    return [
        (f"{value}.matches('{QUALIFIED_NAME}')",
         "keys must be qualified names: an optional DNS-subdomain prefix and '/', then a name of at "
         "most 63 characters (alphanumerics, '-', '_', '.'; alphanumeric at both ends)"),
        key_prefix_rule(value),
    ]  # fmt: skip


MAX_CONDITIONS = 32


class Condition(ApiModel):
    """One aspect of the object's state, in the shape CAPI reads (metav1.Condition)."""

    type: str = Field(min_length=1, max_length=316, pattern=CONDITION_TYPE)
    """Type of condition in CamelCase, e.g. Ready, Provisioned, Available."""
    status: Literal["True", "False", "Unknown"]
    """Status of the condition: True, False or Unknown."""
    observed_generation: int | None = Field(None, ge=0)
    """The metadata.generation the condition was computed from."""
    last_transition_time: datetime
    """When the condition last changed from one status to another."""
    reason: str = Field(min_length=1, max_length=1024, pattern=CONDITION_REASON)
    """CamelCase reason for the last transition, stable enough for scripts to match."""
    message: str = Field("", max_length=32768)
    """Human-readable detail about the last transition: what is wrong and what to do."""


def conditions_field() -> list[Condition] | None:
    """Every status has the same conditions list: a list-map keyed by type."""
    result: list[Condition] | None = Field(
        None,
        max_length=MAX_CONDITIONS,
        json_schema_extra=list_map("type"),
    )
    return result


class SecretRef(ApiModel):
    """A Secret in the same namespace as the referring object. Cross-namespace references
    are deliberately impossible: they would let anyone who may create our objects make
    the controller read Secrets of other namespaces."""

    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)
    """Name of the Secret."""


class SecretKeyRef(ApiModel):
    """One key of a Secret in the same namespace as the referring object."""

    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)
    """Name of the Secret."""
    key: str = Field(min_length=1, max_length=253, pattern=SECRET_KEY)
    """Key within the Secret's data."""


class ContractReference(ApiModel):
    """A reference in CAPI v1beta2 style: API group, kind and name, no version (CAPI
    resolves the version from the CRD's contract label)."""

    api_group: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)
    """API group of the referenced object, e.g. infrastructure.cluster.x-k8s.io."""
    kind: str = Field(min_length=1, max_length=63, pattern=KIND)
    """Kind of the referenced object, e.g. C3osMachineTemplate."""
    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)
    """Name of the referenced object, in the same namespace."""


class APIEndpoint(ApiModel):
    """Where the cluster's Kubernetes API is served."""

    host: str = Field(min_length=1, max_length=512)
    """DNS name or IP address of the API endpoint (a VIP, a load balancer or a DNS name)."""
    port: int = Field(6443, ge=1, le=65535)
    """TCP port of the API endpoint."""


class MachineAddress(ApiModel):
    """An address of a machine, as CAPI copies it to Machine.status.addresses."""

    type: Literal["Hostname", "ExternalIP", "InternalIP", "ExternalDNS", "InternalDNS"]
    """Kind of address."""
    address: str = Field(min_length=1, max_length=256)
    """The address itself."""


def addresses_field() -> list[MachineAddress] | None:
    result: list[MachineAddress] | None = Field(None, max_length=32, json_schema_extra=list_atomic())
    return result


class FailureDomain(ApiModel):
    """A failure domain as CAPI reads it from an infrastructure cluster's status."""

    name: str = Field(min_length=1, max_length=256)
    """Name of the failure domain (our site name)."""
    control_plane: bool | None = None
    """Whether control-plane machines may be placed in this failure domain."""
    attributes: dict[str, str] | None = Field(None, max_length=32)
    """Free-form attributes of the failure domain."""


# The v1beta2 contract moved "ready" flags into status.initialization, one per role.


class InfrastructureInitialization(ApiModel):
    """Initialization progress, as the CAPI v1beta2 contract reads it."""

    provisioned: bool | None = None
    """True once the infrastructure is provisioned; CAPI then goes on with the next step."""


class BootstrapInitialization(ApiModel):
    """Initialization progress, as the CAPI v1beta2 contract reads it."""

    data_secret_created: bool | None = None
    """True once the bootstrap data Secret exists."""


class ControlPlaneInitialization(ApiModel):
    """Initialization progress, as the CAPI v1beta2 contract reads it."""

    control_plane_initialized: bool | None = None
    """True once the first server serves the Kubernetes API."""


class TemplateMetadata(ApiModel):
    """Labels and annotations given to objects created from a template."""

    labels: dict[str, str] | None = Field(None, max_length=64)
    """Labels to add to the created object."""
    annotations: dict[str, str] | None = Field(None, max_length=64)
    """Annotations to add to the created object."""
