"""grpcio-health-checking and grpcio-reflection served by fastinject, called by their clients.

Both packages are used exactly as with grpc.aio: the health package's asyncio servicer, and
``enable_server_reflection``, which picks its asyncio servicer for a ``grpc.aio.Server``.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

import fastinject
from fastinject.handlers import HandlerCallDetails

HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
WATCHED = "compat.Watched"
TIMEOUT = 30.0


@pytest.fixture
async def served() -> AsyncIterator[tuple[fastinject.Server, health.aio.HealthServicer, int]]:
    """A started server with the asyncio health servicer and server reflection."""
    server = fastinject.Server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    reflection.enable_server_reflection([HEALTH, reflection.SERVICE_NAME], server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield server, servicer, port
    await server.stop(None)


async def test_health_check(served: Any) -> None:
    """Check answers the status set on the servicer, and NOT_FOUND for an unknown service."""
    _, servicer, port = served
    await servicer.set(WATCHED, health_pb2.HealthCheckResponse.SERVING)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=WATCHED), timeout=TIMEOUT)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await stub.Check(health_pb2.HealthCheckRequest(service="nobody"), timeout=TIMEOUT)
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


async def test_health_watch_streams_changes(served: Any) -> None:
    """Watch sends the current status, then every change, until the client cancels."""
    _, servicer, port = served
    await servicer.set(WATCHED, health_pb2.HealthCheckResponse.SERVING)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=WATCHED), timeout=TIMEOUT
        )
        first = await watch.read()
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        await servicer.set(WATCHED, health_pb2.HealthCheckResponse.NOT_SERVING)
        second = await watch.read()
        assert second.status == health_pb2.HealthCheckResponse.NOT_SERVING
        watch.cancel()
        assert await watch.code() == grpc.StatusCode.CANCELLED


def test_reflection_picked_its_asyncio_servicer(served: Any) -> None:
    """enable_server_reflection saw a grpc.aio.Server: the handler is an async generator."""
    server, _, _ = served
    path = f"/{reflection.SERVICE_NAME}/ServerReflectionInfo"
    handler = server.registry.find(HandlerCallDetails(path, ()))
    assert inspect.isasyncgenfunction(handler.stream_stream)


async def test_reflection_lists_services_and_finds_symbols(served: Any) -> None:
    """grpcio-reflection's own client lists the services and fetches a symbol's file."""
    _, _, port = served

    def query() -> tuple[list[str], str, list[str]]:
        # The reflection client is synchronous: it runs in a thread, off the server's loop.
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            database = ProtoReflectionDescriptorDatabase(channel)
            services = sorted(database.get_services())
            file = database.FindFileContainingSymbol("grpc.health.v1.HealthCheckRequest")
            return services, file.name, sorted(m.name for m in file.message_type)

    services, file_name, file_messages = await asyncio.wait_for(
        asyncio.to_thread(query), TIMEOUT
    )
    assert services == sorted([HEALTH, reflection.SERVICE_NAME])
    assert file_name == "grpc_health/v1/health.proto"
    assert {"HealthCheckRequest", "HealthCheckResponse"} <= set(file_messages)
