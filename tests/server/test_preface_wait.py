"""A plaintext connection gets its HTTP/2 connection only once its client's preface is whole.

Until then the server holds its transport and at most the 24 bytes of the preface
(``fastinject.preface``): a peer that sends nothing, or part of the preface, costs no
:class:`~fastinject.connection.Connection` and no h2 state, and is still closed at
``handshake_timeout`` from its arrival.  A preface that arrives in pieces (or partly as an
injected connection's ``initial_data``) is served.  Run with ``FASTINJECT_TEST_LOOP=uvloop`` too.
"""

from __future__ import annotations

import asyncio
import gc
import socket
from typing import Any

import grpc

import fastinject
from echo_service import Recorder
from fastinject._h2tuning import TunedH2Connection
from fastinject.connection import Connection as ServerConnection
from fastinject.preface import PREFACE
from server.handshaking import Caller, closed_by_server, connect, still_open
from serving import TIMEOUT, echo_server, eventually

SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # an empty SETTINGS frame
TIMER_RESOLUTION = 0.001
"""uvloop's: its timers fire, and report when(), in whole milliseconds."""


def http2_state() -> tuple[int, int]:
    """Server connections and h2 connections alive in this process."""
    gc.collect()
    objects = gc.get_objects()
    return (
        sum(isinstance(o, ServerConnection) for o in objects),
        sum(isinstance(o, TunedH2Connection) for o in objects),
    )


def preface_bytes_held(server: fastinject.Server) -> int:
    """Bytes of prefaces the server holds for connections not served yet."""
    return sum(len(getattr(arrival._holder, "_head", b"")) for arrival in server._pending)


async def test_silent_and_half_preface_connections_make_no_http2_state(serve: Any) -> None:
    """200 peers, silent or with 1 to 23 bytes of the preface: no Connection, no h2 state.

    A grpcio client calls throughout; one of the peers completing its preface gets exactly one
    connection, served; the others are closed at the handshake timeout.
    """
    served = await serve(handshake_timeout=3.0)
    server = served.server
    async with grpc.aio.insecure_channel(served.target) as channel:
        caller = Caller(channel)
        await caller.calls(1)
        before = http2_state()
        silent = [await connect(served.port) for _ in range(100)]
        sent = [PREFACE[: 1 + index % 23] for index in range(100)]
        halves = [await connect(served.port, first) for first in sent]
        await eventually(lambda: len(server._pending) == 200)  # every peer arrived
        await eventually(lambda: preface_bytes_held(server) == sum(map(len, sent)))  # and read
        await caller.calls(10)
        assert http2_state() == before
        # The rest of one preface, and SETTINGS: that connection, and only it, is made and served.
        reader, writer = halves[-1]
        writer.write(PREFACE[len(sent[-1]):] + SETTINGS)
        frame = await asyncio.wait_for(reader.readexactly(9), TIMEOUT)
        assert frame[3] == 0x4  # the server's SETTINGS
        assert http2_state() == (before[0] + 1, before[1] + 1)
        for connection in silent + halves[:-1]:
            assert await closed_by_server(connection)
        assert still_open(halves[-1])
        assert list(server._pending) == []
        await caller.calls(10)
        await caller.stop()
    writer.close()


async def test_a_preface_completed_late_keeps_the_deadline_of_arrival(serve: Any) -> None:
    """The connection made for a slow preface times out ``handshake_timeout`` after arrival."""
    served = await serve(handshake_timeout=3.0)
    server = served.server
    loop = asyncio.get_running_loop()
    _, writer = await connect(served.port, PREFACE[:5])
    await eventually(lambda: bool(server._pending))  # accepted: its deadline is set
    accepted_by = loop.time()
    await asyncio.sleep(0.2)  # a slow preface
    writer.write(PREFACE[5:])
    await eventually(lambda: any("handshake" in c._timers for c in server._connections))
    (conn,) = server._connections
    assert conn._timers["handshake"].when() <= accepted_by + 3.0 + TIMER_RESOLUTION
    assert list(server._pending) == [conn._arrival]  # still counted, until its SETTINGS
    writer.close()


async def test_stop_drops_connections_before_their_preface(serve: Any) -> None:
    """Peers silent or in the middle of their preface are closed by stop()."""
    served = await serve()
    pending = [await connect(served.port), await connect(served.port, PREFACE[:10])]
    await eventually(lambda: len(served.server._pending) == 2)
    await asyncio.wait_for(served.server.stop(None), TIMEOUT)
    for connection in pending:
        assert await closed_by_server(connection)


async def test_a_preface_split_between_initial_data_and_the_socket_is_served(
    recorder: Recorder,
) -> None:
    """An injected socket whose sniffed ``initial_data`` is part of the preface."""
    server = echo_server(recorder)
    injector = server.create_connection_injector(fastinject.ServerCredentials.insecure())
    await server.start()
    ours, theirs = socket.socketpair()
    try:
        await injector.inject_connection(ours, initial_data=PREFACE[:10])
        reader, writer = await asyncio.open_connection(sock=theirs)
        writer.write(PREFACE[10:] + SETTINGS)
        frame = await asyncio.wait_for(reader.readexactly(9), TIMEOUT)
        assert frame[3] == 0x4  # the server's SETTINGS
        writer.close()
    finally:
        await server.stop(None)
