"""Where a machine was placed, recorded on the C3osMachine and signed by the manager.

A machine's deletion must find its backend when the C3osCluster is gone, so the site is
recorded on the machine (an annotation, before the backend creates anything). Whoever
may edit the C3osMachine may edit that annotation too, so the manager signs the record
(HMAC-SHA256 over namespace, name and record) with a key only it holds: a Secret in the
manager's own namespace, made at start-up when absent. Deletion trusts a record only
when its signature verifies. `clusterctl move` does not carry the key: the target
manager re-signs a machine's record from its current C3osCluster (provisioning path).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
from typing import Any

from pydantic import ValidationError

from capi_c3os.api.infrastructure import Site
from capi_c3os.reconcilers.kube import Kube, ensure_secret

log = logging.getLogger(__name__)

SITE_ANNOTATION = "infrastructure.cluster.x-k8s.io/c3os-site"
"""The site (as in the C3osCluster, JSON; no secret material, Secrets are referenced by
name) the machine was placed on, written before the backend creates anything."""
SIGNATURE_ANNOTATION = "infrastructure.cluster.x-k8s.io/c3os-site-signature"
"""`v1:<hex HMAC-SHA256>` of the record, by the manager's record key."""

RECORD_KEY_SECRET = "capi-c3os-record-key"
"""Default name of the Secret holding the key, in the manager's own namespace."""
RECORD_KEY_FIELD = "key"
_KEY_BYTES = 32
_VERSION = "v1:"


def site_record(site: Site) -> str:
    return json.dumps(site.to_wire(), sort_keys=True, separators=(",", ":"))


def sign(key: bytes, namespace: str, name: str, record: str) -> str:
    # JSON framing: no choice of namespace, name and record can imitate another's.
    message = json.dumps([namespace, name, record], separators=(",", ":")).encode()
    return _VERSION + hmac.new(key, message, hashlib.sha256).hexdigest()


def signed_annotations(key: bytes, namespace: str, name: str, site: Site) -> dict[str, str]:
    record = site_record(site)
    return {SITE_ANNOTATION: record, SIGNATURE_ANNOTATION: sign(key, namespace, name, record)}


def verified_site(obj: dict[str, Any], key: bytes) -> Site | None:
    """The site recorded on the machine when the manager's key signed it for this very
    object; None when absent (not placed yet, or by an older version), unreadable,
    unsigned, signed by another key (before a `clusterctl move`) or written by hand."""
    meta = obj["metadata"]
    annotations = meta.get("annotations") or {}
    record = annotations.get(SITE_ANNOTATION)
    signature = annotations.get(SIGNATURE_ANNOTATION) or ""
    if not record:
        return None
    expected = sign(key, str(meta["namespace"]), str(meta["name"]), record)
    if not hmac.compare_digest(expected.encode(), signature.encode()):
        return None
    try:
        return Site.model_validate(json.loads(record))
    except (ValueError, ValidationError):  # pragma: no cover - we signed what we wrote
        log.warning("ignoring unreadable %s annotation", SITE_ANNOTATION)
        return None


def ensure_record_key(kube: Kube, namespace: str, name: str = RECORD_KEY_SECRET) -> bytes:
    """The manager's record key: read from its Secret, or made and stored when absent."""
    data = ensure_secret(kube, namespace, name, lambda: {RECORD_KEY_FIELD: secrets.token_bytes(_KEY_BYTES)})
    key = data.get(RECORD_KEY_FIELD, b"")
    if len(key) < _KEY_BYTES:
        # Never guess, never overwrite: records signed with it would all stop verifying.
        raise RuntimeError(
            f"Secret {namespace}/{name} has no usable {RECORD_KEY_FIELD!r} (at least {_KEY_BYTES} "
            "bytes); delete it to have the manager make a new one"
        )
    return key
