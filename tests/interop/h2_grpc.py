"""A minimal gRPC client on raw ``h2``, for what grpcio's client cannot show or do.

grpcio hides each message's compressed flag and cannot send one uncompressed message inside a
compressed call; the compression interop cases need both.  :func:`call` sends request messages
with chosen flags on one HTTP/2 stream and returns every response message with its flag.
"""

from __future__ import annotations

import asyncio
import gzip
import ssl
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events


@dataclass(frozen=True)
class OutgoingMessage:
    """One request message: its serialized payload and whether to send it gzip-compressed."""

    payload: bytes
    compress: bool = False


@dataclass(frozen=True)
class IncomingMessage:
    """One response message: its compressed flag and its payload after decompression."""

    compressed: bool
    payload: bytes


@dataclass
class CallResult:
    """Everything the server sent on one call."""

    headers: dict[str, str] = field(default_factory=dict)
    messages: list[IncomingMessage] = field(default_factory=list)
    trailers: dict[str, str] = field(default_factory=dict)

    @property
    def status(self) -> int:
        """The ``grpc-status`` (from trailers, or from headers for a trailers-only response)."""
        return int(self.trailers.get("grpc-status", self.headers.get("grpc-status", "-1")))


def _frame(message: OutgoingMessage) -> bytes:
    body = gzip.compress(message.payload) if message.compress else message.payload
    return struct.pack(">BI", 1 if message.compress else 0, len(body)) + body


def _parse_messages(data: bytes, encoding: str | None) -> list[IncomingMessage]:
    messages = []
    offset = 0
    while offset < len(data):
        flag, length = struct.unpack_from(">BI", data, offset)
        body = data[offset + 5 : offset + 5 + length]
        if len(body) != length:
            raise AssertionError(f"truncated gRPC message: {len(body)} of {length} bytes")
        offset += 5 + length
        if flag == 1:
            if encoding != "gzip":
                raise AssertionError(f"compressed message but grpc-encoding is {encoding!r}")
            body = gzip.decompress(body)
        elif flag != 0:
            raise AssertionError(f"invalid gRPC message flag {flag}")
        messages.append(IncomingMessage(compressed=flag == 1, payload=body))
    return messages


async def call(
    port: int,
    path: str,
    messages: Sequence[OutgoingMessage],
    *,
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str = "localhost",
) -> CallResult:
    """Make one gRPC call to ``127.0.0.1:port`` sending ``messages`` then half-closing.

    The request says ``grpc-encoding: gzip`` when any message is compressed, and always accepts
    gzip responses.
    """
    reader, writer = await asyncio.open_connection(
        "127.0.0.1",
        port,
        ssl=ssl_context,
        server_hostname=server_hostname if ssl_context is not None else None,
    )
    try:
        return await _run_call(reader, writer, path, messages, ssl_context is not None)
    finally:
        # Abort rather than close: a TLS close would wait for the server's close_notify,
        # which servers (grpcio's among them) need not send.
        writer.transport.abort()


async def _run_call(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    path: str,
    messages: Sequence[OutgoingMessage],
    secure: bool,
) -> CallResult:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    stream_id = conn.get_next_available_stream_id()
    headers = [
        (":method", "POST"),
        (":scheme", "https" if secure else "http"),
        (":path", path),
        (":authority", "localhost"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        ("grpc-accept-encoding", "identity,deflate,gzip"),
    ]
    if any(message.compress for message in messages):
        headers.append(("grpc-encoding", "gzip"))
    conn.send_headers(stream_id, headers)
    pending = b"".join(_frame(message) for message in messages)
    ended = False
    result = CallResult()
    body = bytearray()
    while True:
        # Send as much of the request as flow control allows, then half-close.
        while pending:
            allowed = min(conn.local_flow_control_window(stream_id), conn.max_outbound_frame_size)
            if allowed <= 0:
                break
            conn.send_data(stream_id, pending[:allowed])
            pending = pending[allowed:]
        if not pending and not ended:
            conn.end_stream(stream_id)
            ended = True
        writer.write(conn.data_to_send())
        await writer.drain()
        data = await reader.read(65536)
        if not data:
            raise AssertionError("connection closed before the call finished")
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                result.headers = _decode(event.headers)
            elif isinstance(event, h2.events.DataReceived):
                body += event.data
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.TrailersReceived):
                result.trailers = _decode(event.headers)
            elif isinstance(event, h2.events.StreamReset):
                raise AssertionError(f"stream reset by server, error code {event.error_code}")
            elif isinstance(event, h2.events.StreamEnded):
                result.messages = _parse_messages(bytes(body), result.headers.get("grpc-encoding"))
                conn.close_connection()
                writer.write(conn.data_to_send())
                await writer.drain()
                return result


def _decode(headers: Sequence[tuple[bytes | str, bytes | str]]) -> dict[str, str]:
    decoded = {}
    for key, value in headers:
        k = key.decode() if isinstance(key, bytes) else key
        v = value.decode() if isinstance(value, bytes) else value
        decoded[k] = v
    return decoded
