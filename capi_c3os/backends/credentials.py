"""What a site's credentials Secret must hold, checked without connecting anywhere.

A C3osCluster used to say Ready while a site's Secret lacked a key or held garbage; the
first machine sent there found out, minutes later, in the middle of provisioning. These
checks parse what the backends will hand to libssh, GnuTLS and keystoneauth, so a wrong
Secret is named (site, Secret, key) on the cluster at once.

Messages name keys and Secrets, never contents, and never repeat a parser's exception
text (which may quote the input).
"""

from __future__ import annotations

from collections.abc import Mapping

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes

from capi_c3os.api.infrastructure import IronicSite, LibvirtSite, Site
from capi_c3os.backends.base import SiteCredentials

# The keys of a site's credentials Secret, named once for the checks here and for the
# backends that use them (this module loads no libvirt: the C3osCluster reconciler imports it).
SSH_KEY = "ssh-privatekey"
KNOWN_HOSTS = "known_hosts"
TLS_CERT = "tls.crt"
TLS_KEY = "tls.key"
TLS_CA = "ca.crt"
KEYSTONE_PASSWORD_KEYS = ("auth-url", "username", "password", "project-name")
KEYSTONE_APPLICATION_CREDENTIAL_KEYS = (
    "auth-url",
    "application-credential-id",
    "application-credential-secret",
)
BASIC_KEYS = ("username", "password")
SSH_TRANSPORTS = ("ssh", "libssh", "libssh2")


def credential_problems(site: Site, credentials: SiteCredentials) -> list[str]:
    """What is wrong with the site's Secret material, one readable line per problem."""
    if site.libvirt is not None:
        return _libvirt_problems(site.libvirt, credentials)
    if site.ironic is not None:
        return _ironic_problems(site.ironic, credentials)
    return []


def transport(site: LibvirtSite) -> str:
    """The URI's transport: ssh, tls, unix, or "" for a local or test connection."""
    scheme = site.uri.split("://", 1)[0]
    return scheme.partition("+")[2]


def _libvirt_problems(site: LibvirtSite, credentials: SiteCredentials) -> list[str]:
    ref = site.credentials_secret_ref
    if ref is None:
        return []
    secret = ref.name
    data = credentials.data
    kind = transport(site)
    problems: list[str] = []
    if kind in SSH_TRANSPORTS:
        problems += _missing(secret, data, (SSH_KEY,), f"qemu+{kind}")
        if SSH_KEY in data and data[SSH_KEY] and not _ssh_private_key(data[SSH_KEY]):
            problems.append(
                f"key {SSH_KEY} of Secret {secret} is not an unencrypted OpenSSH or PEM private key"
            )
        if KNOWN_HOSTS in data and not _known_hosts(data[KNOWN_HOSTS]):
            problems.append(f"key {KNOWN_HOSTS} of Secret {secret} holds no known_hosts entry")
    elif kind == "tls":
        problems += _missing(secret, data, (TLS_CA, TLS_CERT, TLS_KEY), "qemu+tls")
        if data.get(TLS_CA) and not _certificates(data[TLS_CA]):
            problems.append(f"key {TLS_CA} of Secret {secret} is not a PEM certificate bundle")
        certificate = _certificates(data[TLS_CERT]) if data.get(TLS_CERT) else None
        if data.get(TLS_CERT) and not certificate:
            problems.append(f"key {TLS_CERT} of Secret {secret} is not a PEM certificate")
        key = _pem_private_key(data[TLS_KEY]) if data.get(TLS_KEY) else None
        if data.get(TLS_KEY) and key is None:
            problems.append(f"key {TLS_KEY} of Secret {secret} is not an unencrypted PEM private key")
        if (
            certificate
            and key is not None
            and _public(certificate[0].public_key()) != _public(key.public_key())
        ):
            problems.append(f"keys {TLS_CERT} and {TLS_KEY} of Secret {secret} do not belong together")
    return problems


def _ironic_problems(site: IronicSite, credentials: SiteCredentials) -> list[str]:
    problems: list[str] = []
    ref = site.credentials_secret_ref
    if ref is not None and site.auth_type != "none":
        data = credentials.data
        keys: tuple[str, ...]
        if site.auth_type == "basic":
            keys = BASIC_KEYS
        elif data.get("application-credential-id"):
            keys = KEYSTONE_APPLICATION_CREDENTIAL_KEYS
        else:
            keys = KEYSTONE_PASSWORD_KEYS
        problems += _missing(ref.name, data, keys, f"authType {site.auth_type}")
        for key in keys:
            if data.get(key) and not _utf8(data[key]):
                problems.append(f"key {key} of Secret {ref.name} is not UTF-8 text")
    ca_ref = site.ca_bundle_secret_ref
    if ca_ref is not None and credentials.ca_bundle is not None and not _certificates(credentials.ca_bundle):
        problems.append(f"key {ca_ref.key} of Secret {ca_ref.name} is not a PEM certificate bundle")
    return problems


def _missing(secret: str, data: Mapping[str, bytes], keys: tuple[str, ...], needed_for: str) -> list[str]:
    absent = [key for key in keys if not data.get(key)]
    if not absent:
        return []
    return [f"Secret {secret} lacks key {', '.join(absent)} (needed for {needed_for})"]


def _certificates(data: bytes) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        return []


def _ssh_private_key(data: bytes) -> bool:
    # OpenSSH accepts its own format and PEM (PKCS#1/PKCS#8); with no passphrase to give,
    # an encrypted key fails like garbage.
    try:
        serialization.load_ssh_private_key(data, password=None)
        return True
    except (ValueError, TypeError, UnsupportedAlgorithm):
        pass
    return _pem_private_key(data) is not None


def _pem_private_key(data: bytes) -> PrivateKeyTypes | None:
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return None


def _same_key(certificate: x509.Certificate, key: PrivateKeyTypes) -> bool:
    return _public(certificate.public_key()) == _public(key.public_key())


def _public(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _known_hosts(data: bytes) -> bool:
    for line in data.decode(errors="replace").splitlines():
        fields = line.split()
        if fields and not fields[0].startswith("#") and len(fields) >= 3:
            return True
    return False


def _utf8(data: bytes) -> bool:
    try:
        data.decode()
        return True
    except UnicodeDecodeError:
        return False
