"""The CA-pinned k3s join token."""

from __future__ import annotations

import hashlib
import re

import pytest

from capi_c3os.bootstrap.certificates import new_ca
from capi_c3os.bootstrap.tokens import ca_hash, new_secret, parse_token, pinned_token, pins


def test_pinned_token_is_k10_sha256_of_the_server_ca_pem_then_server_user_and_secret() -> None:
    ca = new_ca("k3s-server-ca")
    secret = new_secret()
    token = pinned_token(ca.cert_pem, secret)
    assert token == f"K10{hashlib.sha256(ca.cert_pem).hexdigest()}::server:{secret}"
    assert re.fullmatch(r"K10[0-9a-f]{64}::server:[0-9a-f]{64}", token)


def test_token_pins_only_its_own_ca() -> None:
    ca, impostor = new_ca("real"), new_ca("impostor")
    token = pinned_token(ca.cert_pem, new_secret())
    assert pins(token, ca.cert_pem)
    assert not pins(token, impostor.cert_pem)
    # One byte of difference in what the server serves is a different CA for k3s.
    assert not pins(token, ca.cert_pem + b"\n")
    assert not pins("K10short::server:x", ca.cert_pem)
    assert not pins(new_secret(), ca.cert_pem)  # a bare (unpinned) token


def test_secrets_are_fresh_and_long() -> None:
    assert len({new_secret() for _ in range(50)}) == 50
    assert len(new_secret()) == 64


def test_parsed_token_never_shows_its_secret() -> None:
    secret = new_secret()
    parsed = parse_token(pinned_token(b"ca", secret))
    assert parsed is not None
    assert parsed.secret == secret and parsed.user == "server" and parsed.ca_hash == ca_hash(b"ca")
    assert secret not in repr(parsed)


def test_a_token_secret_must_be_alphanumeric() -> None:
    with pytest.raises(ValueError, match="alphanumeric"):
        pinned_token(b"ca", "a:b")
