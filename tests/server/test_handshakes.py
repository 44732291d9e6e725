"""Connections that never finish their handshake: slowloris peers, the cap, and ``stop``.

A peer that sends nothing, half a ClientHello, a ClientHello but never its Finished, half the
HTTP/2 preface, or the preface without SETTINGS is closed at ``handshake_timeout`` from its
arrival (one deadline for the TLS handshake and the preface); past ``max_pending_handshakes``
connections not serving yet (in their TLS handshake or before their preface and SETTINGS) the
oldest is dropped; ``stop`` drops every connection still in its handshake.  Throughout, a
grpcio client keeps calling and every one of its calls succeeds.  Run with
``FASTINJECT_TEST_LOOP=uvloop`` for uvloop's TLS.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

import grpc

import fastinject
from echo_service import Recorder
from server.handshaking import (
    Caller,
    client_context,
    client_hello,
    closed_by_server,
    connect,
    still_open,
    tls_channel,
)
from serving import TIMEOUT, echo_server, eventually, method
from tls_material import TlsMaterial

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
TIMER_RESOLUTION = 0.001
"""uvloop's: its timers fire, and report when(), in whole milliseconds."""

async def test_stalled_tls_handshakes_are_closed_at_the_timeout(
    tls_server: Any, tls: TlsMaterial
) -> None:
    """Nothing, half a ClientHello, or a ClientHello never finished: closed; grpcio unharmed."""
    _, port = await tls_server(handshake_timeout=0.5)
    hello = client_hello(tls)
    async with tls_channel(port, tls) as channel:
        caller = Caller(channel)
        await caller.calls(1)
        stalled = [
            await connect(port),
            await connect(port, hello[: len(hello) // 2]),
            await connect(port, hello),
        ]
        for connection in stalled:
            assert await closed_by_server(connection)
        await caller.calls(10)
        await caller.stop()


async def test_stalled_http2_prefaces_are_closed_at_the_timeout(serve: Any) -> None:
    """Nothing, half the preface, or the preface without SETTINGS: closed; grpcio unharmed."""
    served = await serve(handshake_timeout=0.5)
    async with grpc.aio.insecure_channel(served.target) as channel:
        caller = Caller(channel)
        await caller.calls(1)
        stalled = [
            await connect(served.port),
            await connect(served.port, PREFACE[:10]),
            await connect(served.port, PREFACE),
        ]
        for connection in stalled:
            assert await closed_by_server(connection)
        await caller.calls(10)
        await caller.stop()


async def test_a_completed_preface_is_not_closed_at_the_timeout(serve: Any) -> None:
    """The timeout ends with the client's SETTINGS: an idle, set-up connection stays open."""
    served = await serve(handshake_timeout=0.2)
    settings = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # empty SETTINGS
    reader, writer = await connect(served.port, PREFACE + settings)
    # The server's SETTINGS and its ACK of ours arrive; then it stays silent and open past the
    # timeout (a keepalive or idle limit, not the handshake timeout, governs it now).
    server_settings = await asyncio.wait_for(reader.read(65536), TIMEOUT)
    assert server_settings[3] == 0x4
    async with grpc.aio.insecure_channel(served.target) as channel:
        # Calls on another connection take the loop past the timeout many times over.
        unary = method(channel, "Sleep")
        await unary(b"0.4", timeout=TIMEOUT)
    assert still_open((reader, writer))
    writer.close()


async def test_past_the_cap_the_oldest_handshake_is_dropped(
    tls_server: Any, tls: TlsMaterial
) -> None:
    """With 3 handshakes allowed, 8 silent connections: the 5 oldest are closed at once."""
    _, port = await tls_server(max_pending_handshakes=3)
    await oldest_of_eight_dropped(port, lambda: tls_channel(port, tls))


async def oldest_of_eight_dropped(port: int, channel: Callable[[], grpc.aio.Channel]) -> None:
    """8 silent connections to ``port`` with 3 pending allowed: the 5 oldest close at once.

    A real client (on a ``channel()``) still gets through: its connection drops the oldest
    silent one left.
    """
    silent = [await connect(port) for _ in range(8)]
    closed = [asyncio.ensure_future(closed_by_server(connection)) for connection in silent[:5]]
    assert all(await asyncio.gather(*closed))
    assert all(still_open(connection) for connection in silent[5:])
    async with channel() as client_channel:
        caller = Caller(client_channel)
        await caller.calls(10)
        await caller.stop()
    assert await closed_by_server(silent[5])
    for _, writer in silent[6:]:
        writer.close()


async def test_past_the_cap_the_oldest_silent_plaintext_connection_is_dropped(
    serve: Any,
) -> None:
    """Plaintext connections before their preface count too: 8 silent ones, 3 allowed."""
    served = await serve(max_pending_handshakes=3)
    await oldest_of_eight_dropped(served.port, lambda: grpc.aio.insecure_channel(served.target))


async def test_grpcio_client_is_served_through_a_flood_of_silent_connections(
    serve: Any,
) -> None:
    """200 silent plaintext connections, 20 pending allowed: a client connecting midway is served.

    The flood goes on while the client connects and calls; every silent connection but the
    20 newest is closed by the server.
    """
    served = await serve(max_pending_handshakes=20)
    silent = [await connect(served.port) for _ in range(100)]
    async with grpc.aio.insecure_channel(served.target) as channel:
        unary = method(channel, "Unary")
        # wait_for_ready: should its connection be the oldest pending one, grpcio reconnects.
        first = asyncio.ensure_future(unary(b"first", timeout=TIMEOUT, wait_for_ready=True))
        silent += [await connect(served.port) for _ in range(100)]
        assert await first == b"first"
        caller = Caller(channel)
        await caller.calls(10)
        await caller.stop()
    closed = [asyncio.ensure_future(closed_by_server(connection)) for connection in silent[:180]]
    assert all(await asyncio.gather(*closed))
    assert all(still_open(connection) for connection in silent[180:])
    for _, writer in silent[180:]:
        writer.close()


async def test_one_deadline_from_arrival_covers_tls_handshake_and_preface(
    tls_server: Any, tls: TlsMaterial
) -> None:
    """After a slow TLS handshake, the preface must come by the deadline set at arrival.

    grpc core's server handshake deadline covers both; restarting it after the handshake
    would give a slowloris peer twice ``handshake_timeout``.
    """
    server, port = await tls_server(handshake_timeout=3.0)
    loop = asyncio.get_running_loop()
    _, writer = await connect(port)
    await eventually(lambda: bool(server._pending))  # accepted: its deadline is set
    accepted_by = loop.time()
    await asyncio.sleep(0.2)  # a slow ClientHello
    await asyncio.wait_for(
        writer.start_tls(client_context(tls), server_hostname="localhost"), TIMEOUT
    )
    await eventually(lambda: any("handshake" in c._timers for c in server._connections))
    (conn,) = server._connections
    # uvloop keeps timers in whole milliseconds (when() is ms * 1e-3, a hair off ms / 1000).
    assert conn._timers["handshake"].when() <= accepted_by + 3.0 + TIMER_RESOLUTION
    assert list(server._pending) == [conn._arrival]  # still counted, until its SETTINGS
    writer.close()


async def test_stop_drops_connections_in_their_handshake(
    tls_server: Any, tls: TlsMaterial, recorder: Recorder
) -> None:
    """Connections still handshaking when stop() begins are closed, never served after it."""
    server, port = await tls_server()
    hello = client_hello(tls)
    pending = [await connect(port), await connect(port, hello[:40]), await connect(port, hello)]
    # The full ClientHello is answered: the server is in that handshake now.
    assert await asyncio.wait_for(pending[2][0].read(5), TIMEOUT)
    await asyncio.wait_for(server.stop(None), TIMEOUT)
    for connection in pending:
        assert await closed_by_server(connection)


async def test_stop_drops_injected_sockets_in_their_handshake(
    recorder: Recorder, tls: TlsMaterial
) -> None:
    """An injected socket whose handshake has not finished is closed by stop() as well."""
    server = echo_server(recorder)
    credentials = fastinject.ServerCredentials.ssl([(tls.server_key_pem, tls.server_cert_pem)])
    injector = server.create_connection_injector(credentials)
    await server.start()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.setblocking(False)
        connection = await connect(listener.getsockname()[1], client_hello(tls)[:30])
        sock, _ = await asyncio.wait_for(asyncio.get_running_loop().sock_accept(listener), TIMEOUT)
    await injector.inject_connection(sock)
    await asyncio.wait_for(server.stop(None), TIMEOUT)
    assert await closed_by_server(connection)
