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
import ssl
import struct
from collections.abc import Callable

import fastinject
from fastinject.connection import Connection
from fastinject.preface import PREFACE
from hostile.conftest import MIN_CALLS
from hostile.test_floods import StartLegitimate, target
from protocol.probe_service import StartServer
from protocol.wire import PING, H2Client, eventually, raw_frame
from serving import TIMEOUT, Served
from tls_material import TlsMaterial

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


async def server_side(
    served: Served, sock: socket.socket, wire: Callable[[bytes], bytes] = bytes
) -> Connection:
    """The server's connection for the attacker's socket, its kernel buffers made small.

    The server makes it on the client's preface: this sends that (through ``wire``).
    """
    sock.send(wire(PREFACE))
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
    preface = h2_client.data_to_send()[len(PREFACE):]
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
        await flood_until_blocked(sock, conn, H2Client().data_to_send()[len(PREFACE):])
    await eventually(lambda: conn not in served.server._connections, "the attacker's close")
    assert await client.finish() >= MIN_CALLS
    sock.close()


class TlsClient:
    """A TLS client (``ssl.MemoryBIO``) over a non-blocking socket: it reads only when told to."""

    def __init__(self, sock: socket.socket, tls: TlsMaterial) -> None:
        self.sock = sock
        self._incoming, self._outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        context = ssl.create_default_context(cadata=tls.ca_pem.decode())
        context.set_alpn_protocols(["h2"])
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_hostname="localhost")

    async def handshake(self) -> None:
        """Run the TLS handshake (reading what it needs)."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(TIMEOUT):
            while True:
                try:
                    self._tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    await loop.sock_sendall(self.sock, self._outgoing.read())
                    self._incoming.write(await loop.sock_recv(self.sock, 65536))
            await loop.sock_sendall(self.sock, self._outgoing.read())

    def encrypt(self, data: bytes) -> bytes:
        """``data`` as TLS records."""
        self._tls.write(data)
        return self._outgoing.read()

    async def receive(self) -> bytes:
        """Decrypted bytes from the next read (at least one record's worth); b"" at the end."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                return self._tls.read(1 << 20)
            except ssl.SSLWantReadError:
                data = await asyncio.wait_for(loop.sock_recv(self.sock, 1 << 16), TIMEOUT)
                if data:
                    self._incoming.write(data)
                else:
                    self._incoming.write_eof()
            except ssl.SSLEOFError:  # the socket ended without a close_notify
                return b""


async def injected_tls_client(served: Served, tls: TlsMaterial) -> tuple[TlsClient, Connection]:
    """A TLS client whose server end is injected as a (StreamReader, StreamWriter) pair.

    The injector's credentials ask for TLS, so ``fastinject.tls.TlsLayer`` terminates it.
    Both ends of the socket get small kernel buffers.
    """
    loop = asyncio.get_running_loop()
    credentials = fastinject.ServerCredentials.ssl([(tls.server_key_pem, tls.server_cert_pem)])
    injector = served.server.create_connection_injector(credentials)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.setblocking(False)
        sock = attacker_socket(listener.getsockname()[1])
        server_sock, _ = await asyncio.wait_for(loop.sock_accept(listener), TIMEOUT)
    server_sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    server_sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    await injector.inject_connection(await asyncio.open_connection(sock=server_sock))
    client = TlsClient(sock, tls)
    await client.handshake()
    await eventually(lambda: bool(injector._group.connections), "the injected connection")
    (conn,) = injector._group.connections
    return client, conn


async def test_tls_layer_stops_delivering_when_the_connection_pauses(
    start_server: StartServer, legitimate: StartLegitimate, tls: TlsMaterial
) -> None:
    """Over TLS (MemoryBIO): a paused connection is given nothing until it resumes.

    The flooding peer never reads, so the connection pauses (its output is stuck, or frames
    wait for the next turn) in the middle of a read of many TLS records; the records after
    the pause must wait, encrypted, instead of being decrypted and handled.  Once the peer
    reads, every PING is answered.
    """
    # An injected stream buffers 256 KiB of output before it pushes back: more answers than
    # the cap on answers owed allows by default.
    served = await start_server(max_ping_strikes=0, max_pending_control_frames=100_000)
    client = await legitimate(target(served.port))
    tls_client, conn = await injected_tls_client(served, tls)
    delivered_while_paused = 0
    deliver = conn.data_received

    def watched(data: bytes) -> None:
        nonlocal delivered_while_paused
        delivered_while_paused += bool(conn._read_pauses)
        deliver(data)

    conn.data_received = watched  # type: ignore[method-assign]
    loop = asyncio.get_running_loop()
    pings = b"".join(raw_frame(PING, 0, 0, struct.pack(">Q", i)) for i in range(PINGS_PER_SEND))
    batches = 0
    stop = False

    async def flood() -> None:
        nonlocal batches
        data = H2Client().data_to_send() + pings
        while not stop:
            batches += 1
            await loop.sock_sendall(tls_client.sock, tls_client.encrypt(data))
            data = pings

    sender = asyncio.ensure_future(flood())
    try:
        await eventually(
            lambda: "writing" in conn._read_pauses or sender.done(), "the server to stop reading"
        )
        stop = True  # the batch being sent is the last
        assert conn._transport is not None
        assert conn._transport.get_write_buffer_size() < 512 * 1024
        assert await client.finish() >= MIN_CALLS  # served while the attacker is stuck
        # The attacker reads after all (and its last batch goes out): every PING is answered.
        received = H2Client()
        while len(received.ping_acks) < batches * PINGS_PER_SEND:
            data = await tls_client.receive()
            assert data, "the server closed the connection"
            received.receive(data)
        await asyncio.wait_for(sender, TIMEOUT)
    finally:
        sender.cancel()
        tls_client.sock.close()
    assert delivered_while_paused == 0
    assert received.ping_acks == [
        struct.pack(">Q", i % PINGS_PER_SEND) for i in range(batches * PINGS_PER_SEND)
    ]
