"""The GOAWAY that ends an abusive connection reaches the abuser, even one that keeps sending.

Closing a socket with unread input makes the kernel send a TCP RST, and aborting a transport
drops the output it still holds: either way a peer that is still writing may never read the
GOAWAY that says why it was cut off.  The server therefore sends what it holds, half-closes
and reads (and drops) what still comes for a while before closing (``fastinject.linger``).

The attacker here floods SETTINGS frames (each owes an ACK) without reading, over a socket
whose buffers are small at both ends, so that the server's ACKs, and then its GOAWAY, are
still queued in the server when its budget runs out.  It then keeps sending while it reads.
A grpcio client calls the same server throughout.  The linger is bounded: a peer that never
stops sending is cut off after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Awaitable, Callable

import pytest

from fastinject import ServerCredentials
from fastinject.preface import PREFACE
from hostile.conftest import MIN_CALLS
from hostile.test_floods import StartLegitimate, target
from hostile.test_slow_reader import TlsClient, attacker_socket, server_side
from protocol.probe_service import StartServer
from protocol.wire import (
    ENHANCE_YOUR_CALM,
    GOAWAY,
    PING,
    SETTINGS,
    H2Client,
    eventually,
    raw_frame,
)
from serving import TIMEOUT, Served
from tls_material import TlsMaterial

BURST = 5000
"""The useless-frame budget: its SETTINGS ACKs (45 KB) overflow both kernel buffers."""
KEEP_SENDING = 256 * 1024
"""Bytes the attacker sends after its budget ran out, while it reads."""
ROUNDS = 3
"""Attacks per test: each one is a fresh chance for the GOAWAY to be lost."""
NEVER_STOPS = 256 * 1024 * 1024
"""Bytes a peer that never stops sending would send at most: far beyond every bound."""
UNKNOWN_TYPE = 0xBB


def goaways(received: bytes) -> list[tuple[int, bytes]]:
    """(error code, debug data) of every GOAWAY frame in ``received``."""
    found = []
    offset = 0
    while offset + 9 <= len(received):
        length = int.from_bytes(received[offset : offset + 3], "big")
        if received[offset + 3] == GOAWAY:
            payload = received[offset + 9 : offset + 9 + length]
            found.append((struct.unpack_from(">I", payload, 4)[0], payload[8:]))
        offset += 9 + length
    return found


async def read_all(receive: Callable[[], Awaitable[bytes]]) -> bytes:
    """What the server sends until it closes (cleanly or with a reset)."""
    received = bytearray()
    with contextlib.suppress(ConnectionError):
        async with asyncio.timeout(TIMEOUT):
            while data := await receive():
                received += data
    return bytes(received)


async def keep_sending(sock: socket.socket, chunk: Callable[[], bytes]) -> None:
    """Send ``chunk()`` over and over, :data:`KEEP_SENDING` bytes, until the server closes."""
    loop = asyncio.get_running_loop()
    with contextlib.suppress(ConnectionError):
        sent = 0
        while sent < KEEP_SENDING:
            data = chunk()
            await asyncio.wait_for(loop.sock_sendall(sock, data), TIMEOUT)
            sent += len(data)


async def attack(served: Served, port: int, tls: TlsMaterial | None) -> bytes:
    """One flood as described above, on ``port`` (over TLS if ``tls``); what it received."""
    loop = asyncio.get_running_loop()
    settings = raw_frame(SETTINGS, 0, 0, b"")
    with attacker_socket(port) as sock:
        client = None if tls is None else TlsClient(sock, tls)
        if client is not None:
            await client.handshake()

        def wire(data: bytes) -> bytes:
            return data if client is None else client.encrypt(data)

        conn = await server_side(served, sock, wire)
        flood = wire(H2Client().data_to_send()[len(PREFACE):] + settings * (BURST + 100))
        await asyncio.wait_for(loop.sock_sendall(sock, flood), TIMEOUT)
        # The budget is spent: the server answered, and its GOAWAY is out or queued.
        await eventually(lambda: conn.protocol.closed, "the end of the attack")
        reading = asyncio.ensure_future(
            read_all(lambda: loop.sock_recv(sock, 65536) if client is None else client.receive())
        )
        await keep_sending(sock, lambda: wire(settings * 455))
        received = await reading
    await eventually(lambda: conn not in served.server._connections, "the close")
    return received


@pytest.mark.parametrize("secure", [False, True], ids=["plaintext", "tls"])
async def test_flooder_that_keeps_sending_reads_its_goaway(
    start_server: StartServer, legitimate: StartLegitimate, tls: TlsMaterial, secure: bool
) -> None:
    """GOAWAY too_many_useless_frames arrives whole after the queued ACKs, every time.

    Over TLS the event loop's transport cannot half-close: it sends what it holds, then its
    close_notify, and reads until the peer's.
    """
    served = await start_server(useless_frame_burst=BURST, useless_frame_rate=1.0)
    client = await legitimate(target(served.port))
    port = served.port
    if secure:
        credentials = ServerCredentials.ssl([(tls.server_key_pem, tls.server_cert_pem)])
        port = served.server.add_secure_port("127.0.0.1:0", credentials)
    for _ in range(ROUNDS):
        received = await attack(served, port, tls if secure else None)
        assert goaways(received) == [(ENHANCE_YOUR_CALM, b"too_many_useless_frames")]
    assert await client.finish() >= MIN_CALLS


async def test_a_peer_that_never_stops_sending_is_closed_after_the_linger(
    start_server: StartServer,
) -> None:
    """After its GOAWAY the server drops at most LINGER_BYTES, then closes on time.

    The peer keeps sending and never closes its side; it still reads the GOAWAY and the end
    of the stream, and its sends fail once the server has closed (its sends block first,
    once the server stops reading).
    """
    served = await start_server(useless_frame_burst=10, useless_frame_rate=1.0)
    loop = asyncio.get_running_loop()
    junk = raw_frame(UNKNOWN_TYPE, 0, 0, b"x" * 1000) * 64
    with socket.create_connection(("127.0.0.1", served.port)) as sock:
        sock.setblocking(False)
        await loop.sock_sendall(sock, H2Client().data_to_send() + junk[: 20 * 1009])
        reading = asyncio.ensure_future(read_all(lambda: loop.sock_recv(sock, 65536)))
        sent = 0
        with contextlib.suppress(ConnectionError):
            async with asyncio.timeout(TIMEOUT):
                while sent < NEVER_STOPS:
                    await loop.sock_sendall(sock, junk)
                    sent += len(junk)
        received = await reading
    assert goaways(received) == [(ENHANCE_YOUR_CALM, b"too_many_useless_frames")]
    assert sent < NEVER_STOPS  # cut off by the close, not by its own end
    await eventually(lambda: not served.server._connections, "the close")


async def test_nothing_starts_or_is_written_after_the_close_began(
    start_server: StartServer,
) -> None:
    """Calls read after the PINGs that end the connection are not started; nothing is late.

    Each call here (a 100 KB response, more than the window) is followed by a PING; the third
    PING ends the connection (too many pings: GOAWAY ENHANCE_YOUR_CALM).  The calls read after
    it must not run: they answered into a half-closed transport (``write()`` after
    ``write_eof()`` raised in the event loop, once per flush) and held their responses until
    the linger ended.
    """
    served = await start_server()
    loop = asyncio.get_running_loop()
    errors: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    try:
        sock = attacker_socket(served.port)
        client = H2Client()
        conn = await server_side(served, sock)
        await loop.sock_sendall(sock, client.data_to_send()[len(PREFACE):])
        batch = bytearray()
        for index in range(20):
            client.start_call(b"/test.Probe/Produce", [b"1:100000"], end=True)
            batch += client.data_to_send() + raw_frame(PING, 0, 0, struct.pack(">Q", index))
        await loop.sock_sendall(sock, bytes(batch))
        await eventually(lambda: conn._linger is not None, "the close")
        assert len(conn._calls) == 0  # those started before the third PING were cancelled
        received = await read_all(lambda: loop.sock_recv(sock, 65536))
        sock.close()
        assert goaways(received)[-1] == (ENHANCE_YOUR_CALM, b"too_many_pings")
        await eventually(lambda: not served.server._connections, "the connection gone")
    finally:
        loop.set_exception_handler(None)
    assert errors == []
