"""Running one RPC: find its handler, call it by cardinality, send the outcome.

:func:`run_rpc` is the body of the task the connection starts for each call.  Async handlers
are awaited on the event loop; sync ones (plain functions and generators, as grpcio servicers
often are) run in the server's thread pool, as ``grpc.aio`` does.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Iterator
from typing import TYPE_CHECKING, Any

from .call import Call
from .concurrency import LIMIT_EXCEEDED_DETAILS
from .context import SyncServicerContext
from .errors import AbortError, ProtocolError, RpcError
from .handlers import HandlerCallDetails
from .protocol import StreamGone
from .status import StatusCode

if TYPE_CHECKING:
    from .connection import Connection
    from .stream import InboxReader

logger = logging.getLogger(__name__)

_SENTINEL = object()

ASYNC, ASYNC_GENERATOR, SYNC = 0, 1, 2
"""How a behavior is called: awaited, iterated with ``async for``, or run in the thread pool."""

_KINDS: dict[Any, int] = {}
_KINDS_MAX = 1024  # behaviors remembered; interceptors may make a new one per call


def behavior_kind(behavior: Any) -> int:
    """:data:`ASYNC`, :data:`ASYNC_GENERATOR` or :data:`SYNC` for a handler's behavior.

    Found with :mod:`inspect` once per behavior, not per call.
    """
    try:
        return _KINDS[behavior]
    except KeyError:
        kind = _inspect_kind(behavior)
        if len(_KINDS) >= _KINDS_MAX:
            _KINDS.clear()
        _KINDS[behavior] = kind
        return kind
    except TypeError:  # an unhashable callable
        return _inspect_kind(behavior)


def _inspect_kind(behavior: Any) -> int:
    if inspect.isasyncgenfunction(behavior):
        return ASYNC_GENERATOR
    if inspect.iscoroutinefunction(behavior):
        return ASYNC
    return SYNC


async def run_rpc(conn: Connection, call: Call) -> None:
    """Serve ``call`` to completion; never raises."""
    call.started = True
    try:
        if call.interrupted:
            raise asyncio.CancelledError
        head = call.head
        lookup = conn.intercepted_lookup
        if lookup is None:
            handler = conn.registry.find_method(head.method, head.metadata)
        else:
            handler = await lookup(HandlerCallDetails(head.method, head.metadata))
        if handler is None:
            call.finish(StatusCode.UNIMPLEMENTED, f"Method not found: {call.head.method}")
            return
        if conn.rpc_limit is not None and not conn.rpc_limit.admit(call):
            call.finish(StatusCode.RESOURCE_EXHAUSTED, LIMIT_EXCEEDED_DETAILS)
            return
        call.deserializer = handler.request_deserializer
        call.serializer = handler.response_serializer
        if handler.request_streaming:
            request: Any = _RequestIterator(call)
        else:
            request = await _read_single(call)
        if handler.response_streaming:
            behavior = handler.stream_stream if handler.request_streaming else handler.unary_stream
            await _stream_response(conn, call, behavior, request)
        else:
            behavior = handler.stream_unary if handler.request_streaming else handler.unary_unary
            if behavior_kind(behavior) == ASYNC:
                response = await behavior(request, call.context)
            else:
                response = await _call_sync(conn, call, behavior, request)
            if call.code is None or call.code is StatusCode.OK:
                await call.write(response)
        call.finish_ok()
    except AbortError as exc:
        call.finish(exc.status, exc.details)
    except (RpcError, ProtocolError) as exc:
        call.finish(exc.status, str(exc))
    except asyncio.CancelledError:
        _end_cancelled(conn, call)
    except StreamGone:
        pass  # the client reset the stream or the connection closed: nobody to answer
    except Exception as exc:
        if call.code is not None and call.code is not StatusCode.OK:
            # Like grpcio: a status the handler set before raising wins over UNKNOWN.
            call.finish(call.code, call.details)
        else:
            conn.peer_log.log(logger, logging.ERROR, "handler for %s raised", call.head.method,
                              exc_info=True)
            call.finish(StatusCode.UNKNOWN, f"Unexpected {type(exc)}: {exc}")
    finally:
        call.close()


def _end_cancelled(conn: Connection, call: Call) -> None:
    """Send what a cancelled call owes the client (nothing, if the client cancelled it)."""
    if call.failure is not None:
        call.finish(call.failure.status, call.failure.details)
    elif call.deadline_hit:
        call.finish(StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
    elif not call.cancelled_by_client and not call.server_cancelled:
        # The handler let a CancelledError of its own escape: the client sees CANCELLED.
        # (A shutdown's UNAVAILABLE was sent when it cancelled the call.)
        conn.reset_call(call)


async def _read_single(call: Call) -> Any:
    """The one request of a unary-request call, once the client has half-closed.

    A cardinality violation is UNIMPLEMENTED (grpc doc/statuscodes.md).  Waiting for the
    half-close costs nothing in practice: clients send END_STREAM with the message.
    """
    raw = call.take_ready()
    if raw is None:
        raw = await call.read_raw()
    if raw is None:
        raise RpcError("the client sent no request message for a unary call",
                       StatusCode.UNIMPLEMENTED)
    if not call.request_done() and await call.read_raw() is not None:
        raise RpcError("the client sent more than one request message for a unary call",
                       StatusCode.UNIMPLEMENTED)
    return call.deserialize(raw)


async def _call_sync(conn: Connection, call: Call, behavior: Any, request: Any) -> Any:
    """Call a sync unary-response behavior in the thread pool."""
    if isinstance(request, _RequestIterator):
        request = request.blocking(conn.loop)
    return await conn.loop.run_in_executor(
        conn.executor, behavior, request, SyncServicerContext(call.context, conn.loop)
    )


async def _stream_response(
    conn: Connection, call: Call, behavior: Any, request: Any
) -> None:
    """Call a streaming-response behavior and send every message it produces."""
    kind = behavior_kind(behavior)
    if kind == ASYNC_GENERATOR:
        responses: AsyncIterator[Any] = behavior(request, call.context)
        async for response in responses:
            await call.write(response)
        return
    if kind == ASYNC:
        # grpc.aio style: the coroutine writes with context.write() itself; like grpc.aio,
        # a value it returns is ignored.
        await behavior(request, call.context)
        return
    loop = conn.loop
    if isinstance(request, _RequestIterator):
        request = request.blocking(loop)
    iterator: Iterator[Any] = await loop.run_in_executor(
        conn.executor, _start_sync, behavior, request, SyncServicerContext(call.context, loop)
    )
    while (response := await loop.run_in_executor(conn.executor, next, iterator, _SENTINEL)) \
            is not _SENTINEL:
        await call.write(response)


def _start_sync(behavior: Any, request: Any, context: SyncServicerContext) -> Iterator[Any]:
    return iter(behavior(request, context))


class _RequestIterator:
    """The request stream given to streaming-request handlers (an async iterator)."""

    __slots__ = ("_requests",)

    def __init__(self, call: Call) -> None:
        self._requests = call.requests()

    def __aiter__(self) -> InboxReader:
        return self._requests

    def __anext__(self) -> Awaitable[Any]:
        return self._requests.__anext__()

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
