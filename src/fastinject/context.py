"""The servicer context: a handler's view of its RPC, with ``grpc.aio.ServicerContext``'s API.

A :class:`ServicerContext` is a thin facade over the server's record of the call (an internal
:class:`fastinject.call.Call`: inbox, flow-control credit, status, deadline, done-callbacks).
Sync handlers (run in a thread pool) get a :class:`SyncServicerContext` wrapping the same
context.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from . import metadata as md
from .status import StatusCode, coerce_status

if TYPE_CHECKING:
    from .call import Call

MetadataLike = md.MetadataLike
DoneCallback = Callable[[Any], None]


class ServicerContext:
    """What a handler sees of its RPC; compatible with ``grpc.aio.ServicerContext``."""

    __slots__ = ("_call",)

    def __init__(self, call: Call) -> None:
        self._call = call

    # -- reading ---------------------------------------------------------------------------

    async def read(self) -> Any:
        """Read one request message; returns the EOF object once the client half-closed.

        That object is ``grpc.aio.EOF`` when grpcio is installed (so ``is grpc.aio.EOF``
        works), and ``fastinject.EOF`` is always the very same object.
        """
        return await self._call.read()

    def request_was_compressed(self) -> bool:
        """Whether the last request message read arrived compressed (a fastinject addition)."""
        return self._call.last_compressed

    # -- writing ---------------------------------------------------------------------------

    async def send_initial_metadata(self, initial_metadata: MetadataLike) -> None:
        """Send the response headers now, with ``initial_metadata``."""
        self._call.send_initial_metadata(initial_metadata)

    async def write(self, message: Any) -> None:
        """Send one response message (streaming-response methods)."""
        await self._call.write(message)

    def set_compression(self, compression_algorithm: Any) -> None:
        """Compress this call's responses with ``compression_algorithm`` (if the client accepts)."""
        self._call.set_compression(compression_algorithm)

    def disable_next_message_compression(self) -> None:
        """Send the next response message uncompressed."""
        self._call.disable_next_message_compression()

    # -- status ----------------------------------------------------------------------------

    async def abort(
        self, code: Any, details: str = "", trailing_metadata: MetadataLike = ()
    ) -> NoReturn:
        """End the RPC with ``code`` and ``details``; raises, so nothing after it runs.

        As in ``grpc.aio``, the status is sent at once (a handler that catches the error can
        send nothing more), and :meth:`code` and :meth:`details` report it (interceptors read
        them).  Empty ``details`` or ``trailing_metadata`` keep what ``set_details`` and
        ``set_trailing_metadata`` set.
        """
        call = self._call
        raise call.send_abort(call.abort_error(code, details, trailing_metadata))

    async def abort_with_status(self, status: Any) -> NoReturn:
        """End the RPC with a ``grpc.Status`` (``code``, ``details``, ``trailing_metadata``).

        This is how grpcio-status's rich errors are sent: ``rpc_status.to_status(...)`` puts
        the ``google.rpc.Status`` in ``grpc-status-details-bin`` trailing metadata.
        """
        call = self._call
        raise call.send_abort(
            call.abort_error(status.code, status.details, status.trailing_metadata)
        )

    def set_code(self, code: Any) -> None:
        """Set the status sent when the handler returns."""
        self._call.code = coerce_status(code)

    def set_details(self, details: str) -> None:
        """Set the status message sent when the handler returns."""
        self._call.details = details

    def code(self) -> StatusCode | None:
        """The status code set so far, if any."""
        return self._call.code

    def details(self) -> str:
        """The status details set so far; ``""`` before any, as in grpc.aio."""
        return self._call.details or ""

    def set_trailing_metadata(self, trailing_metadata: MetadataLike) -> None:
        """Metadata sent with the status, checked now.

        As in grpc.aio, anything but an iterable of ``(str, str | bytes)`` tuples raises
        :class:`TypeError`; keys or values that are not valid headers raise
        :class:`~fastinject.errors.InvalidMetadataError` (a ``ValueError``).
        """
        self._call.set_trailing_metadata(trailing_metadata)

    def trailing_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        """The trailing metadata set so far."""
        return self._call.trailing_metadata

    def invocation_metadata(self) -> md.Metadata:
        """The client's metadata (reserved headers removed, ``-bin`` values decoded)."""
        return self._call.head.metadata

    # -- peer ------------------------------------------------------------------------------

    def peer(self) -> str:
        """The peer's address as grpc core writes it.

        ``ipv4:IP:PORT``, ``ipv6:%5BIP%5D:PORT`` (a URI: brackets escaped), ``unix:PATH`` or
        ``unix-abstract:NAME``.
        """
        return self._call.conn.peer

    def auth_context(self) -> dict[str, list[bytes]]:
        """Security properties of the connection, keyed as grpcio names them."""
        return self._call.conn.auth_context

    def peer_identities(self) -> list[bytes] | None:
        """The authenticated peer identities (mTLS), or ``None``."""
        from .credentials import peer_identities

        return peer_identities(self._call.conn.auth_context)

    def peer_identity_key(self) -> str | None:
        """Which auth-context property holds the identities, or ``None``."""
        from .credentials import peer_identity_key

        return peer_identity_key(self._call.conn.auth_context)

    # -- lifetime --------------------------------------------------------------------------

    def time_remaining(self) -> float | None:
        """Seconds left before the deadline, or ``None`` without a deadline."""
        return self._call.time_remaining()

    def cancelled(self) -> bool:
        """Whether the RPC was cancelled: by the client, its deadline or the server.

        The server cancels calls still running when ``stop``'s grace (or a drain's) runs out;
        their clients see UNAVAILABLE.
        """
        call = self._call
        return call.cancelled_by_client or call.deadline_hit or call.server_cancelled

    def done(self) -> bool:
        """Whether the RPC has finished."""
        return self._call.done

    def add_done_callback(self, callback: DoneCallback) -> None:
        """Call ``callback(context)`` when the RPC finishes (at once if it has)."""
        self._call.add_done_callback(callback)


