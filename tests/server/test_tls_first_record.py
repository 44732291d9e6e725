"""A connection's TLS session is made only once its first TLS record is whole.

Half a ClientHello (a slowloris peer), or nothing, then costs the server the connection, not an
OpenSSL session and its buffers (~55 KiB); a ClientHello that arrives in pieces still completes
its handshake.  On uvloop, on a port and on an injected TCP socket, the bytes wait unread in
the kernel until the record is whole, then uvloop's TLS takes them; on the ``ssl.MemoryBIO``
path (asyncio's loop, ``initial_data``, Unix sockets) the server holds the bytes.
A first record that is not a TLS handshake, or is longer than TLS allows, is refused at once.
Run with ``FASTINJECT_TEST_LOOP=uvloop`` for uvloop's TLS.
"""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

import fastinject
from echo_service import Recorder
from server.handshaking import (
    Caller,
    Connection,
    client_context,
    client_hello,
    closed_by_server,
    connect,
    still_open,
    tls_channel,
)
from serving import TIMEOUT, echo_server, eventually
from tls_material import TlsMaterial

Open = Callable[[bytes], Awaitable[Connection]]
"""Opens a connection to the server by one path and sends the given bytes first."""

PATHS = ["port", "injected-socket", "injected-unix-socket", "initial-data"]
"""Accepted on a port; a TCP socket injected; a Unix socket injected (the kernel cannot hold its
bytes back: the server reads and holds them); a TCP socket injected with its first bytes."""


def server_tls_sessions() -> int:
    """TLS sessions (``ssl.SSLObject``) the server side holds in this process.

    asyncio's TLS, uvloop's and ``TlsLayer`` all keep their session in one.
    """
    gc.collect()
    return sum(isinstance(o, ssl.SSLObject) and o.server_side for o in gc.get_objects())


@pytest.fixture
async def opened(
    request: pytest.FixtureRequest, recorder: Recorder, tls: TlsMaterial
) -> AsyncIterator[Callable[..., Awaitable[tuple[fastinject.Server, Open]]]]:
    """Start a TLS server reached by ``path``: the server and how to open a connection to it."""
    servers: list[fastinject.Server] = []
    listeners: list[socket.socket] = []
    credentials = fastinject.ServerCredentials.ssl([(tls.server_key_pem, tls.server_cert_pem)])

    async def start(path: str, **settings: Any) -> tuple[fastinject.Server, Open]:
        server = echo_server(recorder, **settings)
        servers.append(server)
        if path == "port":
            port = server.add_secure_port("127.0.0.1:0", credentials)
            await server.start()
            return server, lambda first: connect(port, first)
        await server.start()
        injector = server.create_connection_injector(credentials)
        listener = socket.create_server(("127.0.0.1", 0))
        listener.setblocking(False)
        listeners.append(listener)

        async def inject(first: bytes) -> Connection:
            if path == "injected-unix-socket":
                ours, theirs = socket.socketpair()
                await injector.inject_connection(theirs)
                reader, writer = await asyncio.open_connection(sock=ours)
                writer.write(first)
                return reader, writer
            loop = asyncio.get_running_loop()
            accepted = loop.sock_accept(listener)
            reader, writer = await asyncio.open_connection(*listener.getsockname())
            sock, _ = await accepted
            if path == "initial-data":
                await injector.inject_connection(sock, initial_data=first)
            else:
                await injector.inject_connection(sock)
                writer.write(first)
            return reader, writer

        return server, inject

    yield start
    for server in servers:
        await server.stop(None)
    for listener in listeners:
        listener.close()


async def answered(open_connection: Open, hello: bytes) -> Connection:
    """A new connection sending a whole ClientHello, once the server answered it.

    By then the server has seen what earlier connections sent (their bytes were queued first).
    """
    connection = await open_connection(hello)
    assert await asyncio.wait_for(connection[0].read(5), TIMEOUT)
    return connection


