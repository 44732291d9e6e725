"""Fixtures for the router tests: TLS material, a served test.Echo, injectors and grpcio clients."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import pytest
from cryptography import x509

import fastinject
from echo_service import Recorder
from fastinject.injector import ConnectionInjector
from fastinject.router import ConnectionRouter, Rule
from serving import echo_server
from tls_material import TlsMaterial, issue_certificate

EXAMPLE_NAMES = ("api.example.test", "*.example.test")
"""DNS names of the second server certificate, which SNI rules choose instead of localhost's."""

StartRouter = Callable[..., Awaitable[int]]
"""The ``start_router`` fixture: ``await start_router(router, address="127.0.0.1:0")``."""


@pytest.fixture(scope="session")
def example_pair(tls: TlsMaterial) -> tuple[bytes, bytes]:
    """``(key, cert)`` of a server certificate for ``EXAMPLE_NAMES``, signed by the test CA."""
    return issue_certificate(
        tls, EXAMPLE_NAMES[0], [x509.DNSName(name) for name in EXAMPLE_NAMES], server=True
    )


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
def replacement(server: fastinject.Server) -> ConnectionInjector:
    """A second cleartext injector, for tests that swap the table's injector for another."""
    return server.create_connection_injector(fastinject.ServerCredentials.insecure())


@pytest.fixture
def tls_localhost(server: fastinject.Server, tls: TlsMaterial) -> ConnectionInjector:
    """An injector serving TLS with the localhost certificate."""
    return server.create_connection_injector(fastinject.ServerCredentials.ssl([tls.server_pair]))


@pytest.fixture
def tls_example(
    server: fastinject.Server, example_pair: tuple[bytes, bytes]
) -> ConnectionInjector:
    """An injector serving TLS with the api.example.test certificate."""
    return server.create_connection_injector(fastinject.ServerCredentials.ssl([example_pair]))


@pytest.fixture
def mtls(server: fastinject.Server, tls: TlsMaterial) -> ConnectionInjector:
    """An injector serving TLS that requires a client certificate signed by the test CA."""
    return server.create_connection_injector(
        fastinject.ServerCredentials.ssl(
            [tls.server_pair],
            root_certificates=tls.ca_pem,
            require_client_auth=True,
        )
    )


@pytest.fixture
async def start_router() -> AsyncIterator[StartRouter]:
    """Start a router on an address (a loopback port by default); return its port.

    Every router started this way is closed at teardown.
    """
    started: list[ConnectionRouter] = []

    async def start(router: ConnectionRouter, address: str = "127.0.0.1:0") -> int:
        started.append(router)
        return await router.start(address)

    yield start
    for router in started:
        await router.close()


@pytest.fixture
async def plaintext_router(
    start_router: StartRouter, plaintext: ConnectionInjector
) -> ConnectionRouter:
    """A router on a loopback port whose table sends every connection to ``plaintext``."""
    router = ConnectionRouter([Rule(plaintext)])
    await start_router(router)
    return router


class TlsChannelFactory:
    """Makes grpcio TLS channels that trust the test CA."""

    def __init__(self, material: TlsMaterial) -> None:
        self._material = material

    def __call__(
        self, target: str, *, server_name: str | None = None, client_cert: bool = False
    ) -> grpc.aio.Channel:
        """A channel to ``target``; ``server_name`` sets SNI (and the name checked)."""
        material = self._material
        credentials = grpc.ssl_channel_credentials(
            root_certificates=material.ca_pem,
            private_key=material.client_key_pem if client_cert else None,
            certificate_chain=material.client_cert_pem if client_cert else None,
        )
        # A local subchannel pool: connections of its own, never shared with another channel.
        options: list[tuple[str, object]] = [("grpc.use_local_subchannel_pool", 1)]
        if server_name is not None:
            options.append(("grpc.ssl_target_name_override", server_name))
        return grpc.aio.secure_channel(target, credentials, options=options)


@pytest.fixture
def tls_channel(tls: TlsMaterial) -> TlsChannelFactory:
    """A factory of grpcio TLS channels trusting the test CA."""
    return TlsChannelFactory(tls)
