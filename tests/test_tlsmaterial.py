"""The TLS material really does mutual TLS: a handshake over loopback with
the right certificates works, and each kind of wrong certificate is refused."""
from __future__ import annotations

import socket
import ssl
import stat
import threading
from pathlib import Path
from typing import NamedTuple

import pytest
from cryptography import x509
from tlsmaterial import DEFAULT_IP_ADDRESSES, TLSMaterial, make_tls_material, tls_material  # noqa: F401


class Exchange(NamedTuple):
    server_error: str | None
    client_error: str | None
    client_cn: str | None  # the client certificate's CN as the server saw it

    @property
    def refused(self) -> bool:
        return self.server_error is not None or self.client_error is not None


def tls_exchange(
    server: ssl.SSLContext, client: ssl.SSLContext, host: str = "127.0.0.1", server_hostname: str | None = None
) -> Exchange:
    """One handshake and a 2-byte reply over loopback."""
    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    listener.bind((host, 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    seen: dict[str, str | None] = {"error": None, "cn": None}

    def serve() -> None:
        connection, _ = listener.accept()
        try:
            with server.wrap_socket(connection, server_side=True) as tls:
                cert = tls.getpeercert()
                seen["cn"] = dict(item[0] for item in cert["subject"])["commonName"] if cert else None
                tls.sendall(b"ok")
        except (ssl.SSLError, OSError) as error:
            seen["error"] = str(error)
            connection.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client_error = None
    try:
        with socket.create_connection((host, port), timeout=10) as raw:
            with client.wrap_socket(raw, server_hostname=server_hostname or host) as tls:
                if tls.recv(2) != b"ok":
                    client_error = "connection closed without a reply"
    except (ssl.SSLError, OSError) as error:
        client_error = f"{type(error).__name__}: {error}"
    finally:
        thread.join(10)
        listener.close()
    return Exchange(seen["error"], client_error, seen["cn"])


def test_files_and_modes(tls_material: TLSMaterial) -> None:
    m = tls_material
    for credentials in (m.server, m.client, m.other_server, m.other_client):
        assert stat.S_IMODE(credentials.key.stat().st_mode) == 0o600
        assert credentials.cert.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
    assert stat.S_IMODE(m.directory.stat().st_mode) == 0o700
    server = x509.load_pem_x509_certificate(m.server.cert.read_bytes())
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in sans.get_values_for_type(x509.DNSName)
    assert {str(a) for a in sans.get_values_for_type(x509.IPAddress)} == set(DEFAULT_IP_ADDRESSES)


def test_sans_cover_the_netns_addresses() -> None:
    from realhost import NETNS_SUBNET

    assert {f"{NETNS_SUBNET}.1", f"{NETNS_SUBNET}.2"} <= set(DEFAULT_IP_ADDRESSES)


@pytest.mark.parametrize("host, name", [("127.0.0.1", None), ("127.0.0.1", "localhost"), ("::1", None)])
def test_mutual_tls_works(tls_material: TLSMaterial, host: str, name: str | None) -> None:
    if host == "::1" and not socket.has_ipv6:
        pytest.skip("no IPv6")
    exchange = tls_exchange(tls_material.server_context(), tls_material.client_context(), host, name)
    assert exchange == Exchange(None, None, "vmhooks-client")


def test_client_from_unrelated_ca_is_refused(tls_material: TLSMaterial) -> None:
    m = tls_material
    exchange = tls_exchange(m.server_context(), m.client_context(m.other_client))
    assert exchange.server_error is not None and "certificate verify failed" in exchange.server_error
    assert exchange.client_cn is None


def test_client_without_certificate_is_refused(tls_material: TLSMaterial) -> None:
    m = tls_material
    bare = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    bare.load_verify_locations(cafile=m.ca)
    exchange = tls_exchange(m.server_context(), bare)
    assert exchange.server_error is not None and "certificate" in exchange.server_error
    assert exchange.client_cn is None


def test_server_from_unrelated_ca_is_refused_by_the_client(tls_material: TLSMaterial) -> None:
    m = tls_material
    exchange = tls_exchange(m.server_context(m.other_server), m.client_context())
    assert exchange.client_error is not None and "certificate verify failed" in exchange.client_error


def test_client_certificate_cannot_serve(tls_material: TLSMaterial) -> None:
    """Extended key usage is enforced: a clientAuth-only certificate is no server."""
    m = tls_material
    exchange = tls_exchange(m.server_context(m.client), m.client_context())
    assert exchange.client_error is not None and "certificate verify failed" in exchange.client_error


def test_wrong_name_is_refused(tls_material: TLSMaterial) -> None:
    exchange = tls_exchange(tls_material.server_context(), tls_material.client_context(),
                            server_hostname="not-in-the-sans.example")
    assert exchange.client_error is not None and "mismatch" in exchange.client_error


def test_more_certificates_from_the_same_ca(tmp_path: Path) -> None:
    m = make_tls_material(tmp_path / "tls", ip_addresses=("127.0.0.1",))
    agent = m.authority.issue(tmp_path / "tls", "agent-a", "agent-a", server=True, client=True,
                              ip_addresses=("127.0.0.1",))
    # One certificate for both roles, as an agent that serves and calls.
    assert tls_exchange(m.server_context(agent), m.client_context(agent)) == Exchange(None, None, "agent-a")
