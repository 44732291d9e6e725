"""OpenTelemetry's real grpc.aio server interceptor traces calls served by fastinject."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from opentelemetry.instrumentation.grpc import aio_server_interceptor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import fastinject
from compat.conftest import SERVICE, ServeMethods


async def greet(request: bytes, context: Any) -> bytes:
    """Answer ``hello <request>``."""
    return b"hello " + request


async def refuse(request: bytes, context: Any) -> bytes:
    """Abort with UNAVAILABLE (a server-side error for OpenTelemetry's span status)."""
    await context.abort(grpc.StatusCode.UNAVAILABLE, "try later")
    raise AssertionError("abort returned")


async def count(request: bytes, context: Any) -> AsyncIterator[bytes]:
    """Yield ``0``..``n-1``."""
    for index in range(int(request)):
        yield str(index).encode()


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    """Where the interceptor's finished spans go."""
    return InMemorySpanExporter()


@pytest.fixture
async def channel(
    serve_methods: ServeMethods, exporter: InMemorySpanExporter
) -> AsyncIterator[grpc.aio.Channel]:
    """A channel to a server with OpenTelemetry's aio server interceptor."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    target = await serve_methods(
        {
            "Greet": fastinject.unary_unary_rpc_method_handler(greet),
            "Refuse": fastinject.unary_unary_rpc_method_handler(refuse),
            "Count": fastinject.unary_stream_rpc_method_handler(count),
        },
        interceptors=[aio_server_interceptor(tracer_provider=provider)],
    )
    async with grpc.aio.insecure_channel(target) as channel:
        yield channel


async def test_successful_call_gets_a_server_span(
    channel: grpc.aio.Channel, exporter: InMemorySpanExporter
) -> None:
    """A unary call answers normally and leaves one SERVER span with the call's attributes."""
    metadata = (("tenant", "blue"),)
    answer = await channel.unary_unary(f"/{SERVICE}/Greet")(b"otel", metadata=metadata)
    assert answer == b"hello otel"
    (span,) = exporter.get_finished_spans()
    assert span.name == f"/{SERVICE}/Greet"
    assert span.kind == SpanKind.SERVER
    assert span.status.status_code == StatusCode.UNSET
    assert span.attributes is not None
    assert span.attributes["rpc.service"] == SERVICE
    assert span.attributes["rpc.method"] == "Greet"
    assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.OK.value[0]
    assert str(span.attributes["rpc.user_agent"]).startswith("grpc-python")


async def test_aborted_call_span_records_the_status(
    channel: grpc.aio.Channel, exporter: InMemorySpanExporter
) -> None:
    """An aborted call reaches the client with its status; the span is an ERROR with the code."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await channel.unary_unary(f"/{SERVICE}/Refuse")(b"")
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert info.value.details() == "try later"
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code == StatusCode.ERROR
    assert span.status.description == "StatusCode.UNAVAILABLE:try later"
    assert span.attributes is not None
    code = grpc.StatusCode.UNAVAILABLE.value[0]
    assert span.attributes["rpc.grpc.status_code"] == code


async def test_streaming_call_gets_a_server_span(
    channel: grpc.aio.Channel, exporter: InMemorySpanExporter
) -> None:
    """A server-streaming call delivers every message and is traced once."""
    call = channel.unary_stream(f"/{SERVICE}/Count")(b"3")
    assert [message async for message in call] == [b"0", b"1", b"2"]
    assert await call.code() == grpc.StatusCode.OK
    (span,) = exporter.get_finished_spans()
    assert span.name == f"/{SERVICE}/Count"
