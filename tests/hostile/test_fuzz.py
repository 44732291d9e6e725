"""Fuzzing the sans-IO protocol with random and mutated frame sequences.

Each example sends a client preface, then frames drawn at random (well-formed requests and
messages, resets, control frames, frames of any type with random bytes), possibly with some
bytes flipped, split into reads at random places.  The test plays the application: it
consumes every message and ends every call that started.  Whatever arrives:

- ``receive`` raises nothing but our own :class:`fastinject.errors.ProtocolError`;
- what the protocol holds stays within the settings (a partial frame, the streams, the
  frames left for the next turn, the bytes of partial messages);
- every stream ends: once the calls are answered, no stream state is left (unless the
  connection ended in error, when the connection drops the protocol altogether).

The suite runs 200 examples; ``FASTINJECT_FUZZ_EXAMPLES=100000 pytest
tests/hostile/test_fuzz.py`` runs a long campaign.
"""

from __future__ import annotations

import os
import struct

import hpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastinject import StatusCode
from fastinject.errors import ProtocolError
from fastinject.options import ServerSettings
from fastinject.protocol import (
    CallStarted,
    ConnectionClosedByPeer,
    Event,
    MessagesReceived,
    ServerProtocol,
)
from protocol.wire import (
    CONTINUATION,
    DATA,
    GOAWAY,
    HEADERS,
    PING,
    PRIORITY,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
    H2Client,
    grpc_frame,
    raw_frame,
    request_headers,
)

EXAMPLES = int(os.environ.get("FASTINJECT_FUZZ_EXAMPLES", "200"))
SETTINGS_UNDER_FUZZ = ServerSettings(
    max_concurrent_streams=4,
    max_receive_message_length=1024,
    max_header_list_size=1024,
    max_frames_per_turn=8,
    stream_reset_burst=20,
    useless_frame_burst=20,
    max_pending_control_frames=50,
)
END_STREAM = 0x1
END_HEADERS = 0x4
STREAM_IDS = st.sampled_from([0, 1, 3, 5, 7, 9, 11, 2, 2**31 - 1])


@st.composite
def frame_sequences(draw: st.DrawFn) -> bytes:
    """The bytes of a client connection: preface, SETTINGS, then random frames."""
    encoder = hpack.Encoder()
    frames = [H2Client().data_to_send()]
    for _ in range(draw(st.integers(0, 40))):
        kind = draw(st.sampled_from(
            ["headers", "data", "rst", "settings", "ping", "window", "priority", "goaway", "any"]
        ))
        stream_id = draw(STREAM_IDS)
        if kind == "headers":
            path = draw(st.sampled_from([b"/test.Echo/Unary", b"/x", b"nopath"]))
            block = encoder.encode(request_headers(path))
            ends = END_STREAM if draw(st.booleans()) else 0
            if draw(st.booleans()):
                cut = draw(st.integers(0, len(block)))
                frames.append(raw_frame(HEADERS, ends, stream_id, block[:cut]))
                frames.append(raw_frame(CONTINUATION, END_HEADERS, stream_id, block[cut:]))
            else:
                frames.append(raw_frame(HEADERS, ends | END_HEADERS, stream_id, block))
        elif kind == "data":
            message = grpc_frame(draw(st.binary(max_size=64)))
            cut = draw(st.integers(0, len(message)))
            flags = draw(st.sampled_from([0, END_STREAM, 0x8]))
            payload = message[:cut] if flags != 0x8 else b"\x02" + message[:cut] + b"\0\0"
            frames.append(raw_frame(DATA, flags, stream_id, payload))
        elif kind == "rst":
            frames.append(raw_frame(RST_STREAM, 0, stream_id, struct.pack(">I", 8)))
        elif kind == "settings":
            pairs = draw(st.lists(st.tuples(st.integers(0, 9), st.integers(0, 2**32 - 1)),
                                  max_size=3))
            payload = b"".join(struct.pack(">HI", *pair) for pair in pairs)
            frames.append(raw_frame(SETTINGS, draw(st.sampled_from([0, 1])), 0, payload))
        elif kind == "ping":
            frames.append(raw_frame(PING, draw(st.sampled_from([0, 1])), 0, bytes(8)))
        elif kind == "window":
            increment = draw(st.integers(0, 2**31 - 1))
            frames.append(raw_frame(WINDOW_UPDATE, 0, stream_id, struct.pack(">I", increment)))
        elif kind == "priority":
            frames.append(raw_frame(PRIORITY, 0, stream_id, struct.pack(">IB", 0, 15)))
        elif kind == "goaway":
            frames.append(raw_frame(GOAWAY, 0, 0, struct.pack(">II", 0, 0)))
        else:
            frames.append(raw_frame(draw(st.integers(0, 255)), draw(st.integers(0, 255)),
                                    stream_id, draw(st.binary(max_size=32))))
    data = bytearray(b"".join(frames))
    preface = len(frames[0])
    if len(data) > preface:
        for _ in range(draw(st.integers(0, 3))):  # mutations, after the preface
            position = draw(st.integers(preface, len(data) - 1))
            data[position] = draw(st.integers(0, 255))
    return bytes(data)


def check_bounded(server: ServerProtocol) -> None:
    """What the protocol holds is within the settings."""
    s = server.settings
    assert len(server._inbound) < 9 + s.max_frame_size
    assert len(server._streams) <= s.max_concurrent_streams
    for state in server._streams.values():
        assert state.deframer.buffered <= s.max_receive_message_length + 5
    assert server.answers_owed <= s.max_pending_control_frames


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=frame_sequences(), cuts=st.lists(st.integers(1, 64), max_size=12))
def test_any_frames_leave_the_protocol_sound(data: bytes, cuts: list[int]) -> None:
    """No unexpected exception, bounded state, and every stream ends."""
    server = ServerProtocol(SETTINGS_UNDER_FUZZ, clock=lambda: 0.0)
    started: list[int] = []
    reads = []
    offset = 0
    for cut in cuts:
        reads.append(data[offset : offset + cut])
        offset += cut
    reads.append(data[offset:])

    def handle(events: list[Event]) -> bool:
        """Act on ``events`` as the connection does; False once the connection is over."""
        going = True
        for event in events:
            if isinstance(event, CallStarted):
                started.append(event.stream_id)
            elif isinstance(event, MessagesReceived):
                size = sum(len(payload) + 5 for payload, _ in event.messages)
                server.consumed(event.stream_id, size - event.prepaid)
            elif isinstance(event, ConnectionClosedByPeer) and event.error_code:
                going = False  # aborted (a client's GOAWAY NO_ERROR lets calls finish)
        server.data_to_send()
        server.output_drained()
        check_bounded(server)
        return going

    try:
        going = True
        for chunk in reads:
            going = handle(server.receive(chunk))
            while going and server.has_backlog:
                going = handle(server.receive(b""))
            if not going:
                break
    except ProtocolError:
        return
    if not going:  # the connection is aborted: its state goes with it
        assert server.closed
        return
    for stream_id in started:
        server.send_trailers(stream_id, StatusCode.OK, None, [])
    server.data_to_send()
    assert server._streams == {}
    assert server.queued_bytes == 0
