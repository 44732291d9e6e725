"""The per-connection budgets of the sans-IO protocol, on a clock the test controls."""

from __future__ import annotations

import struct

from fastinject.options import ServerSettings
from fastinject.protocol import (
    CallStarted,
    ConnectionClosedByPeer,
    Event,
    PingReceived,
    ServerProtocol,
)
from protocol.wire import (
    ENHANCE_YOUR_CALM,
    PING,
    WINDOW_UPDATE,
    H2Client,
    exchange,
    raw_frame,
)


class Clock:
    """A clock that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        """The current time."""
        return self.now


def connect(clock: Clock, **settings: object) -> tuple[H2Client, ServerProtocol]:
    """A client and a sans-IO server on ``clock`` that exchanged prefaces and SETTINGS."""
    client = H2Client()
    server = ServerProtocol(ServerSettings(**settings), clock)  # type: ignore[arg-type]
    exchange(client, server)
    exchange(client, server)
    return client, server


def closed_for(events: list[Event]) -> str | None:
    """The GOAWAY debug text the server ended the connection with, if it did."""
    for event in events:
        if isinstance(event, ConnectionClosedByPeer):
            assert event.error_code == ENHANCE_YOUR_CALM, event
            return event.reason
    return None


def reset_streams(client: H2Client, server: ServerProtocol, count: int) -> list[Event]:
    """Open and reset ``count`` streams in one read."""
    for _ in range(count):
        client.reset(client.start_call(end=False))
    return exchange(client, server)


def test_reset_budget_refills_with_time() -> None:
    """A burst of resets is allowed, then ``stream_reset_rate`` per second of them."""
    clock = Clock()
    client, server = connect(clock, stream_reset_burst=10, stream_reset_rate=2.0)
    assert closed_for(reset_streams(client, server, 10)) is None
    clock.now += 3.0  # six more
    assert closed_for(reset_streams(client, server, 6)) is None
    reason = closed_for(reset_streams(client, server, 1))
    assert reason is not None
    assert "stream_reset_burst=10" in reason
    assert client.goaways[-1].debug == b"too_many_resets"
    assert server.closed


def test_nothing_is_read_after_the_budget_ran_out() -> None:
    """Once the connection is ended, further bytes produce no events (no calls start)."""
    clock = Clock()
    client, server = connect(clock, stream_reset_burst=1, stream_reset_rate=0.0)
    assert closed_for(reset_streams(client, server, 2)) is not None
    client.start_call()
    assert server.receive(client.data_to_send()) == []


def test_window_updates_answering_our_data_are_free() -> None:
    """Two WINDOW_UPDATEs per DATA frame sent cost nothing; one more is a useless frame."""
    clock = Clock()
    # A budget of 2: the client's SETTINGS spent one already.
    client, server = connect(clock, useless_frame_burst=2, useless_frame_rate=0.0)
    stream_id = client.start_call(end=False)
    exchange(client, server)
    server.send_headers(stream_id, [], None)
    for _ in range(50):
        server.send_data(stream_id, b"x")
        client.receive(server.data_to_send())  # one DATA frame each time
    # The new stream's allowance, 2 per DATA frame, and the one useless frame of the budget.
    for _ in range(1 + 100 + 1):
        client.send_raw(raw_frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 1)))
    assert closed_for(exchange(client, server)) is None
    client.send_raw(raw_frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 1)))
    assert closed_for(exchange(client, server)) is not None
    assert client.goaways[-1].debug == b"too_many_useless_frames"


def ping_flood(client: H2Client, count: int) -> bytes:
    """``count`` PING frames, numbered in their payload."""
    for index in range(count):
        client.send_raw(raw_frame(PING, 0, 0, struct.pack(">Q", index)))
    return client.data_to_send()


def test_frames_past_the_turn_budget_wait_for_the_next_turn() -> None:
    """At most max_frames_per_turn frames per receive(); the rest follows, in order."""
    clock = Clock()
    client, server = connect(clock, max_frames_per_turn=64)
    events = server.receive(ping_flood(client, 1000))
    assert sum(isinstance(e, PingReceived) for e in events) == 64
    assert server.has_backlog
    client.receive(server.data_to_send())
    turns = 1
    while server.has_backlog:
        assert turns < 1000 // 64 + 1
        events = server.receive(b"")
        assert 0 < sum(isinstance(e, PingReceived) for e in events) <= 64
        client.receive(server.data_to_send())
        turns += 1
    assert turns == 1000 // 64 + 1
    assert client.ping_acks == [struct.pack(">Q", index) for index in range(1000)]


def test_a_headers_frame_spends_eight_frames_of_the_turn() -> None:
    """A call's HEADERS costs 8 frames: a turn of 64 starts 8 calls of HEADERS + DATA, not 32.

    The other calls follow in later turns, every one of them.
    """
    clock = Clock()
    client, server = connect(clock, max_frames_per_turn=64)
    for _ in range(20):
        client.start_call(messages=[b"m"])
    events = server.receive(client.data_to_send())
    # 7 x 9 = 63 frames, then one frame left: the 8th HEADERS is taken, its DATA waits.
    assert sum(isinstance(e, CallStarted) for e in events) == 8
    assert server.frames_handled == 8 * 8 + 7
    assert server.has_backlog
    while server.has_backlog:
        events += server.receive(b"")
    assert sum(isinstance(e, CallStarted) for e in events) == 20


def test_bytes_received_during_a_backlog_follow_it() -> None:
    """Bytes that arrive while frames wait (TLS delivers all it decrypted) queue behind them."""
    clock = Clock()
    client, server = connect(clock, max_frames_per_turn=10)
    server.receive(ping_flood(client, 15))
    assert server.has_backlog
    server.receive(ping_flood(client, 15)[5:])  # the 16th PING's frame split in two reads...
    server.receive(b"")
    client.receive(server.data_to_send())
    assert client.ping_acks == [struct.pack(">Q", index) for index in range(15)]


def test_answers_owed_past_the_cap_end_the_connection() -> None:
    """PINGs whose ACKs never leave: past max_pending_control_frames, GOAWAY."""
    clock = Clock()
    client, server = connect(clock, max_pending_control_frames=100)
    for _ in range(4):  # our output drains between batches: nothing is owed for long
        assert closed_for(server.receive(ping_flood(client, 80))) is None
        server.output_drained()
    events = server.receive(ping_flood(client, 80))
    assert closed_for(events) is None
    reason = closed_for(server.receive(ping_flood(client, 80)))
    assert reason is not None
    assert "max_pending_control_frames" in reason
    client.receive(server.data_to_send())
    assert client.goaways[-1].debug == b"too_many_pending_control_frames"
