"""Fixtures shared by the server and injection tests: a served test.Echo and a grpcio channel."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest

import fastinject
from echo_service import Recorder
from serving import Serve, Served, echo_server
from tls_material import TlsMaterial, tls_material


@pytest.fixture
def recorder() -> Recorder:
    """What this test's test.Echo handlers saw (Sleep's starts, cancellations, callbacks)."""
    return Recorder()


@pytest.fixture
async def serve(recorder: Recorder) -> AsyncIterator[Serve]:
    """Start test.Echo servers on loopback ports with the given settings; stopped at teardown."""
    servers: list[fastinject.Server] = []

    async def start(**settings: Any) -> Served:
        server = echo_server(recorder, **settings)
        servers.append(server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return Served(server, port, recorder)

    yield start
    for server in servers:
        await server.stop(None)


@pytest.fixture
async def served(serve: Serve) -> Served:
    """A started test.Echo server on a loopback port, with default settings."""
    return await serve()


@pytest.fixture
async def channel(served: Served) -> AsyncIterator[grpc.aio.Channel]:
    """A grpcio cleartext channel to :func:`served`."""
    async with grpc.aio.insecure_channel(served.target) as channel:
        yield channel


@pytest.fixture(scope="session")
def tls() -> TlsMaterial:
    """A CA, server certificates (current and rotated) and a client certificate."""
    return tls_material()



if os.environ.get("FASTINJECT_TEST_LOOP") == "uvloop":
    # Run every async test on uvloop instead (its TLS, sockets and transports are C, not
    # asyncio's): FASTINJECT_TEST_LOOP=uvloop python -m pytest tests/...
    import uvloop

    def pytest_asyncio_loop_factories(
        config: pytest.Config, item: pytest.Item
    ) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
        """Every async test's loop comes from uvloop."""
        return {"uvloop": uvloop.new_event_loop}