@pytest.mark.parametrize("path", PATHS)
async def test_a_clienthello_in_pieces_makes_no_session_until_its_record_is_whole(
    path: str, opened: Any, tls: TlsMaterial
) -> None:
    """While one byte of the first record is missing the server holds no TLS session.

    The last byte completes the record; the handshake then completes with ALPN h2.
    """
    _, open_connection = await opened(path)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_context(tls).wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    hello = outgoing.read()
    before = server_tls_sessions()
    reader, writer = await open_connection(hello[:3])
    for index in range(3, len(hello) - 1):
        writer.write(hello[index : index + 1])
        await writer.drain()
    barrier = await answered(open_connection, client_hello(tls))
    assert server_tls_sessions() == before + 1  # the barrier's, not the pieces'

    writer.write(hello[-1:])
    async with asyncio.timeout(TIMEOUT):
        while True:
            incoming.write(await reader.read(65536))
            try:
                client.do_handshake()
            except ssl.SSLWantReadError:
                writer.write(outgoing.read())
                continue
            writer.write(outgoing.read())
            break
    assert client.selected_alpn_protocol() == "h2"
    writer.close()
    barrier[1].close()


HALF_HELLOS = 200


async def test_half_clienthellos_hold_no_tls_session_and_close_at_the_deadline(
    tls_server: Any, tls: TlsMaterial
) -> None:
    """200 connections sending half a ClientHello: no TLS session for any, all closed.

    They wait until ``handshake_timeout`` (from their arrival) while a grpcio client keeps
    calling over TLS, every call succeeding.
    """
    server, port = await tls_server(handshake_timeout=4.0)
    hello = client_hello(tls)
    async with tls_channel(port, tls) as channel:
        caller = Caller(channel)
        await caller.calls(1)
        before = server_tls_sessions()  # the grpcio client's
        half = [await connect(port, hello[: len(hello) // 2]) for _ in range(HALF_HELLOS)]
        barrier = await answered(lambda first: connect(port, first), hello)
        await caller.calls(10)
        assert len(server._pending) == HALF_HELLOS + 1  # all still waiting, and the barrier
        assert server_tls_sessions() == before + 1  # the barrier's only
        closed = [asyncio.ensure_future(closed_by_server(c)) for c in [*half, barrier]]
        await caller.calls(10)
        assert all(await asyncio.gather(*closed))
        await caller.calls(10)
        await caller.stop()


@pytest.mark.parametrize("path", ["port", "initial-data"])
@pytest.mark.parametrize(
    "first",
    [
        pytest.param(b"\x17\x03\x03\x00\x20" + bytes(32), id="application-data"),
        pytest.param(b"\x16\x03\x01\x40\x01", id="longer-than-tls-allows"),
        pytest.param(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", id="http2-preface"),
    ],
)
async def test_a_first_record_that_is_not_a_clienthello_is_refused_at_once(
    path: str, first: bytes, opened: Any
) -> None:
    """Not a handshake record, or one over 2**14 bytes: closed long before the deadline."""
    server, open_connection = await opened(path, handshake_timeout=600.0)
    before = server_tls_sessions()
    assert await closed_by_server(await open_connection(first))
    assert server_tls_sessions() == before
    await eventually(lambda: not server._pending)


def reset(connection: Connection) -> None:
    """Close with a TCP reset (RST, not FIN)."""
    sock = connection[1].get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    connection[1].transport.abort()


async def test_peers_that_leave_while_waiting_leave_nothing_behind(
    tls_server: Any, tls: TlsMaterial
) -> None:
    """Silent, half a ClientHello then FIN, or then RST: every one cleaned up, no fd kept."""
    server, port = await tls_server()
    hello = client_hello(tls)
    async with tls_channel(port, tls) as channel:  # connected before the fd count
        caller = Caller(channel)
        await caller.calls(1)
        fds = len(os.listdir("/proc/self/fd"))
        leaving: list[tuple[Connection, Callable[[Connection], None]]] = [
            (await connect(port, first), leave)
            for first in (b"", hello[:40])
            for leave in (lambda c: c[1].close(), reset)
            for _ in range(10)
        ]
        await eventually(lambda: len(server._pending) == len(leaving))
        for connection, leave in leaving:
            assert still_open(connection)
            leave(connection)
        await eventually(lambda: not server._pending)
        await eventually(lambda: len(os.listdir("/proc/self/fd")) == fds)
        await caller.calls(10)
        await caller.stop()
