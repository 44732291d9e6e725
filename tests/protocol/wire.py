"""A raw HTTP/2 gRPC client on ``h2`` that records every frame the server sends.

:class:`H2Client` is sans-IO: feed it the server's bytes with :meth:`H2Client.receive`, send
what :meth:`H2Client.data_to_send` returns.  It can drive a
:class:`fastinject.protocol.ServerProtocol` directly (see :func:`exchange`) or a real server
over a socket (:class:`Wire`).

Frames are split before ``h2`` sees them, so tests can check exactly what went on the wire.
GOAWAY frames are recorded and *not* given to ``h2`` (whose state machine refuses to do
anything after one), so a test can keep using the connection between the two GOAWAYs of a
graceful close.  With ``auto_ack_pings=False`` the server's PINGs are withheld from ``h2`` too
and acknowledged only when the test says so (:meth:`H2Client.ack_ping`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import struct
from collections.abc import Awaitable, Callable, Iterable, Sequence

import h2.config
import h2.connection
import h2.events
import h2.settings
from h2.settings import SettingCodes

from fastinject.metadata import decode_grpc_message
from fastinject.options import ServerSettings
from fastinject.protocol import Event, ServerProtocol

DATA = 0x0
HEADERS = 0x1
PRIORITY = 0x2
RST_STREAM = 0x3
SETTINGS = 0x4
PING = 0x6
GOAWAY = 0x7
WINDOW_UPDATE = 0x8
CONTINUATION = 0x9
ACK = 0x1
END_STREAM = 0x1

NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
REFUSED_STREAM = 0x7
CANCEL = 0x8
ENHANCE_YOUR_CALM = 0xB

MAX_STREAM_ID = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class Frame:
    """One HTTP/2 frame as received."""

    type: int
    flags: int
    stream_id: int
    payload: bytes


@dataclasses.dataclass(frozen=True)
class GoAway:
    """A GOAWAY frame's fields."""

    last_stream_id: int
    error_code: int
    debug: bytes


@dataclasses.dataclass
class Response:
    """Everything the server sent on one stream."""

    headers: list[tuple[bytes, bytes]] | None = None
    body: bytearray = dataclasses.field(default_factory=bytearray)
    trailers: list[tuple[bytes, bytes]] | None = None
    ended: bool = False
    reset: int | None = None

    @property
    def done(self) -> bool:
        """Whether the server finished the stream (END_STREAM or RST_STREAM)."""
        return self.ended or self.reset is not None

    @property
    def header_map(self) -> dict[bytes, bytes]:
        """The response headers as a dict (the last value of a repeated name wins)."""
        return dict(self.headers or ())

    @property
    def trailers_only(self) -> bool:
        """Whether the status came in the one and only HEADERS frame."""
        return self.trailers is None and b"grpc-status" in self.header_map

    @property
    def status_map(self) -> dict[bytes, bytes]:
        """Where the status is: the trailers, or the headers of a trailers-only response."""
        return dict(self.trailers) if self.trailers is not None else self.header_map

    @property
    def status(self) -> int | None:
        """The ``grpc-status`` as an int, or None if the server sent none."""
        value = self.status_map.get(b"grpc-status")
        return None if value is None else int(value)

    @property
    def message(self) -> str:
        """The ``grpc-message``, percent-decoded ("" if absent)."""
        return decode_grpc_message(self.status_map.get(b"grpc-message", b""))

    @property
    def messages(self) -> list[tuple[bool, bytes]]:
        """The gRPC messages of the body as ``(compressed, payload)``, still compressed."""
        return parse_messages(bytes(self.body))


def grpc_frame(payload: bytes, compressed: bool = False) -> bytes:
    """``payload`` with its 5-byte gRPC message prefix."""
    return struct.pack(">BI", 1 if compressed else 0, len(payload)) + payload


