"""Frames that bypass h2's frame objects behave exactly as the ones h2 parses.

``ServerProtocol`` splits received bytes into frames itself, deframes DATA of live calls
straight from the read buffer, opens calls from whole request header blocks itself, and writes
outbound DATA frames itself; h2 keeps the windows and the stream states.  These tests feed raw
frames, chunked in every way, and check what h2 would enforce still is.
"""

from __future__ import annotations

import re
import struct

import hpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastinject import StatusCode, _h2streams, _h2tuning
from fastinject.options import ServerSettings
from fastinject.protocol import (
    CallFailed,
    CallStarted,
    ConnectionClosedByPeer,
    Event,
    MessagesReceived,
    RequestEnded,
    ServerProtocol,
    StreamGone,
)
from protocol.wire import (
    DATA,
    END_STREAM,
    GOAWAY,
    RST_STREAM,
    H2Client,
    connected,
    exchange,
    grpc_frame,
    raw_frame,
    request_headers,
)

ENHANCE_YOUR_CALM = 0xB
FLOW_CONTROL_ERROR = 0x3
FRAME_SIZE_ERROR = 0x6
PROTOCOL_ERROR = 0x1
STREAM_CLOSED = 0x5
HEADERS = 0x1
CONTINUATION = 0x9


def conversation() -> tuple[bytes, dict[int, bytes]]:
    """Everything a client sends for three calls with multi-frame messages, and their bodies.

    Returns the bytes (preface included) and, per stream, the request messages concatenated.
    """
    client = H2Client()
    bodies: dict[int, bytes] = {}
    for size in (30_000, 5, 20_000):  # within the default 64 KiB window
        stream_id = client.start_call(end=False)
        messages = [bytes([stream_id]) * size, b"tail"]
        client.send(stream_id, b"".join(grpc_frame(m) for m in messages), end=True)
        bodies[stream_id] = b"".join(messages)
    client.ping(b"12345678")
    return client.data_to_send(), bodies


def summarise(events: list[Event]) -> tuple[dict[int, bytes], list[int], list[int]]:
    """Messages per stream (concatenated), calls started and requests ended, in order."""
    messages: dict[int, bytes] = {}
    for event in events:
        if isinstance(event, MessagesReceived):
            messages[event.stream_id] = messages.get(event.stream_id, b"") + b"".join(
                payload for payload, _ in event.messages
            )
    started = [e.stream_id for e in events if isinstance(e, CallStarted)]
    ended = [e.stream_id for e in events if isinstance(e, RequestEnded)]
    return messages, started, ended


@pytest.mark.parametrize("chunk", [1, 8, 9, 10, 1000, 16_393, 1 << 20])
def test_any_chunking_gives_the_same_calls_and_messages(chunk: int) -> None:
    """However the bytes are cut, every call starts, every message arrives whole, in order."""
    data, bodies = conversation()
    server = ServerProtocol(ServerSettings())
    events: list[Event] = []
    for offset in range(0, len(data), chunk):
        events += server.receive(data[offset : offset + chunk])
    messages, started, ended = summarise(events)
    assert messages == bodies
    assert started == list(bodies)
    assert ended == list(bodies)
    assert not any(isinstance(e, ConnectionClosedByPeer) for e in events)


def test_data_beyond_the_stream_window_is_a_flow_control_error() -> None:
    """A client that overruns the stream window gets GOAWAY FLOW_CONTROL_ERROR."""
    client, server = connected(initial_stream_window_size=1024)
    stream_id = client.start_call(end=False)
    exchange(client, server)
    events = server.receive(raw_frame(DATA, 0, stream_id, b"\0" * 1025))
    assert [(type(e), e.error_code) for e in events] == [  # type: ignore[union-attr]
        (ConnectionClosedByPeer, FLOW_CONTROL_ERROR)
    ]
    client.receive(server.data_to_send())
    assert [g.error_code for g in client.goaways] == [FLOW_CONTROL_ERROR]


def test_frames_that_overrun_the_stream_window_together_are_a_flow_control_error() -> None:
    """Frames each within the stream window but over it together, in one read: GOAWAY."""
    client, server = connected(initial_stream_window_size=1024)
    stream_id = client.start_call(end=False)
    exchange(client, server)
    events = server.receive(raw_frame(DATA, 0, stream_id, grpc_frame(b"\0" * 395)) * 3)
    assert [(type(e), e.error_code) for e in events] == [  # type: ignore[union-attr]
        (ConnectionClosedByPeer, FLOW_CONTROL_ERROR)
    ]
    client.receive(server.data_to_send())
    assert [g.error_code for g in client.goaways] == [FLOW_CONTROL_ERROR]


