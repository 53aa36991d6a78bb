"""Site connection settings against a real Ironic that wants HTTP basic auth over TLS: the CA
bundle is used and verified, credentials come from the Secret, and no failure message
carries a credential."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from capi_c3os.api.common import SecretKeyRef, SecretRef
from capi_c3os.api.infrastructure import IronicMachine, IronicSite, Site
from capi_c3os.backends.base import BackendError, Phase, SiteCredentials
from capi_c3os.backends.ironic import IronicBackend
from capi_c3os.bootstrap.certificates import issue_certificate, new_ca
from capi_c3os.dev.ironic import IronicServer
from capi_c3os.dev.processes import free_port
from tests.integration.ironic.lab import IronicLab, drive, new_resource_class

pytestmark = pytest.mark.integration

USER, PASSWORD = "capi", "s3cr3t-Pa55word-for-ironic"


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[IronicServer, bytes]]:
    root = tmp_path_factory.mktemp("ironic-tls")
    ca = new_ca("ironic-test-ca")
    serving = issue_certificate(ca, "127.0.0.1", ip_addresses=("127.0.0.1",), server=True)
    (root / "tls.crt").write_bytes(serving.cert_pem)
    (root / "tls.key").write_bytes(serving.key_pem)
    (root / "ca.crt").write_bytes(ca.cert_pem)
    server = IronicServer(
        root / "server",
        http_basic=(USER, PASSWORD),
        tls=(root / "tls.crt", root / "tls.key"),
        ca_file=root / "ca.crt",
    )
    server.start()
    try:
        yield server, ca.cert_pem
    finally:
        server.stop()


def basic_site(server: IronicServer, **overrides: object) -> Site:
    ironic = IronicSite.model_validate(
        {
            "endpoint": server.url,
            "authType": "basic",
            "credentialsSecretRef": SecretRef(name="ironic-creds").model_dump(),
            "caBundleSecretRef": SecretKeyRef(name="ironic-ca", key="ca.crt").model_dump(),
            **overrides,
        }
    )
    return Site(name="secure", ironic=ironic)


def credentials(ca: bytes | None, password: str = PASSWORD) -> SiteCredentials:
    return SiteCredentials({"username": USER.encode(), "password": password.encode()}, ca_bundle=ca)


def test_basic_auth_over_tls_with_the_sites_ca_deploys(secured: tuple[IronicServer, bytes]) -> None:
    server, ca = secured
    assert server.url.startswith("https://")
    lab = IronicLab(server)
    rc = new_resource_class()
    lab.enroll(1, rc)
    intent = lab.intent(
        "secure", IronicMachine(resource_class=rc), site=basic_site(server), credentials=credentials(ca)
    )
    backend = IronicBackend()

    running = drive(lambda: backend.provision(intent), {Phase.RUNNING})

    assert running.phase is Phase.RUNNING
    assert lab.node(running.details["nodeUUID"])["instance_uuid"] == intent.identity.uuid
    drive(lambda: backend.deprovision(intent.identity, intent.site, intent.credentials), {Phase.DELETED})


def test_a_wrong_password_is_reported_without_the_password(secured: tuple[IronicServer, bytes]) -> None:
    server, ca = secured
    wrong = "not-the-Pa55word"
    lab = IronicLab(server)
    intent = lab.intent(
        "wrong-pw",
        IronicMachine(resource_class="x"),
        site=basic_site(server),
        credentials=credentials(ca, wrong),
    )

    with pytest.raises(BackendError) as raised:
        IronicBackend().provision(intent)

    assert raised.value.reason == "IronicAuthenticationFailed"
    assert server.url in raised.value.message
    assert wrong not in str(raised.value) and PASSWORD not in str(raised.value)
    assert raised.value.__suppress_context__, "the client's exception is not chained into logs"


def test_tls_is_verified_by_default(secured: tuple[IronicServer, bytes]) -> None:
    server, _ = secured
    lab = IronicLab(server)
    intent = lab.intent(
        "no-ca", IronicMachine(resource_class="x"), site=basic_site(server), credentials=credentials(None)
    )

    with pytest.raises(BackendError) as raised:
        IronicBackend().provision(intent)

    assert raised.value.reason == "IronicTLSVerificationFailed", raised.value.message
    assert "caBundleSecretRef" in raised.value.message


def test_an_unreachable_endpoint_says_so_and_asks_for_a_retry(lab: IronicLab) -> None:
    site = Site(name="gone", ironic=IronicSite(endpoint=f"http://127.0.0.1:{free_port()}"))
    intent = lab.intent("unreachable", IronicMachine(), site=site)

    with pytest.raises(BackendError) as raised:
        IronicBackend().provision(intent)

    assert raised.value.reason == "IronicUnreachable"
    assert raised.value.retry_after is not None and raised.value.retry_after > 0
