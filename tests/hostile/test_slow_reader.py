"""A peer that sends but never reads: the server stops reading it instead of queueing answers.

The attacker floods PING frames (the ping-strike rule is switched off, so every PING must be
answered) and never reads the ACKs.  Both ends of its connection get small kernel buffers, so
that they fill after some ten thousand PINGs rather than a million.  Once they are full, the
server's unsent output reaches the transport's high-water mark and the server stops reading;
the attacker's sends then block.  A grpcio client on another connection is
served throughout.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct

from fastinject.connection import Connection
from hostile.conftest import MIN_CALLS
from hostile.test_floods import StartLegitimate, target
from protocol.probe_service import StartServer
from protocol.wire import PING, H2Client, eventually, raw_frame
from serving import TIMEOUT, Served

FLOOD_LIMIT = 256 * 1024 * 1024
"""Bytes the attacker sends at most: far more than every buffer on the way can hold."""
PINGS_PER_SEND = 1024


def attacker_socket(port: int) -> socket.socket:
    """A non-blocking loopback socket with small kernel buffers, connected to ``port``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    return sock


async def server_side(served: Served, sock: socket.socket) -> Connection:
    """The server's connection for the attacker's socket, its kernel buffers made small."""
    host, port = sock.getsockname()[:2]
    peer = f"ipv4:{host}:{port}"
    await eventually(
        lambda: any(c.peer == peer for c in served.server._connections),
        "the attacker's connection",
    )
    (conn,) = [c for c in served.server._connections if c.peer == peer]
    assert conn._transport is not None
    server_socket = conn._transport.get_extra_info("socket")
    server_socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    server_socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    return conn


async def flood_until_blocked(sock: socket.socket, conn: Connection, preface: bytes) -> int:
    """Send PINGs until the server stops reading; return how many bytes were sent."""
    pings = b"".join(raw_frame(PING, 0, 0, struct.pack(">Q", i)) for i in range(PINGS_PER_SEND))
    pending = memoryview(preface + pings)
    sent = 0
    while sent < FLOOD_LIMIT:
        try:
            count = sock.send(pending)
        except BlockingIOError:
            if "writing" in conn._read_pauses:
                return sent
            await asyncio.sleep(0.005)  # let the server read
            continue
        sent += count
        pending = pending[count:] if count < len(pending) else memoryview(pings)
        await asyncio.sleep(0)
    raise AssertionError(f"the server still reads after {sent} bytes it cannot answer")


async def test_peer_that_never_reads_is_not_read_either(
    start_server: StartServer, legitimate: StartLegitimate
) -> None:
    """Reading stops while the output is stuck; it resumes, and answers flow, once it drains."""
    served = await start_server(max_ping_strikes=0)
    client = await legitimate(target(served.port))
    sock = attacker_socket(served.port)
    conn = await server_side(served, sock)
    h2_client = H2Client()
    preface = h2_client.data_to_send()
    try:
        sent = await flood_until_blocked(sock, conn, preface)
    except BaseException:
        sock.close()
        raise
    assert conn._transport is not None
    # What waits in the process: the high-water mark plus one turn's answers at most.
    assert conn._transport.get_write_buffer_size() < 128 * 1024
    assert await client.finish() >= MIN_CALLS  # served while the attacker is stuck
    # The attacker reads after all: the server reads again and answers every PING it sent.
    loop = asyncio.get_running_loop()
    pings = (sent - len(preface)) // len(raw_frame(PING, 0, 0, bytes(8)))
    while len(h2_client.ping_acks) < pings:
        data = await asyncio.wait_for(loop.sock_recv(sock, 1 << 16), TIMEOUT)
        assert data, "the server closed the connection"
        h2_client.receive(data)
    assert h2_client.ping_acks == [struct.pack(">Q", i % PINGS_PER_SEND) for i in range(pings)]
    assert "writing" not in conn._read_pauses
    assert conn in served.server._connections
    sock.close()


async def test_answers_owed_past_the_cap_close_the_connection(
    start_server: StartServer, legitimate: StartLegitimate
) -> None:
    """With a cap below what the high-water mark holds, the stuck peer is disconnected."""
    served = await start_server(max_ping_strikes=0, max_pending_control_frames=500)
    client = await legitimate(target(served.port))
    sock = attacker_socket(served.port)
    conn = await server_side(served, sock)
    with contextlib.suppress(ConnectionError):  # the server closed it while we were sending
        await flood_until_blocked(sock, conn, H2Client().data_to_send())
    await eventually(lambda: conn not in served.server._connections, "the attacker's close")
    assert await client.finish() >= MIN_CALLS
    sock.close()