def test_streams_that_overrun_the_connection_window_together_are_a_flow_control_error() -> None:
    """Runs of frames of two calls, each within its stream window, over the connection's."""
    client, server = connected(
        initial_stream_window_size=1 << 20, initial_connection_window_size=65_535
    )
    one, three = client.start_call(end=False), client.start_call(end=False)
    exchange(client, server)
    frame = grpc_frame(b"\0" * 16_379)
    data = raw_frame(DATA, 0, one, frame) * 2 + raw_frame(DATA, 0, three, frame) * 2
    assert len(data) - 4 * 9 > 65_535
    events = server.receive(data)
    assert [(type(e), e.error_code) for e in events] == [  # type: ignore[union-attr]
        (ConnectionClosedByPeer, FLOW_CONTROL_ERROR)
    ]


def test_one_message_per_frame_answers_exactly_as_h2_alone() -> None:
    """Small DATA frames of interleaved calls: the same answers as h2 alone, however cut.

    Among them padded frames, a broken message inside a run of frames and a stream the client
    resets: the same messages, failures and window updates.
    """
    client = H2Client()
    one, three, five = (client.start_call(end=False) for _ in range(3))
    frames = [raw_frame(DATA, 0, one, grpc_frame(bytes([n]) * n)) for n in range(1, 30)]
    frames += [raw_frame(DATA, 0, three, grpc_frame(b"three"))] * 5
    frames += [raw_frame(DATA, 0x8, one, b"\x07" + grpc_frame(b"padded") + bytes(7))]
    frames += [raw_frame(DATA, 0, one, grpc_frame(b"after padding"))] * 3
    frames += [raw_frame(DATA, 0, three, grpc_frame(b"ok")), raw_frame(DATA, 0, three, b"\x02")]
    frames += [raw_frame(DATA, 0, three, grpc_frame(b"lost"))] * 3  # the call failed
    frames += [raw_frame(DATA, 0, five, grpc_frame(b"five"))] * 2
    frames += [raw_frame(RST_STREAM, 0, five, struct.pack(">I", 8))]
    frames += [raw_frame(DATA, 0, five, grpc_frame(b"reset"))] * 2
    frames += [raw_frame(DATA, END_STREAM, one, grpc_frame(b"end"))]
    data = client.data_to_send() + b"".join(frames)
    for chunks in ([], [len(data) - sum(map(len, frames)) + 300] * 3, [50] * 200):
        fast, slow = serve_bytes(data, chunks, fast=True), serve_bytes(data, chunks, fast=False)
        assert fast == slow
    events = fast[0]
    three_messages = [
        message for e in events if isinstance(e, tuple) and e[:2] == ("messages", 3)
        for message in e[2]
    ]
    assert three_messages == [(b"three", False)] * 5 + [(b"ok", False)]
    assert [e.status for e in events if isinstance(e, CallFailed)] == [StatusCode.INTERNAL]


def test_body_longer_than_content_length_is_a_protocol_error() -> None:
    """A declared content-length still binds the DATA that follows (RFC 9113 8.1.1)."""
    client, server = connected()
    headers = [*request_headers(), (b"content-length", b"10")]
    stream_id = client.start_call(headers=headers, end=False)
    exchange(client, server)
    events = server.receive(raw_frame(DATA, 0, stream_id, grpc_frame(b"x" * 20)))
    assert [type(e) for e in events] == [ConnectionClosedByPeer]
    client.receive(server.data_to_send())
    assert [g.error_code for g in client.goaways] == [PROTOCOL_ERROR]


def test_data_after_the_client_half_closed_resets_that_stream_only() -> None:
    """DATA on a stream the client ended is STREAM_CLOSED for the stream; the connection lives."""
    client, server = connected()
    stream_id = client.start_call(end=False)
    client.send(stream_id, grpc_frame(b"ok"), end=True)
    exchange(client, server)
    events = server.receive(raw_frame(DATA, 0, stream_id, grpc_frame(b"late")))
    assert not any(isinstance(e, ConnectionClosedByPeer) for e in events)
    assert not any(isinstance(e, MessagesReceived) for e in events)
    client.receive(server.data_to_send())
    assert client.response(stream_id).reset == STREAM_CLOSED
    assert client.goaways == []


def test_overlong_frame_is_refused_from_its_header() -> None:
    """A frame declared longer than our maximum frame size ends the connection at once."""
    client, server = connected(max_frame_size=16_384)
    stream_id = client.start_call(end=False)
    exchange(client, server)
    header = struct.pack(">I", 16_385)[1:] + bytes((DATA, 0)) + struct.pack(">I", stream_id)
    events = server.receive(header + b"\0" * 100)  # the body is not even here yet
    assert [(type(e), e.error_code) for e in events] == [  # type: ignore[union-attr]
        (ConnectionClosedByPeer, FRAME_SIZE_ERROR)
    ]


