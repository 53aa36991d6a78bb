"""Connections: credentials become private files whose paths (never contents) go into
the URI; connection failures read well and carry no secret."""

from __future__ import annotations

import os
import stat
import urllib.parse

import pytest

from capi_c3os.api.infrastructure import LibvirtSite
from capi_c3os.backends.base import BackendError, SiteCredentials
from capi_c3os.backends.libvirt.connection import (
    ConnectionPool,
    connection_uri,
    open_error,
    write_credentials,
)

KEY = b"-----BEGIN OPENSSH PRIVATE KEY-----\nc2VjcmV0\n-----END OPENSSH PRIVATE KEY-----\n"


def params(uri: str) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(uri).query))


def test_ssh_credentials_are_private_files_and_host_keys_are_checked() -> None:
    creds = SiteCredentials({"ssh-privatekey": KEY, "known_hosts": b"host ssh-ed25519 AAAA\n"})
    workdir = write_credentials(creds)
    assert workdir is not None
    try:
        assert stat.S_IMODE(os.stat(workdir).st_mode) == 0o700
        key = os.path.join(workdir, "id_key")
        assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
        with open(key, "rb") as handle:
            assert handle.read() == KEY
        uri = connection_uri(LibvirtSite(uri="qemu+ssh://root@edge-1/system"), creds, workdir)
        assert uri.startswith("qemu+ssh://root@edge-1/system?")
        wrapper = os.path.join(workdir, "ssh-pinned")
        assert params(uri) == {"keyfile": key, "command": wrapper, "no_tty": "1"}
        assert "c2VjcmV0" not in uri
        # OpenSSH, pinned to exactly the Secret's known_hosts, strict, no other config.
        assert stat.S_IMODE(os.stat(wrapper).st_mode) == 0o700
        with open(wrapper) as handle:
            script = handle.read()
        assert f"UserKnownHostsFile={os.path.join(workdir, 'known_hosts')}" in script
        for option in ("-F /dev/null", "GlobalKnownHostsFile=/dev/null", "StrictHostKeyChecking=yes"):
            assert option in script

        # libvirt 9.0's libssh client crashed the process: same protocol over OpenSSH.
        libssh = connection_uri(LibvirtSite(uri="qemu+libssh2://root@edge-1/system"), creds, workdir)
        assert libssh == uri
        assert connection_uri(LibvirtSite(uri="qemu+libssh://h/system"), SiteCredentials(), None) == (
            "qemu+ssh://h/system"
        )
    finally:
        for name in os.listdir(workdir):
            os.unlink(os.path.join(workdir, name))
        os.rmdir(workdir)


def test_tls_credentials_become_a_pki_path_and_local_uris_stay_as_they_are() -> None:
    creds = SiteCredentials({"tls.crt": b"c", "tls.key": b"k", "ca.crt": b"a"})
    uri = connection_uri(LibvirtSite(uri="qemu+tls://edge-2/system"), creds, "/run/x")
    assert params(uri) == {"pkipath": "/run/x"}
    assert connection_uri(LibvirtSite(uri="qemu:///system"), SiteCredentials(), None) == "qemu:///system"
    assert write_credentials(SiteCredentials()) is None


def test_an_unreachable_host_is_a_retryable_readable_error_without_secrets() -> None:
    pool = ConnectionPool()
    site = LibvirtSite(uri="qemu+unix:///system?socket=/nonexistent/libvirt-sock")
    with pytest.raises(BackendError) as err:
        pool.get(site, SiteCredentials({"ssh-privatekey": KEY}))
    assert err.value.reason == "HostUnreachable"
    assert err.value.retry_after is not None
    assert "/nonexistent/libvirt-sock" in err.value.message
    assert "c2VjcmV0" not in err.value.message and "c2VjcmV0" not in repr(err.value)


@pytest.mark.parametrize(
    ("uri", "detail", "reason"),
    [
        # What libvirt 9.0 with OpenSSH 9.2, libssh 0.10 and GnuTLS said in the integration tests.
        (
            "qemu+ssh://root@127.0.0.1:2222/system",
            "Cannot recv data: No ED25519 host key is known for [127.0.0.1]:2222 and you have requested "
            "strict checking. Host key verification failed.: Connection reset by peer",
            "HostKeyVerificationFailed",
        ),
        (
            "qemu+libssh://root@127.0.0.1:2222/system",
            "authentication failed: !!! SSH HOST KEY VERIFICATION FAILED !!!: Identity of host "
            "'127.0.0.1:2222' differs from stored identity.",
            "HostKeyVerificationFailed",
        ),
        (
            "qemu+libssh://root@127.0.0.1:2222/system",
            "libssh transport error: No user interaction callback provided: "
            "Can't verify the session host key",
            "HostKeyVerificationFailed",
        ),
        (
            "qemu+tls://127.0.0.1:16514/system",
            "authentication failed: Failed to verify peer's certificate",
            "CertificateVerificationFailed",
        ),
        (
            "qemu+ssh://root@h/system",
            "authentication failed: Failed to authenticate user",
            "AuthenticationFailed",
        ),
        (
            "qemu+tls://h/system",
            "unable to connect to server at 'h:16514': Connection refused",
            "HostUnreachable",
        ),
    ],
)
def test_connection_failures_say_whom_we_could_not_trust_or_reach(uri: str, detail: str, reason: str) -> None:
    err = open_error(uri, detail)
    assert err.reason == reason
    assert uri in err.message and detail in err.message
    assert err.retry_after is not None