class SyncServicerContext:
    """The context given to sync handlers, which run in a worker thread.

    Methods that must happen on the event loop are forwarded to it and waited for.
    """

    def __init__(self, context: ServicerContext, loop: asyncio.AbstractEventLoop) -> None:
        self._context = context
        self._loop = loop

    def _on_loop(self, coro: Any) -> Any:
        future: concurrent.futures.Future[Any] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result()

    def abort(self, code: Any, details: str = "", trailing_metadata: MetadataLike = ()) -> NoReturn:
        """End the RPC with ``code`` and ``details``; raises."""
        raise self._context._call.abort_error(code, details, trailing_metadata)

    def abort_with_status(self, status: Any) -> NoReturn:
        """End the RPC with a ``grpc.Status`` (``code``, ``details``, ``trailing_metadata``)."""
        raise self._context._call.abort_error(status.code, status.details, status.trailing_metadata)

    def send_initial_metadata(self, initial_metadata: MetadataLike) -> None:
        """Send the response headers now."""
        self._on_loop(self._context.send_initial_metadata(tuple(initial_metadata)))

    def set_code(self, code: Any) -> None:
        """Set the status sent when the handler returns."""
        self._context.set_code(code)

    def set_details(self, details: str) -> None:
        """Set the status message sent when the handler returns."""
        self._context.set_details(details)

    def set_trailing_metadata(self, trailing_metadata: MetadataLike) -> None:
        """Metadata sent with the status."""
        self._context.set_trailing_metadata(trailing_metadata)

    def set_compression(self, compression_algorithm: Any) -> None:
        """Compress this call's responses."""
        self._context.set_compression(compression_algorithm)

    def disable_next_message_compression(self) -> None:
        """Send the next response message uncompressed."""
        self._context.disable_next_message_compression()

    def is_active(self) -> bool:
        """Whether the RPC is still running (like ``grpc.ServicerContext.is_active``)."""
        return not (self._context.done() or self._context.cancelled())

    def add_callback(self, callback: Callable[[], None]) -> bool:
        """Call ``callback()`` when the RPC ends (like ``grpc.ServicerContext.add_callback``)."""
        self._context.add_done_callback(lambda _ctx: callback())
        return True

    def __getattr__(self, name: str) -> Any:
        # Read-only accessors (peer, invocation_metadata, time_remaining, ...) are thread-safe.
        return getattr(self._context, name)


__all__: Sequence[str] = ["ServicerContext", "SyncServicerContext"]
