"""What a site's credentials Secret must hold (backends/credentials.py), checked on real
key material made here: every problem names the Secret and the key, none quotes it."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from capi_c3os.api.infrastructure import Site
from capi_c3os.backends.base import SiteCredentials
from capi_c3os.backends.credentials import credential_problems
from tests.integration.libvirt.remote import issue, make_ca, secret_lines

CA, CA_KEY, CA_CERT = make_ca("unit CA")
CLIENT = issue(CA_KEY, CA_CERT, "client", server=False)
OTHER = issue(CA_KEY, CA_CERT, "other", server=False)
SSH_KEY = ed25519.Ed25519PrivateKey.generate().private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
)
ENCRYPTED_SSH_KEY = ed25519.Ed25519PrivateKey.generate().private_bytes(
    serialization.Encoding.PEM,
    serialization.PrivateFormat.PKCS8,
    serialization.BestAvailableEncryption(b"passphrase"),
)
KNOWN_HOSTS = b"[127.0.0.1]:2222 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBogus\n"
GARBAGE = b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n"


def libvirt_site(uri: str) -> Site:
    return Site.model_validate(
        {"name": "lab", "libvirt": {"uri": uri, "credentialsSecretRef": {"name": "creds"}}}
    )


def ironic_site(auth_type: str, ca: bool = False) -> Site:
    ironic: dict[str, Any] = {"endpoint": "https://ironic.test:6385", "authType": auth_type}
    if auth_type != "none":
        ironic["credentialsSecretRef"] = {"name": "creds"}
    if ca:
        ironic["caBundleSecretRef"] = {"name": "ca", "key": "bundle.pem"}
    return Site.model_validate({"name": "metal", "ironic": ironic})


SSH = libvirt_site("qemu+ssh://root@127.0.0.1:2222/system")
TLS = libvirt_site("qemu+tls://127.0.0.1:16514/system")
TLS_OK = {"ca.crt": CA.cert, "tls.crt": CLIENT.cert, "tls.key": CLIENT.key}


@pytest.mark.parametrize(
    ("site", "data", "ca_bundle"),
    [
        (SSH, {"ssh-privatekey": SSH_KEY, "known_hosts": KNOWN_HOSTS}, None),
        (SSH, {"ssh-privatekey": CLIENT.key}, None),  # PEM keys work with OpenSSH too
        (libvirt_site("qemu+libssh2://root@h/system"), {"ssh-privatekey": SSH_KEY}, None),
        (TLS, TLS_OK, None),
        (libvirt_site("qemu:///system"), {}, None),
        (ironic_site("basic"), {"username": b"u", "password": b"p"}, None),
        (
            ironic_site("keystone"),
            {"auth-url": b"x", "username": b"u", "password": b"p", "project-name": b"p"},
            None,
        ),
        (
            ironic_site("keystone"),
            {"auth-url": b"x", "application-credential-id": b"i", "application-credential-secret": b"s"},
            None,
        ),
        (ironic_site("none", ca=True), {}, CA.cert + CLIENT.cert),
    ],
)
def test_complete_and_parseable_secrets_have_no_problems(
    site: Site, data: dict[str, bytes], ca_bundle: bytes | None
) -> None:
    assert credential_problems(site, SiteCredentials(data=data, ca_bundle=ca_bundle)) == []


@pytest.mark.parametrize(
    ("site", "data", "ca_bundle", "expected"),
    [
        (SSH, {}, None, "Secret creds lacks key ssh-privatekey (needed for qemu+ssh)"),
        (
            SSH,
            {"ssh-privatekey": b"garbage"},
            None,
            "key ssh-privatekey of Secret creds is not an unencrypted",
        ),
        (
            SSH,
            {"ssh-privatekey": ENCRYPTED_SSH_KEY},
            None,
            "key ssh-privatekey of Secret creds is not an unencrypted",
        ),
        (SSH, {"ssh-privatekey": SSH_KEY, "known_hosts": b"# only a comment\n"}, None, "key known_hosts"),
        (TLS, {"tls.crt": CLIENT.cert, "tls.key": CLIENT.key}, None, "Secret creds lacks key ca.crt"),
        (
            TLS,
            {**TLS_OK, "ca.crt": GARBAGE},
            None,
            "key ca.crt of Secret creds is not a PEM certificate bundle",
        ),
        (
            TLS,
            {**TLS_OK, "ca.crt": b"hello"},
            None,
            "key ca.crt of Secret creds is not a PEM certificate bundle",
        ),
        (
            TLS,
            {**TLS_OK, "tls.crt": CLIENT.key},
            None,
            "key tls.crt of Secret creds is not a PEM certificate",
        ),
        (
            TLS,
            {**TLS_OK, "tls.key": CLIENT.cert},
            None,
            "key tls.key of Secret creds is not an unencrypted PEM",
        ),
        (
            TLS,
            {**TLS_OK, "tls.key": OTHER.key},
            None,
            "keys tls.crt and tls.key of Secret creds do not belong",
        ),
        (
            ironic_site("basic"),
            {"username": b"u"},
            None,
            "Secret creds lacks key password (needed for authType basic)",
        ),
        (
            ironic_site("keystone"),
            {"auth-url": b"x", "username": b"u", "password": b"\xff\xfe", "project-name": b"p"},
            None,
            "key password of Secret creds is not UTF-8 text",
        ),
        (
            ironic_site("keystone"),
            {"application-credential-id": b"i"},
            None,
            "Secret creds lacks key auth-url, application-credential-secret (needed for authType keystone)",
        ),
        (
            ironic_site("none", ca=True),
            {},
            GARBAGE,
            "key bundle.pem of Secret ca is not a PEM certificate bundle",
        ),
    ],
)
def test_missing_keys_and_garbage_are_named_without_their_contents(
    site: Site, data: dict[str, bytes], ca_bundle: bytes | None, expected: str
) -> None:
    problems = credential_problems(site, SiteCredentials(data=data, ca_bundle=ca_bundle))
    assert len(problems) == 1, problems
    assert problems[0].startswith(expected), problems
    for value in [*data.values(), ca_bundle or b""]:
        for line in secret_lines(value) if value.startswith(b"-----") else [value.decode(errors="ignore")]:
            if len(line) > 4:
                assert line not in problems[0]
