"""The `<cluster>-kubeconfig` admin kubeconfig: server CA for trust, a short-lived admin
client certificate from the cluster's client CA (what k3s's own admin uses)."""

from __future__ import annotations

import base64
import datetime as dt

import yaml
from cryptography import x509

from capi_c3os.bootstrap.certificates import KeyPair, issue_certificate

ADMIN_USER = "kubernetes-admin"
ADMIN_GROUP = "system:masters"
VALIDITY = dt.timedelta(days=7)
"""Short-lived: a leaked kubeconfig secret stops working within a week."""
ROTATE_WHEN_LEFT = 0.5
"""Rotate once half of the validity is gone, well before expiry."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def server_url(host: str, port: int) -> str:
    if ":" in host and not host.startswith("["):  # an IPv6 literal
        host = f"[{host}]"
    return f"https://{host}:{port}"


def render_admin_kubeconfig(
    cluster: str, host: str, port: int, server_ca_pem: bytes, client_ca: KeyPair,
    valid_for: dt.timedelta = VALIDITY,
) -> str:  # fmt: skip
    admin = issue_certificate(
        client_ca, ADMIN_USER, organizations=(ADMIN_GROUP,), client=True, valid_for=valid_for
    )
    user = f"{cluster}-admin"
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": cluster, "cluster": {
            "server": server_url(host, port), "certificate-authority-data": _b64(server_ca_pem)}}],
        "users": [{"name": user, "user": {
            "client-certificate-data": _b64(admin.cert_pem), "client-key-data": _b64(admin.key_pem)}}],
        "contexts": [{"name": f"{user}@{cluster}", "context": {"cluster": cluster, "user": user}}],
        "current-context": f"{user}@{cluster}",
    }  # fmt: skip
    return yaml.safe_dump(config, sort_keys=False)


def needs_rotation(
    kubeconfig: str, *, host: str, port: int, server_ca_pem: bytes, client_ca: KeyPair, now: dt.datetime
) -> str | None:
    """Why the stored kubeconfig must be written anew (None: it is still good): unreadable,
    pointing elsewhere, trusting or signed by another CA, or past half of its life."""
    try:
        config = yaml.safe_load(kubeconfig)
        cluster = config["clusters"][0]["cluster"]
        user = config["users"][0]["user"]
        cert = x509.load_pem_x509_certificate(base64.b64decode(user["client-certificate-data"]))
        trusted = base64.b64decode(cluster["certificate-authority-data"])
    except (yaml.YAMLError, KeyError, IndexError, TypeError, ValueError):
        return "the stored kubeconfig cannot be read"
    if cluster.get("server") != server_url(host, port):
        return "the control-plane endpoint changed"
    if trusted.strip() != server_ca_pem.strip():
        return "the server CA changed"
    if cert.issuer != client_ca.certificate.subject:
        return "the client CA changed"
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    if now >= cert.not_valid_after_utc - lifetime * ROTATE_WHEN_LEFT:
        return "the admin certificate is past half of its validity"
    return None
