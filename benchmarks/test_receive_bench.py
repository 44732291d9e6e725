"""Micro-benchmark of the sans-IO receive path: a client-streaming call's DATA, per message.

Run on demand (never part of the test run)::

    pytest benchmarks/test_receive_bench.py

The end-to-end harness drives client streaming with h2load, which sends the request body in
16 KiB DATA frames (about 156 messages of 100 bytes each), so the cost of a DATA frame is shared
by many messages.  Clients that send each message in a DATA frame of its own pay the whole
frame path (``ServerProtocol._scan``, h2's windows in ``TunedH2Connection.accept_data``,
``_on_data``, an event) per message; the two cases below show both.
"""

from __future__ import annotations

import struct
from typing import Any

import h2.config
import h2.connection
import pytest

from fastinject.options import ServerSettings
from fastinject.protocol import MessagesReceived, ServerProtocol

MESSAGES = 10_000
PAYLOAD = b"m" * 100
READ = 64 * 1024
WINDOW = 1 << 30


def _data_frame(stream_id: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes((0, 0)) + struct.pack(">I", stream_id) \
        + payload


def _connected() -> tuple[ServerProtocol, int]:
    """A server with one call open whose windows take every byte the cases send."""
    server = ServerProtocol(ServerSettings(
        initial_stream_window_size=WINDOW - 1, initial_connection_window_size=WINDOW - 1
    ))
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    for _ in range(2):  # prefaces, then the SETTINGS acknowledgements
        server.receive(client.data_to_send())
        client.receive_data(server.data_to_send())
    stream_id = client.get_next_available_stream_id()
    client.send_headers(stream_id, [
        (":method", "POST"), (":scheme", "http"), (":path", "/test.Echo/Stream"),
        (":authority", "bench"), ("content-type", "application/grpc"), ("te", "trailers"),
    ])
    server.receive(client.data_to_send())
    return server, stream_id


@pytest.mark.parametrize("per_frame", [1, 156], ids=["1 msg per frame", "156 msgs per frame"])
def test_receive_client_stream(benchmark: Any, per_frame: int) -> None:
    """10,000 messages of 100 bytes in DATA frames of ``per_frame`` messages, 64 KiB reads."""
    message = struct.pack(">BI", 0, len(PAYLOAD)) + PAYLOAD
    wire = b"".join(
        _data_frame(1, message * min(per_frame, MESSAGES - sent))
        for sent in range(0, MESSAGES, per_frame)
    )
    reads = [wire[offset : offset + READ] for offset in range(0, len(wire), READ)]

    def run() -> int:
        server, _ = _connected()
        received = 0
        for read in reads:
            events = server.receive(read)
            while server.has_backlog:
                events += server.receive(b"")
            received += sum(len(e.messages) for e in events if isinstance(e, MessagesReceived))
            server.buffers_to_send()
        assert received == MESSAGES
        return received

    benchmark.group = "receive 10,000 x 100 B"
    benchmark(run)
