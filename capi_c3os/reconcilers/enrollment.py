"""What the registration endpoint decides (blocking; the HTTP side is
operator/enrollment.py): who may register into a pool, a host's credential, what a host
is assigned, and what its reports change.

    register     token of a site naming the pool (current or previous, during a
                 rotation) -> C3osHost created or updated (labels from facts; spec.accepted
                 from the acceptance policy, on creation only), a new credential whose
                 SHA-256 replaces the last one's; a host registered in one pool never
                 registers into another (a token of pool B would otherwise take over a
                 host of pool A, with its claim and bootstrap data)
    authenticate the host named in the path, with the credential whose digest it holds
    assignment   reset (released or lost) | wait (not accepted, idle, releasing, failed) |
                 install (claimed: bootstrap data, disk, image, meta-data) | run (booted)
    report       a claim's progress or a reset's end, only for the claim/reset it names

Every refusal is the same `DeniedError`, whatever the cause (unknown namespace, pool, host,
token, credential): nothing tells a caller which hosts or pools exist. Tokens and
credentials are compared as SHA-256 digests in constant time and are never logged,
stored (credentials), or put into an exception.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from capi_c3os.api.hosts import C3osHost, C3osHostStatus, EnrolledSite, HostHardware, host_name
from capi_c3os.api.infrastructure import C3osClusterSpec, host_provider_id
from capi_c3os.backends.base import MachineIdentity
from capi_c3os.backends.enrolled import pool
from capi_c3os.capi.owners import owner_machine_name, references
from capi_c3os.reconcilers.c3osmachine import C3OS_CLUSTERS, hostname_for, provider_id_for, secret_data
from capi_c3os.reconcilers.host_inventory import HOSTS, KubeInventory, parse_host
from capi_c3os.reconcilers.kube import MACHINES, ConflictError, Kube, Resource

log = logging.getLogger(__name__)

C3OS_MACHINES = Resource(C3OS_CLUSTERS.group, C3OS_CLUSTERS.version, "c3osmachines", "C3osMachine")

TOKEN_KEY = "token"
PREVIOUS_TOKEN_KEY = "previous-token"
MIN_TOKEN_LENGTH = 16
"""Shorter tokens are refused (the site reports it): they could be guessed."""
POLL_SECONDS = 15
"""How often an agent asks for its assignment."""
_TRIES = 5
"""Writes retried on a conflict (the backend and other reports write the same host)."""


class DeniedError(Exception):
    """Unauthenticated or unauthorized; the caller gets the same answer whatever the
    cause. The message is for our logs (never a token or credential)."""


class StaleError(Exception):
    """A report about a claim or reset the host does not hold (any more)."""


class UnfittingError(Exception):
    """A report that does not follow the host's phase."""


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _same(a: str, b: str) -> bool:
    # Digests of equal length: the comparison time says nothing about either secret.
    return hmac.compare_digest(digest(a), digest(b))


@dataclass(frozen=True)
class Registered:
    namespace: str
    name: str
    accepted: bool
    credential: str = field(repr=False)


def pool_sites(kube: Kube, namespace: str, pool_name: str) -> list[EnrolledSite]:
    """The enrolled sites of every C3osCluster in `namespace` that name `pool_name`."""
    found: list[EnrolledSite] = []
    for obj in kube.list(C3OS_CLUSTERS, namespace):
        try:
            spec = C3osClusterSpec.model_validate(obj.get("spec") or {})
        except ValidationError:
            continue
        found += [s.enrolled for s in spec.sites if s.enrolled is not None and s.enrolled.pool == pool_name]
    return found


def site_tokens(kube: Kube, namespace: str, site: EnrolledSite) -> list[str]:
    """The tokens that let hosts register into the site's pool (current, previous)."""
    data = secret_data(kube, namespace, site.registration_token_secret_ref.name) or {}
    tokens = []
    for key in (TOKEN_KEY, PREVIOUS_TOKEN_KEY):
        try:
            value = data.get(key, b"").decode().strip()
        except UnicodeDecodeError:
            continue
        if len(value) >= MIN_TOKEN_LENGTH:
            tokens.append(value)
    return tokens


