"""A typed, non-retrying view of one site's Ironic API.

Built on python-ironicclient over a keystoneauth session: noauth, HTTP basic or Keystone
credentials from the site's Secret, TLS verified against the site's CA bundle (or the
system store) unless the site opts out. ironicclient's own conflict retries are off
(they sleep 2 s five times inside the call): HTTP 409 becomes `IronicBusyError` and the caller
requeues. Every other failure becomes a `BackendError` whose message names the site's
endpoint (or, for Keystone's own refusals, its auth URL) and the server's own words, never
a credential. With Keystone, keystoneauth renews the token before it expires and, when
Ironic refuses one (revoked), fetches a new one and repeats the request once.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import requests
from ironicclient import client as ironic_client
from ironicclient import exc as ironic_exc
from keystoneauth1 import exceptions as ks_exc
from keystoneauth1 import http_basic, noauth, session
from keystoneauth1.identity import generic, v3

from capi_c3os.api.infrastructure import IronicSite
from capi_c3os.backends.base import BackendError, SiteCredentials
from capi_c3os.backends.credentials import (
    BASIC_KEYS,
    KEYSTONE_APPLICATION_CREDENTIAL_KEYS,
    KEYSTONE_PASSWORD_KEYS,
)

# The oldest API version with everything used here (allocations with names and UUIDs,
# configdrive as JSON with network_data, per-node automated_clean); Metal3 relies on it too.
API_VERSION = "1.89"
REQUEST_TIMEOUT = 30.0
USER_AGENT = "capi-c3os"

# keystoneauth logs request bodies at DEBUG, and a deploy request carries the bootstrap
# data (join tokens); ironicclient logs every 409 at ERROR although it is routine here.
logging.getLogger("keystoneauth").setLevel(logging.INFO)
logging.getLogger("ironicclient.common.http").setLevel(logging.CRITICAL)

T = TypeVar("T")

_pool_size = requests.adapters.DEFAULT_POOLSIZE


def configure(pool_size: int) -> None:
    """Keep up to `pool_size` connections per Ironic: one per reconcile that may run at
    once (the manager's --max-concurrent-reconciles); with fewer, every request beyond
    them opens a new connection and drops it afterwards."""
    global _pool_size  # noqa: PLW0603
    _pool_size = max(1, pool_size)


class IronicBusyError(Exception):
    """HTTP 409: the node is locked by the conductor or the request conflicts; retry soon."""


@dataclass(frozen=True)
class Node:
    uuid: str
    name: str | None
    provision_state: str
    target_provision_state: str | None
    power_state: str | None
    maintenance: bool
    maintenance_reason: str | None
    fault: str | None
    last_error: str | None
    instance_uuid: str | None
    allocation_uuid: str | None
    deploy_interface: str | None
    provision_updated_at: str | None = None
    instance_info: Mapping[str, Any] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Node:
        return cls(
            uuid=data["uuid"],
            name=data.get("name"),
            provision_state=data.get("provision_state") or "",
            target_provision_state=data.get("target_provision_state"),
            power_state=data.get("power_state"),
            maintenance=bool(data.get("maintenance")),
            maintenance_reason=data.get("maintenance_reason"),
            fault=data.get("fault"),
            last_error=data.get("last_error"),
            instance_uuid=data.get("instance_uuid"),
            allocation_uuid=data.get("allocation_uuid"),
            deploy_interface=data.get("deploy_interface"),
            provision_updated_at=data.get("provision_updated_at"),
            instance_info=data.get("instance_info") or {},
            extra=data.get("extra") or {},
        )

    @property
    def label(self) -> str:
        return f"{self.name} ({self.uuid})" if self.name else self.uuid


@dataclass(frozen=True)
class Allocation:
    uuid: str
    name: str | None
    state: str
    node_uuid: str | None
    last_error: str | None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Allocation:
        return cls(
            uuid=data["uuid"],
            name=data.get("name"),
            state=data.get("state") or "",
            node_uuid=data.get("node_uuid"),
            last_error=data.get("last_error"),
            extra=data.get("extra") or {},
        )


NODE_FIELDS = [
    "uuid",
    "name",
    "provision_state",
    "target_provision_state",
    "power_state",
    "maintenance",
    "maintenance_reason",
    "fault",
    "last_error",
    "instance_uuid",
    "deploy_interface",
    "provision_updated_at",
    "instance_info",
    "extra",
]


class IronicApi:
    """The calls the backend makes, each one HTTP request, typed in and out."""

    def __init__(
        self, endpoint: str, client: Any, keystone: tuple[str, Callable[[], object]] | None = None
    ) -> None:
        self.endpoint = endpoint
        self._client = client
        self._keystone = keystone
        """(auth URL, a call that makes sure the session holds a valid token) for Keystone
        sites: a failure there is Keystone's, not Ironic's, and says so."""
        self.calls = 0
        """Requests made; read by the benchmark."""
        self.nodes_listed = 0
        """Node records node listings returned; read by the benchmark and the tests."""

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        self.calls += 1
        if self._keystone is not None:
            _keystone_call(self._keystone[0], what, self._keystone[1])
        try:
            return fn()
        except ironic_exc.Conflict as err:
            raise IronicBusyError(f"{what}: {_ironic_message(err)}") from None
        except ks_exc.Unauthorized as err:
            # Raised only by a (re-)authentication, inside the request when Ironic refused
            # the held token: Keystone's word, not Ironic's.
            auth_url = self._keystone[0] if self._keystone else self.endpoint
            raise _keystone_refused(auth_url, what, err) from None
        except ironic_exc.Unauthorized as err:
            raise BackendError(
                "IronicAuthenticationFailed",
                f"Ironic at {self.endpoint} refused the site's credentials ({what}): {_ironic_message(err)}",
                retry_after=60.0,
            ) from None
        except ironic_exc.Forbidden as err:
            raise BackendError(
                "IronicForbidden",
                f"Ironic at {self.endpoint} does not allow the site's user to {what}: {_ironic_message(err)} "
                "(Ironic's policy: see the roles the site's user needs)",
                retry_after=60.0,
            ) from None
        except ironic_exc.NotAcceptable as err:
            raise BackendError(
                "IronicVersionUnsupported",
                f"Ironic at {self.endpoint} does not serve API version {API_VERSION} ({what}): "
                f"{_ironic_message(err)}",
                retry_after=None,
            ) from None
        except ks_exc.SSLError:
            raise BackendError(
                "IronicTLSVerificationFailed",
                f"TLS verification of {self.endpoint} failed: check the site's caBundleSecretRef",
                retry_after=60.0,
            ) from None
        except (ks_exc.ConnectFailure, ks_exc.ConnectTimeout, ks_exc.DiscoveryFailure) as err:
            raise BackendError(
                "IronicUnreachable",
                f"cannot reach Ironic at {self.endpoint} ({what}): {type(err).__name__}",
                retry_after=10.0,
            ) from None
        except (ks_exc.RequestTimeout, ironic_exc.RequestTimeout, ironic_exc.GatewayTimeout) as err:
            raise BackendError(
                "IronicTimeout",
                f"Ironic at {self.endpoint} did not answer in time ({what}): {type(err).__name__}",
                retry_after=10.0,
            ) from None
        except ironic_exc.ServiceUnavailable as err:
            raise BackendError(
                "IronicUnavailable",
                f"Ironic at {self.endpoint} is unavailable ({what}): {_ironic_message(err)}",
                retry_after=10.0,
            ) from None
        except ironic_exc.BadRequest as err:
            raise BackendError(
                "IronicRejectedRequest",
                f"Ironic at {self.endpoint} rejected the request ({what}): {_ironic_message(err)}",
                retry_after=None,
            ) from None
        except ironic_exc.HttpServerError as err:
            raise BackendError(
                "IronicServerError",
                f"Ironic at {self.endpoint} failed ({what}): {_ironic_message(err)}",
                retry_after=30.0,
            ) from None

    def _optional(self, what: str, fn: Callable[[], T]) -> T | None:
        try:
            return self._call(what, fn)
        except ironic_exc.NotFound:
            return None

    # --- nodes ---------------------------------------------------------------------------

    def get_node(self, ident: str) -> Node | None:
        found = self._optional(f"get node {ident}", lambda: self._client.node.get(ident, fields=NODE_FIELDS))
        return Node.from_api(found.to_dict()) if found is not None else None

    def node_by_instance_uuid(self, instance_uuid: str) -> Node | None:
        found = self._call("find node by instance_uuid", lambda: self._nodes_by_instance_uuid(instance_uuid))
        return found[0] if found else None

    def _nodes_by_instance_uuid(self, instance_uuid: str) -> list[Node]:
        try:
            node = self._client.node.get_by_instance_uuid(instance_uuid, fields=NODE_FIELDS)
        except ironic_exc.NotFound:
            return []
        return [Node.from_api(node.to_dict())]

    def list_nodes(self, fields: list[str], provision_state: str | None = None) -> list[Node]:
        wanted = sorted({"uuid", *fields})
        found = self._call(
            "list nodes",
            lambda: self._client.node.list(fields=wanted, limit=0, provision_state=provision_state),
        )
        self.nodes_listed += len(found)
        return [Node.from_api(n.to_dict()) for n in found]

    def patch_node(self, uuid: str, patch: list[dict[str, Any]]) -> None:
        self._call(f"update node {uuid}", lambda: self._client.node.update(uuid, patch))

    def set_provision_state(self, uuid: str, target: str, configdrive: dict[str, Any] | None = None) -> None:
        self._call(
            f"set provision state of node {uuid} to {target}",
            lambda: self._client.node.set_provision_state(uuid, target, configdrive=configdrive),
        )

    def last_error_event(self, uuid: str) -> str | None:
        """The newest ERROR in the node's history: last_error itself can be cleared by a
        later periodic task while the node stays in its failed state."""
        events = self._call(
            f"read history of node {uuid}", lambda: self._client.node.get_history_list(uuid, detail=True)
        )
        errors = [e for e in events if isinstance(e, dict) and e.get("severity") == "ERROR"]
        if not errors:
            return None
        errors.sort(key=lambda e: str(e.get("created_at") or ""))
        return str(errors[-1].get("event") or "") or None

    def set_maintenance(self, uuid: str, on: bool) -> None:
        self._call(
            f"set maintenance of node {uuid}",
            lambda: self._client.node.set_maintenance(uuid, "true" if on else "false"),
        )

    # --- allocations ---------------------------------------------------------------------

    def get_allocation(self, ident: str) -> Allocation | None:
        found = self._optional(f"get allocation {ident}", lambda: self._client.allocation.get(ident))
        return Allocation.from_api(found.to_dict()) if found is not None else None

    def list_allocations(self) -> list[Allocation]:
        found = self._call("list allocations", lambda: self._client.allocation.list(limit=0))
        return [Allocation.from_api(a.to_dict()) for a in found]

    def create_allocation(self, **fields: Any) -> Allocation:
        created = self._call("create allocation", lambda: self._client.allocation.create(**fields))
        return Allocation.from_api(created.to_dict())

    def delete_allocation(self, ident: str) -> None:
        self._optional(f"delete allocation {ident}", lambda: self._client.allocation.delete(ident))


def _keystone_call(auth_url: str, what: str, authenticate: Callable[[], object]) -> None:
    """Authenticate (a no-op while the held token is fresh), naming Keystone on failure."""
    try:
        authenticate()
    except ks_exc.Unauthorized as err:
        raise _keystone_refused(auth_url, what, err) from None
    except ks_exc.SSLError:
        raise BackendError(
            "KeystoneTLSVerificationFailed",
            f"TLS verification of Keystone at {auth_url} failed: check the site's caBundleSecretRef",
            retry_after=60.0,
        ) from None
    except (ks_exc.ConnectFailure, ks_exc.ConnectTimeout, ks_exc.RequestTimeout) as err:
        raise BackendError(
            "KeystoneUnreachable",
            f"cannot reach Keystone at {auth_url} ({what}): {type(err).__name__}",
            retry_after=10.0,
        ) from None
    except ks_exc.DiscoveryFailure:
        raise BackendError(
            "KeystoneUnreachable",
            # keystoneauth's version discovery folds TLS and HTTP errors into this one.
            f"no Keystone identity API found at {auth_url} ({what}): check the auth-url in the site's "
            "Secret and, for https, that the site's caBundleSecretRef signs Keystone's certificate",
            retry_after=60.0,
        ) from None
    except ks_exc.ClientException as err:
        raise BackendError(
            "KeystoneAuthenticationFailed",
            f"authenticating with Keystone at {auth_url} failed ({what}): {_ironic_message(err)}",
            retry_after=60.0,
        ) from None


def _keystone_refused(auth_url: str, what: str, err: Exception) -> BackendError:
    return BackendError(
        "KeystoneAuthenticationFailed",
        f"Keystone at {auth_url} refused the site's credentials ({what}): {_ironic_message(err)}",
        retry_after=60.0,
    )


def _ironic_message(err: Exception) -> str:
    # ironicclient's messages are Ironic's faultstring plus "(HTTP 409) (Request-ID: …)".
    text = str(getattr(err, "message", None) or err)
    return text.split(" (HTTP ", maxsplit=1)[0].strip() or type(err).__name__


# --- construction ------------------------------------------------------------------------


def _require(credentials: SiteCredentials, keys: tuple[str, ...], auth_type: str) -> dict[str, str]:
    missing = [k for k in keys if not credentials.data.get(k)]
    if missing:
        raise BackendError(
            "InvalidIronicCredentials",
            f"the Ironic site's credentials Secret lacks {', '.join(missing)} "
            f"(needed for authType {auth_type})",
            retry_after=None,
        )
    try:
        return {k: credentials.data[k].decode() for k in keys}
    except UnicodeDecodeError:
        raise BackendError(
            "InvalidIronicCredentials",
            "the Ironic site's credentials Secret holds values that are not UTF-8 text",
            retry_after=None,
        ) from None


def _text(credentials: SiteCredentials, key: str, default: str) -> str:
    raw = credentials.data.get(key)
    return raw.decode(errors="replace") if raw else default


def build_auth(site: IronicSite, credentials: SiteCredentials) -> Any:
    """The keystoneauth plugin for the site's authType."""
    if site.auth_type == "none":
        return noauth.NoAuth(endpoint=site.endpoint)
    if site.auth_type == "basic":
        values = _require(credentials, BASIC_KEYS, "basic")
        return http_basic.HTTPBasicAuth(
            endpoint=site.endpoint, username=values["username"], password=values["password"]
        )
    if credentials.data.get("application-credential-id"):
        values = _require(credentials, KEYSTONE_APPLICATION_CREDENTIAL_KEYS, "keystone")
        return v3.ApplicationCredential(
            auth_url=_v3(values["auth-url"]),
            application_credential_id=values["application-credential-id"],
            application_credential_secret=values["application-credential-secret"],
        )
    values = _require(credentials, KEYSTONE_PASSWORD_KEYS, "keystone")
    # The generic plugin discovers the identity API: an auth-url with or without /v3 works.
    return generic.Password(
        auth_url=values["auth-url"],
        username=values["username"],
        password=values["password"],
        project_name=values["project-name"],
        user_domain_name=_text(credentials, "user-domain-name", "Default"),
        project_domain_name=_text(credentials, "project-domain-name", "Default"),
    )


def _v3(auth_url: str) -> str:
    """The v3 identity URL of an auth-url given with or without its version."""
    trimmed = auth_url.rstrip("/")
    return trimmed if trimmed.endswith("/v3") else f"{trimmed}/v3"


_ca_dir_lock = threading.Lock()
_ca_dir: Path | None = None


def ca_file(bundle: bytes) -> str:
    """A private file holding the CA bundle (requests wants a path), named by content."""
    global _ca_dir  # noqa: PLW0603
    with _ca_dir_lock:
        if _ca_dir is None:
            _ca_dir = Path(tempfile.mkdtemp(prefix="capi-c3os-ironic-ca-"))
        path = _ca_dir / f"{hashlib.sha256(bundle).hexdigest()[:32]}.pem"
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(bundle)
            os.replace(tmp, path)
    return str(path)


def verify_setting(site: IronicSite, credentials: SiteCredentials) -> bool | str:
    if site.insecure_skip_verify:
        return False
    if credentials.ca_bundle:
        return ca_file(credentials.ca_bundle)
    return True


def connect(site: IronicSite, credentials: SiteCredentials) -> IronicApi:
    http = requests.Session()
    for prefix in ("https://", "http://"):
        http.mount(prefix, requests.adapters.HTTPAdapter(pool_maxsize=_pool_size))
    sess = session.Session(
        session=http,
        auth=build_auth(site, credentials),
        verify=verify_setting(site, credentials),
        timeout=REQUEST_TIMEOUT,
        user_agent=USER_AGENT,
    )
    client = ironic_client.Client(
        "1",
        endpoint_override=site.endpoint,
        session=sess,
        os_ironic_api_version=API_VERSION,
        max_retries=0,
        retry_interval=0,
    )
    keystone = None
    if site.auth_type == "keystone":
        keystone = (_text(credentials, "auth-url", ""), sess.get_auth_headers)
    return IronicApi(site.endpoint, client, keystone)


def client_key(site: IronicSite, credentials: SiteCredentials) -> str:
    """A digest of everything a client is built from: a changed Secret makes a new client,
    and the key itself reveals nothing."""
    digest = hashlib.sha256()
    digest.update(site.model_dump_json().encode())
    for key in sorted(credentials.data):
        digest.update(key.encode() + b"\0" + credentials.data[key] + b"\0")
    digest.update(credentials.ca_bundle or b"")
    return digest.hexdigest()
