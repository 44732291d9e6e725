"""Bytes held for partly received request messages are capped per connection.

A message's credit is returned while it is assembled (a message larger than the window must be
able to arrive), so without a cap one connection could make the server hold
``max_receive_message_length`` bytes on each of its streams.  ``max_partial_message_bytes``
bounds the sum: the stream whose bytes cross it fails with RESOURCE_EXHAUSTED and its buffer
is dropped; the connection and its other calls go on.
"""

from __future__ import annotations

import struct

import grpc

from fastinject import StatusCode
from fastinject.memory import MessageMemory
from fastinject.options import ServerSettings
from fastinject.protocol import CallFailed, CallStarted, MessagesReceived, ServerProtocol
from protocol.probe_service import StartServer
from protocol.wire import (
    ENHANCE_YOUR_CALM,
    RST_STREAM,
    H2Client,
    OpenWire,
    connected,
    exchange,
    grpc_frame,
)

MIB = 1024 * 1024
HALF = MIB // 2


def prefix(length: int) -> bytes:
    """A gRPC message prefix declaring ``length`` bytes."""
    return struct.pack(">BI", 0, length)


def failures(events: list[object]) -> dict[int, CallFailed]:
    """The CallFailed events, by stream."""
    return {e.stream_id: e for e in events if isinstance(e, CallFailed)}


def test_the_stream_crossing_the_cap_fails_and_the_others_complete() -> None:
    """Two 1 MiB messages short of a byte fit a cap of 2 MiB + 10; a third stream does not."""
    limit = 2 * (5 + MIB)
    client, server = connected(max_receive_message_length=MIB, max_partial_message_bytes=limit)
    first, second, third = (client.start_call(end=False) for _ in range(3))
    for stream_id in (first, second):
        client.send(stream_id, prefix(MIB) + b"a" * HALF)
    assert failures(exchange(client, server)) == {}
    for stream_id in (first, second):  # the rest fits thanks to the early credit
        client.send(stream_id, b"a" * (HALF - 1))
    assert failures(exchange(client, server)) == {}
    assert server.partial_message_bytes == limit

    client.send(third, prefix(MIB) + b"c" * 1000)
    failed = failures(exchange(client, server))
    assert list(failed) == [third]
    assert failed[third].status is StatusCode.RESOURCE_EXHAUSTED
    assert "max_partial_message_bytes" in failed[third].details
    assert server.partial_message_bytes == limit

    for stream_id in (first, second):
        client.send(stream_id, b"b", end=True)
    events = exchange(client, server)
    received = [e for e in events if isinstance(e, MessagesReceived)]
    assert [(e.stream_id, e.messages) for e in received] == [
        (stream_id, [(b"a" * (MIB - 1) + b"b", False)]) for stream_id in (first, second)
    ]
    assert server.partial_message_bytes == 0


def test_one_message_of_the_receive_limit_always_fits() -> None:
    """A cap below max_receive_message_length still lets one such message arrive whole."""
    client, server = connected(max_receive_message_length=MIB, max_partial_message_bytes=0)
    stream_id = client.start_call(end=False)
    wire = grpc_frame(b"x" * MIB)
    client.send(stream_id, wire[:HALF])
    events = exchange(client, server)
    client.send(stream_id, wire[HALF:], end=True)  # fits thanks to the early credit
    events += exchange(client, server)
    assert failures(events) == {}
    received = [e.messages for e in events if isinstance(e, MessagesReceived)]
    assert received == [[(b"x" * MIB, False)]]


def test_early_credit_never_lets_a_peer_hold_more_than_the_cap() -> None:
    """Eight streams send 1 MiB messages as fast as credit allows: the held bytes stay capped.

    Every stream ends, with its message or with RESOURCE_EXHAUSTED: the cap never stalls a peer.
    """
    limit = 2 * MIB
    client, server = connected(
        max_receive_message_length=MIB,
        max_partial_message_bytes=limit,
        initial_stream_window_size=64 * 1024,
        initial_connection_window_size=128 * 1024,
    )
    pending = {client.start_call(end=False): grpc_frame(b"m" * MIB) for _ in range(8)}
    delivered: set[int] = set()
    failed: set[int] = set()
    for _ in range(10_000):
        if not pending:
            break
        for stream_id in list(pending):
            room = min(client.h2.local_flow_control_window(stream_id), 16 * 1024)
            if room > 0:
                data, pending[stream_id] = pending[stream_id][:room], pending[stream_id][room:]
                client.send(stream_id, data, end=not pending[stream_id])
            if not pending[stream_id]:
                del pending[stream_id]
        events = exchange(client, server)
        assert server.partial_message_bytes <= limit
        for event in events:
            if isinstance(event, MessagesReceived):
                delivered.add(event.stream_id)
                server.consumed(event.stream_id, 5 + MIB - event.prepaid)
            elif isinstance(event, CallFailed):
                assert event.status is StatusCode.RESOURCE_EXHAUSTED
                failed.add(event.stream_id)
                pending.pop(event.stream_id, None)
    assert not pending, "the peer stalled: credit stopped before every stream ended"
    assert delivered | failed == set(range(1, 16, 2))
    assert delivered
    assert failed
    assert server.partial_message_bytes == 0


def test_a_reset_stream_releases_its_share() -> None:
    """A client reset of a half-received message gives its bytes back to the connection."""
    client, server = connected(max_receive_message_length=MIB)
    stream_id = client.start_call(end=False)
    client.send(stream_id, prefix(MIB) + b"r" * HALF)
    exchange(client, server)
    assert 5 + HALF <= server.partial_message_bytes <= 5 + MIB
    client.reset(stream_id)
    exchange(client, server)
    assert server.partial_message_bytes == 0