def token_problems(kube: Kube, namespace: str, site: EnrolledSite) -> list[str]:
    """What keeps the site's token Secret from admitting hosts (for SitesReady)."""
    name = site.registration_token_secret_ref.name
    data = secret_data(kube, namespace, name)
    if data is None:
        return [f"registration token Secret {name} not found"]
    if len((data.get(TOKEN_KEY) or b"").strip()) < MIN_TOKEN_LENGTH:
        return [
            f"key {TOKEN_KEY} of Secret {name} must hold a token of at least {MIN_TOKEN_LENGTH} characters"
        ]
    return []


@dataclass(frozen=True)
class Admission:
    """A valid token of the pool: the host may register, accepted at once or not."""

    namespace: str
    pool: str
    accepted: bool


def admit(kube: Kube, namespace: str, pool_name: str, token: str) -> Admission:
    """Whether `token` lets a host into the pool (a site naming it holds the token as
    current or previous); DeniedError otherwise."""
    sites = pool_sites(kube, namespace, pool_name)
    if not any(_same(token, valid) for site in sites for valid in site_tokens(kube, namespace, site)):
        raise DeniedError(f"registration into {namespace}/{pool_name} with an invalid token")
    return Admission(namespace, pool_name, all(site.acceptance == "Token" for site in sites))


def register(kube: Kube, admission: Admission, hardware: HostHardware, now: datetime) -> Registered:
    namespace, pool_name = admission.namespace, admission.pool
    name = host_name(hardware.system.uuid)
    _same_pool(KubeInventory(kube).get(namespace, name), pool_name)
    labels = pool.host_labels(hardware, pool_name)
    host = _ensure_host(kube, namespace, name, labels, admission.accepted)
    credential = secrets.token_urlsafe(32)
    for _ in range(_TRIES):
        _same_pool(host, pool_name)
        status = pool.register(host.status, hardware, pool_name, digest(credential), now)
        written = KubeInventory(kube).replace_status(host, status)
        if written is not None:
            log.info("host %s/%s registered into pool %s", namespace, name, pool_name)
            return Registered(namespace, name, written.spec.accepted, credential)
        host = _ensure_host(kube, namespace, name, labels, admission.accepted)
    raise ConflictError(f"C3osHost {namespace}/{name} kept changing")


def _same_pool(host: C3osHost | None, pool_name: str) -> None:
    """The token admitted into `pool_name` says nothing about a host of another pool:
    moving one takes deleting its C3osHost (then it registers afresh)."""
    registered = pool.host_pool(host) if host is not None else None
    if host is not None and registered is not None and registered != pool_name:
        raise DeniedError(
            f"host {host.metadata.namespace}/{host.metadata.name} of pool {registered} "
            f"registering into pool {pool_name}"
        )


def _ensure_host(kube: Kube, namespace: str, name: str, labels: dict[str, str], accepted: bool) -> C3osHost:
    """The host's object with the facts' labels (its own labels kept). spec.accepted is
    set only when the object is made: a person's decision is not undone by a new
    registration."""
    for _ in range(_TRIES):
        obj = kube.get(HOSTS, namespace, name)
        if obj is None:
            body = {
                "apiVersion": HOSTS.api_version,
                "kind": HOSTS.kind,
                "metadata": {"name": name, "labels": labels},
                "spec": {"accepted": accepted},
            }
            try:
                obj = kube.create(HOSTS, namespace, body)
            except ConflictError:
                continue
        else:
            current = obj["metadata"].get("labels") or {}
            wanted = {k: v for k, v in current.items() if not pool.is_host_label(k)} | labels
            if wanted != current:
                obj["metadata"]["labels"] = wanted
                try:
                    obj = kube.replace(HOSTS, namespace, name, obj)
                except ConflictError:
                    continue
        host = parse_host(obj)
        if host is None:
            raise ConflictError(f"C3osHost {namespace}/{name} is unreadable")
        return host
    raise ConflictError(f"C3osHost {namespace}/{name} kept changing")


def authenticate(kube: Kube, namespace: str, name: str, credential: str) -> C3osHost:
    host = KubeInventory(kube).get(namespace, name)
    known = host.status.credential if host is not None and host.status is not None else None
    # Compare even without a host, so an unknown name takes the same path.
    expected = known.sha256 if known is not None else "0" * 64
    if not hmac.compare_digest(digest(credential), expected) or host is None or known is None:
        raise DeniedError(f"host {namespace}/{name}: invalid credential")
    return host