def test_nothing_is_read_after_a_protocol_error() -> None:
    """After h2 ends the connection (one GOAWAY), later bytes make no events and no frames."""
    client, server = connected(max_frame_size=16_384)
    stream_id = client.start_call(end=False)
    exchange(client, server)
    header = struct.pack(">I", 16_385)[1:] + bytes((DATA, 0)) + struct.pack(">I", stream_id)
    assert server.receive(header) != []
    assert server.closed
    client.receive(server.data_to_send())
    assert [g.error_code for g in client.goaways] == [FRAME_SIZE_ERROR]
    client.start_call()
    assert server.receive(client.h2.data_to_send()) == []
    assert server.receive(header) == []
    assert server.data_to_send() == b""


def test_data_inside_a_header_block_is_a_protocol_error() -> None:
    """DATA between HEADERS and its CONTINUATION breaks the header block rule (RFC 9113 6.10)."""
    client, server = connected()
    first = client.start_call(end=False)
    exchange(client, server)
    block = client.h2.encoder.encode(request_headers())
    second = first + 2
    events = server.receive(
        raw_frame(HEADERS, 0, second, block) + raw_frame(DATA, 0, first, grpc_frame(b"x"))
    )
    assert [(type(e), e.error_code) for e in events] == [  # type: ignore[union-attr]
        (ConnectionClosedByPeer, PROTOCOL_ERROR)
    ]


def test_large_response_is_cut_at_the_peer_frame_size_and_uses_the_windows() -> None:
    """Outbound DATA respects the client's max frame size; both send windows shrink by it."""
    client, server = connected()
    stream_id = client.start_call(messages=[b"q"])
    exchange(client, server)
    server.send_headers(stream_id, [], None)
    window = server.send_window(stream_id)
    body = bytes(range(256)) * 200  # 51,200 bytes
    server.send_data(stream_id, body)
    client.receive(server.data_to_send())
    frames = [len(f.payload) for f in client.frames_on(stream_id, DATA)]
    assert frames == [16_384, 16_384, 16_384, 2_048]
    assert client.response(stream_id).body == body
    assert server.send_window(stream_id) == window - len(body)


def test_response_beyond_the_window_waits_for_window_update() -> None:
    """DATA past the client's window stays queued and leaves once the client gives credit."""
    client = H2Client(initial_window_size=1000, auto_credit=False)
    server = ServerProtocol(ServerSettings())
    exchange(client, server)
    exchange(client, server)
    stream_id = client.start_call(messages=[b"q"])
    exchange(client, server)
    server.send_headers(stream_id, [], None)
    server.send_data(stream_id, b"a" * 1500)  # more than the window: the caller's mistake
    client.receive(server.data_to_send())
    assert client.data_received(stream_id) == 1000
    client.credit(stream_id, 1000)
    exchange(client, server)
    client.receive(server.data_to_send())
    assert client.response(stream_id).body == b"a" * 1500


def test_header_block_over_the_frame_size_continues_in_continuation_frames() -> None:
    """Trailers larger than the peer's frame size go out as HEADERS + CONTINUATION, intact."""
    client, server = connected()
    stream_id = client.start_call(messages=[b"q"])
    exchange(client, server)
    server.send_headers(stream_id, [], None)
    metadata = [(f"x-big-{i}".encode(), bytes([97 + i]) * 10_000) for i in range(3)]
    server.send_trailers(stream_id, StatusCode.OK, None, metadata)
    client.receive(server.data_to_send())
    kinds = [f.type for f in client.frames_on(stream_id) if f.type in (HEADERS, CONTINUATION)]
    assert kinds == [HEADERS, HEADERS, CONTINUATION]
    response = client.response(stream_id)
    assert response.ended
    assert [(k, v) for k, v in response.trailers if k.startswith(b"x-big-")] == metadata


def test_header_block_far_over_the_limit_is_not_decoded() -> None:
    """A header block over four times max_header_list_size ends the connection (ENHANCE_YOUR_CALM).

    Smaller excesses fail only their call (tests/server); this one is not worth decoding.
    """
    client, server = connected(max_header_list_size=1024)
    client.start_call(extra=[(b"x-huge", b"v" * 5000)])
    events = server.receive(client.data_to_send())
    assert [(type(e), e.error_code) for e in events] == [  # type: ignore[union-attr]
        (ConnectionClosedByPeer, ENHANCE_YOUR_CALM)
    ]


