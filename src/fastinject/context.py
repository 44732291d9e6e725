"""The servicer context: one RPC's state, with the API of ``grpc.aio.ServicerContext``.

A :class:`ServicerContext` is both what a handler receives and the server's record of the
call: its inbox of received messages, whether headers went out, the status to send, the
deadline and the done-callbacks.  Sync handlers (run in a thread pool) get a
:class:`SyncServicerContext` wrapping the same call.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from . import compression
from . import metadata as md
from ._grpcio import abort_error_class, end_of_stream
from .errors import AbortError, DeserializationError, RpcError
from .framing import frame_message
from .status import StatusCode, coerce_status

if TYPE_CHECKING:
    from .connection import Connection
    from .protocol import RequestHead

logger = logging.getLogger(__name__)

MetadataLike = Iterable[tuple[str, str | bytes]]
DoneCallback = Callable[[Any], None]


class ServicerContext:
    """State and controls of one RPC, compatible with ``grpc.aio.ServicerContext``."""

    __slots__ = (
        "_abort",
        "_accept_encoding",
        "_code",
        "_compression",
        "_conn",
        "_credit_debt",
        "_deadline",
        "_deadline_handle",
        "_deadline_hit",
        "_details",
        "_done",
        "_done_callbacks",
        "_encoding",
        "_ended",
        "_failure",
        "_head",
        "_headers_sent",
        "_inbox",
        "_initial_metadata",
        "_last_compressed",
        "_read_waiter",
        "_server_cancelled",
        "_skip_next_compression",
        "_started",
        "_status_sent",
        "_task",
        "_trailing_metadata",
        "cancelled_by_client",
        "deserializer",
        "serializer",
        "stream_id",
    )

    def __init__(self, conn: Connection, head: RequestHead) -> None:
        self._conn = conn
        self._head = head
        self.stream_id = head.stream_id
        self._inbox: collections.deque[tuple[bytes, bool]] = collections.deque()
        self._ended = False
        self._last_compressed = False
        self._credit_debt = 0
        self._failure: RpcError | None = None
        self._read_waiter: asyncio.Future[None] | None = None
        self._headers_sent = False
        self._encoding: str | None = None  # response compression, fixed with the headers
        self._initial_metadata: list[tuple[bytes, bytes]] = []
        self._trailing_metadata: tuple[tuple[str, str | bytes], ...] = ()
        self._code: StatusCode | None = None
        self._details: str | None = None
        self._compression = conn.settings.default_compression
        self._accept_encoding = head.accept_encoding
        self._skip_next_compression = False
        self._done = False
        self._status_sent = False
        self._abort: AbortError | None = None  # the first abort; later ones change nothing
        self._done_callbacks: list[DoneCallback] = []
        self._task: asyncio.Task[None] | None = None
        self._started = False  # set by the RPC task when it begins running
        self._server_cancelled = False
        self._deadline_hit = False
        self._deadline_handle: asyncio.TimerHandle | None = None
        self._deadline: float | None = None
        self.cancelled_by_client = False
        self.deserializer: Callable[[bytes], Any] | None = None
        self.serializer: Callable[[Any], bytes] | None = None
        if head.timeout is not None:
            loop = conn.loop
            self._deadline = loop.time() + head.timeout
            self._deadline_handle = loop.call_at(self._deadline, self._on_deadline)

    # -- fed by the connection -------------------------------------------------------------

    def _deliver(self, messages: list[tuple[bytes, bool]], prepaid: int) -> None:
        self._inbox.extend(messages)
        self._credit_debt += prepaid
        self._wake_reader()

    def _release_credit(self, size: int) -> None:
        """Return the flow-control credit of a consumed message, less what was prepaid."""
        if self._credit_debt:
            paid = min(size, self._credit_debt)
            self._credit_debt -= paid
            size -= paid
        if size:
            self._conn.consumed(self.stream_id, size)

    def _end_request(self) -> None:
        self._ended = True
        self._wake_reader()

    def _fail_request(self, failure: RpcError) -> None:
        """The request stream broke (size limit, bad framing): the handler is stopped."""
        self._failure = failure
        self._ended = True
        self._wake_reader()
        self._interrupt()

    def _cancel_by_client(self) -> None:
        self.cancelled_by_client = True
        self._wake_reader()
        self._interrupt()

    def _cancel_by_server(self) -> None:
        """Shutdown or drain ran out of grace: UNAVAILABLE now (retryable), as grpc.aio sends.

        The status is sent at once because the connection closes before the handler's task
        next runs; the task is then cancelled.
        """
        self._server_cancelled = True
        self._send_status(StatusCode.UNAVAILABLE, "Cancelling all calls")
        self._interrupt()

    def _on_deadline(self) -> None:
        self._deadline_handle = None
        if not self._done:
            self._deadline_hit = True
            self._interrupt()

    def _interrupt(self) -> None:
        """Cancel the RPC task; one that has not started yet sees the flags when it starts.

        A sync handler blocked in its request iterator (in a pool thread) is woken too.
        """
        # Cancelling a task before its first step would skip run_rpc's handlers entirely.
        if self._started and not self._done and self._task is not None:
            self._task.cancel()
        self._wake_reader()

    @property
    def _interrupted(self) -> bool:
        return (
            self._failure is not None
            or self.cancelled_by_client
            or self._deadline_hit
            or self._server_cancelled
        )

    def _wake_reader(self) -> None:
        waiter = self._read_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- reading ---------------------------------------------------------------------------

    async def _read_raw(self) -> bytes | None:
        """The next request message's payload (decompressed), or ``None`` at end of stream."""
        while not self._inbox:
            if self._failure is not None:
                raise self._failure
            if self._ended:
                return None
            if self._interrupted:
                # Only a sync handler's request iterator gets here (async readers are
                # cancelled with the task): it must not wait for messages that never come.
                raise RpcError("the call was cancelled", StatusCode.CANCELLED)
            self._read_waiter = self._conn.loop.create_future()
            try:
                await self._read_waiter
            finally:
                self._read_waiter = None
        payload, compressed = self._inbox.popleft()
        self._last_compressed = compressed
        self._release_credit(len(payload) + 5)
        if compressed:
            encoding = self._head.encoding
            if encoding is None or encoding == "identity":
                raise RpcError(
                    "message has the compressed flag set but the request has no grpc-encoding",
                    StatusCode.INTERNAL,
                )
            payload = await self._conn.decompressor.decompress(encoding, payload)
        return payload

    async def read(self) -> Any:
        """Read one request message; returns the EOF object once the client half-closed.

        That object is ``grpc.aio.EOF`` when grpcio is installed (so ``is grpc.aio.EOF``
        works), and ``fastinject.EOF`` is always the very same object.
        """
        raw = await self._read_raw()
        if raw is None:
            return end_of_stream()
        return self._deserialize(raw)

    def _deserialize(self, raw: bytes) -> Any:
        """A request message deserialized; :class:`DeserializationError` if it is malformed.

        The peer's fault, not the server's: logged at DEBUG only.
        """
        deserializer = self.deserializer
        if deserializer is None:
            return raw
        try:
            return deserializer(raw)
        except Exception as exc:
            logger.debug("peer %s sent %s a request it cannot deserialize: %r",
                         self._conn.peer, self._head.method, exc)
            raise DeserializationError(exc) from exc

    def request_was_compressed(self) -> bool:
        """Whether the last request message read arrived compressed (a fastinject addition)."""
        return self._last_compressed

    # -- writing ---------------------------------------------------------------------------

    async def send_initial_metadata(self, initial_metadata: MetadataLike) -> None:
        """Send the response headers now, with ``initial_metadata``."""
        if self._headers_sent:
            raise RpcError("initial metadata was already sent", StatusCode.INTERNAL)
        self._initial_metadata = md.encode_metadata(initial_metadata)
        self._send_headers()

    def _send_headers(self) -> None:
        """Send the response headers; they fix the call's response encoding."""
        self._headers_sent = True
        if self._compression is not compression.Compression.NoCompression:
            self._encoding = compression.choose_response_encoding(
                self._accept_encoding, self._compression, self._conn.settings.enabled_compression
            )
        self._conn.protocol.send_headers(self.stream_id, self._initial_metadata, self._encoding)
        self._conn.reset_ping_policy()
        self._conn.schedule_flush()

    async def _write_raw(self, payload: bytes) -> None:
        if self._done or self._status_sent:
            raise RpcError("the RPC has already finished", StatusCode.INTERNAL)
        if not self._headers_sent:
            self._send_headers()
        encoding = self._encoding
        compressed = encoding is not None and not self._skip_next_compression
        self._skip_next_compression = False
        if compressed:
            assert encoding is not None
            payload = compression.compress(encoding, payload)
        limit = self._conn.settings.max_send_message_length
        if len(payload) > limit:
            raise RpcError(
                f"Sent message larger than max ({len(payload)} vs. {limit})",
                StatusCode.RESOURCE_EXHAUSTED,
            )
        await self._conn.send_data(self.stream_id, frame_message(payload, compressed))

    async def write(self, message: Any) -> None:
        """Send one response message (streaming-response methods)."""
        serializer = self.serializer
        await self._write_raw(serializer(message) if serializer is not None else message)

    def set_compression(self, compression_algorithm: Any) -> None:
        """Compress this call's responses with ``compression_algorithm`` (if the client accepts)."""
        if self._headers_sent:
            raise RuntimeError("set_compression must be called before the first message")
        self._compression = compression.coerce_compression(compression_algorithm)

    def disable_next_message_compression(self) -> None:
        """Send the next response message uncompressed."""
        self._skip_next_compression = True

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
        raise self._send_abort(self._abort_error(code, details, trailing_metadata))

    async def abort_with_status(self, status: Any) -> NoReturn:
        """End the RPC with a ``grpc.Status`` (``code``, ``details``, ``trailing_metadata``).

        This is how grpcio-status's rich errors are sent: ``rpc_status.to_status(...)`` puts
        the ``google.rpc.Status`` in ``grpc-status-details-bin`` trailing metadata.
        """
        raise self._send_abort(
            self._abort_error(status.code, status.details, status.trailing_metadata)
        )

    def _send_abort(self, error: AbortError) -> AbortError:
        """Send an abort's status now (event loop thread only); the error to raise."""
        self._send_status(error.status, error.details)
        return error

    def _abort_error(
        self, code: Any, details: str | None, trailing_metadata: MetadataLike | None
    ) -> AbortError:
        """Record an abort's status and metadata; the error for the caller to raise.

        Only the first abort counts, as in grpc.aio (which refuses a second one): its status
        is what the client gets, so ``code()``/``details()`` keep reporting it.
        """
        if self._abort is not None:
            return self._abort
        status = coerce_status(code)
        if status is StatusCode.OK:
            raise ValueError("abort() needs a non-OK status code")
        if trailing_metadata:
            self.set_trailing_metadata(trailing_metadata)
        if details:
            self._details = details
        self._code = status
        self._abort = abort_error_class()(status, self._details or "")
        return self._abort

    def set_code(self, code: Any) -> None:
        """Set the status sent when the handler returns."""
        self._code = coerce_status(code)

    def set_details(self, details: str) -> None:
        """Set the status message sent when the handler returns."""
        self._details = details

    def code(self) -> StatusCode | None:
        """The status code set so far, if any."""
        return self._code

    def details(self) -> str:
        """The status details set so far; ``""`` before any, as in grpc.aio."""
        return self._details or ""

    def set_trailing_metadata(self, trailing_metadata: MetadataLike) -> None:
        """Metadata sent with the status, checked now.

        As in grpc.aio, anything but an iterable of ``(str, str | bytes)`` tuples raises
        :class:`TypeError`; keys or values that are not valid headers raise
        :class:`~fastinject.errors.InvalidMetadataError` (a ``ValueError``).
        """
        items = md.check_trailing_metadata(trailing_metadata)
        md.encode_metadata(items)
        self._trailing_metadata = items

    def trailing_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        """The trailing metadata set so far."""
        return self._trailing_metadata

    def invocation_metadata(self) -> md.Metadata:
        """The client's metadata (reserved headers removed, ``-bin`` values decoded)."""
        return self._head.metadata

    # -- peer ------------------------------------------------------------------------------

    def peer(self) -> str:
        """The peer's address as grpc core writes it.

        ``ipv4:IP:PORT``, ``ipv6:%5BIP%5D:PORT`` (a URI: brackets escaped), ``unix:PATH`` or
        ``unix-abstract:NAME``.
        """
        return self._conn.peer

    def auth_context(self) -> dict[str, list[bytes]]:
        """Security properties of the connection, keyed as grpcio names them."""
        return self._conn.auth_context

    def peer_identities(self) -> list[bytes] | None:
        """The authenticated peer identities (mTLS), or ``None``."""
        from .credentials import peer_identities

        return peer_identities(self._conn.auth_context)

    def peer_identity_key(self) -> str | None:
        """Which auth-context property holds the identities, or ``None``."""
        from .credentials import peer_identity_key

        return peer_identity_key(self._conn.auth_context)

    # -- lifetime --------------------------------------------------------------------------

    def time_remaining(self) -> float | None:
        """Seconds left before the deadline, or ``None`` without a deadline."""
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - self._conn.loop.time())

    def cancelled(self) -> bool:
        """Whether the RPC was cancelled: by the client, its deadline or the server.

        The server cancels calls still running when ``stop``'s grace (or a drain's) runs out;
        their clients see UNAVAILABLE.
        """
        return self.cancelled_by_client or self._deadline_hit or self._server_cancelled

    def done(self) -> bool:
        """Whether the RPC has finished."""
        return self._done

    def add_done_callback(self, callback: DoneCallback) -> None:
        """Call ``callback(context)`` when the RPC finishes (at once if it has)."""
        if self._done:
            callback(self)
        else:
            self._done_callbacks.append(callback)

    # -- ending (used by the RPC runner) ---------------------------------------------------

    def _finish(self, code: StatusCode, details: str | None) -> None:
        """Send the status (unless shutdown already did) and mark the call done."""
        if self._done:
            return
        self._send_status(code, details)
        self._close()

    def _send_status(self, code: StatusCode, details: str | None) -> None:
        """Send the status: as trailers, or trailers-only when nothing was sent."""
        if self._status_sent:
            return
        self._status_sent = True
        protocol = self._conn.protocol
        trailers = md.encode_metadata(self._trailing_metadata)
        if self._headers_sent:
            protocol.send_trailers(self.stream_id, code, details, trailers)
        else:
            protocol.send_trailers_only(self.stream_id, code, details, trailers)
        self._conn.reset_ping_policy()
        self._conn.schedule_flush()

    def _finish_ok(self) -> None:
        self._finish(self._code or StatusCode.OK, self._details)

    def _close(self) -> None:
        """Mark the call done, release its credit and run the done-callbacks."""
        if self._done:
            return
        self._done = True
        if self._deadline_handle is not None:
            self._deadline_handle.cancel()
        for payload, _ in self._inbox:
            self._release_credit(len(payload) + 5)
        self._inbox.clear()
        self._conn.call_done(self)
        for callback in self._done_callbacks:
            try:
                callback(self)
            except Exception:
                self._conn.peer_log.log(logger, logging.ERROR, "done callback %r raised",
                                        callback, exc_info=True)
        self._done_callbacks.clear()


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
        raise self._context._abort_error(code, details, trailing_metadata)

    def abort_with_status(self, status: Any) -> NoReturn:
        """End the RPC with a ``grpc.Status`` (``code``, ``details``, ``trailing_metadata``)."""
        raise self._context._abort_error(status.code, status.details, status.trailing_metadata)

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
