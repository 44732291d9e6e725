"""Handlers under ``/test.Probe/`` whose progress tests can watch and hold back.

They complement ``echo_service`` with what protocol tests need to observe: how far a
streaming handler got while flow control blocks it, a handler that does not read its requests
until released, a response that fails after a message was sent, and methods whose request
deserializer rejects malformed input (``Strict``, ``StrictStream``), and ``Size``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import fastinject
from fastinject import StatusCode
from serving import Served

SERVICE = "test.Probe"

StartServer = Callable[..., Awaitable[Served]]
"""The ``start_server`` fixture: start a server (test.Echo and test.Probe) with settings."""

ABORT_DETAILS = "50% done: caf\u00e9\nsecond line"
"""Details with characters grpc-message must percent-encode (%, non-ASCII, a newline)."""


class Probe:
    """What the probe handlers did, and the gate they wait on."""

    def __init__(self) -> None:
        self.produced = 0
        self.read: list[bytes] = []
        self.started = asyncio.Event()
        self.gate = asyncio.Event()
        self.done_callbacks = 0


def handlers(probe: Probe) -> dict[str, fastinject.RpcMethodHandler]:
    """The method table of ``test.Probe``."""

    async def produce(request: bytes, context: Any) -> AsyncIterator[bytes]:
        """``b"count:size"``: yield ``count`` messages of ``size`` bytes, counting each."""
        context.add_done_callback(lambda _ctx: _count_done(probe))
        count, size = (int(part) for part in request.split(b":"))
        for index in range(count):
            probe.produced += 1
            yield bytes([index % 256]) * size

    async def hold(requests: AsyncIterator[bytes], context: Any) -> bytes:
        """Read nothing until the gate opens, then read every request; answer the count."""
        probe.started.set()
        await probe.gate.wait()
        async for request in requests:
            probe.read.append(request)
        return str(len(probe.read)).encode()

    async def gate(request: bytes, context: Any) -> bytes:
        """Wait for the gate, then echo."""
        context.add_done_callback(lambda _ctx: _count_done(probe))
        probe.started.set()
        await probe.gate.wait()
        return request

    async def message_then_abort(request: bytes, context: Any) -> AsyncIterator[bytes]:
        """Send one message, then fail with :data:`ABORT_DETAILS`."""
        yield b"first"
        await context.abort(StatusCode.NOT_FOUND, ABORT_DETAILS)

    async def strict(request: str, context: Any) -> bytes:
        """Echo a request that must be UTF-8 (its deserializer rejects anything else)."""
        return request.encode()

    async def strict_stream(requests: AsyncIterator[str], context: Any) -> bytes:
        """Join streamed requests that must be UTF-8 with ``|``."""
        return "|".join([request async for request in requests]).encode()

    async def size(request: bytes, context: Any) -> bytes:
        """Answer the request's length (after decompression), in decimal."""
        return b"%d" % len(request)

    return {
        "Size": fastinject.unary_unary_rpc_method_handler(size),
        "Strict": fastinject.unary_unary_rpc_method_handler(
            strict, request_deserializer=_utf8
        ),
        "StrictStream": fastinject.stream_unary_rpc_method_handler(
            strict_stream, request_deserializer=_utf8
        ),
        "Produce": fastinject.unary_stream_rpc_method_handler(produce),
        "Hold": fastinject.stream_unary_rpc_method_handler(hold),
        "Gate": fastinject.unary_unary_rpc_method_handler(gate),
        "MessageThenAbort": fastinject.unary_stream_rpc_method_handler(message_then_abort),
    }


def _utf8(request: bytes) -> str:
    """The deserializer of the Strict methods: strict UTF-8."""
    return request.decode("utf-8")


def _count_done(probe: Probe) -> None:
    probe.done_callbacks += 1