def parse_messages(body: bytes) -> list[tuple[bool, bytes]]:
    """Split a response body into ``(compressed, payload)`` messages; it must end on a boundary."""
    messages = []
    offset = 0
    while offset < len(body):
        if len(body) - offset < 5:
            raise AssertionError(f"truncated message prefix at offset {offset}")
        flag, length = struct.unpack_from(">BI", body, offset)
        if flag not in (0, 1):
            raise AssertionError(f"invalid message flag {flag}")
        payload = body[offset + 5 : offset + 5 + length]
        if len(payload) != length:
            raise AssertionError(f"truncated message: {len(payload)} of {length} bytes")
        messages.append((flag == 1, payload))
        offset += 5 + length
    return messages


def raw_frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    """The bytes of one HTTP/2 frame."""
    header = struct.pack(">I", len(payload))[1:] + struct.pack(">BBI", kind, flags, stream_id)
    return header + payload


def request_headers(
    path: bytes = b"/test.Echo/Unary",
    *,
    extra: Sequence[tuple[bytes, bytes]] = (),
    accept_encoding: bytes | None = b"identity,deflate,gzip",
) -> list[tuple[bytes, bytes]]:
    """The headers of a well-formed gRPC request, plus ``extra``."""
    headers = [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", path),
        (b":authority", b"localhost"),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
    ]
    if accept_encoding is not None:
        headers.append((b"grpc-accept-encoding", accept_encoding))
    headers.extend(extra)
    return headers


