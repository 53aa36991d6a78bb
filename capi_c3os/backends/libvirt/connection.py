"""libvirt connections, one per site, reused across reconciles.

libvirt-python is blocking and its connection objects are thread-safe; the reconciler
calls the backend from worker threads, never from an event loop. Keepalive needs a
libvirt event loop: we run libvirt's default implementation in one daemon thread, so a
dead remote host is noticed (the connection reports not alive) and reopened on the
next call.

Credentials arrive as bytes from a Secret. They are written to a private directory
(0700, files 0600) only while `libvirt.open` runs: libssh reads the key and known_hosts,
GnuTLS the certificates, during the handshake, and a reconnect writes them again. Only
their paths go into the URI: keys never appear in logs, URIs or error messages.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shlex
import shutil
import tempfile
import threading
import urllib.parse
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass

import libvirt  # type: ignore[import-untyped]  # libvirt-python ships no type hints

from capi_c3os.api.infrastructure import LibvirtSite
from capi_c3os.backends.base import BackendError, SiteCredentials
from capi_c3os.backends.credentials import KNOWN_HOSTS, SSH_KEY, TLS_CA, TLS_CERT, TLS_KEY

log = logging.getLogger(__name__)

KEEPALIVE_INTERVAL = 5
KEEPALIVE_COUNT = 3

SSH_WRAPPER = "ssh-pinned"

_event_loop_lock = threading.Lock()
_event_loop_started = False


def ensure_event_loop() -> None:
    """libvirt's default event loop in a daemon thread (needed for keepalive and domain
    events). Must run before the first connection is opened."""
    global _event_loop_started  # noqa: PLW0603
    with _event_loop_lock:
        if _event_loop_started:
            return
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _event_loop_started = True


def _silence_libvirt_stderr() -> None:
    # libvirt prints every error to stderr by default; we turn them into conditions.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


def scrub(message: str, secrets: list[str]) -> str:
    for value in secrets:
        if value:
            message = message.replace(value, "<redacted>")
    return message


@dataclass
class _Entry:
    conn: libvirt.virConnect


def credentials_fingerprint(credentials: SiteCredentials) -> str:
    digest = hashlib.sha256()
    for key in sorted(credentials.data):
        digest.update(key.encode() + b"\0" + credentials.data[key] + b"\0")
    return digest.hexdigest()[:16]


def connection_uri(site: LibvirtSite, credentials: SiteCredentials, workdir: str | None) -> str:
    """The site's URI, with the credential files (in `workdir`) added as libvirt
    parameters: `keyfile` (and the host key pinning below) for SSH; `pkipath` for TLS.

    Every SSH flavour goes through OpenSSH's client (`+ssh`): libvirt 9.0's built-in
    libssh client segfaulted this process within a few calls (in the glib dispatch of
    its I/O loop), so `+libssh`/`+libssh2` URIs are connected the same way (same protocol
    and remote side). OpenSSH takes no known_hosts file through the URI: with a
    known_hosts in the Secret, `command=` names a small wrapper that runs `ssh` with
    exactly that file, strict checking and no user or system config, so an unknown or
    changed host key fails."""
    parts = urllib.parse.urlsplit(site.uri)
    query = urllib.parse.parse_qsl(parts.query)
    driver, _, transport = parts.scheme.partition("+")
    if transport in ("ssh", "libssh", "libssh2"):
        transport = "ssh"
        if workdir is not None and SSH_KEY in credentials.data:
            query.append(("keyfile", os.path.join(workdir, "id_key")))
        if workdir is not None and KNOWN_HOSTS in credentials.data:
            query.append(("command", os.path.join(workdir, SSH_WRAPPER)))
            query.append(("no_tty", "1"))
    elif transport == "tls" and workdir is not None:
        query.append(("pkipath", workdir))
    else:
        return site.uri
    scheme = f"{driver}+{transport}"
    return urllib.parse.urlunsplit(parts._replace(scheme=scheme, query=urllib.parse.urlencode(query)))


def write_credentials(credentials: SiteCredentials) -> str | None:
    """A private directory holding the credential files, or None when there are none."""
    if not credentials.data:
        return None
    workdir = tempfile.mkdtemp(prefix="capi-c3os-libvirt-")
    os.chmod(workdir, 0o700)
    files = {
        SSH_KEY: "id_key",
        KNOWN_HOSTS: "known_hosts",
        TLS_CERT: "clientcert.pem",
        TLS_KEY: "clientkey.pem",
        TLS_CA: "cacert.pem",
    }
    for key, filename in files.items():
        if key in credentials.data:
            path = os.path.join(workdir, filename)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(credentials.data[key])
    if KNOWN_HOSTS in credentials.data:
        known_hosts = shlex.quote(os.path.join(workdir, "known_hosts"))
        fd = os.open(os.path.join(workdir, SSH_WRAPPER), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o700)
        with os.fdopen(fd, "w") as handle:
            handle.write(
                "#!/bin/sh\n"
                f"exec ssh -F /dev/null -o UserKnownHostsFile={known_hosts} -o GlobalKnownHostsFile=/dev/null"
                ' -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes "$@"\n'
            )
    return workdir


class ConnectionPool:
    """One open connection per (URI, credentials), reopened when it died."""

    def __init__(self, on_open: Callable[[libvirt.virConnect], None] | None = None) -> None:
        """`on_open` runs for every new connection to a real daemon (event subscriptions)."""
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, str], _Entry] = {}
        self._on_open = on_open
        _silence_libvirt_stderr()

    def get(self, site: LibvirtSite, credentials: SiteCredentials) -> libvirt.virConnect:
        key = (site.uri, credentials_fingerprint(credentials))
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                if _alive(entry.conn):
                    return entry.conn
                log.info("libvirt connection to %s is dead; reconnecting", site.uri)
                self._close(entry)
                del self._entries[key]
            entry = self._open(site, credentials)
            self._entries[key] = entry
            return entry.conn

    def holds_live(self, site: LibvirtSite, credentials: SiteCredentials) -> bool:
        """Whether an open connection is held for the site and libvirt still thinks it is
        alive (keepalive, or the socket closing, turns this off)."""
        with self._lock:
            entry = self._entries.get((site.uri, credentials_fingerprint(credentials)))
            return entry is not None and _alive(entry.conn)

    def drop(self, site: LibvirtSite, credentials: SiteCredentials) -> None:
        """Forget a connection that failed (the next `get` reconnects)."""
        key = (site.uri, credentials_fingerprint(credentials))
        with self._lock:
            entry = self._entries.pop(key, None)
        if entry is not None:
            self._close(entry)

    def close(self) -> None:
        with self._lock:
            entries, self._entries = list(self._entries.values()), {}
        for entry in entries:
            self._close(entry)

    def _open(self, site: LibvirtSite, credentials: SiteCredentials) -> _Entry:
        # The fake driver lives in this process; everything else is a socket that can die.
        remote = not site.uri.startswith("test:")
        if remote:
            ensure_event_loop()
        workdir = write_credentials(credentials)
        uri = connection_uri(site, credentials, workdir)
        try:
            conn = libvirt.open(uri)
        except libvirt.libvirtError as exc:
            secrets = [v.decode(errors="ignore") for v in credentials.data.values()]
            detail = " ".join(scrub(str(exc), secrets).split())  # ssh's stderr spans lines
            if workdir:
                detail = detail.replace(workdir, "<credentials>")
            raise open_error(site.uri, detail) from None
        finally:
            if workdir:
                shutil.rmtree(workdir, ignore_errors=True)
        if remote:
            try:
                conn.setKeepAlive(KEEPALIVE_INTERVAL, KEEPALIVE_COUNT)
            except libvirt.libvirtError:
                log.debug("keepalive not supported by %s", site.uri)
            if self._on_open is not None:
                try:
                    self._on_open(conn)
                except libvirt.libvirtError as exc:
                    log.info("no domain events from %s (%s); relying on polling", site.uri, exc)
        return _Entry(conn)

    @staticmethod
    def _close(entry: _Entry) -> None:
        with suppress(libvirt.libvirtError):
            entry.conn.close()


# What libssh and GnuTLS say when the peer is not who the Secret says it is. Waiting does
# not fix these, but a corrected Secret does, so they are retried slowly.
_HOST_KEY_ERRORS = ("HOST KEY VERIFICATION FAILED", "verify the session host key", "host key")
_CERTIFICATE_ERRORS = ("certificate", "CA ", "TLS handshake", "GnuTLS")
_AUTH_ERRORS = ("authentication failed", "Permission denied", "access denied")


def open_error(uri: str, detail: str) -> BackendError:
    """A failed `libvirt.open` as a condition a person can act on: who we could not
    trust, or who did not let us in, or who did not answer."""
    lowered = detail.lower()
    if any(marker.lower() in lowered for marker in _HOST_KEY_ERRORS):
        return BackendError(
            "HostKeyVerificationFailed",
            f"the SSH host key of {uri} does not match the credentials Secret's known_hosts "
            f"(unknown or changed host key); nothing was done there: {detail}",
            retry_after=60.0,
        )
    if "+tls" in uri and any(marker.lower() in lowered for marker in _CERTIFICATE_ERRORS):
        return BackendError(
            "CertificateVerificationFailed",
            f"the TLS handshake with {uri} failed (check ca.crt, tls.crt and tls.key in the "
            f"credentials Secret); nothing was done there: {detail}",
            retry_after=60.0,
        )
    if any(marker.lower() in lowered for marker in _AUTH_ERRORS):
        return BackendError(
            "AuthenticationFailed",
            f"{uri} refused our credentials; nothing was done there: {detail}",
            retry_after=60.0,
        )
    return BackendError("HostUnreachable", f"cannot connect to libvirt at {uri}: {detail}", retry_after=30.0)


def _alive(conn: libvirt.virConnect) -> bool:
    try:
        return bool(conn.isAlive())
    except libvirt.libvirtError:
        return False
