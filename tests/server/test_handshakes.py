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
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest

import fastinject
from echo_service import Recorder
from serving import TIMEOUT, echo_server, eventually, method
from tls_material import TlsMaterial

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class Caller:
    """A grpcio client calling test.Echo/Unary in a loop until stopped; counts its calls."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._unary = method(channel, "Unary")
        self.succeeded = 0
        self._stop = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        for _ in range(100_000):  # a bound; stop() ends it long before
            if self._stop.is_set():
                return
            assert await self._unary(b"ping", timeout=TIMEOUT) == b"ping"
            self.succeeded += 1

    async def calls(self, count: int) -> None:
        """Wait until ``count`` more calls succeeded (re-raising any failure)."""
        target = self.succeeded + count
        async with asyncio.timeout(TIMEOUT):
            while self.succeeded < target:
                if self._task.done():
                    self._task.result()
                    raise AssertionError("the caller stopped early")
                await asyncio.sleep(0.01)

    async def stop(self) -> None:
        """Stop calling; re-raise a failed call."""
        self._stop.set()
        await asyncio.wait_for(self._task, TIMEOUT)


def client_context(tls: TlsMaterial) -> ssl.SSLContext:
    """A TLS client context trusting the test CA, offering ALPN h2."""
    context = ssl.create_default_context(cadata=tls.ca_pem.decode())
    context.set_alpn_protocols(["h2"])
    return context


def client_hello(tls: TlsMaterial) -> bytes:
    """A real ClientHello for ``localhost``."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_context(tls).wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    return outgoing.read()


async def connect(port: int, first: bytes = b"") -> Connection:
    """Open a raw TCP connection to ``port`` and send ``first``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(first)
    await writer.drain()
    return reader, writer


async def closed_by_server(connection: Connection) -> bool:
    """Read until the server closes the connection (True); False if it stays open TIMEOUT s."""
    reader, writer = connection
    try:
        async with asyncio.timeout(TIMEOUT):
            while await reader.read(65536):
                pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        return False
    finally:
        writer.close()
    return True


def still_open(connection: Connection) -> bool:
    """Whether the server has not closed ``connection`` yet (nothing buffered says so)."""
    reader, _ = connection
    return not reader.at_eof() and reader.exception() is None


@pytest.fixture
async def tls_server(
    recorder: Recorder, tls: TlsMaterial
) -> AsyncIterator[Callable[..., Awaitable[tuple[fastinject.Server, int]]]]:
    """Start TLS test.Echo servers with the given settings; stopped at teardown."""
    servers: list[fastinject.Server] = []

    async def start(**settings: Any) -> tuple[fastinject.Server, int]:
        server = echo_server(recorder, **settings)
        servers.append(server)
        credentials = fastinject.ServerCredentials.ssl([(tls.server_key_pem, tls.server_cert_pem)])
        port = server.add_secure_port("127.0.0.1:0", credentials)
        await server.start()
        return server, port

    yield start
    for server in servers:
        await server.stop(None)


def tls_channel(port: int, tls: TlsMaterial) -> grpc.aio.Channel:
    """A grpcio TLS channel to ``port`` trusting the test CA."""
    credentials = grpc.ssl_channel_credentials(root_certificates=tls.ca_pem)
    return grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials)


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
    assert conn._timers["handshake"].when() <= accepted_by + 3.0
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