def serve_bytes(
    data: bytes, chunks: list[int], *, fast: bool, **settings: int
) -> tuple[list[object], bytes]:
    """Feed ``data`` cut at ``chunks`` to a fresh server; return a summary of events and output.

    With ``fast`` off, every frame goes through h2 (``accept_data``, ``data_allowance``,
    ``receive_request``, ``receive_settings_ack``, ``receive_first_settings``,
    ``receive_window_update``, ``receive_goaway`` and ``receive_preface`` decline them all).
    """
    server = ServerProtocol(ServerSettings(initial_stream_window_size=32_768, **settings))
    if not fast:
        server._h2.accept_data = lambda *args: False  # type: ignore[method-assign]
        server._h2.data_allowance = lambda *args: 0  # type: ignore[method-assign]
        server._h2.receive_request = lambda *args: None  # type: ignore[method-assign]
        server._h2.receive_settings_ack = lambda: False  # type: ignore[method-assign]
        server._h2.receive_first_settings = lambda *args: False  # type: ignore[method-assign]
        server._h2.receive_window_update = lambda *args: False  # type: ignore[method-assign]
        server._h2.receive_goaway = lambda: False  # type: ignore[method-assign]
        server._h2.receive_preface = lambda *args: False  # type: ignore[method-assign]
    summary: list[object] = []
    output = b""
    offset = 0
    for size in [*chunks, len(data)]:
        piece, offset = data[offset : offset + size], offset + size
        if not piece:
            continue
        for event in server.receive(piece):
            if isinstance(event, MessagesReceived):
                # Consecutive DATA frames of a call may be reported in one event or in several.
                last = summary[-1] if summary else None
                if isinstance(last, tuple) and last[:2] == ("messages", event.stream_id):
                    summary[-1] = (*last[:2], last[2] + event.messages)
                else:
                    summary.append(("messages", event.stream_id, event.messages))
                for payload, _ in event.messages:
                    server.consumed(event.stream_id, len(payload) + 5 - event.prepaid)
                    event.prepaid = 0
            elif isinstance(event, CallStarted):
                summary.append(("started", event.stream_id))
            elif isinstance(event, ConnectionClosedByPeer):  # (hpack's reasons hold addresses)
                reason = re.sub(" at 0x[0-9a-f]+", "", event.reason)
                summary.append(("closed", event.error_code, reason))
            else:
                summary.append(event)
        output += server.data_to_send()
    summary.append(("limits", server.max_frame_size, server.send_window(1)))
    return summary, output


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 40_000), min_size=1, max_size=4),
    half_close=st.lists(st.booleans(), min_size=4, max_size=4),
    chunks=st.lists(st.integers(1, 20_000), max_size=30),
)
def test_fast_path_answers_exactly_as_h2_alone(
    sizes: list[int], half_close: list[bool], chunks: list[int]
) -> None:
    """The fast path changes nothing a client can see, for any calls and any cut of the bytes.

    The server's events and every byte it sends (window updates included) are those of the
    same server with h2 parsing all DATA.
    """
    client = H2Client()
    for size, end in zip(sizes, half_close, strict=False):
        if size == 0 and end:  # a request without a body, half-closed by its HEADERS
            client.start_call(end=True)
            continue
        stream_id = client.start_call(end=False)
        body = grpc_frame(b"s" * size) + grpc_frame(b"t")
        sent = body[: client.window(stream_id)]  # the client may not exceed our windows
        client.send(stream_id, sent, end=end and sent == body)
    client.ping(b"pingpong")
    data = client.data_to_send()
    assert serve_bytes(data, chunks, fast=True) == serve_bytes(data, chunks, fast=False)


def test_large_frame_in_many_small_reads_arrives_whole() -> None:
    """A frame much larger than each read is assembled across reads and delivered once."""
    client, server = connected(max_frame_size=1 << 20, initial_stream_window_size=1 << 20)
    stream_id = client.start_call(end=False)
    exchange(client, server)
    payload = bytes(range(256)) * 800  # 204,800 bytes in one DATA frame
    wire = raw_frame(DATA, END_STREAM, stream_id, grpc_frame(payload))
    events: list[Event] = []
    for offset in range(0, len(wire), 1000):
        events += server.receive(wire[offset : offset + 1000])
    assert [m.messages for m in events if isinstance(m, MessagesReceived)] == [[(payload, False)]]
    assert [e.stream_id for e in events if isinstance(e, RequestEnded)] == [stream_id]


def test_frame_size_raised_by_an_acknowledgement_earlier_in_the_same_read() -> None:
    """A frame over the old limit is accepted once the client acknowledged our larger one."""
    client = H2Client()
    server = ServerProtocol(ServerSettings(max_frame_size=65_536))
    server.receive(client.data_to_send())
    client.receive(server.data_to_send())  # the client now acknowledges 65,536
    stream_id = client.start_call(end=False)
    client.send(stream_id, grpc_frame(b"a" * 100))
    client.send(stream_id, grpc_frame(b"b" * 30_000), end=True)  # one 30,005-byte frame
    events = server.receive(client.data_to_send())
    assert not any(isinstance(e, ConnectionClosedByPeer) for e in events)
    received = [m for e in events if isinstance(e, MessagesReceived) for m in e.messages]
    assert received == [(b"a" * 100, False), (b"b" * 30_000, False)]


