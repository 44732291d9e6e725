"""Fixtures shared by the server and injection tests: a served test.Echo and a grpcio channel."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from echo_service import Recorder
from serving import Served, echo_server
from tls_material import TlsMaterial, tls_material


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def served(recorder: Recorder) -> AsyncIterator[Served]:
    server = echo_server(recorder)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield Served(server, port, recorder)
    await server.stop(None)


@pytest.fixture
async def channel(served: Served) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(served.target) as channel:
        yield channel


@pytest.fixture(scope="session")
def tls() -> TlsMaterial:
    """A CA, server certificates (current and rotated) and a client certificate."""
    return tls_material()
