"""Throw-away TLS material for the tests: CAs, server and client certificates as PEM bytes.

:func:`tls_material` generates (once per process, with EC P-256 keys because RSA key generation
is slow) a CA and, signed by it:

* a server certificate, CN ``localhost``, SANs DNS ``localhost``, DNS ``*.test.google.fr``
  (the name gRPC interop clients use with ``--server_host_override``), IP ``127.0.0.1`` and
  IP ``::1``;
* a second server certificate with the same SANs but CN ``rotated.localhost``, for
  certificate-rotation tests;
* a client certificate, CN ``client``, SAN DNS ``client.example``;

plus a second, unrelated CA with a client certificate of its own (CN ``stranger``), for tests
where a client presents a certificate the server must not trust.  :meth:`TlsMaterial.write`
puts the files on disk, e.g. for the interop server's ``--cert/--key/--client_ca`` options;
:func:`issue_certificate` mints more certificates from the CA; :meth:`TlsMaterial.client_context`
and :func:`connect_in_memory` run real TLS handshakes without sockets.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import ipaddress
import ssl
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVER_DNS_NAMES = ("localhost", "*.test.google.fr")
SERVER_IP_ADDRESSES = ("127.0.0.1", "::1")
SERVER_COMMON_NAME = "localhost"
ROTATED_SERVER_COMMON_NAME = "rotated.localhost"
CLIENT_COMMON_NAME = "client"
CLIENT_DNS_NAME = "client.example"
STRANGER_COMMON_NAME = "stranger"


@dataclasses.dataclass(frozen=True)
class TlsMaterial:
    """PEM bytes of every certificate and (unencrypted PKCS#8) private key the tests use."""

    ca_pem: bytes
    ca_key_pem: bytes
    server_key_pem: bytes
    server_cert_pem: bytes
    rotated_server_key_pem: bytes
    rotated_server_cert_pem: bytes
    client_key_pem: bytes
    client_cert_pem: bytes
    other_ca_pem: bytes
    stranger_client_key_pem: bytes
    stranger_client_cert_pem: bytes

    @property
    def server_pair(self) -> tuple[bytes, bytes]:
        """``(private_key, certificate_chain)`` of the server, as credentials take them."""
        return (self.server_key_pem, self.server_cert_pem)

    @property
    def rotated_server_pair(self) -> tuple[bytes, bytes]:
        """``(private_key, certificate_chain)`` of the rotated server certificate."""
        return (self.rotated_server_key_pem, self.rotated_server_cert_pem)

    @property
    def client_pair(self) -> tuple[bytes, bytes]:
        """``(private_key, certificate_chain)`` of the trusted client."""
        return (self.client_key_pem, self.client_cert_pem)

    def client_context(
        self,
        pair: tuple[bytes, bytes] | None = None,
        *,
        alpn: list[str] | None = None,
        cadata: bytes | None = None,
        max_version: ssl.TLSVersion | None = None,
    ) -> ssl.SSLContext:
        """A client-side context for handshakes with a test server.

        It trusts ``cadata`` (default: the test CA), offers ALPN ``alpn`` (default ``["h2"]``)
        and presents the ``(key, cert)`` ``pair`` if one is given.
        """
        context = ssl.create_default_context(cadata=(cadata or self.ca_pem).decode())
        context.set_alpn_protocols(["h2"] if alpn is None else alpn)
        if max_version is not None:
            context.maximum_version = max_version
        if pair is not None:
            with tempfile.TemporaryDirectory() as directory:
                key, cert = Path(directory) / "key.pem", Path(directory) / "cert.pem"
                key.write_bytes(pair[0])
                cert.write_bytes(pair[1])
                context.load_cert_chain(cert, key)
        return context

    def write(self, directory: Path | str) -> dict[str, Path]:
        """Write every field to ``<directory>/<field>`` (``.pem``); return field name -> path."""
        target = Path(directory)
        target.mkdir(parents=True, exist_ok=True)
        paths: dict[str, Path] = {}
        for field in dataclasses.fields(self):
            path = target / f"{field.name.removesuffix('_pem')}.pem"
            path.write_bytes(getattr(self, field.name))
            paths[field.name] = path
        return paths


@dataclasses.dataclass(frozen=True)
class _Issuer:
    name: x509.Name
    key: ec.EllipticCurvePrivateKey


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer_key: ec.EllipticCurvePrivateKey,
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), False
        )
    )


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """Signing for every key; a CA also signs certificates and CRLs, a leaf (EC) agrees keys."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=not ca,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _make_ca(common_name: str) -> tuple[_Issuer, bytes]:
    key = _key()
    name = _name(common_name)
    cert = (
        _builder(name, name, key, key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .sign(key, hashes.SHA256())
    )
    return _Issuer(name, key), cert.public_bytes(serialization.Encoding.PEM)


def _make_leaf(
    issuer: _Issuer,
    subject: x509.Name | str,
    sans: list[x509.GeneralName] | None,
    usage: x509.ObjectIdentifier,
) -> tuple[bytes, bytes]:
    key = _key()
    builder = (
        _builder(
            _name(subject) if isinstance(subject, str) else subject, issuer.name, key, issuer.key
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if sans is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(issuer.key, hashes.SHA256())
    return _key_pem(key), cert.public_bytes(serialization.Encoding.PEM)


def _server_sans() -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.DNSName(name) for name in SERVER_DNS_NAMES]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in SERVER_IP_ADDRESSES]
    return names


def issue_certificate(
    material: TlsMaterial,
    subject: x509.Name | str,
    sans: list[x509.GeneralName] | None = None,
    *,
    server: bool = False,
) -> tuple[bytes, bytes]:
    """A new ``(key_pem, cert_pem)`` signed by ``material``'s CA, for a client (or a server).

    ``subject`` is a full :class:`x509.Name` or just a common name; ``sans`` are the subject
    alternative names (no extension when None).
    """
    ca_key = serialization.load_pem_private_key(material.ca_key_pem, None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca_name = x509.load_pem_x509_certificate(material.ca_pem).subject
    name = _name(subject) if isinstance(subject, str) else subject
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    return _make_leaf(_Issuer(ca_name, ca_key), name, sans, usage)


@dataclasses.dataclass
class MemoryLink:
    """Both ends of an in-memory TLS connection (``ssl.MemoryBIO`` pairs) and its buffers."""

    server: ssl.SSLObject
    client: ssl.SSLObject
    to_server: ssl.MemoryBIO
    to_client: ssl.MemoryBIO
    server_in: ssl.MemoryBIO
    server_out: ssl.MemoryBIO

    def pump(self) -> None:
        """Move the bytes each side wrote to the other side."""
        self.server_in.write(self.to_server.read())
        self.to_client.write(self.server_out.read())

    def round_trip(self, data: bytes) -> None:
        """Send ``data`` client -> server and back; both sides must read it intact."""
        self.client.write(data)
        self.pump()
        assert self.server.read(len(data)) == data
        self.server.write(data)
        self.pump()
        assert self.client.read(len(data)) == data


def connect_in_memory(
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
    server_name: str | None = "localhost",
    session: ssl.SSLSession | None = None,
) -> MemoryLink:
    """Run a TLS handshake between the two contexts in memory; raise either side's error."""
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    server_in, server_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    link = MemoryLink(
        server_context.wrap_bio(server_in, server_out, server_side=True),
        client_context.wrap_bio(to_client, to_server, server_hostname=server_name, session=session),
        to_server,
        to_client,
        server_in,
        server_out,
    )
    done = {"server": False, "client": False}
    for _ in range(20):
        for name, side in (("client", link.client), ("server", link.server)):
            if not done[name]:
                try:
                    side.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        link.pump()
        if all(done.values()):
            # A TLS 1.3 server checks the client's certificate after the client has finished:
            # exchange a record so a rejection surfaces here.
            link.round_trip(b"ping")
            return link
    raise AssertionError("TLS handshake did not finish")


