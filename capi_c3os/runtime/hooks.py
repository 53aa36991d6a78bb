"""The in-place update hooks of Cluster API's Runtime SDK, as functions from request
dicts to response dicts (the HTTP wiring is operator/extension.py).

Types and paths follow the pinned CAPI (v1.14.2, module sigs.k8s.io/cluster-api/api,
runtime/hooks/v1alpha1/{inplaceupdate,discovery,common}_types.go; handler paths from
runtime/catalog GVHToPath: `/<group>/<version>/<lowercase hook>/<lowercase name>`).

What an A/B upgrade can change on a running machine is the OS image, and with it the
k3s version: the Machine's `spec.version` and the C3osMachine's `spec.image` (whose
`oci` reference is what `kairos-agent upgrade` installs). Everything else (disk, CPUs,
memory, backend, network, site, bootstrap configuration) was fixed when the machine was
installed, so the CanUpdate hooks leave it unpatched and CAPI replaces the machine.
Saying "no" is a Success without patches: a Failure would stop CAPI's rollout planner
with an error instead of falling back to replacing machines.

UpdateMachine trusts nothing in the request but the Machine's namespace and name: the
Machine, its C3osMachine and the cluster's kubeconfig are read from the API server, the
Node is the one CAPI linked (`status.nodeRef`) and must carry the C3osMachine's
providerID, and the upgrade runs only while CAPI has the Machine's in-place update
pending. A caller that reaches the port can at most ask for what CAPI asked already.
Those annotations and the C3osMachine's image are editable by whoever edits Machines and
C3osMachines, and the image runs privileged on the node: it is installed only when the
infrastructure template of the MachineSet that controls the Machine names it too (what
CAPI patched in from the template it rolls out to).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from kubernetes.client.exceptions import ApiException

from capi_c3os.capi.metadata import (
    CORE_GROUP,
    IN_PLACE_UPDATE_IN_PROGRESS_ANNOTATION,
    INFRASTRUCTURE_GROUP,
)
from capi_c3os.capi.owners import owner_references
from capi_c3os.capi.versions import matches, version_from_image_name
from capi_c3os.workload.client import WorkloadClient, WorkloadUnreachableError
from capi_c3os.workload.upgrade import UpgradeState, advance_upgrade

HOOKS_GROUP = "hooks.runtime.cluster.x-k8s.io"
HOOKS_VERSION = "v1alpha1"
HOOKS_API_VERSION = f"{HOOKS_GROUP}/{HOOKS_VERSION}"
SUCCESS = "Success"
FAILURE = "Failure"

PENDING_HOOKS_ANNOTATION = "runtime.cluster.x-k8s.io/pending-hooks"
"""CAPI api/runtime/v1beta2 PendingHooksAnnotation: a comma list of hook names."""

INFRA_MACHINE_KINDS = {"C3osMachine", "C3osMachineTemplate"}
IN_PROGRESS_RETRY_SECONDS = 10
"""How soon CAPI asks again while an upgrade runs (an upgrade takes minutes)."""
UNREACHABLE_RETRY_SECONDS = 20

_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


@dataclass(frozen=True)
class Handler:
    name: str
    """DNS label: CAPI registers it as `<name>.<ExtensionConfig name>`."""
    hook: str
    timeout_seconds: int
    """At most 30 (CAPI's discovery validation)."""
    failure_policy: str


HANDLERS = (
    # Unreachable (manager down or uninstalled): CAPI takes it as "no" and replaces
    # machines, instead of stopping every MachineDeployment rollout with an error.
    Handler("can-update-machineset", "CanUpdateMachineSet", 10, "Ignore"),
    Handler("can-update-machine", "CanUpdateMachine", 10, "Ignore"),
    # Never Ignore: CAPI would take an unanswered UpdateMachine for "done".
    # Reads the management and the workload cluster: a few requests with short timeouts.
    Handler("update-machine", "UpdateMachine", 30, "Fail"),
)


def hook_path(hook: str, name: str = "") -> str:
    """CAPI's GVHToPath."""
    base = f"/{HOOKS_GROUP}/{HOOKS_VERSION}/{hook.lower()}"
    return f"{base}/{name.lower()}" if name else base


DISCOVERY_PATH = hook_path("Discovery")


class BadRequestError(ValueError):
    """The body is not the hook's request (answered with a Failure naming what is wrong)."""


def _response(kind: str, status: str, message: str = "", **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"apiVersion": HOOKS_API_VERSION, "kind": kind, "status": status}
    if message:
        body["message"] = message
    body.update(fields)
    return body


def failure(hook: str, message: str) -> dict[str, Any]:
    """A Failure response of `hook` (its `<hook>Response` kind)."""
    extra: dict[str, Any] = {"retryAfterSeconds": 0} if hook == "UpdateMachine" else {}
    return _response(f"{hook}Response", FAILURE, message, **extra)


def discovery(_request: Any = None) -> dict[str, Any]:
    handlers = [
        {
            "name": h.name,
            "requestHook": {"apiVersion": HOOKS_API_VERSION, "hook": h.hook},
            "timeoutSeconds": h.timeout_seconds,
            "failurePolicy": h.failure_policy,
        }
        for h in HANDLERS
    ]
    return _response("DiscoveryResponse", SUCCESS, handlers=handlers)


# ------------------------------------------------------------------ request parsing


def _dict(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadRequestError(f"{where} must be an object")
    return value


def _at(obj: dict[str, Any], path: Sequence[str], where: str) -> dict[str, Any]:
    value: Any = obj
    for i, key in enumerate(path):
        value = _dict(value, ".".join([where, *path[:i]]) if i else where).get(key)
        if value is None:
            value = {}
    return _dict(value, ".".join([where, *path]))


def _kind(obj: dict[str, Any]) -> tuple[str, str]:
    """(API group, kind) of a raw object."""
    api_version = str(obj.get("apiVersion") or "")
    group = api_version.rpartition("/")[0] if "/" in api_version else ""
    return group, str(obj.get("kind") or "")


def _kind_name(obj: dict[str, Any], default: str) -> str:
    return str(obj.get("kind") or default)


# ------------------------------------------------------------------ the decision


_IGNORED_MACHINE_FIELDS = ("clusterName", "bootstrap", "infrastructureRef", "providerID", "minReadySeconds",
                           "readinessGates", "taints")  # fmt: skip
"""What CAPI itself leaves out when it compares Machine specs (internal/util/inplace
CleanupMachineSpecForDiff), with the deletion timeouts below."""
_IGNORED_DELETION_FIELDS = (
    "nodeDrainTimeoutSeconds",
    "nodeVolumeDetachTimeoutSeconds",
    "nodeDeletionTimeoutSeconds",
)


def _machine_spec_for_diff(spec: dict[str, Any]) -> dict[str, Any]:
    cleaned = {k: v for k, v in spec.items() if k not in _IGNORED_MACHINE_FIELDS}
    deletion = cleaned.get("deletion")
    if isinstance(deletion, dict):
        rest = {k: v for k, v in deletion.items() if k not in _IGNORED_DELETION_FIELDS}
        cleaned["deletion"] = rest
        if not rest:
            del cleaned["deletion"]
    return cleaned


def _differences(current: Any, desired: Any, prefix: str = "") -> list[str]:
    """Dotted paths (sorted) where two JSON values differ; lists compare whole."""
    if isinstance(current, dict) and isinstance(desired, dict):
        paths: list[str] = []
        for key in sorted(set(current) | set(desired)):
            paths += _differences(current.get(key), desired.get(key), f"{prefix}.{key}" if prefix else key)
        return paths
    return [] if current == desired else [prefix]


def _shown(value: Any) -> str | None:
    """A scalar for a message, None for objects and lists (too long to show)."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    return None


def _change(current: Any, desired: Any) -> str:
    before, after = _shown(current), _shown(desired)
    return f" from {before} to {after}" if before is not None and after is not None else ""


def _get(obj: Any, dotted: str) -> Any:
    for key in dotted.split("."):
        obj = obj.get(key) if isinstance(obj, dict) else None
    return obj


@dataclass
class Plan:
    """What makes current equal desired, or why it cannot be done in place."""

    machine_ops: list[dict[str, Any]] = field(default_factory=list)
    infra_ops: list[dict[str, Any]] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)

    @property
    def message(self) -> str:
        if not self.refusals:
            return ""
        return "cannot upgrade in place: " + "; ".join(self.refusals)


def plan_update(
    machine: tuple[dict[str, Any], dict[str, Any]],
    infra: tuple[dict[str, Any], dict[str, Any]],
    bootstrap: tuple[dict[str, Any], dict[str, Any]] | None,
    *,
    infra_kind: str,
    bootstrap_kind: str = "bootstrap config",
) -> Plan:
    """Compare (current, desired) Machine specs, infrastructure specs and bootstrap
    specs (each at the level the patch paths start from)."""
    plan = Plan()
    m_cur, m_des = _machine_spec_for_diff(machine[0]), _machine_spec_for_diff(machine[1])
    for path in _differences(m_cur, m_des):
        if path == "version" and m_des.get("version"):
            plan.machine_ops.append({"op": "add", "path": "/version", "value": m_des["version"]})
        elif path == "failureDomain":
            plan.refusals.append(
                f"the site (failureDomain) changes{_change(m_cur.get(path), m_des.get(path))}: "
                "a machine cannot move to another site"
            )
        else:
            plan.refusals.append(
                f"Machine spec.{path} changes: only the version and the image change in place"
            )

    i_cur, i_des = infra
    image_paths = []
    for path in _differences(i_cur, i_des):
        if path == "image" or path.startswith("image."):
            image_paths.append(path)
        elif path == "providerID" and not i_des.get("providerID"):
            continue  # a template has none; the machine's identity never changes
        else:
            plan.refusals.append(
                f"{infra_kind} spec.{path} changes{_change(_get(i_cur, path), _get(i_des, path))}: "
                "only the version and the image change in place"
            )
    desired_image = i_des.get("image") if isinstance(i_des.get("image"), dict) else {}
    oci = desired_image.get("oci") if desired_image else None
    if image_paths:
        if not oci:
            plan.refusals.append(
                f"the new image of {infra_kind} has no image.oci: an in-place upgrade installs the release "
                "from its OCI image"
            )
        else:
            plan.infra_ops.append({"op": "add", "path": "/image", "value": desired_image})

    version, old_version = m_des.get("version"), m_cur.get("version")
    if version and version != old_version and not image_paths:
        plan.refusals.append(
            f"the version changes from {old_version or 'unset'} to {version} but the image does not: "
            "k3s ships in the image"
        )
    ships = version_from_image_name(str(oci)) if oci and image_paths else None
    if version and ships and not matches(str(version), ships):
        plan.refusals.append(f"image {oci} ships {ships} by its name, the version is {version}")

    if bootstrap is not None:
        for path in _differences(bootstrap[0], bootstrap[1]):
            plan.refusals.append(
                f"{bootstrap_kind} spec.{path} changes: "
                "a node's configuration is written only when it is installed"
            )
    if plan.refusals:
        plan.machine_ops, plan.infra_ops = [], []
    return plan


def _json_patch(ops: list[dict[str, Any]], prefix: str) -> dict[str, Any] | None:
    """CAPI's Patch: `patch` is []byte in Go, so base64 in JSON."""
    if not ops:
        return None
    shifted = [{**op, "path": prefix + op["path"]} for op in ops]
    data = json.dumps(shifted, separators=(",", ":"), sort_keys=True).encode()
    return {"patchType": "JSONPatch", "patch": base64.b64encode(data).decode()}


def _ours(infra: dict[str, Any]) -> str | None:
    """Why an infrastructure object is not ours to upgrade, or None."""
    group, kind = _kind(infra)
    if group == INFRASTRUCTURE_GROUP and kind in INFRA_MACHINE_KINDS:
        return None
    what = f"{kind or 'the infrastructure'} ({group or 'no group'})"
    return f"{what} is not a c3os machine: not upgraded in place by capi-c3os"


def _bootstrap_pair(current: dict[str, Any], desired: dict[str, Any], key: str, path: Sequence[str]) -> tuple[
    tuple[dict[str, Any], dict[str, Any]] | None, str
]:  # fmt: skip
    cur, des = current.get(key), desired.get(key)
    if not cur and not des:
        return None, "bootstrap config"
    if not cur or not des:
        raise BadRequestError(f"current.{key} and desired.{key} must both be set or both be absent")
    cur, des = _dict(cur, f"current.{key}"), _dict(des, f"desired.{key}")
    return (_at(cur, path, f"current.{key}"), _at(des, path, f"desired.{key}")), _kind_name(
        des, "bootstrap config"
    )


@dataclass(frozen=True)
class _CanUpdateShape:
    """Where a CanUpdate hook's request keeps its objects and where patches start."""

    hook: str
    machine: str
    infra: str
    bootstrap: str
    spec_path: tuple[str, ...]
    machine_patch: str
    infra_patch: str


_MACHINE_SET = _CanUpdateShape("CanUpdateMachineSet", "machineSet", "infrastructureMachineTemplate",
                               "bootstrapConfigTemplate", ("spec", "template", "spec"), "machineSetPatch",
                               "infrastructureMachineTemplatePatch")  # fmt: skip
_MACHINE = _CanUpdateShape("CanUpdateMachine", "machine", "infrastructureMachine", "bootstrapConfig",
                           ("spec",), "machinePatch", "infrastructureMachinePatch")  # fmt: skip


def _can_update(shape: _CanUpdateShape, request: Any) -> dict[str, Any]:
    kind, path = f"{shape.hook}Response", shape.spec_path
    try:
        req = _dict(request, "request")
        sides = (_dict(req.get("current"), "current"), _dict(req.get("desired"), "desired"))
        names = ("current", "desired")
        infras = [
            _dict(side.get(shape.infra), f"{n}.{shape.infra}") for side, n in zip(sides, names, strict=True)
        ]
        machine = tuple(
            _at(_dict(side.get(shape.machine), f"{n}.{shape.machine}"), path, f"{n}.{shape.machine}")
            for side, n in zip(sides, names, strict=True)
        )
        infra = tuple(_at(obj, path, f"{n}.{shape.infra}") for obj, n in zip(infras, names, strict=True))
        bootstrap, bootstrap_kind = _bootstrap_pair(sides[0], sides[1], shape.bootstrap, path)
    except BadRequestError as exc:
        return _response(kind, FAILURE, f"bad {shape.hook} request: {exc}")
    not_ours = _ours(infras[0]) or _ours(infras[1])
    if not_ours:
        return _response(kind, SUCCESS, not_ours)
    infra_kind = _kind_name(infras[1], "infrastructure")
    plan = plan_update((machine[0], machine[1]), (infra[0], infra[1]), bootstrap, infra_kind=infra_kind,
                       bootstrap_kind=bootstrap_kind)  # fmt: skip
    prefix = "/" + "/".join(path)
    patches = {
        shape.machine_patch: _json_patch(plan.machine_ops, prefix),
        shape.infra_patch: _json_patch(plan.infra_ops, prefix),
    }
    return _response(kind, SUCCESS, plan.message, **{k: v for k, v in patches.items() if v})


def can_update_machine_set(request: Any) -> dict[str, Any]:
    return _can_update(_MACHINE_SET, request)


def can_update_machine(request: Any) -> dict[str, Any]:
    return _can_update(_MACHINE, request)


# ------------------------------------------------------------------ UpdateMachine


class ManagementReader(Protocol):
    """What UpdateMachine reads, from the API server (never from the request)."""

    def machine(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    def c3os_machine(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    def machine_set(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    def c3os_machine_template(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    def kubeconfig(self, namespace: str, cluster: str) -> str | None:
        """The value of `<cluster>-kubeconfig` in `namespace`."""
        ...


WorkloadFor = Callable[[str, str, str], WorkloadClient]
"""(namespace, cluster, kubeconfig) -> a client (WorkloadClients.get)."""
FailureReport = Callable[[dict[str, Any], str], None]
"""(Machine, message): told when a pending update failed. CAPI's Machine condition says
only "UpdateMachine hook failed"; this puts our words where users look."""


def _update_response(status: str, message: str, retry: int = 0) -> dict[str, Any]:
    return _response("UpdateMachineResponse", status, message, retryAfterSeconds=retry)


def _in_progress(message: str, retry: int = IN_PROGRESS_RETRY_SECONDS) -> dict[str, Any]:
    return _update_response(SUCCESS, message, retry)


def _failed(message: str) -> dict[str, Any]:
    return _update_response(FAILURE, message)


def update_machine(
    request: Any,
    reader: ManagementReader,
    workload_for: WorkloadFor,
    namespaces: Sequence[str] = (),
    report: FailureReport | None = None,
) -> dict[str, Any]:
    """Start or follow the upgrade of the request's Machine. Blocking (API calls)."""
    answer, machine = _update_machine(request, reader, workload_for, namespaces)
    if report is not None and machine is not None and answer["status"] == FAILURE:
        report(machine, answer["message"])
    return answer


def _update_machine(
    request: Any, reader: ManagementReader, workload_for: WorkloadFor, namespaces: Sequence[str]
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The answer, and the Machine once it is known to have an update pending (failures
    before that are the caller's mistakes, not the Machine's)."""
    try:
        desired = _dict(_dict(request, "request").get("desired"), "desired")
        meta = _at(_dict(desired.get("machine"), "desired.machine"), ("metadata",), "desired.machine")
        namespace, name = meta.get("namespace"), meta.get("name")
        if not (
            isinstance(namespace, str)
            and _NAME.match(namespace)
            and isinstance(name, str)
            and _NAME.match(name)
        ):
            raise BadRequestError("desired.machine.metadata must name the Machine (namespace and name)")
        asked_infra = desired.get("infrastructureMachine") or {}
        asked_meta = _at(
            _dict(asked_infra, "desired.infrastructureMachine"),
            ("metadata",),
            "desired.infrastructureMachine",
        )
    except BadRequestError as exc:
        return _failed(f"bad UpdateMachine request: {exc}"), None
    key = f"{namespace}/{name}"
    if namespaces and namespace not in namespaces:
        return _failed(f"Machine {key} is outside the namespaces this manager serves"), None
    machine = reader.machine(namespace, name)
    if machine is None:
        return _failed(f"Machine {key} not found"), None
    annotations = (machine.get("metadata") or {}).get("annotations") or {}
    pending = {h.strip() for h in str(annotations.get(PENDING_HOOKS_ANNOTATION, "")).split(",")}
    if IN_PLACE_UPDATE_IN_PROGRESS_ANNOTATION not in annotations or "UpdateMachine" not in pending:
        return _failed(f"Machine {key} has no in-place update pending"), None
    return _upgrade(machine, key, asked_meta, reader, workload_for), machine


def _upgrade(
    machine: dict[str, Any],
    key: str,
    asked_meta: dict[str, Any],
    reader: ManagementReader,
    workload_for: WorkloadFor,
) -> dict[str, Any]:
    namespace = str(machine["metadata"]["namespace"])
    spec = machine.get("spec") or {}
    ref = spec.get("infrastructureRef") or {}
    if ref.get("apiGroup") != INFRASTRUCTURE_GROUP or ref.get("kind") != "C3osMachine" or not ref.get("name"):
        return _failed(
            f"Machine {key} is not a c3os machine (infrastructureRef {ref.get('kind')} {ref.get('name')})"
        )
    # The request's infrastructure machine must be this Machine's: never act on another one.
    if (
        asked_meta.get("namespace", namespace) != namespace
        or asked_meta.get("name", ref["name"]) != ref["name"]
    ):
        return _failed(
            f"the request's infrastructureMachine {asked_meta.get('namespace')}/{asked_meta.get('name')} "
            f"is not Machine {key}'s C3osMachine {namespace}/{ref['name']}"
        )
    infra = reader.c3os_machine(namespace, str(ref["name"]))
    if infra is None:
        return _failed(f"C3osMachine {namespace}/{ref['name']} of Machine {key} not found")
    infra_spec = infra.get("spec") or {}
    oci = (infra_spec.get("image") or {}).get("oci")
    if not oci:
        return _failed(f"C3osMachine {namespace}/{ref['name']} has no spec.image.oci to upgrade to")
    unapproved = _unapproved_image(machine, key, str(oci), reader)
    if unapproved:
        return _failed(unapproved)
    provider_id = infra_spec.get("providerID")
    node_name = ((machine.get("status") or {}).get("nodeRef") or {}).get("name")
    if not provider_id or not node_name:
        return _in_progress(f"Machine {key} has no Node yet")
    cluster = spec.get("clusterName")
    kubeconfig = reader.kubeconfig(namespace, str(cluster)) if cluster else None
    if kubeconfig is None:
        return _in_progress(
            f"the kubeconfig Secret of cluster {namespace}/{cluster} is missing", UNREACHABLE_RETRY_SECONDS
        )
    try:
        client = workload_for(namespace, str(cluster), kubeconfig)
        node = client.node(str(node_name))
        if node is None:
            return _in_progress(f"node {node_name} of Machine {key} is not in the workload cluster")
        if node.provider_id != provider_id:
            return _failed(
                f"node {node_name} has providerID {node.provider_id or 'unset'}, not {provider_id} "
                f"of C3osMachine {namespace}/{ref['name']}: not upgrading it"
            )
        progress = advance_upgrade(client, node.name, str(oci), spec.get("version"))
    except WorkloadUnreachableError as exc:
        return _in_progress(f"workload cluster {namespace}/{cluster}: {exc}", UNREACHABLE_RETRY_SECONDS)
    except ApiException as exc:  # 401/403 (a rotated kubeconfig?), 422: said, and asked again
        return _in_progress(
            f"workload cluster {namespace}/{cluster} answered {exc.status} {exc.reason}",
            UNREACHABLE_RETRY_SECONDS,
        )
    if progress.state is UpgradeState.DONE:
        return _update_response(SUCCESS, progress.message)
    if progress.state is UpgradeState.FAILED:
        return _failed(progress.message)
    return _in_progress(progress.message)


def _unapproved_image(machine: dict[str, Any], key: str, oci: str, reader: ManagementReader) -> str | None:
    """Why `oci` (the C3osMachine's image) is not installed: it is not the image of the
    template of the MachineSet that controls the Machine. None: it is."""
    namespace = str(machine["metadata"]["namespace"])
    owner = next((r for r in owner_references(machine) if r.get("controller")), {})
    group = str(owner.get("apiVersion") or "").rpartition("/")[0]
    if (group, owner.get("kind")) != (CORE_GROUP, "MachineSet") or not owner.get("name"):
        return (
            f"Machine {key} is not controlled by a MachineSet (but {owner.get('kind') or 'nothing'}): "
            "the extension upgrades machines of MachineDeployments only"
        )
    machine_set = reader.machine_set(namespace, str(owner["name"]))
    if machine_set is None or machine_set["metadata"].get("uid") != owner.get("uid"):
        return f"MachineSet {namespace}/{owner['name']} controlling Machine {key} not found"
    ref = _get(machine_set, "spec.template.spec.infrastructureRef") or {}
    if (ref.get("apiGroup"), ref.get("kind")) != (INFRASTRUCTURE_GROUP, "C3osMachineTemplate"):
        return f"MachineSet {namespace}/{owner['name']} does not use a C3osMachineTemplate"
    template = reader.c3os_machine_template(namespace, str(ref.get("name")))
    wanted = _get(template, "spec.template.spec.image.oci")
    if wanted != oci:
        return (
            f"the image of Machine {key}'s C3osMachine, {oci}, is not the image of C3osMachineTemplate "
            f"{namespace}/{ref.get('name')} of its MachineSet {owner['name']} ({wanted or 'none'}): "
            "not installing an image no template of the machine names"
        )
    return None


__all__ = [
    "DISCOVERY_PATH",
    "HANDLERS",
    "HOOKS_API_VERSION",
    "BadRequestError",
    "Handler",
    "ManagementReader",
    "Plan",
    "can_update_machine",
    "can_update_machine_set",
    "discovery",
    "failure",
    "hook_path",
    "plan_update",
    "update_machine",
]
