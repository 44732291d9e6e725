"""One RPC as the server runs it: inbox, flow-control credit, status, deadline, lifetime.

A :class:`Call` is the server's record of a call.  The connection feeds it (messages, the
request's end, resets, failures), the RPC runner (:mod:`fastinject.rpc`) reads, writes and ends
it, and the handler sees it only through its public facade, the
:class:`~fastinject.context.ServicerContext` of :attr:`Call.context`.  Nothing here is public
API.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import compression
from . import metadata as md
from ._grpcio import abort_error_class, end_of_stream
from .context import DoneCallback, ServicerContext
from .errors import AbortError, DeserializationError, RpcError
from .framing import frame_message
from .status import StatusCode, coerce_status
from .stream import Inbox, InboxReader

if TYPE_CHECKING:
    from .connection import Connection
    from .protocol import RequestHead

logger = logging.getLogger(__name__)


class Call:
    """The state of one RPC and what the connection and the RPC runner do with it."""

    __slots__ = (
        "_abort",
        "_accept_encoding",
        "_compression",
        "_conn",
        "_context",
        "_done_callbacks",
        "_encoding",
        "_ended",
        "_inbox",
        "_initial_metadata",
        "_read_waiter",
        "_skip_next_compression",
        "cancelled_by_client",
        "code",
        "deadline",
        "deadline_hit",
        "deserializer",
        "details",
        "done",
        "failure",
        "head",
        "headers_sent",
        "serializer",
        "server_cancelled",
        "started",
        "status_sent",
        "stream_id",
        "task",
        "trailing_metadata",
    )

    def __init__(self, conn: Connection, stream_id: int, head: RequestHead) -> None:
        self._conn = conn
        self.head = head
        self.stream_id = stream_id
        self._context: ServicerContext | None = None
        # Received messages and the flow-control credit they owe until the handler takes them.
        self._inbox = Inbox(stream_id, conn.protocol.credit)
        self._ended = False
        self.failure: RpcError | None = None
        self._read_waiter: asyncio.Future[None] | None = None
        self.headers_sent = False
        self._encoding: str | None = None  # response compression, fixed with the headers
        self._initial_metadata: list[tuple[bytes, bytes]] = []
        self.trailing_metadata: tuple[tuple[str, str | bytes], ...] = ()
        self.code: StatusCode | None = None
        self.details: str | None = None
        self._compression = conn.settings.default_compression
        self._accept_encoding = head.accept_encoding
        self._skip_next_compression = False
        self.done = False
        self.status_sent = False
        self._abort: AbortError | None = None  # the first abort; later ones change nothing
        self._done_callbacks: list[DoneCallback] = []
        self.task: asyncio.Task[None] | None = None
        self.started = False  # set by the RPC runner when it begins
        self.server_cancelled = False
        self.deadline_hit = False
        self.deadline: float | None = None
        self.cancelled_by_client = False
        self.deserializer: Callable[[bytes], Any] | None = None
        self.serializer: Callable[[Any], bytes] | None = None
        if head.timeout is not None:
            self.deadline = conn.loop.time() + head.timeout
            conn.deadlines.add(self.deadline, self)

    @property
    def context(self) -> ServicerContext:
        """The handler's view of this call (made on first use)."""
        context = self._context
        if context is None:
            context = self._context = ServicerContext(self)
        return context

    @property
    def conn(self) -> Connection:
        """The connection the call arrived on."""
        return self._conn

    # -- fed by the connection -------------------------------------------------------------

    def deliver(self, messages: list[tuple[bytes, bool]], prepaid: int) -> None:
        """Request messages arrived; ``prepaid`` bytes of them were credited early."""
        self._inbox.deliver(messages, prepaid)
        self._wake_reader()

    def end_request(self) -> None:
        """The client half-closed: no more request messages."""
        self._ended = True
        self._wake_reader()

    def fail_request(self, failure: RpcError) -> None:
        """The request stream broke (size limit, bad framing): the handler is stopped."""
        self.failure = failure
        self._ended = True
        self._wake_reader()
        self._interrupt()

    def cancel_by_client(self) -> None:
        """The client reset the stream or the connection is gone: the handler is stopped."""
        self.cancelled_by_client = True
        self._wake_reader()
        self._interrupt()

    def cancel_by_server(self) -> None:
        """Shutdown or drain ran out of grace: UNAVAILABLE now (retryable), as grpc.aio sends.

        The status is sent at once because the connection closes before the handler's task
        next runs; the task is then cancelled.
        """
        self.server_cancelled = True
        self.send_status(StatusCode.UNAVAILABLE, "Cancelling all calls")
        self._interrupt()

    def on_deadline(self) -> None:
        """The deadline passed (the connection's :class:`~fastinject.deadlines.Deadlines`)."""
        if not self.done:
            self.deadline_hit = True
            self._interrupt()

    def _interrupt(self) -> None:
        """Cancel the RPC task; one that has not started yet sees the flags when it starts.

        A sync handler blocked in its request iterator (in a pool thread) is woken too.
        """
        # Cancelling a task before its first step would skip run_rpc's handlers entirely.
        if self.started and not self.done and self.task is not None:
            self.task.cancel()
        self._wake_reader()

    @property
    def interrupted(self) -> bool:
        """Whether the call was stopped: failed request, client, deadline or server."""
        return (
            self.failure is not None
            or self.cancelled_by_client
            or self.deadline_hit
            or self.server_cancelled
        )

    def _wake_reader(self) -> None:
        waiter = self._read_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- reading ---------------------------------------------------------------------------

    @property
    def last_compressed(self) -> bool:
        """Whether the last request message taken arrived compressed."""
        return self._inbox.last_compressed

    def take_ready(self) -> bytes | None:
        """The next request message's payload if it is here and uncompressed, else ``None``.

        The fast path of :meth:`read_raw` (no coroutine); on ``None``, await that.
        """
        return self._inbox.pop_plain()  # taken: its credit is now owed

    def requests(self) -> InboxReader:
        """The request messages, deserialized, as an async iterator (streaming requests).

        Messages already here and uncompressed are taken and deserialized without a
        coroutine (in C with the extension); otherwise the iterator awaits :meth:`read_raw`.
        """
        return InboxReader(self._inbox, self.deserializer, self._next_request,
                           self.deserialization_error)

    async def _next_request(self) -> Any:
        raw = await self.read_raw()
        if raw is None:
            raise StopAsyncIteration
        return self.deserialize(raw)

    def request_done(self) -> bool:
        """Whether the request ended with nothing left to read (:meth:`read_raw` gives None)."""
        return self._ended and self.failure is None and not self._inbox

    async def read_raw(self) -> bytes | None:
        """The next request message's payload (decompressed), or ``None`` at end of stream."""
        while (message := self._inbox.pop()) is None:  # taken: its credit is now owed
            if self.failure is not None:
                raise self.failure
            if self._ended:
                return None
            if self.interrupted:
                # Only a sync handler's request iterator gets here (async readers are
                # cancelled with the task): it must not wait for messages that never come.
                raise RpcError("the call was cancelled", StatusCode.CANCELLED)
            self._read_waiter = self._conn.loop.create_future()
            try:
                await self._read_waiter
            finally:
                self._read_waiter = None
        payload, compressed = message
        if compressed:
            encoding = self.head.encoding
            if encoding is None or encoding == "identity":
                raise RpcError(
                    "message has the compressed flag set but the request has no grpc-encoding",
                    StatusCode.INTERNAL,
                )
            payload = await self._conn.decompressor.decompress(encoding, payload)
        return payload

    async def read(self) -> Any:
        """One request message, deserialized; the EOF object once the client half-closed."""
        raw = self.take_ready()
        if raw is None:
            raw = await self.read_raw()
            if raw is None:
                return end_of_stream()
        return self.deserialize(raw)

    def deserialize(self, raw: bytes) -> Any:
        """A request message deserialized; :class:`DeserializationError` if it is malformed.

        The peer's fault, not the server's: logged at DEBUG only.
        """
        deserializer = self.deserializer
        if deserializer is None:
            return raw
        try:
            return deserializer(raw)
        except Exception as exc:
            raise self.deserialization_error(exc) from exc

    def deserialization_error(self, exc: Exception) -> DeserializationError:
        """The error that ends the call when the deserializer raised ``exc`` (logged at DEBUG)."""
        logger.debug("peer %s sent %s a request it cannot deserialize: %r",
                     self._conn.peer, self.head.method, exc)
        return DeserializationError(exc)

    # -- writing ---------------------------------------------------------------------------

    def send_initial_metadata(self, initial_metadata: md.MetadataLike) -> None:
        """Send the response headers now, with ``initial_metadata``."""
        if self.headers_sent:
            raise RpcError("initial metadata was already sent", StatusCode.INTERNAL)
        self._initial_metadata = md.encode_metadata(initial_metadata)
        self._send_headers()

    def _send_headers(self) -> None:
        """Send the response headers; they fix the call's response encoding."""
        self.headers_sent = True
        if self._compression is not compression.Compression.NoCompression:
            self._encoding = compression.choose_response_encoding(
                self._accept_encoding, self._compression, self._conn.settings.enabled_compression
            )
        self._conn.protocol.send_headers(self.stream_id, self._initial_metadata, self._encoding)
        self._conn.reset_ping_policy()
        self._conn.schedule_flush()

    async def write(self, message: Any) -> None:
        """Serialize and send one response message (headers first, if not sent yet)."""
        serializer = self.serializer
        payload: bytes = serializer(message) if serializer is not None else message
        if self.done or self.status_sent:
            raise RpcError("the RPC has already finished", StatusCode.INTERNAL)
        if not self.headers_sent:
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
        conn = self._conn
        if not conn.send_message_now(self.stream_id, payload, compressed):
            await conn.send_data(self.stream_id, frame_message(payload, compressed))

    def set_compression(self, compression_algorithm: Any) -> None:
        """Compress this call's responses with ``compression_algorithm`` (if the client accepts)."""
        if self.headers_sent:
            raise RuntimeError("set_compression must be called before the first message")
        self._compression = compression.coerce_compression(compression_algorithm)

    def disable_next_message_compression(self) -> None:
        """Send the next response message uncompressed."""
        self._skip_next_compression = True

    # -- status ----------------------------------------------------------------------------

    def send_abort(self, error: AbortError) -> AbortError:
        """Send an abort's status now (event loop thread only); the error to raise."""
        self.send_status(error.status, error.details)
        return error

    def abort_error(
        self, code: Any, details: str | None, trailing_metadata: md.MetadataLike | None
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
            self.details = details
        self.code = status
        self._abort = abort_error_class()(status, self.details or "")
        return self._abort

    def set_trailing_metadata(self, trailing_metadata: md.MetadataLike) -> None:
        """Metadata sent with the status, checked now (TypeError / InvalidMetadataError)."""
        items = md.check_trailing_metadata(trailing_metadata)
        md.encode_metadata(items)
        self.trailing_metadata = items

    def time_remaining(self) -> float | None:
        """Seconds left before the deadline, or ``None`` without a deadline."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - self._conn.loop.time())

    def add_done_callback(self, callback: DoneCallback) -> None:
        """Call ``callback(context)`` when the call finishes (at once if it has)."""
        if self.done:
            callback(self.context)
        else:
            self._done_callbacks.append(callback)

    # -- ending (used by the RPC runner) ---------------------------------------------------

    def finish(self, code: StatusCode, details: str | None) -> None:
        """Send the status (unless shutdown already did) and mark the call done."""
        if self.done:
            return
        self.send_status(code, details)
        self.close()

    def finish_ok(self) -> None:
        """End the call with the status the handler set (OK unless it set another)."""
        self.finish(self.code or StatusCode.OK, self.details)

    def send_status(self, code: StatusCode, details: str | None) -> None:
        """Send the status: as trailers, or trailers-only when nothing was sent."""
        if self.status_sent:
            return
        self.status_sent = True
        protocol = self._conn.protocol
        trailers = md.encode_metadata(self.trailing_metadata)
        if self.headers_sent:
            protocol.send_trailers(self.stream_id, code, details, trailers)
        else:
            protocol.send_trailers_only(self.stream_id, code, details, trailers)
        self._conn.reset_ping_policy()
        self._conn.schedule_flush()

    def close(self) -> None:
        """Mark the call done, release its credit and run the done-callbacks."""
        if self.done:
            return
        self.done = True
        if self.deadline is not None and not self.deadline_hit:
            self._conn.deadlines.ended()
        self._inbox.release()
        self._conn.call_done(self)
        if self._done_callbacks:
            context = self.context
            for callback in self._done_callbacks:
                try:
                    callback(context)
                except Exception:
                    self._conn.peer_log.log(logger, logging.ERROR, "done callback %r raised",
                                            callback, exc_info=True)
            self._done_callbacks.clear()
        # The context refers back to the call: without it the call is freed by refcounting.
        # The context is a stateless facade; a later add_done_callback gets a new one.
        self._context = None


__all__ = ["Call"]