@functools.cache
def tls_material() -> TlsMaterial:
    """The process-wide TLS material (generated on first use)."""
    ca, ca_pem = _make_ca("fastinject test CA")
    other_ca, other_ca_pem = _make_ca("fastinject unrelated CA")
    server = _make_leaf(ca, SERVER_COMMON_NAME, _server_sans(), ExtendedKeyUsageOID.SERVER_AUTH)
    rotated = _make_leaf(
        ca, ROTATED_SERVER_COMMON_NAME, _server_sans(), ExtendedKeyUsageOID.SERVER_AUTH
    )
    client = _make_leaf(
        ca, CLIENT_COMMON_NAME, [x509.DNSName(CLIENT_DNS_NAME)], ExtendedKeyUsageOID.CLIENT_AUTH
    )
    stranger = _make_leaf(
        other_ca,
        STRANGER_COMMON_NAME,
        [x509.DNSName("stranger.example")],
        ExtendedKeyUsageOID.CLIENT_AUTH,
    )
    return TlsMaterial(
        ca_pem=ca_pem,
        ca_key_pem=_key_pem(ca.key),
        server_key_pem=server[0],
        server_cert_pem=server[1],
        rotated_server_key_pem=rotated[0],
        rotated_server_cert_pem=rotated[1],
        client_key_pem=client[0],
        client_cert_pem=client[1],
        other_ca_pem=other_ca_pem,
        stranger_client_key_pem=stranger[0],
        stranger_client_cert_pem=stranger[1],
    )


__all__ = [
    "CLIENT_COMMON_NAME",
    "CLIENT_DNS_NAME",
    "ROTATED_SERVER_COMMON_NAME",
    "SERVER_COMMON_NAME",
    "SERVER_DNS_NAMES",
    "SERVER_IP_ADDRESSES",
    "STRANGER_COMMON_NAME",
    "MemoryLink",
    "TlsMaterial",
    "connect_in_memory",
    "issue_certificate",
    "tls_material",
]
