"""Sans-IO gRPC-over-HTTP/2 server connection: bytes in, events and bytes out.

:class:`ServerProtocol` wraps an ``h2`` connection with the gRPC rules of
grpc/grpc ``doc/PROTOCOL-HTTP2.md``: it validates request headers (answering bad ones itself),
runs each stream's bytes through a :class:`~fastinject.framing.Deframer`, and turns ``h2``'s
events into the few gRPC events the asyncio layer needs.  It never touches a socket or a
clock; timers, tasks and waiting belong to :mod:`fastinject.connection`.

Flow-control credit is *not* returned when bytes arrive: the caller acknowledges a message's
bytes with :meth:`ServerProtocol.consumed` when the application takes it, so a slow handler
stops its peer instead of growing our buffers.
"""

from __future__ import annotations

import dataclasses
import struct
import time
from collections.abc import Callable

import h2.config
import h2.errors
import h2.events
import h2.exceptions

from . import metadata as md
from ._budget import TokenBucket
from ._h2tuning import StreamRefused, TunedH2Connection
from ._hpack import HARD_HEADER_LIST_FACTOR, HeaderBlock
from .compression import accept_encoding_header, is_enabled, is_supported
from .errors import FloodError, FramingError, InvalidMetadataError, RpcError
from .frames import Fed, FrameSplitter
from .framing import Deframer
from .memory import MessageMemory
from .options import ServerSettings
from .status import StatusCode
from .stream import CreditBook, SendQueue
from .turns import FrameTurns

