"""Every connection starts from the same state, and keeps its own.

New connections are copies of a started prototype connection (``TunedH2Connection.started``):
what one connection's peer changes must never show on another.
"""

from __future__ import annotations

import struct
from typing import Any

import hpack

from fastinject.options import ServerSettings
from fastinject.protocol import CallStarted, ServerProtocol
from protocol.wire import HEADERS, SETTINGS, OpenWire, raw_frame, request_headers

_END_HEADERS = 0x4


async def test_each_connection_keeps_its_own_flow_control_and_settings(
    start_server: Any, open_wire: OpenWire
) -> None:
    """A client that shrinks its window gets a trickle; the next connection is not affected.

    The first client advertises a 100-byte stream window and returns no credit: the server
    may send it only 100 bytes of the response.  A connection opened afterwards starts from
    the defaults again and gets its whole response, and every connection gets the same
    SETTINGS from the server.
    """
    served = await start_server()
    payload = b"x" * 3000
    narrow = await open_wire(served.port, initial_window_size=100, auto_credit=False)
    stream_id = narrow.client.start_call(b"/test.Echo/Unary", [payload])
    await narrow.wait_for(lambda: narrow.client.data_received(stream_id) >= 100, "100 bytes")
    await narrow.round_trip()
    assert narrow.client.data_received(stream_id) == 100
    for _ in range(3):
        wide = await open_wire(served.port)
        response = await wide.call(b"/test.Echo/Unary", payload)
        assert response.status == 0
        assert response.messages == [(False, payload)]
        assert [f.payload for f in wide.client.frames if f.type == SETTINGS and not f.flags][
            :1
        ] == [f.payload for f in narrow.client.frames if f.type == SETTINGS and not f.flags][:1]
    assert narrow.client.data_received(stream_id) == 100


def _first_flight(settings: bytes) -> bytes:
    """A client's preface, a SETTINGS frame with ``settings`` and a request on stream 1."""
    block = hpack.Encoder().encode(request_headers())
    return (
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
        + raw_frame(SETTINGS, 0, 0, settings)
        + raw_frame(HEADERS, _END_HEADERS, 1, block)
    )


def test_what_a_peer_sets_stays_on_its_connection() -> None:
    """SETTINGS one client sends do not change the next connection's (sans-IO)."""
    narrow = ServerProtocol(ServerSettings())
    events = narrow.receive(_first_flight(struct.pack(">HIHI", 0x4, 100, 0x5, 1 << 20)))
    assert any(isinstance(event, CallStarted) for event in events)
    assert (narrow.send_window(1), narrow.max_frame_size) == (100, 1 << 20)
    preface = narrow.data_to_send()
    for _ in range(2):
        fresh = ServerProtocol(ServerSettings())
        events = fresh.receive(_first_flight(b""))
        assert any(isinstance(event, CallStarted) for event in events)
        assert (fresh.send_window(1), fresh.max_frame_size) == (65535, 16384)
        assert fresh.data_to_send() == preface