class H2Client:
    """A sans-IO HTTP/2 client connection that records what the server sends."""

    def __init__(
        self,
        *,
        initial_window_size: int | None = None,
        auto_ack_pings: bool = True,
        auto_credit: bool = True,
    ) -> None:
        config = h2.config.H2Configuration(
            client_side=True,
            header_encoding=None,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        self.h2 = h2.connection.H2Connection(config=config)
        if initial_window_size is not None:
            self.h2.local_settings = h2.settings.Settings(
                client=True,
                initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: initial_window_size},
            )
        self.h2.initiate_connection()
        self.auto_ack_pings = auto_ack_pings
        self.auto_credit = auto_credit
        self.frames: list[Frame] = []
        self.goaways: list[GoAway] = []
        self.pings: list[bytes] = []
        self.ping_acks: list[bytes] = []
        self.window_updates: list[tuple[int, int]] = []
        self.responses: dict[int, Response] = {}
        self._inbound = bytearray()
        self._out: list[bytes] = []

    # -- receiving --------------------------------------------------------------------------

    def receive(self, data: bytes) -> None:
        """Process bytes from the server."""
        self._inbound += data
        while len(self._inbound) >= 9:
            length = int.from_bytes(self._inbound[:3], "big")
            if len(self._inbound) < 9 + length:
                break
            raw = bytes(self._inbound[: 9 + length])
            del self._inbound[: 9 + length]
            kind, flags, stream_id = struct.unpack_from(">BBI", raw, 3)
            frame = Frame(kind, flags, stream_id & MAX_STREAM_ID, raw[9:])
            self.frames.append(frame)
            if kind == GOAWAY:
                last, code = struct.unpack_from(">II", frame.payload)
                self.goaways.append(GoAway(last & MAX_STREAM_ID, code, frame.payload[8:]))
                continue
            if kind == PING and not flags & ACK:
                self.pings.append(frame.payload)
                if not self.auto_ack_pings:
                    continue
            self._handle(self.h2.receive_data(raw))
        self._collect()

    def _handle(self, events: Iterable[h2.events.Event]) -> None:
        for event in events:
            if isinstance(event, h2.events.ResponseReceived):
                self.response(event.stream_id).headers = list(event.headers or ())
            elif isinstance(event, h2.events.DataReceived):
                self.response(event.stream_id).body += event.data or b""
                if self.auto_credit:
                    self.h2.acknowledge_received_data(
                        event.flow_controlled_length or 0, event.stream_id
                    )
            elif isinstance(event, h2.events.TrailersReceived):
                self.response(event.stream_id).trailers = list(event.headers or ())
            elif isinstance(event, h2.events.StreamEnded):
                self.response(event.stream_id).ended = True
            elif isinstance(event, h2.events.StreamReset):
                self.response(event.stream_id).reset = int(event.error_code or 0)
            elif isinstance(event, h2.events.WindowUpdated):
                self.window_updates.append((event.stream_id or 0, event.delta or 0))
            elif isinstance(event, h2.events.PingAckReceived):
                self.ping_acks.append(bytes(event.ping_data or b""))

    def has_settings(self) -> bool:
        """Whether the server's SETTINGS frame arrived."""
        return any(f.type == SETTINGS and not f.flags & ACK for f in self.frames)

    def response(self, stream_id: int) -> Response:
        """What the server sent so far on ``stream_id``."""
        return self.responses.setdefault(stream_id, Response())

    def frames_on(self, stream_id: int, kind: int | None = None) -> list[Frame]:
        """Frames received on ``stream_id`` (of type ``kind`` if given)."""
        return [f for f in self.frames if f.stream_id == stream_id and kind in (None, f.type)]

    def data_received(self, stream_id: int) -> int:
        """Flow-controlled DATA bytes received on ``stream_id``."""
        return sum(len(f.payload) for f in self.frames_on(stream_id, DATA))

    # -- sending ----------------------------------------------------------------------------

    def _collect(self) -> None:
        data = self.h2.data_to_send()
        if data:
            self._out.append(data)

    def data_to_send(self) -> bytes:
        """Bytes to send to the server now."""
        self._collect()
        data, self._out = b"".join(self._out), []
        return data

    def start_call(
        self,
        path: bytes = b"/test.Echo/Unary",
        messages: Sequence[bytes] = (),
        *,
        end: bool = True,
        headers: Sequence[tuple[bytes, bytes]] | None = None,
        extra: Sequence[tuple[bytes, bytes]] = (),
        accept_encoding: bytes | None = b"identity,deflate,gzip",
    ) -> int:
        """Open a stream with request headers, send framed ``messages``, half-close if ``end``.

        ``headers`` replaces the whole header list (for malformed requests).
        """
        stream_id = self.h2.get_next_available_stream_id()
        if headers is None:
            headers = request_headers(path, extra=extra, accept_encoding=accept_encoding)
        body = b"".join(grpc_frame(m) for m in messages)
        self.h2.send_headers(stream_id, headers, end_stream=end and not body)
        if body:
            self.send(stream_id, body, end=end)
        self.response(stream_id)
        return stream_id

    def send(self, stream_id: int, data: bytes, *, end: bool = False) -> None:
        """Send raw DATA bytes (already framed) on a stream; they must fit the window."""
        limit = self.h2.max_outbound_frame_size
        chunks = [data[offset : offset + limit] for offset in range(0, len(data), limit)]
        for index, chunk in enumerate(chunks):
            self.h2.send_data(stream_id, chunk, end_stream=end and index == len(chunks) - 1)
        if end and not chunks:
            self.h2.end_stream(stream_id)

    def lift_stream_limit(self) -> None:
        """Let this client open streams beyond the server's SETTINGS_MAX_CONCURRENT_STREAMS."""
        self.h2.remote_settings[SettingCodes.MAX_CONCURRENT_STREAMS] = MAX_STREAM_ID
        self.h2.remote_settings.acknowledge()

    def end(self, stream_id: int) -> None:
        """Half-close a stream."""
        self.h2.end_stream(stream_id)

    def reset(self, stream_id: int, error_code: int = CANCEL) -> None:
        """Reset a stream (cancel the call)."""
        self.h2.reset_stream(stream_id, error_code)

    def ping(self, opaque: bytes) -> None:
        """Send a PING with 8 bytes of ``opaque`` data."""
        self.h2.ping(opaque)

    def ack_ping(self, opaque: bytes) -> None:
        """Acknowledge a PING the server sent (used with ``auto_ack_pings=False``)."""
        self._raw(raw_frame(PING, ACK, 0, opaque))

    def goaway(self, error_code: int = NO_ERROR, last_stream_id: int = 0) -> None:
        """Send GOAWAY without moving ``h2`` to its closed state."""
        self._raw(raw_frame(GOAWAY, 0, 0, struct.pack(">II", last_stream_id, error_code)))

    def send_raw(self, frame: bytes) -> None:
        """Queue a frame built by the test (:func:`raw_frame`), after what h2 queued so far."""
        self._raw(frame)

    def _raw(self, frame: bytes) -> None:
        self._collect()
        self._out.append(frame)

    def credit(self, stream_id: int, size: int) -> None:
        """Give back flow-control credit for ``size`` received bytes (``auto_credit=False``)."""
        self.h2.acknowledge_received_data(size, stream_id)

    def window(self, stream_id: int) -> int:
        """How many DATA bytes the server lets us send on ``stream_id`` now."""
        return self.h2.local_flow_control_window(stream_id)


