"""A certificate authority the manager keeps in a Secret of its own namespace, made at
start-up when absent, and the short-lived serving certificates it signs for the
manager's HTTPS endpoints. Clients pin the CA (`ca.crt` of the Secret); the leaf's key
never leaves the manager's memory, so only the CA needs storing (and create is the only
Secret write this needs)."""

from __future__ import annotations

import datetime as dt
import ipaddress

from capi_c3os.bootstrap.certificates import KeyPair, issue_certificate, new_ca
from capi_c3os.reconcilers.kube import Kube, ensure_secret

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
LEAF_VALIDITY = dt.timedelta(days=30)
"""Serving certificates are re-issued well before this (see `needs_renewal`)."""


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
    ips, dns = [], []
    for entry in names:
        try:
            ips.append(str(ipaddress.ip_address(entry)))
        except ValueError:
            dns.append(entry)
    common = names[0] if names else "capi-c3os"
    return issue_certificate(
        ca, common[:64], dns_names=tuple(dns), ip_addresses=tuple(ips), server=True, valid_for=LEAF_VALIDITY
    )


def needs_renewal(leaf: KeyPair, now: dt.datetime) -> bool:
    return leaf.not_after - now < LEAF_VALIDITY / 3
