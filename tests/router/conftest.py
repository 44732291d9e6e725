"""Fixtures for the router tests: TLS material, a served test.Echo, injectors and grpcio clients."""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
from collections.abc import AsyncIterator

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import fastinject
from echo_service import Recorder
from fastinject.injector import ConnectionInjector
from fastinject.router import ConnectionRouter
from serving import echo_server


@dataclasses.dataclass(frozen=True)
class Pem:
    """A PEM certificate and its PEM private key."""

    cert: bytes
    key: bytes


@dataclasses.dataclass(frozen=True)
class Material:
    """A CA, two server certificates with different names, and a client certificate."""

    ca: bytes
    localhost: Pem  # localhost, 127.0.0.1, ::1
    example: Pem  # api.example.test, *.example.test
    client: Pem  # CN "router test client"


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _make_material() -> Material:
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("fastinject router test CA")

    def builder(subject: x509.Name, key: ec.EllipticCurvePublicKey) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_name)
            .public_key(key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
        )

    ca = (
        builder(ca_name, ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(cn: str, usage: x509.ObjectIdentifier, names: list[x509.GeneralName]) -> Pem:
        key = ec.generate_private_key(ec.SECP256R1())
        b = builder(_name(cn), key.public_key()).add_extension(
            x509.ExtendedKeyUsage([usage]), critical=False
        )
        if names:
            b = b.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = b.sign(ca_key, hashes.SHA256())
        return Pem(
            cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )

    server = ExtendedKeyUsageOID.SERVER_AUTH
    return Material(
        ca=ca.public_bytes(serialization.Encoding.PEM),
        localhost=leaf("localhost", server, [
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
        ]),
        example=leaf("api.example.test", server, [
            x509.DNSName("api.example.test"), x509.DNSName("*.example.test"),
        ]),
        client=leaf("router test client", ExtendedKeyUsageOID.CLIENT_AUTH, []),
    )


@pytest.fixture(scope="session")
def tls() -> Material:
    """TLS material shared by every router test."""
    return _make_material()


@pytest.fixture
async def server(recorder: Recorder) -> AsyncIterator[fastinject.Server]:
    """A started server serving test.Echo, with no ports of its own."""
    server = echo_server(recorder)
    await server.start()
    yield server
    await server.stop(None)


@pytest.fixture
def plaintext(server: fastinject.Server) -> ConnectionInjector:
    """An injector serving cleartext HTTP/2."""
    return server.create_connection_injector(fastinject.ServerCredentials.insecure())


@pytest.fixture
def tls_localhost(server: fastinject.Server, tls: Material) -> ConnectionInjector:
    """An injector serving TLS with the localhost certificate."""
    return server.create_connection_injector(
        fastinject.ServerCredentials.ssl([(tls.localhost.key, tls.localhost.cert)])
    )


@pytest.fixture
def tls_example(server: fastinject.Server, tls: Material) -> ConnectionInjector:
    """An injector serving TLS with the api.example.test certificate."""
    return server.create_connection_injector(
        fastinject.ServerCredentials.ssl([(tls.example.key, tls.example.cert)])
    )


@pytest.fixture
def mtls(server: fastinject.Server, tls: Material) -> ConnectionInjector:
    """An injector serving TLS that requires a client certificate signed by the test CA."""
    return server.create_connection_injector(
        fastinject.ServerCredentials.ssl(
            [(tls.localhost.key, tls.localhost.cert)],
            root_certificates=tls.ca,
            require_client_auth=True,
        )
    )


@pytest.fixture
async def routers() -> AsyncIterator[list[ConnectionRouter]]:
    """Routers a test starts; each is closed at the end."""
    made: list[ConnectionRouter] = []
    yield made
    for router in made:
        await router.close()


class TlsChannelFactory:
    """Makes grpcio TLS channels that trust the test CA."""

    def __init__(self, material: Material) -> None:
        self._material = material

    def __call__(
        self, target: str, *, server_name: str | None = None, client_cert: bool = False
    ) -> grpc.aio.Channel:
        """A channel to ``target``; ``server_name`` sets SNI (and the name checked)."""
        pem = self._material.client
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self._material.ca,
            private_key=pem.key if client_cert else None,
            certificate_chain=pem.cert if client_cert else None,
        )
        # A local subchannel pool: connections of its own, never shared with another channel.
        options: list[tuple[str, object]] = [("grpc.use_local_subchannel_pool", 1)]
        if server_name is not None:
            options.append(("grpc.ssl_target_name_override", server_name))
        return grpc.aio.secure_channel(target, credentials, options=options)


@pytest.fixture
def tls_channel(tls: Material) -> TlsChannelFactory:
    """A factory of grpcio TLS channels trusting the test CA."""
    return TlsChannelFactory(tls)
