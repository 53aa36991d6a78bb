"""Connecting to a site: the auth plugin, TLS verification and credential hygiene."""

from __future__ import annotations

from pathlib import Path

import pytest
from keystoneauth1 import http_basic, noauth
from keystoneauth1.identity import generic, v3

from capi_c3os.api.common import SecretKeyRef, SecretRef
from capi_c3os.api.infrastructure import IronicSite
from capi_c3os.backends.base import BackendError, SiteCredentials
from capi_c3os.backends.ironic.client import build_auth, client_key, connect, verify_setting

ENDPOINT = "https://ironic.example:6385"
SECRET = "hunter2-very-secret"


def site(auth_type: str = "none", **extra: object) -> IronicSite:
    fields: dict[str, object] = {"endpoint": ENDPOINT, "authType": auth_type, **extra}
    if auth_type != "none":
        fields["credentialsSecretRef"] = SecretRef(name="creds").model_dump()
    return IronicSite.model_validate(fields)


def test_no_auth_talks_to_the_endpoint_directly() -> None:
    auth = build_auth(site(), SiteCredentials())
    assert isinstance(auth, noauth.NoAuth)


def test_basic_auth_reads_username_and_password() -> None:
    auth = build_auth(site("basic"), SiteCredentials({"username": b"capi", "password": SECRET.encode()}))
    assert isinstance(auth, http_basic.HTTPBasicAuth)


def test_keystone_takes_a_password_or_an_application_credential() -> None:
    password = SiteCredentials(
        {
            "auth-url": b"https://keystone.example/v3",
            "username": b"u",
            "password": b"p",
            "project-name": b"bm",
        }
    )
    assert isinstance(build_auth(site("keystone"), password), generic.Password)
    app = SiteCredentials(
        {
            "auth-url": b"https://keystone.example/identity/",
            "application-credential-id": b"id",
            "application-credential-secret": SECRET.encode(),
        }
    )
    app_auth = build_auth(site("keystone"), app)
    assert isinstance(app_auth, v3.ApplicationCredential)
    assert app_auth.auth_url == "https://keystone.example/identity/v3", "the version is added when missing"


def test_missing_keys_are_named_and_values_never_shown() -> None:
    with pytest.raises(BackendError) as raised:
        build_auth(site("basic"), SiteCredentials({"username": SECRET.encode()}))
    assert raised.value.reason == "InvalidIronicCredentials"
    assert "password" in raised.value.message and SECRET not in raised.value.message
    assert raised.value.retry_after is None


def test_tls_is_verified_by_default_against_the_site_ca_when_given(tmp_path: Path) -> None:
    assert verify_setting(site(), SiteCredentials()) is True
    assert verify_setting(site(insecureSkipVerify=True), SiteCredentials(ca_bundle=b"CA")) is False
    bundle = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    path = verify_setting(
        site(caBundleSecretRef=SecretKeyRef(name="ca", key="ca.crt").model_dump()),
        SiteCredentials(ca_bundle=bundle),
    )
    assert isinstance(path, str) and Path(path).read_bytes() == bundle


def test_client_key_follows_the_secret_without_revealing_it() -> None:
    one = client_key(site("basic"), SiteCredentials({"username": b"u", "password": SECRET.encode()}))
    two = client_key(site("basic"), SiteCredentials({"username": b"u", "password": b"rotated"}))
    assert one != two and SECRET not in one


def test_connect_builds_a_client_without_contacting_ironic() -> None:
    api = connect(site(), SiteCredentials())
    assert api.endpoint == ENDPOINT and api.calls == 0
