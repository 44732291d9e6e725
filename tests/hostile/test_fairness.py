"""Fairness on the event loop: a connection's burst of frames is handled a turn at a time.

Two connections run on recording transports (no sockets, so the count of loop turns is
deterministic): one receives a thousand PINGs in a single read, the other a unary call right
after.  The call is answered while the flood is still being worked through.  Over sockets,
several flooding connections share one budget per turn (turns.py).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import struct

import pytest

from fastinject import StatusCode
from fastinject.connection import Connection
from fastinject.protocol import Event, ServerProtocol
from hostile.conftest import MIN_CALLS
from hostile.test_floods import StartLegitimate, target
from protocol.probe_service import StartServer
from protocol.test_batching import RecordingTransport, connection, feed_until, pool
from protocol.wire import PING, H2Client, OpenWire, raw_frame

__all__ = ["pool"]

FLOOD = 1000
TURN = 64


def handshake(conn: Connection, transport: RecordingTransport) -> H2Client:
    """A client that exchanged prefaces and SETTINGS with the connection."""
    client = H2Client()
    client.receive(b"".join(transport.writes))
    conn.data_received(client.data_to_send())
    return client


def acks(transport: RecordingTransport) -> int:
    """PING ACKs the connection wrote so far."""
    client = H2Client()
    client.receive(b"".join(transport.writes))
    return len(client.ping_acks)


async def test_flood_is_handled_a_turn_at_a_time(pool: concurrent.futures.Executor) -> None:
    """Reading pauses after max_frames_per_turn frames and the rest waits for later turns.

    A call on another connection is answered before the flood's last PING; reading resumes
    once the flood is done.
    """
    flooder, flood_transport = connection(pool, max_frames_per_turn=TURN, max_ping_strikes=0)
    attacker = handshake(flooder, flood_transport)
    legit, legit_transport = connection(pool)
    client = handshake(legit, legit_transport)
    for index in range(FLOOD):
        attacker.send_raw(raw_frame(PING, 0, 0, struct.pack(">Q", index)))
    flooder.data_received(attacker.data_to_send())
    assert acks(flood_transport) == TURN
    assert not flood_transport.reading

    stream_id = client.start_call(b"/test.Echo/Unary", [b"served meanwhile"])
    legit.data_received(client.data_to_send())
    await feed_until(client, legit_transport, [stream_id])
    response = client.response(stream_id)
    assert response.status == StatusCode.OK.number
    assert response.messages == [(False, b"served meanwhile")]
    assert acks(flood_transport) < FLOOD

    async with asyncio.timeout(10):
        while acks(flood_transport) < FLOOD:
            await asyncio.sleep(0)
    assert flood_transport.reading
    flooder.connection_lost(None)
    legit.connection_lost(None)


async def test_the_reads_of_one_turn_share_its_budget(pool: concurrent.futures.Executor) -> None:
    """Small reads in one loop turn pause reading once together they used the turn's budget.

    uvloop reads a socket up to 32 times per loop turn; reading resumes on a later turn.
    """
    flooder, flood_transport = connection(pool, max_frames_per_turn=TURN, max_ping_strikes=0)
    attacker = handshake(flooder, flood_transport)
    reads = 0
    while flood_transport.reading:
        assert reads < FLOOD // 10
        for index in range(10):
            attacker.send_raw(raw_frame(PING, 0, 0, struct.pack(">Q", reads * 10 + index)))
        flooder.data_received(attacker.data_to_send())
        reads += 1
    assert reads == -(-TURN // 10)  # the read that reached the budget paused reading
    async with asyncio.timeout(10):
        while not flood_transport.reading:
            await asyncio.sleep(0)
    assert acks(flood_transport) == reads * 10
    flooder.connection_lost(None)


async def test_flood_over_a_socket_is_answered_in_full_while_grpcio_is_served(
    start_server: StartServer, open_wire: OpenWire, legitimate: StartLegitimate
) -> None:
    """Over real sockets, 20,000 PINGs in one write are all answered, in order.

    They are handled a turn of 64 at a time, while a grpcio client's calls on another
    connection all succeed.
    """
    served = await start_server(max_frames_per_turn=TURN, max_ping_strikes=0)
    client = await legitimate(target(served.port))
    wire = await open_wire(served.port)
    count = 20 * FLOOD
    for index in range(count):
        wire.client.send_raw(raw_frame(PING, 0, 0, struct.pack(">Q", index)))
    await wire.wait_for(lambda: len(wire.client.ping_acks) >= count, "every PING's ACK")
    assert wire.client.ping_acks == [struct.pack(">Q", index) for index in range(count)]
    assert await client.finish() >= MIN_CALLS


FLOODERS = 4
BUDGET = 64


async def test_flooding_connections_share_one_budget_per_turn(
    start_server: StartServer,
    open_wire: OpenWire,
    legitimate: StartLegitimate,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Four connections flooding at once split the turn's frames; each is served every turn.

    Each of them handles its share of ``max_frames_per_turn`` (64 / 4) per turn, not the whole
    budget, so a turn's frames over all of them stay near the budget instead of 4 x 64; every
    PING is answered and a grpcio client's calls on another connection all succeed.
    """
    # (protocol, turn, share, granted, frames)
    receives: list[tuple[int, int, int, int, int]] = []
    receive = ServerProtocol.receive

    def recording(self: ServerProtocol, data: bytes) -> list[Event]:
        turns = self._turns
        assert turns is not None
        turn, share = turns.turn, turns.share
        events = receive(self, data)
        receives.append((id(self), turn, share, self._frames_granted, self.frames_handled))
        return events

    monkeypatch.setattr(ServerProtocol, "receive", recording)
    served = await start_server(
        max_frames_per_turn=BUDGET, min_frames_per_turn=4, max_ping_strikes=0
    )
    client = await legitimate(target(served.port))
    wires = [await open_wire(served.port) for _ in range(FLOODERS)]
    count = 5 * FLOOD
    for wire in wires:
        for index in range(count):
            wire.client.send_raw(raw_frame(PING, 0, 0, struct.pack(">Q", index)))
    await asyncio.gather(*(
        wire.wait_for(lambda wire=wire: len(wire.client.ping_acks) >= count, "every PING's ACK")
        for wire in wires
    ))
    assert await client.finish() >= MIN_CALLS

    # A read handles what it is granted, at most the share (a HEADERS frame may overshoot).
    assert all(frames < granted + 8 and granted <= share for *_, share, granted, frames in receives)
    split = BUDGET // FLOODERS
    frames_per_turn: collections.Counter[int] = collections.Counter()
    served_per_turn: dict[int, set[int]] = collections.defaultdict(set)
    for protocol, turn, share, _, frames in receives:
        if share <= split and frames:
            frames_per_turn[turn] += frames
            served_per_turn[turn].add(protocol)
    together = [turn for turn, protocols in served_per_turn.items()
                if len(protocols) >= FLOODERS]
    assert len(together) >= 10  # they were busy at once, each served in the same turns
    # A read may follow a short one in the same turn (uvloop reads up to 32 times a turn).
    assert max(frames_per_turn[turn] for turn in together) <= 2 * BUDGET
