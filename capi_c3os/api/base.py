"""Base classes and schema markers shared by every API model.

The same models describe the CRD schemas (see `schema.py`) and parse the objects the
reconcilers read from the API server, so they follow the wire format: camelCase names,
unknown keys ignored (the server prunes them anyway), attribute docstrings as the field
descriptions that `kubectl explain` shows.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, WithJsonSchema
from pydantic.config import JsonDict


def camel(name: str) -> str:
    """snake_case -> camelCase. pydantic's own to_camel also upper-cases a letter after a
    digit (k3s -> k3S), which is not how Kubernetes fields are spelled."""
    first, *rest = name.split("_")
    return first + "".join(word[:1].upper() + word[1:] for word in rest)


class ApiModel(BaseModel):
    """Every nested object of our API."""

    model_config = ConfigDict(
        alias_generator=camel,
        populate_by_name=True,
        serialize_by_alias=True,
        use_attribute_docstrings=True,
        extra="ignore",
    )

    def to_wire(self) -> dict[str, Any]:
        """The object as the API server wants it: camelCase keys, no nulls, JSON types
        (timestamps as RFC 3339 strings)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class ObjectMeta(ApiModel):
    """The part of Kubernetes object metadata reconcilers read. Other keys (managedFields,
    ...) are kept as they came, so a parsed object dumps back without losing them."""

    model_config = ConfigDict(extra="allow")

    name: str | None = None
    """Name of the object, unique in its namespace."""
    generate_name: str | None = None
    """Prefix the server uses to generate a name when none is given."""
    namespace: str | None = None
    """Namespace of the object."""
    uid: str | None = None
    """Server-assigned unique id; changes on `clusterctl move`, so never an identity."""
    resource_version: str | None = None
    """Opaque version for optimistic concurrency."""
    generation: int | None = None
    """Sequence number of the desired state (spec changes)."""
    creation_timestamp: datetime | None = None
    """When the object was created."""
    deletion_timestamp: datetime | None = None
    """Set when deletion was requested; finalizers still hold the object."""
    labels: dict[str, str] | None = None
    """Labels of the object."""
    annotations: dict[str, str] | None = None
    """Annotations of the object."""
    finalizers: list[str] | None = None
    """Finalizers that must be removed before the object goes away."""
    owner_references: list[dict[str, Any]] | None = None
    """Owners of the object (apiVersion, kind, name, uid, controller, blockOwnerDeletion)."""


class KubeObject(ApiModel):
    """A top-level object of one of our kinds. Subclasses set the ClassVars and narrow
    `api_version` and `kind` to their own values."""

    GROUP: ClassVar[str]
    VERSION: ClassVar[str] = "v1alpha1"
    KIND: ClassVar[str]
    PLURAL: ClassVar[str]

    api_version: str
    """APIVersion defines the versioned schema of this representation of an object."""
    kind: str
    """Kind is a string value representing the REST resource this object represents."""
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    """Standard object metadata."""

    @classmethod
    def api_version_string(cls) -> str:
        return f"{cls.GROUP}/{cls.VERSION}"


# --- schema markers -----------------------------------------------------------------
# They ride into the generated JSON schema through `json_schema_extra` and are kept by
# `schema.to_structural`.


def validations(*rules: tuple[str, str]) -> JsonDict:
    """CEL rules for the API server, each `(rule, message)`. Keep the models' own
    validators in step: reconcilers parse what the server accepted."""
    return {"x-kubernetes-validations": [{"rule": rule, "message": message} for rule, message in rules]}


def list_map(*keys: str) -> JsonDict:
    """A list whose items are identified by `keys` (server-side apply merges by them)."""
    return {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": list(keys)}


def list_set() -> JsonDict:
    """A list of unique scalars."""
    return {"x-kubernetes-list-type": "set"}


def list_atomic() -> JsonDict:
    """A list replaced as a whole by server-side apply."""
    return {"x-kubernetes-list-type": "atomic"}


FREE_FORM_SCHEMA: JsonDict = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}

FreeFormObject = Annotated[dict[str, Any], WithJsonSchema(FREE_FORM_SCHEMA)]
"""An object passed through as written (e.g. one yip stage step). The only place where
the API server keeps unknown fields."""

# Kubernetes' resource.Quantity, as controller-gen writes it.
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)

Quantity = Annotated[
    int | Annotated[str, StringConstraints(pattern=QUANTITY_PATTERN, max_length=64)],
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": QUANTITY_PATTERN,
            "x-kubernetes-int-or-string": True,
        }
    ),
]
"""A Kubernetes quantity such as `4`, `8Gi` or `500m`."""


def exactly_one(model: BaseModel, *fields: str) -> None:
    """The model-side twin of a CEL one-of rule; raises ValueError naming the wire fields."""
    set_fields = [name for name in fields if getattr(model, name) is not None]
    if len(set_fields) != 1:
        wire = [camel(name) for name in fields]
        raise ValueError(f"exactly one of {', '.join(wire)} must be set")