async def test_attacker_past_the_cap_gets_resource_exhausted_while_grpcio_is_served(
    start_server: StartServer, open_wire: OpenWire
) -> None:
    """Over a socket: the crossing stream ends with RESOURCE_EXHAUSTED, the others go on.

    The attacker's other stream still completes, and a grpcio client's calls all succeed.
    """
    served = await start_server(
        max_receive_message_length=MIB, max_partial_message_bytes=MIB + 5 + 64 * 1024
    )
    wire = await open_wire(served.port)
    kept = wire.client.start_call(end=False)
    wire.client.send(kept, prefix(MIB) + b"k" * HALF)
    await wire.round_trip()
    wire.client.send(kept, b"k" * (HALF - 1))
    await wire.round_trip()
    crossing = wire.client.start_call(end=False)
    wire.client.send(crossing, prefix(MIB) + b"c" * HALF)
    async with grpc.aio.insecure_channel(served.target) as channel:
        unary = channel.unary_unary("/test.Echo/Unary")
        refused = await wire.finish(crossing)
        assert refused.status == StatusCode.RESOURCE_EXHAUSTED.number
        assert "max_partial_message_bytes" in refused.message
        for index in range(20):
            assert await unary(b"%d" % index, timeout=10) == b"%d" % index
    wire.client.send(kept, b"k", end=True)
    completed = await wire.finish(kept)
    assert completed.status == StatusCode.OK.number
    assert completed.messages == [(False, b"k" * MIB)]



def sharing(memory: MessageMemory) -> list[tuple[H2Client, ServerProtocol]]:
    """Two client connections to sans-IO server connections sharing the budget ``memory``."""
    settings = ServerSettings(max_receive_message_length=MIB)
    pairs = []
    for _ in range(2):
        client, server = H2Client(), ServerProtocol(settings, memory=memory)
        exchange(client, server)
        exchange(client, server)
        pairs.append((client, server))
    return pairs


def test_connections_share_the_server_budget_and_the_largest_holder_pays() -> None:
    """Two connections of one server: the one crossing its budget keeps its message.

    The other, which holds more, loses the calls holding bytes the longest; it learns of it
    via ``on_shed``.
    """
    memory = MessageMemory(2 * MIB)
    (piling_client, piling), (crossing_client, crossing) = sharing(memory)
    told: list[bool] = []
    piling.on_shed = lambda: told.append(True)
    piled = [piling_client.start_call(end=False) for _ in range(12)]
    for stream_id in piled:
        piling_client.send(stream_id, prefix(MIB) + b"p" * (64 * 1024))
    assert failures(exchange(piling_client, piling)) == {}
    assert memory.used == piling.partial_message_bytes > MIB

    big = crossing_client.start_call(end=False)
    crossing_client.send(big, prefix(MIB) + b"m" * HALF)
    assert failures(exchange(crossing_client, crossing)) == {}
    assert memory.used == piling.partial_message_bytes + crossing.partial_message_bytes
    assert memory.used <= 2 * MIB
    assert told
    shed = failures(piling.take_shed())
    assert piled[0] in shed  # holding bytes the longest
    assert 0 < len(shed) < len(piled)
    for event in shed.values():
        assert event.status is StatusCode.RESOURCE_EXHAUSTED
        assert "max_server_partial_message_bytes" in event.details
    assert piling.take_shed() == []

    crossing_client.send(big, b"m" * (MIB - HALF), end=True)
    received = [e for e in exchange(crossing_client, crossing) if isinstance(e, MessagesReceived)]
    assert [e.messages for e in received] == [[(b"m" * MIB, False)]]
    piling.release_memory()
    assert memory.used == 0
    assert memory.holders == 0


def test_a_connection_holding_its_share_of_a_full_budget_starts_no_call() -> None:
    """Past 90 % of the budget, the connection holding it gets RST_STREAM ENHANCE_YOUR_CALM.

    No call starts for that stream, and the DATA it sent before reading the reset is ignored
    (no RST_STREAM STREAM_CLOSED for it; its bytes still count for the connection's window).
    A connection holding nothing starts its call and receives its message.
    """
    memory = MessageMemory(2 * MIB)
    (piling_client, piling), (other_client, other) = sharing(memory)
    for _ in range(15):  # 15 x 64 KiB received, buffers grown to twice that: over 1.8 MiB
        stream_id = piling_client.start_call(end=False)
        piling_client.send(stream_id, prefix(MIB) + b"p" * (64 * 1024))
    assert failures(exchange(piling_client, piling)) == {}
    assert 0.9 * memory.limit < memory.used == piling.partial_message_bytes <= memory.limit

    refused = piling_client.start_call(messages=[b"r" * 1000])
    events = piling.receive(piling_client.data_to_send())
    assert not any(isinstance(e, CallStarted) for e in events)
    # Owed back to the connection's window (left for a later flush: under a quarter window).
    assert piling.credit.owed == 1005
    piling.credit.flush_after = 0
    assert piling.credit.take() == {refused: 1005}
    piling_client.receive(piling.data_to_send())
    assert [(f.type, f.payload) for f in piling_client.frames_on(refused)] == [
        (RST_STREAM, struct.pack(">I", ENHANCE_YOUR_CALM))
    ]
    assert piling_client.response(refused).reset == ENHANCE_YOUR_CALM

    other_client.start_call(messages=[b"s" * 1000])
    events = exchange(other_client, other)
    assert any(isinstance(e, CallStarted) for e in events)
    received = [e.messages for e in events if isinstance(e, MessagesReceived)]
    assert received == [[(b"s" * 1000, False)]]