def test_nothing_follows_the_goaway_of_a_connection_error() -> None:
    """Credit owed for earlier frames of the read is not sent after our error GOAWAY."""
    client, server = connected(initial_stream_window_size=65_535)
    stream_id = client.start_call(end=False)
    exchange(client, server)
    # Credited early (the message is still being assembled), over half the window: h2 would
    # send a WINDOW_UPDATE for it.
    partial = grpc_frame(b"p" * 60_000)[:48_000]
    server.receive(b"".join(raw_frame(DATA, 0, stream_id, partial[i : i + 16_000])
                            for i in range(0, 48_000, 16_000))
                   + raw_frame(DATA, 0, 0, b"bad"))  # DATA on stream 0: PROTOCOL_ERROR
    client.receive(server.data_to_send())
    kinds = [f.type for f in client.frames]
    assert kinds[-1] == GOAWAY
    assert [g.error_code for g in client.goaways] == [PROTOCOL_ERROR]


def test_second_response_headers_without_end_are_refused() -> None:
    """Headers after the response headers are trailers and must end the stream."""
    client, server = connected()
    stream_id = client.start_call(messages=[b"q"])
    exchange(client, server)
    server.send_headers(stream_id, [], None)
    with pytest.raises(StreamGone):
        server.send_headers(stream_id, [], None)


def _headers(*fields: tuple[bytes, bytes]) -> bytes:
    """A header block of a request plus ``fields``, from an encoder of its own."""
    return hpack.Encoder().encode(request_headers(extra=fields))


_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + raw_frame(0x4, 0, 0, b"")
_SETTINGS_ACK = raw_frame(0x4, 0x1, 0, b"")
PADDED, PRIORITY, END_HEADERS = 0x8, 0x20, 0x4


def _settings(*pairs: tuple[int, int]) -> bytes:
    """A SETTINGS frame (no ACK) with ``pairs``."""
    return raw_frame(0x4, 0, 0, b"".join(struct.pack(">HI", *pair) for pair in pairs))


@pytest.mark.parametrize(
    "first",
    [
        (),
        ((0x4, 100), (0x5, 1 << 20)),  # window and frame size
        ((0x3, 10), (0x4, 1 << 20), (0x6, 8192), (0x2, 0)),
        ((0x1, 0),),  # our encoder's table shrinks: h2 applies it
        ((0x99, 7),),  # unknown setting
        ((0x2, 2),),  # ENABLE_PUSH out of range
        ((0x4, 1 << 31),),  # window over 2^31-1
        ((0x5, 100),),  # frame size under 16384
    ],
)
def test_first_settings_answer_exactly_as_h2_alone(first: tuple[tuple[int, int], ...]) -> None:
    """The client's first SETTINGS taken from the memo changes nothing visible.

    Twice in a row (the second connection replays the first's), then a second SETTINGS and a
    call whose response depends on the settings.
    """
    data = (
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _settings(*first)
        + _settings((0x4, 70_000))
        + raw_frame(HEADERS, END_HEADERS, 1, _headers())
        + raw_frame(DATA, END_STREAM, 1, grpc_frame(b"x" * 100))
    )
    for chunks in ([], [1] * len(data), [], [7] * 100):
        assert serve_bytes(data, chunks, fast=True) == serve_bytes(data, chunks, fast=False)


WINDOW_UPDATE = 0x8


def _window_update(increment: int, stream_id: int = 0) -> bytes:
    return raw_frame(WINDOW_UPDATE, 0, stream_id, struct.pack(">I", increment))


def _goaway(last_stream_id: int, error_code: int, debug: bytes = b"") -> bytes:
    return raw_frame(GOAWAY, 0, 0, struct.pack(">II", last_stream_id, error_code) + debug)


@pytest.mark.parametrize(
    "frames",
    [
        [_window_update(1000)],
        [_window_update(0)],  # refused: PROTOCOL_ERROR
        [_window_update(2**31 - 1)],  # the window past 2^31-1: FLOW_CONTROL_ERROR
        [_window_update(2**31)],  # the reserved bit set
        [raw_frame(WINDOW_UPDATE, 0, 0, b"\0\0\0")],  # too short
        [_window_update(1000), _window_update(2000, stream_id=1)],
        [_goaway(0, 0)],
        [_goaway(1, 2, b"debug data")],
        [raw_frame(GOAWAY, 0, 0, b"\0" * 4)],  # too short
        [raw_frame(GOAWAY, 0, 1, b"\0" * 8)],  # on a stream
        [raw_frame(HEADERS, 0, 1, _headers()[:3]), _window_update(1000)],  # in a header block
        [raw_frame(HEADERS, 0, 1, _headers()[:3]), _goaway(0, 0)],
        [raw_frame(HEADERS, END_HEADERS | END_STREAM, 1, _headers()), _goaway(1, 0)],
        [raw_frame(HEADERS, END_HEADERS, 1, _headers()), _window_update(70_000),
         raw_frame(DATA, END_STREAM, 1, grpc_frame(b"x" * 100)), _goaway(1, 0),
         raw_frame(HEADERS, END_HEADERS | END_STREAM, 3, _headers())],
    ],
)
def test_window_updates_and_goaways_answer_exactly_as_h2_alone(frames: list[bytes]) -> None:
    """The connection's WINDOW_UPDATE and the client's GOAWAY, taken without h2, change nothing.

    Valid or refused, inside a header block or after a call opened in the same read: the
    events and bytes are those of h2 alone, whole and byte by byte.
    """
    data = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _settings() + b"".join(frames)
    for chunks in ([], [1] * len(data)):
        assert serve_bytes(data, chunks, fast=True) == serve_bytes(data, chunks, fast=False)


