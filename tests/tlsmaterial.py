"""TLS material for agent-to-agent mutual TLS tests.

:func:`make_tls_material` writes into a directory: a CA, a server and a client
certificate signed by it, and an unrelated second CA with its own client and
server certificates (for negative tests: a peer that must be refused). Keys
are EC P-256 (fast to make), PEM, mode 0600. Server certificates carry SANs
for localhost, 127.0.0.1, ::1 and the addresses realhost.make_netns_pair
gives its namespaces, so the same material works for hosts on loopback and
in namespaces. More certificates: ``material.authority.issue(...)``.

Uses the ``cryptography`` package (a test extra in pyproject.toml).
"""
from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# localhost, and the veth addresses of realhost.make_netns_pair (NETNS_SUBNET .1 and .2).
DEFAULT_DNS_NAMES = ("localhost",)
DEFAULT_IP_ADDRESSES = ("127.0.0.1", "::1", "10.213.0.1", "10.213.0.2")
DEFAULT_DAYS = 30


@dataclass(frozen=True)
class Credentials:
    """A certificate and its private key (PEM files)."""

    cert: Path
    key: Path


def _write(path: Path, data: bytes, mode: int) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as stream:
        stream.write(data)
    os.chmod(path, mode)
    return path


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


class CertificateAuthority:
    """A self-signed CA that issues leaf certificates."""

    def __init__(self, common_name: str, *, days: int = DEFAULT_DAYS) -> None:
        self.common_name = common_name
        self._key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = datetime.datetime.now(datetime.timezone.utc)
        public = self._key.public_key()
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(self._key, hashes.SHA256())
        )

    @property
    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def write_cert(self, path: Path) -> Path:
        return _write(path, self.cert_pem, 0o644)

    def issue(
        self,
        directory: Path,
        stem: str,
        common_name: str,
        *,
        server: bool = False,
        client: bool = False,
        dns_names: Sequence[str] = DEFAULT_DNS_NAMES,
        ip_addresses: Sequence[str] = DEFAULT_IP_ADDRESSES,
        not_valid_before: datetime.datetime | None = None,
        not_valid_after: datetime.datetime | None = None,
    ) -> Credentials:
        """Write <stem>.pem and <stem>-key.pem signed by this CA.

        `server` / `client` set the extended key usages (serverAuth /
        clientAuth; both for an agent that is both)."""
        if not (server or client):
            raise ValueError("a certificate for neither server nor client use")
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + (
            [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
        )
        alt_names: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
        alt_names += [x509.IPAddress(ipaddress.ip_address(address)) for address in ip_addresses]
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_valid_before or now - datetime.timedelta(hours=1))
            .not_valid_after(not_valid_after or now + datetime.timedelta(days=DEFAULT_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False
            )
        )
        if alt_names:
            builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        certificate = builder.sign(self._key, hashes.SHA256())
        return Credentials(
            cert=_write(directory / f"{stem}.pem", certificate.public_bytes(serialization.Encoding.PEM), 0o644),
            key=_write(directory / f"{stem}-key.pem", _key_pem(key), 0o600),
        )


@dataclass(frozen=True)
class TLSMaterial:
    """Everything make_tls_material wrote. `other_*` come from an unrelated CA."""

    directory: Path
    ca: Path
    server: Credentials
    client: Credentials
    other_ca: Path
    other_server: Credentials
    other_client: Credentials
    authority: CertificateAuthority
    other_authority: CertificateAuthority

    def server_context(self, credentials: Credentials | None = None, *, ca: Path | None = None) -> ssl.SSLContext:
        """A TLS server context requiring a client certificate signed by `ca` (default: the CA)."""
        credentials = credentials or self.server
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(credentials.cert, credentials.key)
        context.load_verify_locations(cafile=ca or self.ca)
        context.verify_mode = ssl.CERT_REQUIRED
        return context

    def client_context(self, credentials: Credentials | None = None, *, ca: Path | None = None) -> ssl.SSLContext:
        """A TLS client context presenting `credentials` (default: the client
        certificate) and verifying the server against `ca` (default: the CA)."""
        credentials = credentials or self.client
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(credentials.cert, credentials.key)
        context.load_verify_locations(cafile=ca or self.ca)
        return context


def make_tls_material(
    directory: str | Path,
    *,
    dns_names: Sequence[str] = DEFAULT_DNS_NAMES,
    ip_addresses: Sequence[str] = DEFAULT_IP_ADDRESSES,
) -> TLSMaterial:
    """Write a CA, a server and a client certificate, and an unrelated CA with
    its own server and client certificates, into `directory` (made 0700)."""
    directory = Path(directory)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    authority = CertificateAuthority("vmhooks test CA")
    other = CertificateAuthority("unrelated test CA")
    names = {"dns_names": dns_names, "ip_addresses": ip_addresses}
    return TLSMaterial(
        directory=directory,
        ca=authority.write_cert(directory / "ca.pem"),
        server=authority.issue(directory, "server", "vmhooks-server", server=True, **names),
        client=authority.issue(directory, "client", "vmhooks-client", client=True, **names),
        other_ca=other.write_cert(directory / "other-ca.pem"),
        other_server=other.issue(directory, "other-server", "unrelated-server", server=True, **names),
        other_client=other.issue(directory, "other-client", "unrelated-client", client=True, **names),
        authority=authority,
        other_authority=other,
    )


@pytest.fixture
def tls_material(tmp_path: Path) -> Iterator[TLSMaterial]:
    """TLS material in a private directory under tmp_path."""
    yield make_tls_material(tmp_path / "tls")
