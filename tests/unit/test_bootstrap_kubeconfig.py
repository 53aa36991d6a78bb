from __future__ import annotations

import base64
import datetime as dt

import yaml
from cryptography import x509

from capi_c3os.bootstrap.certificates import new_ca
from capi_c3os.bootstrap.kubeconfig import VALIDITY, needs_rotation, render_admin_kubeconfig

SERVER, CLIENT = new_ca("server"), new_ca("client")


def _render(host: str = "10.0.0.10", valid_for: dt.timedelta = VALIDITY) -> str:
    return render_admin_kubeconfig("shop", host, 6443, SERVER.cert_pem, CLIENT, valid_for=valid_for)


def test_admin_kubeconfig_trusts_the_server_ca_and_authenticates_as_admin_from_the_client_ca() -> None:
    config = yaml.safe_load(_render())
    assert config["clusters"][0]["cluster"]["server"] == "https://10.0.0.10:6443"
    assert base64.b64decode(config["clusters"][0]["cluster"]["certificate-authority-data"]) == SERVER.cert_pem
    cert = x509.load_pem_x509_certificate(
        base64.b64decode(config["users"][0]["user"]["client-certificate-data"])
    )
    assert cert.issuer == CLIENT.certificate.subject
    assert "O=system:masters" in cert.subject.rfc4514_string()
    assert cert.not_valid_after_utc - cert.not_valid_before_utc <= VALIDITY + dt.timedelta(minutes=5)


def test_ipv6_endpoints_are_bracketed() -> None:
    assert (
        yaml.safe_load(_render("fd00::10"))["clusters"][0]["cluster"]["server"] == "https://[fd00::10]:6443"
    )


def test_rotation_is_due_past_half_life_or_when_anything_it_depends_on_changed() -> None:
    now = dt.datetime.now(dt.UTC)
    fresh = _render()
    check = {"host": "10.0.0.10", "port": 6443, "server_ca_pem": SERVER.cert_pem, "client_ca": CLIENT}
    assert needs_rotation(fresh, **check, now=now) is None  # type: ignore[arg-type]
    assert needs_rotation(fresh, **check, now=now + VALIDITY * 0.6) == (  # type: ignore[arg-type]
        "the admin certificate is past half of its validity"
    )
    assert needs_rotation(fresh, **{**check, "host": "10.0.0.11"}, now=now) == (  # type: ignore[arg-type]
        "the control-plane endpoint changed"
    )
    assert needs_rotation(fresh, **{**check, "client_ca": new_ca("other")}, now=now) == (  # type: ignore[arg-type]
        "the client CA changed"
    )
    assert needs_rotation("not: [yaml", **check, now=now) == "the stored kubeconfig cannot be read"  # type: ignore[arg-type]