MAX_STREAM_ID = 2**31 - 1
_CLIENT_PREFACE_LENGTH = len(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
_ACK = 0x1
_END_HEADERS = 0x4
_HEADERS_FRAME_TYPE = 0x1
_RST_STREAM_FRAME_TYPE = 0x3
_SETTINGS_FRAME_TYPE = 0x4
_PING_FRAME_TYPE = 0x6
_GOAWAY_FRAME_TYPE = 0x7
_WINDOW_UPDATE_FRAME_TYPE = 0x8
_CONTINUATION_FRAME_TYPE = 0x9
# SETTINGS parameters (RFC 9113 6.5.2) as ints: h2's SettingCodes are enums, hashed in Python.
_ENABLE_PUSH = 0x2
_MAX_CONCURRENT_STREAMS = 0x3
_INITIAL_WINDOW_SIZE = 0x4
_MAX_FRAME_SIZE = 0x5
_MAX_HEADER_LIST_SIZE = 0x6
# A client may answer each DATA frame we send with a WINDOW_UPDATE for its stream and one for
# the connection, and widen the window of each stream it opens; WINDOW_UPDATE frames beyond
# that count against the useless-frame budget.
_WINDOW_UPDATES_PER_DATA_FRAME = 2
_H2_CONFIG = h2.config.H2Configuration(
    client_side=False,
    header_encoding=None,
    validate_inbound_headers=False,
    normalize_inbound_headers=False,
    validate_outbound_headers=False,
    normalize_outbound_headers=False,
)
_RESPONSE_HEADERS = ((b":status", b"200"), (b"content-type", b"application/grpc"))


@dataclasses.dataclass(slots=True, frozen=True)
class RequestHead:
    """What a call's request headers told us, validated.

    Shared by the calls whose headers were the same block (see :meth:`ServerProtocol._head`).
    """

    method: str
    metadata: md.Metadata
    timeout: float | None
    encoding: str | None
    accept_encoding: bytes | None
    authority: str | None


@dataclasses.dataclass(slots=True)
class CallStarted:
    """A new, valid gRPC call; ``ended`` when the client already half-closed."""

    stream_id: int
    head: RequestHead
    ended: bool


@dataclasses.dataclass(slots=True)
class MessagesReceived:
    """Complete messages ``(payload, compressed)`` arrived on a call.

    Their credit is returned as they are consumed, less ``prepaid`` bytes (of the first one)
    whose credit went back while it was still being assembled.
    """

    stream_id: int
    messages: list[tuple[bytes, bool]]
    prepaid: int


@dataclasses.dataclass(slots=True)
class RequestEnded:
    """The client half-closed the call; no more messages will come."""

    stream_id: int


@dataclasses.dataclass(slots=True)
class CallFailed:
    """The call broke a rule; it must end with ``status`` (the stream is reset after it)."""

    stream_id: int
    status: StatusCode
    details: str


@dataclasses.dataclass(slots=True)
class CallReset:
    """The client reset the stream (cancellation); the call must stop, nothing more is sent."""

    stream_id: int
    error_code: int


@dataclasses.dataclass(slots=True)
class WindowOpened:
    """Send window grew (``stream_id`` 0 = the whole connection)."""

    stream_id: int


@dataclasses.dataclass(slots=True)
class PingReceived:
    """The client sent a PING (already acknowledged); the caller applies the abuse policy."""


@dataclasses.dataclass(slots=True)
class PingAcked:
    """A PING we sent was acknowledged."""

    opaque: bytes


@dataclasses.dataclass(slots=True)
class ConnectionClosedByPeer:
    """The client sent GOAWAY, or broke the protocol so badly that the connection is over."""

    error_code: int
    reason: str


Event = (
    CallStarted
    | MessagesReceived
    | RequestEnded
    | CallFailed
    | CallReset
    | WindowOpened
    | PingReceived
    | PingAcked
    | ConnectionClosedByPeer
)


class _StreamState:
    """Per-stream receive state: the deframer and bytes awaiting acknowledgement."""

    __slots__ = ("deframer", "failed", "held", "prepaid")

    def __init__(self, max_message_length: int) -> None:
        self.deframer = Deframer(max_message_length)
        self.failed = False
        self.held = 0  # deframer.held as last counted in ServerProtocol.partial_message_bytes
        # Bytes of the message being assembled whose credit was already returned: a message
        # larger than the window must be able to arrive before anyone can consume it.
        self.prepaid = 0


class ServerProtocol(FrameSplitter):
    """One server-side gRPC/HTTP/2 connection, without I/O.

    Feed received bytes to :meth:`receive` and send what :meth:`data_to_send` returns after
    every batch of calls.
    """

    def __init__(
        self,
        settings: ServerSettings,
        clock: Callable[[], float] = time.monotonic,
        memory: MessageMemory | None = None,
        turns: FrameTurns | None = None,
    ) -> None:
        self.settings = settings
        self._accept_encoding = (
            b"grpc-accept-encoding", accept_encoding_header(settings.enabled_compression)
        )
        # Our settings are sent as an update, so that (RFC 9113 6.9.3) they bind the client only
        # once it acknowledges them: bytes it sent before seeing them are within the defaults.
        self._h2 = TunedH2Connection.started(
            _H2_CONFIG,
            (
                (_MAX_CONCURRENT_STREAMS, settings.max_concurrent_streams),
                (_INITIAL_WINDOW_SIZE, settings.initial_stream_window_size),
                (_MAX_FRAME_SIZE, settings.max_frame_size),
                (_MAX_HEADER_LIST_SIZE, settings.max_header_list_size),
                (_ENABLE_PUSH, 0),
            ),
            settings.initial_connection_window_size - 65535,
        )
        self._streams: dict[int, _StreamState] = {}
        # Bytes the deframers hold for messages still being received, and the cap on them.
        self.partial_message_bytes = 0
        self._partial_message_limit = max(
            settings.max_partial_message_bytes, settings.max_receive_message_length + 5
        )
        # The server's budget over all its connections (this connection's own, when alone).
        self._memory = MessageMemory.for_settings(settings) if memory is None else memory
        # The streams holding bytes, those holding them the longest first.
        self._holding: dict[int, _StreamState] = {}
        # Calls failed to keep that budget while another connection was receiving: they are
        # reported by the next receive() or take_shed(); on_shed() says there are some.
        self._shed: list[Event] = []
        self.on_shed: Callable[[], None] | None = None
        self._goaway_last_stream_id = MAX_STREAM_ID
        self.highest_stream_id = 0
        self.closed = False
        self._inbound = bytearray()  # the start of a frame not yet received whole
        # Whole frames left over when a turn's frame budget ran out (see has_backlog).
        self._backlog: memoryview | None = None
        # The loop turn's frame budget over all the server's connections (its own, when alone).
        self._turns = turns
        self._frames_granted = self._frames_left = 0
        self._failed = False  # we ended the connection (abuse, protocol error): read no more
        self._preface_left = _CLIENT_PREFACE_LENGTH
        self._resets = TokenBucket(settings.stream_reset_burst, settings.stream_reset_rate, clock)
        self._useless = TokenBucket(
            settings.useless_frame_burst, settings.useless_frame_rate, clock
        )
        self._window_update_allowance = 0
        self._data_frames_counted = 0  # the h2 count of DATA frames sent, when last looked at
        self._header_block_size = 0  # bytes of a header block still waiting for END_HEADERS
        # Streams opened by whole request header blocks, whose calls start with the next run of
        # frames handed to h2 (see _feed_h2): (stream id, headers, half-closed).
        self._opened: list[tuple[int, list[tuple[bytes, bytes]], bool]] = []
        # Answers the client made us queue (SETTINGS and PING ACKs, RST_STREAM, rejections)
        # since our output last drained; see output_drained().
        self.answers_owed = 0
        self.settings_received = False  # the client's preface ended with its first SETTINGS
        # The one owner of the flow-control credit owed to the client, per stream, returned at
        # the next flush: one h2 call (at most one WINDOW_UPDATE) per stream, not per message.
        # Each call's Inbox adds the credit of the messages its handler takes.
        # Credit is returned to h2 once a quarter of the smallest receive window (65,535 bytes
        # until the client acknowledges ours) is owed; h2 writes a WINDOW_UPDATE once half a
        # window is returned.  Less than three quarters of a window is then ever held back,
        # so a client that has stopped for want of window always gets one, and a client
        # streaming small messages costs no flush and no h2 call per message.
        self.credit = CreditBook(flush_after=min(
            65_535, settings.initial_stream_window_size, settings.initial_connection_window_size
        ) // 4)
        # Response messages not yet given to h2, per stream, with mirrors of the send windows:
        # consecutive small messages of a stream leave as one DATA frame per flush.
        self.outbound = SendQueue(self._h2.outbound_flow_control_window)
        # Final HEADERS (trailers) of calls that ended while DATA was still queued behind a
        # window the client shrank: they leave once that DATA has, as grpc core's do.
        self._final_headers: dict[int, list[tuple[bytes, bytes]]] = {}

    # -- receiving ------------------------------------------------------------------------

    def receive(self, data: bytes) -> list[Event]:
        """Process received bytes and return the gRPC events they produced.

        At most the frames granted by the server's turn budget (``max_frames_per_turn`` when
        alone, see :class:`~fastinject.turns.FrameTurns`) are handled per call; the rest waits (see
        :attr:`has_backlog`) for the next call, which may pass ``b""``.
        """
        events: list[Event] = []
        if self._failed:
            return events
        if self._backlog is not None:
            backlog, self._backlog = self._backlog, None
            data = bytes(backlog) + data if data else backlog  # type: ignore[assignment]
        turns = self._turns
        self._frames_left = self._frames_granted = (
            self.settings.max_frames_per_turn if turns is None else turns.grant()
        )
        try:
            self._receive_frames(data, events)
        except h2.exceptions.ProtocolError as exc:
            # h2 has queued its GOAWAY: the connection is over, nothing more is read.
            self.closed = self._failed = True
            self._backlog = None
            self._opened = []
            code = getattr(exc, "error_code", h2.errors.ErrorCodes.PROTOCOL_ERROR)
            return [ConnectionClosedByPeer(int(code), f"HTTP/2 protocol error: {exc}")]
        except FloodError as exc:
            self.closed = self._failed = True
            self._backlog = None
            self._opened = []
            self._h2.terminate(exc.http2_error_code, exc.debug)
            events.append(ConnectionClosedByPeer(exc.http2_error_code, str(exc)))
        if self._shed:
            events.extend(self.take_shed())
        return events

    @property
    def frames_handled(self) -> int:
        """How many frames the last :meth:`receive` handled (at most what it was granted)."""
        return self._frames_granted - self._frames_left

    @property
    def has_backlog(self) -> bool:
        """Whether received frames wait for another :meth:`receive` (the turn's budget ran out)."""
        return self._backlog is not None

    def output_drained(self) -> None:
        """Everything queued for the peer has left: the answers we owed are paid."""
        self.answers_owed = 0

    def _receive_frames(self, data: bytes, events: list[Event]) -> None:
        """Handle the frames completed by ``data``, in order; keep an incomplete one for later.

        A frame carried over from the last read is completed with just the bytes it lacks,
        so a large read is never copied to join it.
        """
        view = memoryview(data)
        if self._inbound:
            carried = self._inbound
            missing = self._missing(carried, view)
            if missing > len(view):
                carried += view  # a large frame arriving in many reads is appended, not re-joined
                return
            carried += view[:missing]
            self._inbound = bytearray()
            self._scan(carried, events)
            view = view[missing:]
        tail = self._scan(view, events)
        if tail < len(view):
            if self._frames_left <= 0:
                self._backlog = view[tail:] if isinstance(data, bytes) else memoryview(
                    bytes(view[tail:])
                )
            else:
                self._inbound = bytearray(view[tail:])

    def _missing(self, carried: bytearray, more: memoryview) -> int:
        """How many bytes of ``more`` complete the frame that ``carried`` starts.

        When ``carried`` lacks part of the frame header, the header is completed from ``more``
        (or, if ``more`` is too short for that, more than ``len(more)`` is returned).
        """
        header = carried[:9] if len(carried) >= 9 else carried + more[: 9 - len(carried)]
        if len(header) < 9:
            return 9 - len(carried)  # more than ``more`` holds
        length = header[0] << 16 | header[1] << 8 | header[2]
        if length > self._h2.max_inbound_frame_size:
            self._h2.refuse_overlong_frame(length)
        return 9 + length - len(carried)

    def _police(self, frame_type: int, flags: int, length: int) -> None:
        """Count a frame other than DATA or a whole HEADERS block against the peer's budgets.

        Raises :class:`FloodError` when one runs out.  PING is policed by the connection's
        ping-strike rule; here it only adds to the answers owed.
        """
        if frame_type == _RST_STREAM_FRAME_TYPE:
            self._spend_reset()
        elif frame_type == _PING_FRAME_TYPE:
            if not flags & _ACK:
                self._owe_answer()
        elif frame_type == _SETTINGS_FRAME_TYPE:
            if not flags & _ACK:
                self._owe_answer()
                self._spend_useless("SETTINGS")
        elif frame_type == _WINDOW_UPDATE_FRAME_TYPE:
            sent = self._h2.data_frames_sent
            allowance = self._window_update_allowance + _WINDOW_UPDATES_PER_DATA_FRAME * (
                sent - self._data_frames_counted
            )
            self._data_frames_counted = sent
            if allowance > 0:
                allowance -= 1
            else:
                self._spend_useless("WINDOW_UPDATE")
            self._window_update_allowance = allowance
        elif frame_type == _HEADERS_FRAME_TYPE:  # a header block continued in CONTINUATION
            self._header_block_size = length
        elif frame_type == _CONTINUATION_FRAME_TYPE:
            if flags & _END_HEADERS:
                self._header_block_size = 0
                return
            if length == 0:
                self._spend_useless("empty CONTINUATION")
            self._header_block_size += length
            limit = HARD_HEADER_LIST_FACTOR * self.settings.max_header_list_size
            if self._header_block_size > limit:
                raise FloodError(
                    "header_block_too_large",
                    f"a header block of over {limit} bytes (4 x max_header_list_size) "
                    "is still not complete",
                )
        elif frame_type != 0x5:  # PUSH_PROMISE is h2's to refuse; PRIORITY, GOAWAY, unknown
            self._spend_useless(f"frame type {frame_type}")

    def _spend_reset(self) -> None:
        """A stream the client reset, or opened without making a call."""
        if not self._resets.spend():
            s = self.settings
            raise FloodError(
                "too_many_resets",
                f"too many streams reset or abandoned by the client (stream_reset_burst="
                f"{s.stream_reset_burst}, stream_reset_rate={s.stream_reset_rate:g}/s)",
            )

    def _spend_useless(self, what: str) -> None:
        if not self._useless.spend():
            s = self.settings
            raise FloodError(
                "too_many_useless_frames",
                f"too many frames that carry no call, the last one {what} (useless_frame_burst="
                f"{s.useless_frame_burst}, useless_frame_rate={s.useless_frame_rate:g}/s)",
            )

    def _owe_answer(self) -> None:
        self.answers_owed += 1
        if self.answers_owed > self.settings.max_pending_control_frames:
            raise FloodError(
                "too_many_pending_control_frames",
                f"the client does not read: over {self.settings.max_pending_control_frames} "
                "answers queued (max_pending_control_frames)",
            )

    def _feed_h2(self, frames: memoryview, events: list[Event]) -> None:
        """Hand a run of frames to h2, start the calls opened before it, act on h2's events.

        Calls opened by :meth:`TunedH2Connection.receive_request` start only here, as if h2 had
        parsed their HEADERS in this run: a stream the run resets (rapid reset in one write)
        then starts no call, and what the run does to a call comes after its start.
        """
        h2_events = self._h2.receive_data(frames) if frames else []
        opened, self._opened = self._opened, []
        for stream_id, headers, ended in opened:
            self._on_request(stream_id, headers, ended, events)
            if ended:
                self._on_stream_ended(stream_id, events)
        for event in h2_events:
            if isinstance(event, h2.events.DataReceived):
                stream_id = event.stream_id
                data = event.data or b""
                self._on_data(stream_id, self._streams.get(stream_id), data,
                              event.flow_controlled_length or 0, events)
            elif isinstance(event, h2.events.RequestReceived):
                self._on_request(event.stream_id, event.headers or [],
                                 event.stream_ended is not None, events)
            elif isinstance(event, h2.events.StreamEnded):
                self._on_stream_ended(event.stream_id, events)
            elif isinstance(event, h2.events.WindowUpdated):
                stream_id = event.stream_id or 0
                self._mirror_window(stream_id)
                events.append(WindowOpened(stream_id))
            elif isinstance(event, h2.events.StreamReset):
                self.outbound.close(event.stream_id)
                self._final_headers.pop(event.stream_id, None)
                if self._forget(event.stream_id) is not None:
                    events.append(CallReset(event.stream_id, int(event.error_code or 0)))
            elif isinstance(event, h2.events.RemoteSettingsChanged):
                self._on_remote_settings(events)
            elif isinstance(event, h2.events.PingReceived):
                events.append(PingReceived())
            elif isinstance(event, h2.events.PingAckReceived):
                events.append(PingAcked(bytes(event.ping_data or b"")))
            elif isinstance(event, h2.events.ConnectionTerminated):
                self._closed_by_peer(int(event.error_code or 0), events)
            elif isinstance(event, h2.events.TrailersReceived):
                self._fail(event.stream_id, StatusCode.INTERNAL, "unexpected request trailers",
                           events)
            elif isinstance(event, StreamRefused):
                self._abandoned()  # over max_concurrent_streams: refused, no call

    def _on_connection_window(self, events: list[Event]) -> None:
        """The client widened the connection's send window."""
        self._mirror_window(0)
        events.append(WindowOpened(0))

    def _closed_by_peer(self, error_code: int, events: list[Event]) -> None:
        """The client sent GOAWAY with ``error_code``."""
        self.closed = True
        events.append(ConnectionClosedByPeer(error_code, "client sent GOAWAY"))

    def _on_remote_settings(self, events: list[Event]) -> None:
        """The client's SETTINGS were applied (and acknowledged)."""
        self.settings_received = True
        for stream_id in self.outbound.stream_ids():  # INITIAL_WINDOW_SIZE moves them
            self._mirror_window(stream_id)
        events.append(WindowOpened(0))

    def _on_request(
        self, stream_id: int, headers: list[tuple[bytes, bytes]], ended: bool, events: list[Event]
    ) -> None:
        """A client opened ``stream_id`` with request ``headers``, ``ended`` if half-closed.

        The request's end itself follows as :meth:`_on_stream_ended`.
        """
        self._window_update_allowance += 1  # clients may widen a new stream's window at once
        if stream_id > self._goaway_last_stream_id:
            self._owe_answer()
            self._h2.reset_stream(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        self.highest_stream_id = max(self.highest_stream_id, stream_id)
        stream = self._h2.streams.get(stream_id)
        if stream is None or stream.closed:
            # Reset by the client in the same read (rapid reset): no call is started, which
            # costs no task; its RST_STREAM spent a token of the reset budget.
            return
        if self._memory.refuses(self):
            # This connection holds its share of a server budget nearly used up: no new call
            # (shedding one later would cost its start, task and status).  grpc core answers
            # memory pressure so (clients see RESOURCE_EXHAUSTED).
            self._abandoned()
            self._h2.reset_stream(stream_id, h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
            return
        try:
            head = self._head(headers)
        except _HttpRejection as rejection:
            self._abandoned()
            self._send_http_error(stream_id, rejection)
            return
        except (RpcError, InvalidMetadataError) as exc:
            self._abandoned()
            self.send_trailers_only(stream_id, exc.status, str(exc), ())
            return
        self._streams[stream_id] = _StreamState(self.settings.max_receive_message_length)
        self.outbound.open(stream_id, stream.outbound_flow_control_window)
        events.append(CallStarted(stream_id, head, ended))

    def _abandoned(self) -> None:
        """A stream opened without a call (a rejected request): as costly as a reset one."""
        self._owe_answer()
        self._spend_reset()

    def _head(self, headers: object) -> RequestHead:
        """The request head ``headers`` give under this server's settings.

        A header block the HPACK memo remembers keeps its head (for the settings it was parsed
        under): a client's repeated requests are parsed once, not once per call.
        """
        if headers.__class__ is not HeaderBlock:
            return self._parse_head(headers)
        known = headers.head
        if known is not None and known[0] is self.settings:
            return known[1]  # type: ignore[no-any-return]
        head = self._parse_head(headers)
        headers.head = (self.settings, head)
        return head

    def _parse_head(self, headers: object) -> RequestHead:
        method = path = content_type = authority = None
        timeout: float | None = None
        encoding: str | None = None
        accept_encoding: bytes | None = None
        size = 0
        for name, value in headers:  # type: ignore[attr-defined]
            size += len(name) + len(value)
            if name[0] == 58:  # b":"
                if name == b":path":
                    path = value
                elif name == b":method":
                    method = value
                elif name == b":authority":
                    authority = value
            elif name == b"content-type":
                content_type = value
            elif name == b"grpc-timeout":
                timeout = md.parse_timeout(value)
            elif name == b"grpc-encoding":
                encoding = value.decode("ascii", "replace")
            elif name == b"grpc-accept-encoding":
                accept_encoding = value
        size += 32 * len(headers)  # type: ignore[arg-type]  # RFC 9113 6.5.2: 32 per field
        if size > self.settings.max_header_list_size:
            raise RpcError(
                f"request metadata of {size} bytes exceeds the limit of "
                f"{self.settings.max_header_list_size} (max_header_list_size)",
                StatusCode.RESOURCE_EXHAUSTED,
            )
        if content_type is None or not content_type.startswith(b"application/grpc"):
            raise _HttpRejection(415, f"content-type {content_type!r} is not application/grpc")
        if method != b"POST":
            raise _HttpRejection(405, f"method {method!r} is not POST")
        if not path or path[0] != 47:  # b"/"
            raise RpcError(f"malformed method path {path!r}", StatusCode.UNIMPLEMENTED)
        if encoding is not None and encoding != "identity":
            if not is_supported(encoding):
                raise RpcError(
                    f"grpc-encoding {encoding!r} is not supported; accepted: "
                    f"{self._accept_encoding[1].decode()}",
                    StatusCode.UNIMPLEMENTED,
                )
            if not is_enabled(encoding, self.settings.enabled_compression):
                # grpc core's answer, word for word.
                raise RpcError(
                    f"Compression algorithm '{encoding}' is disabled.", StatusCode.UNIMPLEMENTED
                )
        return RequestHead(
            path.decode("utf-8", "replace"),
            md.decode_metadata(headers),  # type: ignore[arg-type]
            timeout,
            encoding,
            accept_encoding,
            authority.decode("utf-8", "replace") if authority else None,
        )

    def _on_data(
        self,
        stream_id: int,
        state: _StreamState | None,
        data: bytes | memoryview,
        flow_controlled_length: int,
        events: list[Event],
    ) -> None:
        padding = flow_controlled_length - len(data)
        if padding:
            self._return_credit(stream_id, padding)
        if state is None or state.failed:
            # Nobody will consume these bytes: give the credit back at once.
            if data:
                self._return_credit(stream_id, len(data))
            return
        try:
            fed: Fed = (state.deframer.feed(data), len(data), None)
        except FramingError as exc:
            fed = ([], 0, exc)
        self._deframe(stream_id, state, fed, len(data), events)

    def _deframe(
        self, stream_id: int, state: _StreamState, fed: Fed, size: int, events: list[Event]
    ) -> None:
        """Account for ``size`` bytes of DATA payload of a live call that its deframer was fed.

        ``fed`` is what feeding it gave: the messages, the bytes fed before a failure and the
        failure (see :func:`~fastinject.frames.deframe_data_run`).  The limits on bytes held for
        partial messages are checked once for all of them.
        """
        messages, fed_before_failure, failure = fed
        if failure is not None:
            # The bytes fed before the failure count as received (their messages and their
            # early credit); the bytes of the partial message they left, and the rest, are
            # credited back now: nobody will read them.
            partial = state.prepaid + fed_before_failure - sum(len(m) + 5 for m, _ in messages)
            if messages:
                events.append(MessagesReceived(stream_id, messages, state.prepaid))
                state.prepaid = 0
            self._return_credit(stream_id, partial - state.prepaid + size - fed_before_failure)
            self._fail(stream_id, failure.status, str(failure), events)
            return
        if messages:
            events.append(MessagesReceived(stream_id, messages, state.prepaid))
            state.prepaid = 0
        advance = state.deframer.buffered - state.prepaid
        if advance > 0:
            self._return_credit(stream_id, advance)
            state.prepaid += advance
        held = state.deframer.held
        if held == state.held:
            return
        self._hold(stream_id, state, held)
        if self.partial_message_bytes > self._partial_message_limit:
            # Early credit lets a peer fill every stream up to its message limit; this bounds
            # the sum.  The stream crossing it fails (as grpc core cancels a stream when its
            # memory quota is exhausted); the others carry on.
            self._fail(stream_id, StatusCode.RESOURCE_EXHAUSTED,
                       f"request messages being received on this connection hold over "
                       f"{self._partial_message_limit} bytes (max_partial_message_bytes)", events)
        elif self._memory.over:
            # Over the server's budget: the connection holding the most pays, which may be
            # this one (its calls fail in order with the others) or another.
            self._memory.reclaim()
            if self._shed:
                events.extend(self.take_shed())

    def _hold(self, stream_id: int, state: _StreamState, held: int) -> None:
        """Account that a stream's deframer now holds ``held`` bytes, here and server-wide."""
        delta = held - state.held
        if not held:
            del self._holding[stream_id]
        elif not state.held:
            self._holding[stream_id] = state
        state.held = held
        self.partial_message_bytes += delta
        self._memory.change(self, delta)

    def shed_stream(self) -> None:
        """Fail the call that has held bytes the longest: the server's budget is exhausted.

        Its :class:`CallFailed` is reported by :meth:`take_shed` (and the next :meth:`receive`).
        """
        stream_id = next(iter(self._holding))
        self._fail(stream_id, StatusCode.RESOURCE_EXHAUSTED,
                   f"request messages being received by this server hold over "
                   f"{self._memory.limit} bytes (max_server_partial_message_bytes)", self._shed)
        if self.on_shed is not None:
            self.on_shed()

    def take_shed(self) -> list[Event]:
        """The calls failed by :meth:`shed_stream` since last asked."""
        shed, self._shed = self._shed, []
        return shed

    def release_memory(self) -> None:
        """The connection is gone: drop every partly received message (its budget share)."""
        for stream_id in list(self._streams):
            self._forget(stream_id)

    def _on_stream_ended(self, stream_id: int, events: list[Event]) -> None:
        state = self._streams.get(stream_id)
        if state is None or state.failed:
            return
        try:
            state.deframer.close()
        except FramingError as exc:
            self._fail(stream_id, exc.status, str(exc), events)
            return
        events.append(RequestEnded(stream_id))

    def _fail(self, stream_id: int, status: StatusCode, details: str, events: list[Event]) -> None:
        state = self._streams.get(stream_id)
        if state is not None:
            state.failed = True
            if state.held:
                self._hold(stream_id, state, 0)
            state.deframer = Deframer(0)  # drops the partial message now; nothing more is fed
        events.append(CallFailed(stream_id, status, details))

    def _forget(self, stream_id: int) -> _StreamState | None:
        """Drop a stream's receive state (and its share of :attr:`partial_message_bytes`)."""
        state = self._streams.pop(stream_id, None)
        if state is not None and state.held:
            self._hold(stream_id, state, 0)
        return state

    # -- flow control -----------------------------------------------------------------------

    def consumed(self, stream_id: int, size: int) -> None:
        """The application took a message of ``size`` wire bytes: return that credit."""
        self._return_credit(stream_id, size)

    def _return_credit(self, stream_id: int, size: int) -> None:
        """Give ``size`` bytes of window back to the client at the next flush."""
        self.credit.add(stream_id, size)

    def _mirror_window(self, stream_id: int) -> None:
        """Tell the outbound queue h2's send window of ``stream_id`` (0: the connection)."""
        if stream_id == 0:
            self.outbound.update_window(0, self._h2.outbound_flow_control_window)
            return
        stream = self._h2.streams.get(stream_id)
        if stream is not None:
            self.outbound.update_window(stream_id, stream.outbound_flow_control_window)

    def send_window(self, stream_id: int) -> int:
        """Bytes that may be sent on ``stream_id`` now, or -1 when the stream is gone.

        The least of the stream's and the connection's windows, less what is already queued
        (0 while that is negative: the client lowered SETTINGS_INITIAL_WINDOW_SIZE).
        """
        return self.outbound.window(stream_id)

    @property
    def max_frame_size(self) -> int:
        """Largest DATA frame the peer accepts."""
        return self._h2.max_outbound_frame_size

    # -- sending ----------------------------------------------------------------------------

    def send_headers(
        self, stream_id: int, metadata: list[tuple[bytes, bytes]], encoding: str | None
    ) -> None:
        """Send response headers; ``encoding`` names the message compression, if any.

        Raises :class:`StreamGone` when the stream or connection can no longer send.
        """
        headers = [*_RESPONSE_HEADERS, self._accept_encoding]
        if encoding is not None:
            headers.append((b"grpc-encoding", encoding.encode("ascii")))
        headers.extend(metadata)
        try:
            self._h2.send_header_block(stream_id, headers, end_stream=False)
        except h2.exceptions.ProtocolError as exc:
            raise StreamGone(stream_id) from exc

    def send_data(self, stream_id: int, data: bytes | memoryview) -> None:
        """Queue framed DATA that fits the current window (the caller checks :meth:`send_window`).

        Queued DATA reaches h2 at the next :meth:`data_to_send` (or before the stream's
        trailers).  Raises :class:`StreamGone` when the stream can no longer send.
        """
        try:
            self.outbound.write(stream_id, data)
        except KeyError:
            raise StreamGone(stream_id) from None

    @property
    def queued_bytes(self) -> int:
        """DATA bytes queued on all streams."""
        return self.outbound.queued_bytes

    def _flush_queued(self) -> None:
        """Hand every stream's queued DATA to h2, as few frames as the frame size allows."""
        for stream_id in self.outbound.pending():
            self._flush_stream(stream_id)

    def _flush_stream(self, stream_id: int) -> None:
        if not self.outbound.queued(stream_id):
            return
        try:
            # The window can only be smaller than what is queued if the peer lowered
            # INITIAL_WINDOW_SIZE; what no longer fits stays queued for a later flush.
            self._h2.send_data_frames(stream_id, self.outbound)
        except h2.exceptions.StreamClosedError:
            self.outbound.drop(stream_id)  # the stream was reset meanwhile: nobody reads it
            self._final_headers.pop(stream_id, None)
            return
        if stream_id in self._final_headers and not self.outbound.queued(stream_id):
            self._send_final_headers(stream_id, self._final_headers.pop(stream_id))

    @property
    def trailers_waiting(self) -> bool:
        """Whether calls that ended still have trailers (and DATA) waiting for the window."""
        return bool(self._final_headers)

    def send_trailers(
        self,
        stream_id: int,
        status: StatusCode,
        details: str | None,
        metadata: list[tuple[bytes, bytes]],
    ) -> None:
        """End the response with ``grpc-status`` trailers, then stop the request side too."""
        trailers = [(b"grpc-status", _STATUS_BYTES[status])]
        if details:
            trailers.append((b"grpc-message", md.encode_grpc_message(details)))
        trailers.extend(metadata)
        self._end_stream(stream_id, trailers)

    def send_trailers_only(
        self,
        stream_id: int,
        status: StatusCode,
        details: str | None,
        metadata: list[tuple[bytes, bytes]] | tuple[()],
    ) -> None:
        """Answer with a single HEADERS frame carrying the status (nothing else was sent)."""
        headers = [
            *_RESPONSE_HEADERS, self._accept_encoding, (b"grpc-status", _STATUS_BYTES[status])
        ]
        if details:
            headers.append((b"grpc-message", md.encode_grpc_message(details)))
        headers.extend(metadata)
        self._end_stream(stream_id, headers)

    def _send_http_error(self, stream_id: int, rejection: _HttpRejection) -> None:
        headers = [
            (b":status", str(rejection.http_status).encode()),
            (b"content-type", b"text/plain"),
            (b"grpc-status", _STATUS_BYTES[StatusCode.INTERNAL]),
            (b"grpc-message", md.encode_grpc_message(rejection.reason)),
        ]
        self._end_stream(stream_id, headers)

    def _end_stream(self, stream_id: int, headers: list[tuple[bytes, bytes]]) -> None:
        """Send the final HEADERS; if the client still sends, ask it to stop (RFC 9113 8.1).

        They follow the stream's queued DATA: if a window the client shrank holds some of it
        back, they wait for it in :attr:`_final_headers`.  A stream the client already reset
        (or a closed connection) gets nothing: no one listens.
        """
        self._forget(stream_id)
        self._flush_stream(stream_id)
        if self.outbound.queued(stream_id):  # the client shrank its window meanwhile
            self._final_headers[stream_id] = headers
            return
        self._send_final_headers(stream_id, headers)

    def _send_final_headers(self, stream_id: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.outbound.close(stream_id)
        try:
            self._h2.send_header_block(stream_id, headers, end_stream=True)
        except h2.exceptions.ProtocolError:
            return
        self._h2.finish_stream(stream_id, h2.errors.ErrorCodes.NO_ERROR)

    def reset(self, stream_id: int, error_code: int = h2.errors.ErrorCodes.CANCEL) -> None:
        """Reset a stream (the call is abandoned, queued DATA with it)."""
        self._forget(stream_id)
        self.outbound.close(stream_id)
        self._final_headers.pop(stream_id, None)
        self._h2.finish_stream(stream_id, error_code)

    def ping(self, opaque: bytes) -> bool:
        """Send a PING with 8 bytes of ``opaque`` data; False if the connection cannot send."""
        try:
            self._h2.ping(opaque)
        except h2.exceptions.ProtocolError:
            return False
        return True

    def goaway(self, last_stream_id: int, error_code: int = 0, debug: bytes = b"") -> None:
        """Queue a GOAWAY frame; calls on streams above ``last_stream_id`` will be refused.

        Written here rather than with ``h2``'s ``close_connection``, which moves h2 to its
        closed state and would reject the frames of the calls we still want to finish.
        """
        self._goaway_last_stream_id = min(self._goaway_last_stream_id, last_stream_id)
        payload = struct.pack(">II", self._goaway_last_stream_id, error_code) + debug
        header = struct.pack(">I", len(payload))[1:] + bytes((_GOAWAY_FRAME_TYPE, 0)) + b"\0" * 4
        # The frame goes after whatever is queued, preserving order on the wire.
        self._flush_queued()
        self._h2.send_raw_frame(header + payload)

    def buffers_to_send(self) -> list[bytes | memoryview]:
        """What to write to the transport now, in order (for ``writelines``)."""
        credit = self.credit.take()  # None below a quarter window (see __init__)
        if credit:
            self._h2.return_credit(credit)
        if self.outbound.queued_bytes:
            self._flush_queued()
        return self._h2.buffers_to_send()

    def data_to_send(self) -> bytes:
        """Bytes to write to the transport now."""
        return b"".join(self.buffers_to_send())


class StreamGone(Exception):
    """The stream was reset or the connection closed: nothing more can be sent on it."""


class _HttpRejection(Exception):
    """A request that is not gRPC at the HTTP level (answered with an HTTP error status)."""

    def __init__(self, http_status: int, reason: str) -> None:
        super().__init__(reason)
        self.http_status = http_status
        self.reason = reason


_STATUS_BYTES = {code: str(code.number).encode() for code in StatusCode}

__all__ = [
    "CallFailed",
    "CallReset",
    "CallStarted",
    "ConnectionClosedByPeer",
    "Event",
    "MessagesReceived",
    "PingAcked",
    "PingReceived",
    "RequestEnded",
    "RequestHead",
    "ServerProtocol",
    "StreamGone",
    "WindowOpened",
]
