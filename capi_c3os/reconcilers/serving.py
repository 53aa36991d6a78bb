"""Serving certificates of the manager's HTTPS endpoints, kept by the manager in Secrets
of its own namespace. Two keepers, for two kinds of client:

The Runtime SDK extension's (ServingMaterial): a CA and a serving certificate it signed
live in one `kubernetes.io/tls` Secret (`ca.crt`, `tls.crt`, `tls.key`, plus `ca.key` to
sign the next certificate), so restarts and every replica serve the same certificate,
and CAPI copies `ca.crt` into the ExtensionConfig's caBundle (annotation
`runtime.cluster.x-k8s.io/inject-ca-from-secret`, watched by CAPI core). Renewal happens
well before expiry: the serving certificate once a third of its life is left (or when
the names it must carry changed); the CA (ten years) a year before its end, and then
`ca.crt` holds the new CA and the old one while the old is still valid, so a client that
still trusts only the old CA keeps working until CAPI re-injects the bundle.

The enrollment endpoint's (ensure_ca): a CA made at start-up when absent, which hosts
pin (`ca.crt` of its Secret), and short-lived serving certificates it signs. The leaf's
key never leaves the manager's memory, so only the CA is stored (and create is the only
Secret write this needs).
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from capi_c3os.bootstrap.certificates import KeyPair, issue_certificate, new_ca
from capi_c3os.reconcilers.kube import Kube, ensure_secret

# ------------------------------------------------------------------ the extension's Secret

CA_VALIDITY = dt.timedelta(days=3650)
CA_RENEW_BEFORE = dt.timedelta(days=365)
CERT_VALIDITY = dt.timedelta(days=365)
CERT_RENEW_FRACTION = 1 / 3
"""Renew the serving certificate when less than this part of its life is left."""
CA_COMMON_NAME = "capi-c3os-extension-ca"
SERVING_COMMON_NAME = "capi-c3os-extension"

KEYS = ("ca.crt", "tls.crt", "tls.key", "ca.key")


@dataclass(frozen=True)
class ServingMaterial:
    ca: KeyPair
    """The CA that signs serving certificates."""
    ca_bundle: bytes
    """What clients trust (`ca.crt`): the CA, and the previous one during a CA rotation."""
    serving: KeyPair


def service_hosts(service: str, namespace: str) -> tuple[str, ...]:
    """The names a Service is reached by (CAPI uses `<service>.<namespace>.svc`)."""
    return (
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
    )


def to_secret_data(material: ServingMaterial) -> dict[str, str]:
    raw = {
        "ca.crt": material.ca_bundle,
        "tls.crt": material.serving.cert_pem,
        "tls.key": material.serving.key_pem,
        "ca.key": material.ca.key_pem,
    }
    return {k: base64.b64encode(v).decode() for k, v in raw.items()}


def from_secret_data(data: dict[str, str] | None) -> ServingMaterial | None:
    """The material in a Secret's data, or None when it is missing or unreadable (then it
    is made anew: nothing else depends on a broken one)."""
    if not data or any(k not in data for k in KEYS):
        return None
    try:
        raw = {k: base64.b64decode(data[k], validate=True) for k in KEYS}
        bundle = x509.load_pem_x509_certificates(raw["ca.crt"])
        material = ServingMaterial(
            ca=KeyPair(bundle[0].public_bytes(Encoding.PEM), raw["ca.key"]), ca_bundle=raw["ca.crt"],
            serving=KeyPair(raw["tls.crt"], raw["tls.key"]),
        )  # fmt: skip
        material.serving.certificate  # noqa: B018 - parse now: a broken one is remade
    except ValueError:
        return None
    return material


def _sans(cert: x509.Certificate) -> set[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    names = {str(n) for n in ext.get_values_for_type(x509.DNSName)}
    return names | {str(ip) for ip in ext.get_values_for_type(x509.IPAddress)}


def renewal_reason(material: ServingMaterial | None, hosts: tuple[str, ...], now: dt.datetime) -> str | None:
    """Why new material is needed now, or None while the current one is good."""
    if material is None:
        return "no serving certificate yet"
    ca, cert = material.ca.certificate, material.serving.certificate
    if ca.not_valid_after_utc - now < CA_RENEW_BEFORE:
        return "the CA expires within a year"
    if cert.issuer != ca.subject or cert.not_valid_before_utc > now:
        return "the serving certificate is not from the current CA"
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    if cert.not_valid_after_utc - now < life * CERT_RENEW_FRACTION:
        return "the serving certificate is near its end"
    if _sans(cert) != set(hosts):
        return "the serving certificate names other hosts"
    return None


def renew(material: ServingMaterial | None, hosts: tuple[str, ...], now: dt.datetime) -> ServingMaterial:
    """New serving material: a new serving certificate, and a new CA when the old one is
    missing or near its end (keeping the old one in the bundle while it is valid)."""
    ca, bundle = (material.ca, material.ca_bundle) if material else (None, b"")
    if ca is None or ca.not_after - now < CA_RENEW_BEFORE:
        old = ca if ca is not None and ca.not_after > now else None
        ca = new_ca(CA_COMMON_NAME, valid_for=CA_VALIDITY)
        bundle = ca.cert_pem + (old.cert_pem if old else b"")
    serving = _issue_serving(ca, SERVING_COMMON_NAME, hosts, CERT_VALIDITY)
    return ServingMaterial(ca=ca, ca_bundle=bundle, serving=serving)


# ------------------------------------------------------------------ the enrollment CA

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
LEAF_VALIDITY = dt.timedelta(days=30)
"""Enrollment serving certificates are re-issued well before this (see `needs_renewal`)."""


def ensure_ca(kube: Kube, namespace: str, name: str, common_name: str) -> KeyPair:
    """The CA from its Secret, or a new one stored there."""

    def make() -> dict[str, bytes]:
        ca = new_ca(common_name)
        return {CA_CERT: ca.cert_pem, CA_KEY: ca.key_pem}

    data = ensure_secret(kube, namespace, name, make)
    if not data.get(CA_CERT) or not data.get(CA_KEY):
        # Never overwrite: hosts pin this CA.
        raise RuntimeError(
            f"Secret {namespace}/{name} lacks {CA_CERT} or {CA_KEY}; delete it to have a new CA made"
        )
    return KeyPair(data[CA_CERT], data[CA_KEY])


def serving_certificate(ca: KeyPair, names: tuple[str, ...]) -> KeyPair:
    """A serving certificate for `names` (DNS names and IP addresses)."""
    common = names[0] if names else "capi-c3os"
    return _issue_serving(ca, common[:64], names, LEAF_VALIDITY)


def needs_renewal(leaf: KeyPair, now: dt.datetime) -> bool:
    return leaf.not_after - now < LEAF_VALIDITY / 3


# ------------------------------------------------------------------ both


def _issue_serving(ca: KeyPair, common_name: str, hosts: tuple[str, ...], valid_for: dt.timedelta) -> KeyPair:
    dns = tuple(h for h in hosts if not _is_ip(h))
    ips = tuple(h for h in hosts if _is_ip(h))
    return issue_certificate(
        ca, common_name, dns_names=dns, ip_addresses=ips, server=True, valid_for=valid_for
    )


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