@pytest.mark.parametrize(
    ("preface", "chunks"),
    [
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", []),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", [30]),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", [10]),  # in two reads: h2 checks it
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", [1] * 30),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\r", []),
        (b"GET / HTTP/1.1\r\n\r\n" * 2, []),
    ],
)
def test_the_preface_is_checked_exactly_as_h2_does(preface: bytes, chunks: list[int]) -> None:
    """The client's preface, taken here when it comes whole, is accepted or refused as by h2."""
    data = preface + _settings() + raw_frame(HEADERS, END_HEADERS | END_STREAM, 1, _headers())
    assert serve_bytes(data, chunks, fast=True) == serve_bytes(data, chunks, fast=False)


def test_settings_changed_on_one_connection_stay_on_it() -> None:
    """New connections share their settings values until one changes them.

    A client's SETTINGS and its acknowledgement of ours change its own connection only, not
    one made before it nor one made after.
    """
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    before = ServerProtocol(ServerSettings())
    changed = ServerProtocol(ServerSettings())
    changed.receive(
        preface + _settings((0x4, 100)) + _settings((0x4, 70_000)) + raw_frame(0x4, 0x1, 0, b"")
    )
    after = ServerProtocol(ServerSettings())
    assert changed._h2.remote_settings.initial_window_size == 70_000
    assert changed._h2.local_settings.max_concurrent_streams == 1000
    for server in (before, after):
        assert server._h2.remote_settings.initial_window_size == 65535
        assert server._h2.local_settings.max_concurrent_streams == 100  # h2's, until acked
    for server in (before, after):
        server.receive(preface + _settings((0x4, 100)) + raw_frame(0x4, 0x1, 0, b""))
        assert server._h2.remote_settings.initial_window_size == 100
        assert server._h2.local_settings.max_concurrent_streams == 1000
    assert changed._h2.remote_settings.initial_window_size == 70_000


def test_a_long_first_settings_is_not_remembered() -> None:
    """A first SETTINGS of many entries goes to h2 alone and stays out of the memo.

    The memo keeps each payload it met (16 at most): with a large ``max_frame_size`` a peer
    would otherwise make the process keep up to 16 frames of it, and h2 process each twice.
    """
    long = ((0x4, 1000),) * 17 + ((0x3, 10),) * 2000
    data = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _settings(*long)
    fast = serve_bytes(data, [], fast=True, max_frame_size=1 << 20)
    assert fast == serve_bytes(data, [], fast=False, max_frame_size=1 << 20)
    assert not [key for key in _h2tuning._settings_effects if len(key[1]) > 96]


def test_a_malformed_first_settings_is_h2s_to_refuse() -> None:
    """A SETTINGS payload that is not whole settings ends the connection as h2 does."""
    data = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + raw_frame(0x4, 0, 0, b"\0\0\0")
    fast = serve_bytes(data, [], fast=True)
    assert fast == serve_bytes(data, [], fast=False)
    assert ("closed", FRAME_SIZE_ERROR) in [e[:2] for e in fast[0] if isinstance(e, tuple)]


