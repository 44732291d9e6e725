"""Running one RPC: find its handler, call it by cardinality, send the outcome.

:func:`run_rpc` is the body of the task the connection starts for each call.  Async handlers
are awaited on the event loop; sync ones (plain functions and generators, as grpcio servicers
often are) run in the server's thread pool, as ``grpc.aio`` does.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

from .concurrency import LIMIT_EXCEEDED_DETAILS
from .context import ServicerContext, SyncServicerContext
from .errors import AbortError, ProtocolError, RpcError
from .handlers import HandlerCallDetails
from .protocol import StreamGone
from .status import StatusCode

if TYPE_CHECKING:
    from .connection import Connection

logger = logging.getLogger(__name__)

_SENTINEL = object()


async def run_rpc(conn: Connection, ctx: ServicerContext) -> None:
    """Serve the call held by ``ctx`` to completion; never raises."""
    ctx._started = True
    try:
        if ctx._interrupted:
            raise asyncio.CancelledError
        handler = await _find_handler(conn, ctx)
        if handler is None:
            ctx._finish(StatusCode.UNIMPLEMENTED, f"Method not found: {ctx._head.method}")
            return
        if conn.rpc_limit is not None and not conn.rpc_limit.admit(ctx):
            ctx._finish(StatusCode.RESOURCE_EXHAUSTED, LIMIT_EXCEEDED_DETAILS)
            return
        ctx.deserializer = handler.request_deserializer
        ctx.serializer = handler.response_serializer
        if handler.request_streaming:
            request: Any = _RequestIterator(ctx)
        else:
            request = await _read_single(ctx)
        if handler.response_streaming:
            behavior = handler.stream_stream if handler.request_streaming else handler.unary_stream
            await _stream_response(conn, ctx, behavior, request)
        else:
            behavior = handler.stream_unary if handler.request_streaming else handler.unary_unary
            response = await _call(conn, ctx, behavior, request)
            if ctx._code is None or ctx._code is StatusCode.OK:
                await ctx.write(response)
        ctx._finish_ok()
    except AbortError as exc:
        ctx._finish(exc.status, exc.details)
    except (RpcError, ProtocolError) as exc:
        ctx._finish(exc.status, str(exc))
    except asyncio.CancelledError:
        _end_cancelled(conn, ctx)
    except StreamGone:
        pass  # the client reset the stream or the connection closed: nobody to answer
    except Exception as exc:
        if ctx._code is not None and ctx._code is not StatusCode.OK:
            # Like grpcio: a status the handler set before raising wins over UNKNOWN.
            ctx._finish(ctx._code, ctx._details)
        else:
            conn.peer_log.log(logger, logging.ERROR, "handler for %s raised", ctx._head.method,
                              exc_info=True)
            ctx._finish(StatusCode.UNKNOWN, f"Unexpected {type(exc)}: {exc}")
    finally:
        ctx._close()


def _end_cancelled(conn: Connection, ctx: ServicerContext) -> None:
    """Send what a cancelled call owes the client (nothing, if the client cancelled it)."""
    if ctx._failure is not None:
        ctx._finish(ctx._failure.status, ctx._failure.details)
    elif ctx._deadline_hit:
        ctx._finish(StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
    elif not ctx.cancelled_by_client and not ctx._server_cancelled:
        # The handler let a CancelledError of its own escape: the client sees CANCELLED.
        # (A shutdown's UNAVAILABLE was sent when it cancelled the call.)
        conn.reset_call(ctx)


async def _find_handler(conn: Connection, ctx: ServicerContext) -> Any:
    details = HandlerCallDetails(ctx._head.method, ctx._head.metadata)
    if conn.intercepted_lookup is not None:
        return await conn.intercepted_lookup(details)
    return conn.registry.find(details)


async def _read_single(ctx: ServicerContext) -> Any:
    """The one request of a unary-request call, once the client has half-closed.

    A cardinality violation is UNIMPLEMENTED (grpc doc/statuscodes.md).  Waiting for the
    half-close costs nothing in practice: clients send END_STREAM with the message.
    """
    raw = await ctx._read_raw()
    if raw is None:
        raise RpcError("the client sent no request message for a unary call",
                       StatusCode.UNIMPLEMENTED)
    if await ctx._read_raw() is not None:
        raise RpcError("the client sent more than one request message for a unary call",
                       StatusCode.UNIMPLEMENTED)
    return ctx._deserialize(raw)


async def _call(conn: Connection, ctx: ServicerContext, behavior: Any, request: Any) -> Any:
    """Call a unary-response behavior, in the thread pool when it is sync."""
    if inspect.iscoroutinefunction(behavior):
        return await behavior(request, ctx)
    sync_ctx = SyncServicerContext(ctx, conn.loop)
    if isinstance(request, _RequestIterator):
        request = request.blocking(conn.loop)
    return await conn.loop.run_in_executor(conn.executor, behavior, request, sync_ctx)


async def _stream_response(
    conn: Connection, ctx: ServicerContext, behavior: Any, request: Any
) -> None:
    """Call a streaming-response behavior and send every message it produces."""
    if inspect.isasyncgenfunction(behavior):
        responses: AsyncIterator[Any] = behavior(request, ctx)
        async for response in responses:
            await ctx.write(response)
        return
    if inspect.iscoroutinefunction(behavior):
        # grpc.aio style: the coroutine writes with context.write() itself; like grpc.aio,
        # a value it returns is ignored.
        await behavior(request, ctx)
        return
    loop = conn.loop
    if isinstance(request, _RequestIterator):
        request = request.blocking(loop)
    iterator: Iterator[Any] = await loop.run_in_executor(
        conn.executor, _start_sync, behavior, request, SyncServicerContext(ctx, loop)
    )
    while (response := await loop.run_in_executor(conn.executor, next, iterator, _SENTINEL)) \
            is not _SENTINEL:
        await ctx.write(response)


def _start_sync(behavior: Any, request: Any, ctx: SyncServicerContext) -> Iterator[Any]:
    return iter(behavior(request, ctx))


class _RequestIterator:
    """The request stream given to streaming-request handlers (an async iterator)."""

    __slots__ = ("_ctx",)

    def __init__(self, ctx: ServicerContext) -> None:
        self._ctx = ctx

    def __aiter__(self) -> _RequestIterator:
        return self

    async def __anext__(self) -> Any:
        raw = await self._ctx._read_raw()
        if raw is None:
            raise StopAsyncIteration
        return self._ctx._deserialize(raw)

    def blocking(self, loop: asyncio.AbstractEventLoop) -> Iterator[Any]:
        """A plain iterator for sync handlers; each step waits on the event loop."""
        while True:
            future = asyncio.run_coroutine_threadsafe(self._next_or_sentinel(), loop)
            item = future.result()
            if item is _SENTINEL:
                return
            yield item

    async def _next_or_sentinel(self) -> Any:
        try:
            return await self.__anext__()
        except StopAsyncIteration:
            return _SENTINEL
