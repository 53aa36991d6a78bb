"""k3s join tokens in the CA-pinned ("secure") form.

k3s documents two token forms: a bare secret, with which a joining node trusts whatever
CA the server shows it, and `K10<ca-hash>::<username>:<password>`, with which the node
first fetches `/cacerts` from the server and refuses to go on unless the SHA-256 of
those bytes equals `<ca-hash>`. `/cacerts` serves the server CA file
(`server/tls/server-ca.crt`) as it lies on disk, so the hash input is the PEM bytes of
the server CA exactly as the bootstrap data writes them (see k3s `pkg/clientaccess`).
We pre-generate that CA, so every token we hand out can be the pinned form.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

TOKEN_PREFIX = "K10"
SERVER_USER = "server"
_SECRET_BYTES = 32
_TOKEN = re.compile(r"^K10(?P<hash>[0-9a-f]{64})::(?P<user>[a-z]+):(?P<secret>[A-Za-z0-9]+)$")


def ca_hash(server_ca_pem: bytes) -> str:
    """The hex SHA-256 k3s compares with the `/cacerts` it fetched."""
    return hashlib.sha256(server_ca_pem).hexdigest()


def new_secret() -> str:
    """The password part: 64 hex characters from the OS CSPRNG."""
    return secrets.token_hex(_SECRET_BYTES)


def pinned_token(server_ca_pem: bytes, secret: str) -> str:
    """`K10<sha256 of the server CA PEM>::server:<secret>`."""
    if not re.fullmatch(r"[A-Za-z0-9]+", secret):
        raise ValueError("a token secret is alphanumeric")
    return f"{TOKEN_PREFIX}{ca_hash(server_ca_pem)}::{SERVER_USER}:{secret}"


@dataclass(frozen=True)
class ParsedToken:
    ca_hash: str
    user: str
    secret: str

    def __repr__(self) -> str:  # never show the secret, even in a traceback
        return f"ParsedToken(ca_hash={self.ca_hash!r}, user={self.user!r}, secret=<redacted>)"


def parse_token(token: str) -> ParsedToken | None:
    """The parts of a pinned token, or None when `token` is not one."""
    match = _TOKEN.match(token)
    if not match:
        return None
    return ParsedToken(match["hash"], match["user"], match["secret"])


def pins(token: str, server_ca_pem: bytes) -> bool:
    """True when `token` is a pinned token for exactly this server CA."""
    parsed = parse_token(token)
    return parsed is not None and secrets.compare_digest(parsed.ca_hash, ca_hash(server_ca_pem))