@pytest.mark.parametrize(
    ("frames", "settings"),
    [
        # Calls half-closed by their HEADERS, one with a PRIORITY flag, one PADDED.
        ([raw_frame(HEADERS, END_HEADERS | END_STREAM, 1, _headers()),
          raw_frame(HEADERS, END_HEADERS | END_STREAM | PRIORITY, 3,
                    b"\0\0\0\0\x10" + _headers()),
          raw_frame(HEADERS, END_HEADERS | END_STREAM | PADDED, 5,
                    b"\x03" + _headers() + b"\0" * 3)],
         {}),
        # A content-length the body then breaks, and one that is not a number.
        ([raw_frame(HEADERS, END_HEADERS, 1, _headers((b"content-length", b"6"))),
          raw_frame(DATA, END_STREAM, 1, grpc_frame(b"toolong"))], {}),
        ([raw_frame(HEADERS, END_HEADERS, 1, _headers((b"content-length", b"six")))], {}),
        # Content-lengths h2 alone judges: repeated (equal, then not), with a sign or a space.
        ([raw_frame(HEADERS, END_HEADERS, 1, _headers((b"content-length", b"6"),
                                                      (b"content-length", b"6"))),
          raw_frame(DATA, END_STREAM, 1, grpc_frame(b"x"))], {}),
        ([raw_frame(HEADERS, END_HEADERS, 1, _headers((b"content-length", b"6"),
                                                      (b"content-length", b"7")))], {}),
        ([raw_frame(HEADERS, END_HEADERS, 1, _headers((b"content-length", b"+6"))),
          raw_frame(DATA, END_STREAM, 1, grpc_frame(b"x"))], {}),
        ([raw_frame(HEADERS, END_HEADERS, 1, _headers((b"content-length", b" 6")))], {}),
        # A content-length the body keeps, on a call half-closed by its DATA.
        ([raw_frame(HEADERS, END_HEADERS, 1, _headers((b"content-length", b"0006"))),
          raw_frame(DATA, END_STREAM, 1, grpc_frame(b"x"))], {}),
        # Stream ids: even, then one below the last stream's.
        ([raw_frame(HEADERS, END_HEADERS | END_STREAM, 2, _headers())], {}),
        ([raw_frame(HEADERS, END_HEADERS | END_STREAM, 5, _headers()),
          raw_frame(HEADERS, END_HEADERS | END_STREAM, 3, _headers())], {}),
        # An informational status in a request, and a block hpack cannot decode.
        ([raw_frame(HEADERS, END_HEADERS | END_STREAM, 1, _headers((b":status", b"100")))], {}),
        ([raw_frame(HEADERS, END_HEADERS | END_STREAM, 1, b"\xff\xff\xff\xff")], {}),
        # A whole HEADERS frame while another block waits for its CONTINUATION.
        ([raw_frame(HEADERS, 0, 1, _headers()),
          raw_frame(HEADERS, END_HEADERS | END_STREAM, 3, _headers())], {}),
        # Streams reset in the same read as their HEADERS, one after a request message.
        ([raw_frame(HEADERS, END_HEADERS, 1, _headers()),
          raw_frame(0x3, 0, 1, struct.pack(">I", 0x8)),
          raw_frame(HEADERS, END_HEADERS, 3, _headers()),
          raw_frame(DATA, END_STREAM, 3, grpc_frame(b"x")),
          raw_frame(0x3, 0, 3, struct.pack(">I", 0x8))], {}),
        # SETTINGS acknowledgements: with a payload, on a stream, inside a header block, and
        # one that lets a frame over the default frame size through.
        ([raw_frame(0x4, 0x1, 0, b"\0\0\0\0\0\0")], {}),
        ([raw_frame(0x4, 0x1, 1, b"")], {}),
        ([raw_frame(HEADERS, 0, 1, _headers()), _SETTINGS_ACK], {}),
        ([_SETTINGS_ACK, raw_frame(HEADERS, END_HEADERS, 1, _headers()),
          raw_frame(DATA, END_STREAM, 1, grpc_frame(b"x" * 20_000))], {"max_frame_size": 32_768}),
        # Trailers on an open call, then a call past max_concurrent_streams (once acknowledged).
        ([_SETTINGS_ACK, raw_frame(HEADERS, END_HEADERS, 1, _headers()),
          raw_frame(HEADERS, END_HEADERS | END_STREAM, 1, _headers()),
          raw_frame(HEADERS, END_HEADERS, 3, _headers()),
          raw_frame(HEADERS, END_HEADERS, 5, _headers())],
         {"max_concurrent_streams": 1}),
    ],
)
def test_headers_and_acknowledgements_answer_exactly_as_h2_alone(
    frames: list[bytes], settings: dict[str, int]
) -> None:
    """Request header blocks and SETTINGS acks taken without h2's frames change nothing visible.

    Valid or not (padding, priority, content-length, stream ids, informational status, broken
    HPACK, a block interrupted, trailers, the stream limit, malformed acknowledgements), the
    server's events and bytes are those of the same server with h2 parsing every frame, in
    one read or byte by byte.
    """
    data = _PREFACE + b"".join(frames)
    for chunks in ([], [1] * len(data)):
        assert serve_bytes(data, chunks, fast=True, **settings) == serve_bytes(
            data, chunks, fast=False, **settings
        )


def _stream_state(server: ServerProtocol, stream_id: int) -> dict[str, object]:
    """Everything h2 holds for a stream: its attributes, state machine and receive window.

    Once forgotten (closed), how it closed.
    """
    stream = server._h2.streams.get(stream_id)
    if stream is None:
        return {"closed_by": server._h2._closed_streams[stream_id]}
    state = dict(vars(stream))
    state["state_machine"] = dict(vars(stream.state_machine))
    state["_inbound_window_manager"] = dict(vars(stream._inbound_window_manager))
    return state


