"""The server-wide budget of bytes held for partly received messages, over real sockets.

Each connection's half messages are capped by ``max_partial_message_bytes``; many connections
together are capped by ``max_server_partial_message_bytes``, shared by every connection of the
server (listening ports and injected streams alike).  Past it, the connection holding the most
loses calls (RESOURCE_EXHAUSTED), so a peer piling up half messages pays for them; near it, the
connections holding their share have new streams refused (RST_STREAM ENHANCE_YOUR_CALM).
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable
from typing import Any

import fastinject
from fastinject import StatusCode
from protocol.probe_service import StartServer
from protocol.wire import (
    ENHANCE_YOUR_CALM,
    H2Client,
    OpenWire,
    Response,
    Wire,
    eventually,
    grpc_frame,
)
from serving import Served

KIB = 1024
MIB = 1024 * KIB
BUDGET = 2 * MIB
SETTINGS = {
    "max_receive_message_length": MIB,
    "max_server_partial_message_bytes": BUDGET,
    "max_ping_strikes": 100,  # the tests PING to know the server read what they sent
}
SHED = "max_server_partial_message_bytes"


def prefix(length: int) -> bytes:
    """A gRPC message prefix declaring ``length`` bytes."""
    return struct.pack(">BI", 0, length)


def held(served: Served) -> int:
    """Bytes the server holds for partly received messages, checked against its connections."""
    memory = served.server._message_memory
    connections = served.server._connections
    assert memory.used == sum(conn.protocol.partial_message_bytes for conn in connections)
    return memory.used


async def pile(wire: Wire, streams: int, sent: int) -> list[int]:
    """Open ``streams`` calls each sending ``sent`` bytes of a 1 MiB message; wait until read."""
    stream_ids = []
    for _ in range(streams):
        stream_id = wire.client.start_call(end=False)
        wire.client.send(stream_id, prefix(MIB) + b"p" * sent)
        stream_ids.append(stream_id)
    await wire.round_trip()
    return stream_ids


async def injected_wire(injector: fastinject.ConnectionInjector) -> Wire:
    """A raw h2 connection over a socket pair whose server end is injected."""
    ours, theirs = socket.socketpair()
    await injector.inject_connection(theirs)
    reader, writer = await asyncio.open_connection(sock=ours)
    wire = Wire(reader, writer, H2Client())
    await wire.wait_for(wire.client.has_settings, "the server's SETTINGS")
    return wire


def shed(responses: list[Response]) -> int:
    """How many of ``responses`` are calls the server shed for its budget (none was refused)."""
    shed_calls, refused = turned_away(responses)
    assert refused == 0
    return shed_calls


def turned_away(responses: list[Response]) -> tuple[int, int]:
    """How many of ``responses`` are calls shed for the budget, and streams refused near it."""
    shed_calls = refused = 0
    for response in responses:
        if response.reset == ENHANCE_YOUR_CALM and response.headers is None:
            refused += 1
        elif response.done:
            assert response.status == StatusCode.RESOURCE_EXHAUSTED.number, response
            assert SHED in response.message
            shed_calls += 1
    return shed_calls, refused


async def test_connections_piling_half_messages_stay_within_the_budget(
    start_server: StartServer, open_wire: OpenWire, legitimate: Callable[[str], Any]
) -> None:
    """Three connections (two accepted, one injected) pile ~4.5 MiB; the server holds <= 2 MiB.

    Calls are shed with RESOURCE_EXHAUSTED or, near the budget, refused before they start; a
    grpcio client keeps being served, and the count falls back to zero when the connections
    close.
    """
    served = await start_server(**SETTINGS)
    client = await legitimate(served.target)
    injector = served.server.create_connection_injector(
        fastinject.ServerCredentials.insecure()
    )
    wires = [await open_wire(served.port), await open_wire(served.port)]
    wires.append(await injected_wire(injector))
    streams = []
    for wire in wires:
        for _ in range(4):  # 12 calls of 64 KiB per wire, in rounds: 3 x 12 x ~85 KiB held
            streams += [(wire, s) for s in await pile(wire, 3, 64 * KIB)]
            assert held(served) <= BUDGET
    for wire in wires:
        await wire.round_trip()
    assert held(served) <= BUDGET
    failed, refused = turned_away([wire.client.response(s) for wire, s in streams])
    assert failed > 0
    assert refused > 0
    assert failed + refused < len(streams)
    assert await client.finish() >= 20
    for wire in wires:
        wire.close()
    await eventually(lambda: not served.server._connections, "the connections to close")
    assert served.server._message_memory.used == 0
    assert served.server._message_memory.holders == 0


async def test_the_connection_holding_most_pays_not_the_one_crossing(
    start_server: StartServer, open_wire: OpenWire
) -> None:
    """A whole 1 MiB message crossing the budget completes; the piling connection loses calls.

    The calls it keeps go on, and ending them (a reset here) releases what they held.
    """
    served = await start_server(**SETTINGS)
    piling = await open_wire(served.port)
    crossing = await open_wire(served.port)
    piled = await pile(piling, 12, 64 * KIB)
    assert shed([piling.client.response(s) for s in piled]) == 0
    assert held(served) > MIB  # 12 x 64 KiB received, buffers grown to twice that

    message = grpc_frame(b"m" * MIB)
    big = crossing.client.start_call(end=False)
    crossing.client.send(big, message[: MIB // 2 + 16])
    await crossing.round_trip()
    assert held(served) <= BUDGET
    crossing.client.send(big, message[MIB // 2 + 16 :], end=True)
    answer = await crossing.finish(big)
    assert answer.status == StatusCode.OK.number
    assert answer.messages == [(False, b"m" * MIB)]

    await piling.round_trip()
    responses = {s: piling.client.response(s) for s in piled}
    lost = shed(list(responses.values()))
    assert 0 < lost < len(piled)
    kept = [stream_id for stream_id, response in responses.items() if not response.done]
    piling.client.send(kept[0], b"p", end=True)  # still expecting its message: a short one
    short = await piling.finish(kept[0])
    assert short.status == StatusCode.INTERNAL.number  # the request ended mid-message
    assert held(served) > 0
    for stream_id in kept[1:]:
        piling.client.reset(stream_id)
    await piling.round_trip()
    assert held(served) == 0
    assert served.server._message_memory.holders == 0
