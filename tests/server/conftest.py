"""Fixtures of the server tests: TLS test.Echo servers on loopback ports."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

import fastinject
from echo_service import Recorder
from serving import echo_server
from tls_material import TlsMaterial


@pytest.fixture
async def tls_server(
    recorder: Recorder, tls: TlsMaterial
) -> AsyncIterator[Callable[..., Awaitable[tuple[fastinject.Server, int]]]]:
    """Start TLS test.Echo servers with the given settings; stopped at teardown."""
    servers: list[fastinject.Server] = []

    async def start(**settings: Any) -> tuple[fastinject.Server, int]:
        server = echo_server(recorder, **settings)
        servers.append(server)
        credentials = fastinject.ServerCredentials.ssl([(tls.server_key_pem, tls.server_cert_pem)])
        port = server.add_secure_port("127.0.0.1:0", credentials)
        await server.start()
        return server, port

    yield start
    for server in servers:
        await server.stop(None)
