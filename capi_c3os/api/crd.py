"""The nine CustomResourceDefinitions, built from the models.

`KINDS` lists how each kind is served (printer columns, subresources, which provider
owns it); `crd(kind)` and `crds()` build the apiextensions.k8s.io/v1 objects as dicts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from capi_c3os.api.base import KubeObject
from capi_c3os.api.bootstrap import C3osConfig, C3osConfigTemplate
from capi_c3os.api.controlplane import C3osControlPlane, C3osControlPlaneTemplate
from capi_c3os.api.hosts import C3osHost
from capi_c3os.api.infrastructure import C3osCluster, C3osClusterTemplate, C3osMachine, C3osMachineTemplate
from capi_c3os.api.schema import Schema, to_structural

Provider = Literal["infrastructure", "bootstrap", "control-plane"]
PROVIDERS: tuple[Provider, ...] = ("infrastructure", "bootstrap", "control-plane")

# CAPI reads this label to learn which of our versions implement which contract.
CONTRACT_LABEL = "cluster.x-k8s.io/v1beta2"
CONTRACT_LABEL_VALUE = "v1alpha1"
# `kubectl get cluster-api` lists CAPI's kinds and ours.
CATEGORIES = ["cluster-api"]


@dataclass(frozen=True)
class PrinterColumn:
    name: str
    type: Literal["string", "integer", "boolean", "date"]
    json_path: str
    description: str
    priority: int = 0

    def to_dict(self) -> dict[str, Any]:
        column: dict[str, Any] = {
            "name": self.name,
            "type": self.type,
            "jsonPath": self.json_path,
            "description": self.description,
        }
        if self.priority:
            column["priority"] = self.priority
        return column


@dataclass(frozen=True)
class Kind:
    """How one of our kinds is served."""

    model: type[KubeObject]
    provider: Provider
    columns: tuple[PrinterColumn, ...]
    scale: bool = False

    @property
    def name(self) -> str:
        return f"{self.model.PLURAL}.{self.model.GROUP}"

    @property
    def has_status(self) -> bool:
        return "status" in self.model.model_fields


CLUSTER = PrinterColumn(
    "Cluster",
    "string",
    ".metadata.labels['cluster\\.x-k8s\\.io/cluster-name']",
    "Cluster this object belongs to",
)
READY = PrinterColumn("Ready", "string", '.status.conditions[?(@.type=="Ready")].status', "Ready condition")
AGE = PrinterColumn("Age", "date", ".metadata.creationTimestamp", "Time since creation")
PROVISIONED = PrinterColumn(
    "Provisioned", "boolean", ".status.initialization.provisioned", "Infrastructure is provisioned"
)

KINDS: tuple[Kind, ...] = (
    Kind(
        C3osCluster,
        "infrastructure",
        (
            CLUSTER,
            PROVISIONED,
            READY,
            PrinterColumn("Endpoint", "string", ".spec.controlPlaneEndpoint.host", "API endpoint host", 1),
            AGE,
        ),
    ),
    Kind(C3osClusterTemplate, "infrastructure", (AGE,)),
    Kind(
        C3osMachine,
        "infrastructure",
        (
            CLUSTER,
            PrinterColumn(
                "Machine", "string", '.metadata.ownerReferences[?(@.kind=="Machine")].name', "Owning Machine"
            ),
            PrinterColumn("ProviderID", "string", ".spec.providerID", "Provider ID"),
            PROVISIONED,
            READY,
            PrinterColumn("Site", "string", ".status.failureDomain", "Site (failure domain)", 1),
            PrinterColumn(
                "DomainType", "string", ".status.backend.libvirt.domainType", "libvirt domain type", 1
            ),
            AGE,
        ),
    ),
    Kind(C3osMachineTemplate, "infrastructure", (AGE,)),
    Kind(
        C3osHost,
        "infrastructure",
        (
            PrinterColumn("Pool", "string", ".status.pool", "Pool the host registered into"),
            PrinterColumn("Accepted", "boolean", ".spec.accepted", "Machines may claim the host"),
            PrinterColumn("Phase", "string", ".status.phase", "Where the host stands"),
            PrinterColumn("Machine", "string", ".status.claim.machine", "C3osMachine that claimed it"),
            PrinterColumn("Reason", "string", ".status.reason", "Reason of the last change", 1),
            AGE,
        ),
    ),
    Kind(
        C3osConfig,
        "bootstrap",
        (
            CLUSTER,
            PrinterColumn(
                "DataSecretCreated",
                "boolean",
                ".status.initialization.dataSecretCreated",
                "Bootstrap data secret exists",
            ),
            PrinterColumn("DataSecret", "string", ".status.dataSecretName", "Bootstrap data secret", 1),
            READY,
            AGE,
        ),
    ),
    Kind(C3osConfigTemplate, "bootstrap", (AGE,)),
    Kind(
        C3osControlPlane,
        "control-plane",
        (
            CLUSTER,
            PrinterColumn(
                "Initialized",
                "boolean",
                ".status.initialization.controlPlaneInitialized",
                "The first server serves the API",
            ),
            PrinterColumn("Desired", "integer", ".spec.replicas", "Desired servers"),
            PrinterColumn("Replicas", "integer", ".status.replicas", "Servers"),
            PrinterColumn("Ready", "integer", ".status.readyReplicas", "Ready servers"),
            PrinterColumn("UpToDate", "integer", ".status.upToDateReplicas", "Servers matching the spec"),
            PrinterColumn("Available", "integer", ".status.availableReplicas", "Available servers"),
            PrinterColumn("Version", "string", ".spec.version", "Kubernetes version"),
            AGE,
        ),
        scale=True,
    ),
    Kind(C3osControlPlaneTemplate, "control-plane", (AGE,)),
)


def object_schema(model: type[KubeObject]) -> Schema:
    """openAPIV3Schema of a kind. apiVersion, kind and metadata are left to the API
    server, as controller-gen does; spec and status come from the models."""
    schema = to_structural(
        model,
        replace={
            "apiVersion": {"type": "string", "description": _API_VERSION_DOC},
            "kind": {"type": "string", "description": _KIND_DOC},
            # The API server allows nothing but the type here.
            "metadata": {"type": "object"},
        },
    )
    if "required" in schema:
        schema["required"] = [
            key for key in schema["required"] if key not in ("apiVersion", "kind", "metadata")
        ]
        if not schema["required"]:
            del schema["required"]
    return schema


def crd(kind: Kind) -> dict[str, Any]:
    """The CustomResourceDefinition of one kind."""
    model = kind.model
    subresources: dict[str, Any] = {}
    if kind.has_status:
        subresources["status"] = {}
    if kind.scale:
        subresources["scale"] = {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        }
    version: dict[str, Any] = {
        "name": model.VERSION,
        "served": True,
        "storage": True,
        "schema": {"openAPIV3Schema": object_schema(model)},
        "additionalPrinterColumns": [column.to_dict() for column in kind.columns],
    }
    if subresources:
        version["subresources"] = subresources
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": kind.name,
            "labels": {CONTRACT_LABEL: CONTRACT_LABEL_VALUE},
        },
        "spec": {
            "group": model.GROUP,
            "names": {
                "kind": model.KIND,
                "listKind": f"{model.KIND}List",
                "plural": model.PLURAL,
                "singular": model.KIND.lower(),
                "categories": list(CATEGORIES),
            },
            "scope": "Namespaced",
            "versions": [version],
        },
    }


def crds(provider: Provider | None = None) -> list[dict[str, Any]]:
    """All our CRDs, or one provider's, in a stable order."""
    return [crd(kind) for kind in KINDS if provider is None or kind.provider == provider]


def kind_of(model: type[KubeObject]) -> Kind:
    return next(kind for kind in KINDS if kind.model is model)


_API_VERSION_DOC = (
    "APIVersion defines the versioned schema of this representation of an object. Servers should "
    "convert recognized schemas to the latest internal value, and may reject unrecognized values."
)
_KIND_DOC = (
    "Kind is a string value representing the REST resource this object represents. Servers may "
    "infer this from the endpoint the client submits requests to. In CamelCase."
)
