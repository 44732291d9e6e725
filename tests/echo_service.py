"""A raw-bytes test service exercising every handler shape, shared by the server tests.

Requests and responses are plain bytes (no (de)serializers), so tests can check exactly what
crossed the wire.  Methods live under ``/test.Echo/``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import fastinject
from fastinject import StatusCode

SERVICE = "test.Echo"


class Recorder:
    """What handlers saw, for tests to assert on."""

    def __init__(self) -> None:
        self.done_callbacks = 0
        self.cancelled: list[str] = []
        self.finished: list[str] = []
        self.started = asyncio.Event()


async def unary(request: bytes, context: Any) -> bytes:
    """Unary: answer with the request unchanged."""
    return request


def sync_unary(request: bytes, context: Any) -> bytes:
    """SyncUnary (runs in the thread pool): answer ``sync:`` + the request."""
    return b"sync:" + request


async def server_stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
    """ServerStream: yield ``0``, ``1``, ... up to the count in the request (default 3)."""
    for i in range(int(request or b"3")):
        yield str(i).encode()


async def trickle(request: bytes, context: Any) -> AsyncIterator[bytes]:
    """Trickle: ``b"count:size:pause"``, ``count`` messages of ``size`` bytes, ``pause`` s apart."""
    count, size, pause = request.split(b":")
    for index in range(int(count)):
        if index:
            await asyncio.sleep(float(pause))
        yield bytes([index % 256]) * int(size)


def sync_server_stream(request: bytes, context: Any) -> Iterator[bytes]:
    """SyncServerStream: the thread-pool twin of :func:`server_stream`."""
    for i in range(int(request or b"3")):
        yield str(i).encode()


async def client_stream(requests: AsyncIterator[bytes], context: Any) -> bytes:
    """ClientStream: answer every request message joined with ``|``."""
    return b"|".join([r async for r in requests])


def sync_client_stream(requests: Iterator[bytes], context: Any) -> bytes:
    """SyncClientStream: the thread-pool twin of :func:`client_stream`."""
    return b"|".join(requests)


async def bidi(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
    """Bidi: answer each request message as it arrives, upper-cased."""
    async for request in requests:
        yield request.upper()


async def bidi_read_write(requests: Any, context: Any) -> None:
    """BidiReadWrite: answer each message reversed, grpc.aio style (context.read()/write())."""
    while True:
        request = await context.read()
        if request == fastinject.EOF:
            return
        await context.write(request[::-1])


async def abort_swallowed(request: bytes, context: Any) -> AsyncIterator[bytes]:
    """AbortSwallowed: yield ``before``, abort NOT_FOUND and swallow the error, try ``after``."""
    yield b"before"
    with contextlib.suppress(Exception):
        await context.abort(StatusCode.NOT_FOUND, "gone")
    yield b"after"


async def write_then_return(request: bytes, context: Any) -> bytes:
    """WriteThenReturn: a streaming coroutine that writes the request, then returns a value."""
    await context.write(request)
    return b"ignored, as grpc.aio ignores it"


async def fail(request: bytes, context: Any) -> bytes:
    """Fail: raise ``ValueError("boom")``, which the server must turn into UNKNOWN."""
    raise ValueError("boom")


async def abort(request: bytes, context: Any) -> bytes:
    """Abort: abort with the ``CODE:details`` named in the request and a ``why`` trailer."""
    code, _, details = request.decode().partition(":")
    await context.abort(StatusCode[code], details, trailing_metadata=(("why", "because"),))
    raise AssertionError("abort returned")


async def set_code(request: bytes, context: Any) -> bytes:
    """SetCode: set NOT_FOUND with details and return normally (the status still wins)."""
    context.set_code(StatusCode.NOT_FOUND)
    context.set_details("nothing here")
    return b"ignored"


async def echo_metadata(request: bytes, context: Any) -> bytes:
    """Metadata: answer the invocation metadata as JSON pairs (``-bin`` values in hex).

    Also sends an initial ``initial-key`` and a trailing ``trailing-bin`` entry.
    """
    received = [
        [key, value.hex() if isinstance(value, bytes) else value]
        for key, value in context.invocation_metadata()
    ]
    await context.send_initial_metadata((("initial-key", "initial-value"),))
    context.set_trailing_metadata((("trailing-bin", b"\x00\x01\xff"),))
    return json.dumps(received).encode()


async def peer(request: bytes, context: Any) -> bytes:
    """Peer: answer JSON with the caller's ``peer``, ``auth`` context and ``identities``."""
    auth = {key: [v.decode("latin-1") for v in values]
            for key, values in context.auth_context().items()}
    identities = context.peer_identities()
    return json.dumps({
        "peer": context.peer(),
        "auth": auth,
        "identities": [i.decode() for i in identities] if identities else None,
    }).encode()


def make_sleep(recorder: Recorder) -> Any:
    """Sleep: a handler sleeping for the seconds in the request, reporting to ``recorder``.

    It sets ``recorder.started``, records a cancellation or a finish, and counts its done
    callbacks.
    """
    async def sleep(request: bytes, context: Any) -> bytes:
        context.add_done_callback(lambda _ctx: _count_done(recorder))
        recorder.started.set()
        try:
            await asyncio.sleep(float(request))
        except asyncio.CancelledError:
            recorder.cancelled.append(request.decode())
            raise
        recorder.finished.append(request.decode())
        return b"slept " + request

    return sleep


def _count_done(recorder: Recorder) -> None:
    recorder.done_callbacks += 1


def sync_sleep(request: bytes, context: Any) -> bytes:
    """SyncSleep: block a pool thread for the seconds in the request."""
    time.sleep(float(request))
    return b"done"


async def time_remaining(request: bytes, context: Any) -> bytes:
    """TimeRemaining: answer ``context.time_remaining()`` as text, ``none`` without a deadline."""
    remaining = context.time_remaining()
    return b"none" if remaining is None else str(remaining).encode()


async def compressed(request: bytes, context: Any) -> bytes:
    """Compressed: answer the request repeated 100 times, gzip-compressed."""
    context.set_compression(fastinject.Compression.Gzip)
    return request * 100


def handlers(recorder: Recorder) -> dict[str, fastinject.RpcMethodHandler]:
    """The method table of ``test.Echo``."""
    uu = fastinject.unary_unary_rpc_method_handler
    return {
        "Unary": uu(unary),
        "SyncUnary": uu(sync_unary),
        "ServerStream": fastinject.unary_stream_rpc_method_handler(server_stream),
        "SyncServerStream": fastinject.unary_stream_rpc_method_handler(sync_server_stream),
        "Trickle": fastinject.unary_stream_rpc_method_handler(trickle),
        "ClientStream": fastinject.stream_unary_rpc_method_handler(client_stream),
        "SyncClientStream": fastinject.stream_unary_rpc_method_handler(sync_client_stream),
        "Bidi": fastinject.stream_stream_rpc_method_handler(bidi),
        "BidiReadWrite": fastinject.stream_stream_rpc_method_handler(bidi_read_write),
        "WriteThenReturn": fastinject.unary_stream_rpc_method_handler(write_then_return),
        "AbortSwallowed": fastinject.unary_stream_rpc_method_handler(abort_swallowed),
        "Fail": uu(fail),
        "Abort": uu(abort),
        "SetCode": uu(set_code),
        "Metadata": uu(echo_metadata),
        "Peer": uu(peer),
        "Sleep": uu(make_sleep(recorder)),
        "SyncSleep": uu(sync_sleep),
        "TimeRemaining": uu(time_remaining),
        "Compressed": uu(compressed),
    }
