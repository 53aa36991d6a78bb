"""Our API: pydantic models of the nine kinds, and the CRDs generated from them.

Reconcilers parse objects with `Model.model_validate(obj)` and write with
`model.to_wire()` (camelCase, no nulls, JSON types). `crds()` gives the CRD dicts.
This package imports nothing else of ours.
"""

from capi_c3os.api.base import ApiModel, KubeObject, ObjectMeta
from capi_c3os.api.bootstrap import C3osConfig, C3osConfigSpec, C3osConfigTemplate
from capi_c3os.api.common import Condition
from capi_c3os.api.controlplane import C3osControlPlane, C3osControlPlaneTemplate
from capi_c3os.api.crd import KINDS, PROVIDERS, Kind, Provider, crd, crds
from capi_c3os.api.hosts import C3osHost
from capi_c3os.api.infrastructure import C3osCluster, C3osClusterTemplate, C3osMachine, C3osMachineTemplate

MODELS: tuple[type[KubeObject], ...] = tuple(kind.model for kind in KINDS)

__all__ = [
    "KINDS",
    "MODELS",
    "PROVIDERS",
    "ApiModel",
    "C3osCluster",
    "C3osClusterTemplate",
    "C3osConfig",
    "C3osConfigSpec",
    "C3osConfigTemplate",
    "C3osControlPlane",
    "C3osControlPlaneTemplate",
    "C3osHost",
    "C3osMachine",
    "C3osMachineTemplate",
    "Condition",
    "Kind",
    "KubeObject",
    "ObjectMeta",
    "Provider",
    "crd",
    "crds",
]