@pytest.mark.parametrize(
    "fields",
    [(), ((b"content-length", b"5"),), ((b"content-length", b"05"), (b"content-length", b"05"))],
)
@pytest.mark.parametrize("half_closed", ["no", "by HEADERS", "by DATA"])
@pytest.mark.parametrize("trailers_only", [False, True])
@pytest.mark.parametrize("settled", [False, True])
def test_call_streams_are_the_streams_h2_makes(
    fields: tuple[tuple[bytes, bytes], ...], half_closed: str, trailers_only: bool,
    settled: bool, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A call's stream opened and answered without h2's stream code is the one h2 makes.

    After each step (opened by the request, half-closed by a DATA frame's END_STREAM,
    response headers, trailers; or trailers-only), every attribute of the stream, its state
    machine and its windows is what h2's ``receive_headers``, ``receive_data`` and
    ``send_headers`` leave, and the bytes sent are the same; with the default windows, and
    once the client set its window and acknowledged ours (``settled``).
    """
    preface = _PREFACE
    if settled:
        preface = (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _settings((0x4, 70_000))
                   + _SETTINGS_ACK)
    flags = END_HEADERS | (END_STREAM if half_closed == "by HEADERS" else 0)
    histories = []
    for fast in (True, False):
        server = ServerProtocol(ServerSettings(initial_stream_window_size=50_000))
        if not fast:
            server._h2.receive_request = lambda *args: None  # type: ignore[method-assign]
            server._h2.accept_data = lambda *args: False  # type: ignore[method-assign]
            monkeypatch.setattr(_h2tuning, "send_headers", _h2streams._h2_send_headers)
        server.receive(preface + raw_frame(HEADERS, flags, 1, _headers(*fields)))
        history = [_stream_state(server, 1)]
        if half_closed == "by DATA":  # a 5-byte message: the content-length of two cases
            server.receive(raw_frame(DATA, END_STREAM, 1, grpc_frame(b"")))
            history.append(_stream_state(server, 1))
        if trailers_only:
            server.send_trailers_only(1, StatusCode.OK, None, ())
        else:
            server.send_headers(1, [], None)
            history.append(_stream_state(server, 1))
            server.send_trailers(1, StatusCode.OK, None, [])
        history.append(_stream_state(server, 1))
        histories.append((history, server.data_to_send()))
    assert histories[0] == histories[1]
    windows = {"outbound_flow_control_window": 70_000, "_inbound_window_manager": {
        "max_window_size": 50_000, "current_window_size": 50_000, "_bytes_processed": 0}}
    opened = histories[0][0][0]
    assert settled is all(opened[name] == value for name, value in windows.items())


def test_streams_of_ended_calls_are_forgotten_as_h2_forgets_closed_streams() -> None:
    """A call's stream leaves h2's stream table when the call ends, remembered as closed.

    Ended by trailers after the client half-closed, by trailers while the client still sends
    (then RST_STREAM NO_ERROR), or reset by us: only open streams stay, so counting them costs
    no scan.  Frames the client sent before it saw the end are ignored (RFC 9113 5.1): a
    WINDOW_UPDATE, a RST_STREAM, DATA on the stream we reset.
    """
    client, server = connected()
    half_closed, sending, reset, running = (client.start_call(end=end)
                                            for end in (True, False, False, False))
    exchange(client, server)
    server.send_headers(half_closed, [], None)
    server.send_trailers(half_closed, StatusCode.OK, None, [])
    server.send_trailers_only(sending, StatusCode.OK, None, ())
    server.reset(reset)
    client.receive(server.data_to_send())
    assert set(server._h2.streams) == {running}
    assert server._h2._closed_streams.keys() >= {half_closed, sending, reset}
    late = (raw_frame(0x8, 0, half_closed, struct.pack(">I", 100))
            + raw_frame(0x3, 0, sending, struct.pack(">I", 0x8))
            + raw_frame(DATA, 0, reset, grpc_frame(b"late")))
    before = len(client.frames)
    assert server.receive(late) == []
    client.receive(server.data_to_send())
    assert client.goaways == []
    assert client.frames[before:] == []


def test_settings_after_a_refused_replay_are_h2s() -> None:
    """Only a connection's first SETTINGS comes from the memo: later ones go to h2.

    Here a table size changed, then changed back, shows in the response headers' size updates.
    """
    data = (
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _settings((0x1, 0)) + _settings((0x1, 4096))
        + raw_frame(HEADERS, END_HEADERS | END_STREAM, 1, _headers())
    )
    outputs = []
    for fast in (True, False):
        server = ServerProtocol(ServerSettings())
        if not fast:
            server._h2.receive_first_settings = lambda *args: False  # type: ignore[method-assign]
        server.receive(data)
        server.send_headers(1, [], None)
        outputs.append(server.data_to_send())
    assert outputs[0] == outputs[1]