def assignment(kube: Kube, host: C3osHost) -> dict[str, Any]:
    """What the host should do now. Bootstrap data only while the host holds a claim of
    a machine that is not being deleted."""
    status = host.status or C3osHostStatus()
    if status.phase in ("Resetting", "Lost") and status.reset is not None:
        return {"action": "reset", "id": status.reset.id, "pollSeconds": POLL_SECONDS}
    claim = status.claim
    if claim is None or not host.spec.accepted:
        reason = "Idle" if host.spec.accepted else "AwaitingApproval"
        return {"action": "wait", "reason": reason, "pollSeconds": POLL_SECONDS}
    if status.phase == "Provisioned":
        return {"action": "run", "id": claim.id, "pollSeconds": POLL_SECONDS}
    if status.phase == "Failed":
        return {"action": "wait", "reason": status.reason or "Failed", "pollSeconds": POLL_SECONDS}
    namespace = str(host.metadata.namespace)
    install = _install(kube, namespace, claim.machine, str(host.metadata.name))
    if install is None:
        return {"action": "wait", "reason": "MachineNotReady", "pollSeconds": POLL_SECONDS}
    install |= {"disk": claim.install_disk}
    return {"action": "install", "id": claim.id, "install": install, "pollSeconds": POLL_SECONDS}


def _install(kube: Kube, namespace: str, machine_name: str, host: str) -> dict[str, Any] | None:
    """The claiming machine's image, bootstrap data and meta-data (the same the other
    backends put on a config drive); None while the machine is not there or going."""
    machine = kube.get(C3OS_MACHINES, namespace, machine_name)
    if machine is None or machine["metadata"].get("deletionTimestamp"):
        return None
    owner = owner_machine_name(machine)
    capi_machine = kube.get(MACHINES, namespace, owner) if owner else None
    if capi_machine is not None and not references(capi_machine, machine):
        return None  # an ownerReference written by hand: another Machine's bootstrap data
    secret_name = (((capi_machine or {}).get("spec") or {}).get("bootstrap") or {}).get("dataSecretName")
    data = secret_data(kube, namespace, secret_name) if secret_name else None
    if not data or "value" not in data:
        return None
    provider_id = host_provider_id(namespace, host, machine_name)
    if (machine.get("spec") or {}).get("providerID") != provider_id:
        # Written right after the claim: the next poll has it. One naming another host
        # (by hand) never reaches a node.
        return None
    identity = MachineIdentity(namespace, machine_name, provider_id_for(namespace, machine_name))
    hostname = hostname_for(machine_name)
    return {
        "image": (machine.get("spec") or {}).get("image") or {},
        "userData": base64.b64encode(data["value"]).decode(),
        "metaData": {
            "instance-id": identity.uuid,
            "local-hostname": hostname,
            "provider-id": provider_id,
        },
    }


def report(kube: Kube, host: C3osHost, event: str, claim_id: str, message: str, now: datetime) -> str | None:
    """Apply the host's report; the machine whose claim moved (to wake it), if any."""
    inventory = KubeInventory(kube)
    current: C3osHost | None = host
    for _ in range(_TRIES):
        assert current is not None and current.status is not None
        try:
            status = pool.apply_report(current.status, event, claim_id, message, now)
        except pool.StaleReportError:
            raise StaleError from None
        except ValueError as exc:
            raise UnfittingError(str(exc)) from None
        written = inventory.replace_status(current, status)
        if written is not None:
            machine = current.status.claim.machine if current.status.claim else None
            return machine or (current.status.reset.machine if current.status.reset else None)
        current = inventory.get(str(host.metadata.namespace), str(host.metadata.name))
        if current is None or current.status is None:
            raise StaleError
        # A registration since may have replaced the credential this report came with.
        if current.status.credential != host.status.credential:  # type: ignore[union-attr]
            raise DeniedError("credential replaced meanwhile")
    raise ConflictError(f"C3osHost {host.metadata.namespace}/{host.metadata.name} kept changing")
