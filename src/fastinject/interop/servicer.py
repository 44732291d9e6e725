"""The interop ``TestService`` servicer and its registration on a server.

Implements the server side of grpc/grpc ``doc/interop-test-descriptions.md``: EmptyCall,
UnaryCall, CacheableUnaryCall, StreamingInputCall, StreamingOutputCall, FullDuplexCall and
HalfDuplexCall, with the CompressedResponse, CompressedRequest, Echo Status, Echo Metadata and
``interval_us`` features.  UnimplementedCall is left unimplemented on purpose.  The servicer
only uses the ``grpc.aio.ServicerContext`` API (see :mod:`fastinject.interop.calls`), so it
runs unchanged on grpcio's asyncio server and on fastinject's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from typing import Any

import fastinject
from fastinject.status import StatusCode

from .calls import InteropCall, ServicerContextLike
from .empty_pb2 import Empty
from .messages_pb2 import (
    COMPRESSABLE,
    Payload,
    ResponseParameters,
    SimpleRequest,
    SimpleResponse,
    StreamingInputCallRequest,
    StreamingInputCallResponse,
    StreamingOutputCallRequest,
    StreamingOutputCallResponse,
)

SERVICE_NAME = "grpc.testing.TestService"
"""The fully qualified service name, as in the HTTP/2 path ``/grpc.testing.TestService/...``."""

DEFAULT_MAX_PAYLOAD_SIZE = 16 << 20
"""The largest payload body a client may ask for, so one request cannot exhaust memory."""

CACHE_CONTROL = ("cache-control", "max-age=60, public")
"""The header CacheableUnaryCall adds so that a caching proxy may keep its response."""


class TestServiceServicer:
    """The interop ``grpc.testing.TestService``, written against the ``grpc.aio`` servicer API."""

    # pytest would otherwise try to collect this class from test modules that import it.
    __test__ = False

    def __init__(self, max_payload_size: int = DEFAULT_MAX_PAYLOAD_SIZE) -> None:
        if max_payload_size < 0:
            raise ValueError(f"max_payload_size must be >= 0, got {max_payload_size}")
        self.max_payload_size = max_payload_size

    async def EmptyCall(self, request: Empty, context: ServicerContextLike) -> Empty:
        """Return the empty message at once."""
        call = InteropCall(context)
        await call.send_headers()
        return Empty()

    async def UnaryCall(
        self, request: SimpleRequest, context: ServicerContextLike
    ) -> SimpleResponse:
        """Return a payload of ``response_size`` zero bytes, as the request configures."""
        call = InteropCall(context)
        # This servicer is what the benchmarks measure: a call asking for nothing special is
        # answered without a coroutine per check.
        if call.asks_nothing(
            request.expect_compressed, request.response_status, request.response_compressed
        ):
            payload = self._valid_payload(request.response_type, request.response_size)
            if payload is not None:
                return SimpleResponse(payload=payload)
        await call.check_request_compression(request.expect_compressed)
        await call.echo_status(request.response_status)
        payload = await self._payload(call, request.response_type, request.response_size)
        await call.prepare_message(request.response_compressed)
        return SimpleResponse(payload=payload)

    async def CacheableUnaryCall(
        self, request: SimpleRequest, context: ServicerContextLike
    ) -> SimpleResponse:
        """Return the current time in nanoseconds as payload, with a cache-control header."""
        call = InteropCall(context)
        call.add_initial_metadata(CACHE_CONTROL)
        await call.send_headers()
        body = str(time.time_ns()).encode("ascii")
        return SimpleResponse(payload=Payload(type=COMPRESSABLE, body=body))

    async def StreamingInputCall(
        self,
        request_iterator: AsyncIterable[StreamingInputCallRequest],
        context: ServicerContextLike,
    ) -> StreamingInputCallResponse:
        """Return the total size of the payload bodies received, once the client half-closes."""
        call = InteropCall(context)
        total = 0
        async for request in request_iterator:
            if request.HasField("expect_compressed"):
                await call.check_request_compression(request.expect_compressed)
            total += len(request.payload.body)
        await call.send_headers()
        return StreamingInputCallResponse(aggregated_payload_size=total)

    async def StreamingOutputCall(
        self, request: StreamingOutputCallRequest, context: ServicerContextLike
    ) -> AsyncIterator[StreamingOutputCallResponse]:
        """Send one response per ``response_parameters`` entry, then end with OK."""
        call = InteropCall(context)
        async for response in self._respond(call, [request]):
            yield response
        await call.send_headers()

    async def FullDuplexCall(
        self,
        request_iterator: AsyncIterable[StreamingOutputCallRequest],
        context: ServicerContextLike,
    ) -> AsyncIterator[StreamingOutputCallResponse]:
        """Answer each request as soon as it arrives; end with OK after the client half-closes."""
        call = InteropCall(context)
        async for request in request_iterator:
            async for response in self._respond(call, [request]):
                yield response
        await call.send_headers()

    async def HalfDuplexCall(
        self,
        request_iterator: AsyncIterable[StreamingOutputCallRequest],
        context: ServicerContextLike,
    ) -> AsyncIterator[StreamingOutputCallResponse]:
        """Buffer every request until the client half-closes, then answer them in order."""
        call = InteropCall(context)
        requests = [request async for request in request_iterator]
        async for response in self._respond(call, requests):
            yield response
        await call.send_headers()

    async def _respond(
        self, call: InteropCall, requests: Iterable[StreamingOutputCallRequest]
    ) -> AsyncIterator[StreamingOutputCallResponse]:
        """The responses to ``requests``: echoed status first, then one per parameter set."""
        for request in requests:
            if request.HasField("response_status"):
                await call.echo_status(request.response_status)
            # A call's compression is fixed once its headers are out: turn gzip on now if any
            # response of this request wants it (a no-op when the headers already went).
            if any(p.compressed.value for p in request.response_parameters):
                await call.send_headers(compress=True)
            for params in request.response_parameters:
                yield await self._streaming_response(call, request, params)

    async def _streaming_response(
        self, call: InteropCall, request: StreamingOutputCallRequest, params: ResponseParameters
    ) -> StreamingOutputCallResponse:
        payload = await self._payload(call, request.response_type, params.size)
        if params.interval_us > 0:
            await asyncio.sleep(params.interval_us / 1_000_000)
        await call.prepare_message(params.compressed)
        return StreamingOutputCallResponse(payload=payload)

    def _valid_payload(self, payload_type: int, size: int) -> Payload | None:
        """A payload of ``size`` zero bytes, or None for a type or size we refuse."""
        if payload_type != COMPRESSABLE or size < 0 or size > self.max_payload_size:
            return None
        return Payload(type=COMPRESSABLE, body=bytes(size))

    async def _payload(self, call: InteropCall, payload_type: int, size: int) -> Payload:
        """A payload of ``size`` zero bytes, or INVALID_ARGUMENT for a type or size we refuse."""
        payload = self._valid_payload(payload_type, size)
        if payload is None:
            if payload_type != COMPRESSABLE:
                await call.abort(
                    StatusCode.INVALID_ARGUMENT,
                    f"unsupported response payload type {payload_type}",
                )
            await call.abort(
                StatusCode.INVALID_ARGUMENT,
                f"response size {size} is outside 0..{self.max_payload_size}",
            )
        return payload


def _serialize(message: Any) -> bytes:
    data: bytes = message.SerializeToString()
    return data


def method_handlers(servicer: TestServiceServicer) -> dict[str, Any]:
    """The method name -> method handler mapping of ``TestService``.

    The handlers are built with fastinject's grpcio-compatible constructors, so grpcio's
    servers accept them too.  UnimplementedCall is deliberately absent.
    """
    unary_unary = fastinject.unary_unary_rpc_method_handler
    unary_stream = fastinject.unary_stream_rpc_method_handler
    stream_unary = fastinject.stream_unary_rpc_method_handler
    stream_stream = fastinject.stream_stream_rpc_method_handler
    table = (
        ("EmptyCall", unary_unary, Empty),
        ("UnaryCall", unary_unary, SimpleRequest),
        ("CacheableUnaryCall", unary_unary, SimpleRequest),
        ("StreamingOutputCall", unary_stream, StreamingOutputCallRequest),
        ("StreamingInputCall", stream_unary, StreamingInputCallRequest),
        ("FullDuplexCall", stream_stream, StreamingOutputCallRequest),
        ("HalfDuplexCall", stream_stream, StreamingOutputCallRequest),
    )
    return {
        name: make_handler(getattr(servicer, name), request_type.FromString, _serialize)
        for name, make_handler, request_type in table
    }


def add_test_service(servicer: TestServiceServicer, server: Any) -> None:
    """Register ``servicer`` as ``grpc.testing.TestService`` on ``server``.

    ``server`` is anything with ``add_registered_method_handlers(service_name, handlers)``:
    a :class:`fastinject.Server`, or a ``grpc.aio`` server.
    """
    server.add_registered_method_handlers(SERVICE_NAME, method_handlers(servicer))