def exchange(client: H2Client, server: ServerProtocol) -> list[Event]:
    """One round trip with a sans-IO server: its events for our bytes; we receive its answer."""
    events = server.receive(client.data_to_send())
    client.receive(server.data_to_send())
    return events


def connected(**settings: object) -> tuple[H2Client, ServerProtocol]:
    """A client and a sans-IO server (with ``settings``) that exchanged prefaces and SETTINGS."""
    client = H2Client()
    server = ServerProtocol(ServerSettings(**settings))  # type: ignore[arg-type]
    exchange(client, server)
    exchange(client, server)  # SETTINGS acknowledgements
    return client, server


class Wire:
    """An :class:`H2Client` speaking to a real server over a TCP socket."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, client: H2Client
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.client = client
        self.eof = False

    @classmethod
    async def open(
        cls, port: int, *, wait_settings: bool = True, **options: bool | int | None
    ) -> Wire:
        """Connect to ``127.0.0.1:port`` and send the connection preface.

        Unless ``wait_settings`` is false, return once the server's SETTINGS arrived, so the
        client already works with the server's limits.
        """
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        wire = cls(reader, writer, H2Client(**options))  # type: ignore[arg-type]
        await wire.flush()
        if wait_settings:
            await wire.wait_for(wire.client.has_settings, "the server's SETTINGS")
        return wire

    async def flush(self) -> None:
        """Send what the client has queued."""
        data = self.client.data_to_send()
        if data and not self.eof:
            self.writer.write(data)
            await self.writer.drain()

    async def wait_for(
        self, predicate: Callable[[], bool], what: str, timeout: float = 10.0
    ) -> None:
        """Flush, then read until ``predicate()`` holds; fail naming ``what`` after ``timeout``."""
        await self.flush()
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    if self.eof:
                        raise AssertionError(f"connection closed while waiting for {what}")
                    try:
                        data = await self.reader.read(65536)
                    except ConnectionError:
                        data = b""
                    if not data:
                        self.eof = True
                        continue
                    self.client.receive(data)
                    await self.flush()
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what}") from None

    async def wait_closed(self) -> None:
        """Read until the server closes the connection."""
        await self.wait_for(lambda: self.eof, "the server to close the connection")

    async def finish(self, stream_id: int) -> Response:
        """Wait until the server ends or resets ``stream_id``; its response."""
        response = self.client.response(stream_id)
        await self.wait_for(lambda: response.done, f"the end of stream {stream_id}")
        return response

    async def call(self, path: bytes = b"/test.Echo/Unary", *messages: bytes) -> Response:
        """One complete call with ``messages`` (half-closed at once)."""
        return await self.finish(self.client.start_call(path, messages))

    async def round_trip(self, opaque: bytes = b"roundtrp") -> None:
        """PING the server and wait for the ack: it has processed everything sent before."""
        self.client.ping(opaque)
        count = self.client.ping_acks.count(opaque)
        await self.wait_for(
            lambda: self.client.ping_acks.count(opaque) > count, "the ack of our PING"
        )

    def close(self) -> None:
        """Drop the connection."""
        self.writer.transport.abort()


OpenWire = Callable[..., Awaitable[Wire]]
"""The ``open_wire`` fixture: open a :class:`Wire` to a port, with :class:`H2Client` options."""


async def eventually(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Let the loop run until ``predicate()`` holds; fail naming ``what`` after ``timeout``."""
    try:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None
