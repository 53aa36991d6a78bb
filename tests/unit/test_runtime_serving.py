"""The extension's own serving certificate (reconcilers/serving.py): made once, kept while
good, renewed well before it ends or when it must name other hosts, and a CA rotation
that keeps the old CA trusted while it is valid."""

from __future__ import annotations

import base64
import datetime as dt
import socket
import ssl
import threading
from pathlib import Path

from cryptography import x509

from capi_c3os.bootstrap.certificates import issue_certificate, new_ca
from capi_c3os.reconcilers import serving
from capi_c3os.reconcilers.serving import (
    ServingMaterial,
    from_secret_data,
    renew,
    renewal_reason,
    to_secret_data,
)

HOSTS = serving.service_hosts("c3os-infrastructure-extension", "c3os-infrastructure-system")


def now() -> dt.datetime:
    """The time of the call: certificates are issued at the real time, so a time taken
    at import would precede them when the module's tests run minutes later."""
    return dt.datetime.now(dt.UTC)


def test_new_material_serves_the_service_names_and_survives_the_secret() -> None:
    assert renewal_reason(None, HOSTS, now()) == "no serving certificate yet"
    material = renew(None, HOSTS, now())
    assert renewal_reason(material, HOSTS, now()) is None
    cert = material.serving.certificate
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(names.get_values_for_type(x509.DNSName)) == sorted(HOSTS)
    assert "c3os-infrastructure-extension.c3os-infrastructure-system.svc" in HOSTS
    # What a restarted manager or another replica reads back is the same material.
    data = to_secret_data(material)
    assert sorted(data) == ["ca.crt", "ca.key", "tls.crt", "tls.key"]
    assert from_secret_data(data) == material
    assert renewal_reason(from_secret_data(data), HOSTS, now()) is None


def test_an_unreadable_secret_is_made_anew() -> None:
    data = to_secret_data(renew(None, HOSTS, now()))
    assert from_secret_data({**data, "tls.crt": base64.b64encode(b"garbage").decode()}) is None
    assert from_secret_data({k: v for k, v in data.items() if k != "ca.key"}) is None
    assert from_secret_data({**data, "ca.crt": "%%%"}) is None


def test_the_serving_certificate_is_renewed_once_a_third_of_its_life_is_left() -> None:
    material = renew(None, HOSTS, now())
    end = material.serving.certificate.not_valid_after_utc
    assert renewal_reason(material, HOSTS, end - dt.timedelta(days=130)) is None
    assert (
        renewal_reason(material, HOSTS, end - dt.timedelta(days=110))
        == "the serving certificate is near its end"
    )
    renewed = renew(material, HOSTS, end - dt.timedelta(days=110))
    # Same CA: clients keep trusting what they trust.
    assert renewed.ca == material.ca and renewed.ca_bundle == material.ca_bundle
    assert renewed.serving != material.serving


def test_other_hosts_need_a_new_certificate() -> None:
    material = renew(None, HOSTS, now())
    assert renewal_reason(material, ("127.0.0.1",), now()) == "the serving certificate names other hosts"
    by_ip = renew(material, ("127.0.0.1",), now())
    names = by_ip.serving.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]


def test_a_ca_near_its_end_is_replaced_and_the_old_one_stays_trusted_meanwhile() -> None:
    old_ca = new_ca("old", valid_for=dt.timedelta(days=200))
    leaf = issue_certificate(old_ca, "x", dns_names=HOSTS, server=True, valid_for=dt.timedelta(days=100))
    old = ServingMaterial(ca=old_ca, ca_bundle=old_ca.cert_pem, serving=leaf)
    assert renewal_reason(old, HOSTS, now()) == "the CA expires within a year"
    fresh = renew(old, HOSTS, now())
    assert fresh.ca != old.ca
    bundle = [c.subject.rfc4514_string() for c in x509.load_pem_x509_certificates(fresh.ca_bundle)]
    assert bundle == [f"CN={serving.CA_COMMON_NAME}", "CN=old"]
    assert fresh.serving.certificate.issuer == fresh.ca.certificate.subject
    assert renewal_reason(fresh, HOSTS, now()) is None
    # A later serving renewal keeps the bundle (the CA did not change again).
    assert renew(fresh, HOSTS, now()).ca_bundle == fresh.ca_bundle


def test_a_client_trusting_the_bundle_completes_a_handshake_with_the_certificate(tmp_path: Path) -> None:
    material = renew(None, ("127.0.0.1",), now())
    (tmp_path / "tls.crt").write_bytes(material.serving.cert_pem)
    (tmp_path / "tls.key").write_bytes(material.serving.key_pem)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")
    client_ctx = ssl.create_default_context(cadata=material.ca_bundle.decode())

    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def accept() -> None:
            conn, _ = listener.accept()
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(b"ok")

        thread = threading.Thread(target=accept)
        thread.start()
        with (
            socket.create_connection(("127.0.0.1", port)) as raw,
            client_ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            assert tls.recv(2) == b"ok"
        thread.join()
