"""Remote libvirt hosts for tests: a private libvirtd that also listens for TLS on
loopback, reached over `qemu+tls` and, through a private sshd, `qemu+ssh`; and the PKI
(CA, server, client) the test run makes for it."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from capi_c3os.dev.libvirtd import PrivateLibvirtd, TlsFiles
from capi_c3os.dev.sshd import PrivateSshd


@dataclass(frozen=True)
class Pem:
    cert: bytes
    key: bytes


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def _usage(*, signs_certificates: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=not signs_certificates,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=signs_certificates,
        crl_sign=signs_certificates,
        encipher_only=False,
        decipher_only=False,
    )


def _builder(subject: str, issuer: x509.Name, key: rsa.RSAPrivateKey, ca: bool) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(_usage(signs_certificates=ca), critical=True)
    )


def make_ca(common_name: str) -> tuple[Pem, rsa.RSAPrivateKey, x509.Certificate]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = _builder(common_name, _name(common_name), key, ca=True).sign(key, hashes.SHA256())
    return Pem(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)), key, cert


def issue(ca_key: rsa.RSAPrivateKey, ca_cert: x509.Certificate, common_name: str, *, server: bool) -> Pem:
    """A leaf certificate as libvirt wants it: key usage for signing and key exchange,
    serverAuth with the loopback address, or clientAuth."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    purpose = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = _builder(common_name, ca_cert.subject, key, ca=False).add_extension(
        x509.ExtendedKeyUsage([purpose]), critical=False
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        )
    cert = builder.sign(ca_key, hashes.SHA256())
    return Pem(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


@dataclass
class RemoteHost:
    """One private libvirtd reachable as a remote host both ways."""

    daemon: PrivateLibvirtd
    sshd: PrivateSshd
    ca: bytes
    client: Pem
    wrong_ca: bytes
    """A CA that signed nothing the daemon holds: a client trusting it must refuse."""
    wrong_client: Pem
    """Client material signed by `wrong_ca`: consistent in itself, but the daemon's
    certificate is not from that CA (and the daemon does not trust it either)."""

    @property
    def tls_uri(self) -> str:
        return f"qemu+tls://127.0.0.1:{self.daemon.tls_port}/system"

    def ssh_credentials(self, known_hosts: bytes | None = None) -> dict[str, bytes]:
        return {
            "ssh-privatekey": self.sshd.client_key.read_bytes(),
            "known_hosts": self.sshd.known_hosts if known_hosts is None else known_hosts,
        }

    def tls_credentials(self, ca: bytes | None = None, client: Pem | None = None) -> dict[str, bytes]:
        client = client or self.client
        return {"ca.crt": self.ca if ca is None else ca, "tls.crt": client.cert, "tls.key": client.key}

    def secrets(self) -> list[bytes]:
        """Key material that must never show up in logs, events or status."""
        return [self.sshd.client_key.read_bytes(), self.client.key, self.wrong_client.key]


def start_remote_host(root: Path) -> RemoteHost:
    ca, ca_key, ca_cert = make_ca("capi-c3os test CA")
    server = issue(ca_key, ca_cert, "127.0.0.1", server=True)
    client = issue(ca_key, ca_cert, "capi-c3os", server=False)
    wrong_ca, wrong_ca_key, wrong_ca_cert = make_ca("some other CA")
    wrong_client = issue(wrong_ca_key, wrong_ca_cert, "capi-c3os", server=False)
    pki = root / "pki"
    pki.mkdir(parents=True)
    files = TlsFiles(ca=pki / "cacert.pem", cert=pki / "servercert.pem", key=pki / "serverkey.pem")
    files.ca.write_bytes(ca.cert)
    files.cert.write_bytes(server.cert)
    files.key.write_bytes(server.key)
    files.key.chmod(0o600)
    daemon = PrivateLibvirtd(root / "libvirtd", tls=files)
    sshd = PrivateSshd(root / "sshd", daemon)
    host = RemoteHost(daemon, sshd, ca.cert, client, wrong_ca.cert, wrong_client)
    daemon.start()
    try:
        sshd.start()
    except BaseException:
        daemon.stop()
        raise
    return host


def secret_lines(material: bytes) -> list[str]:
    """The lines of a PEM/OpenSSH key that are secret (not the BEGIN/END armour)."""
    return [line for line in material.decode().splitlines() if line and not line.startswith("-----")]
