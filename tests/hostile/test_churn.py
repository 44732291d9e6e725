"""Connection churn: many connect/close cycles leave no fd, task or object behind.

Each cycle is one of the ways a client leaves: after a complete call, right after connecting,
halfway through the HTTP/2 preface, with a call still open (the socket aborted), and (TLS)
with nothing sent at all.  After the cycles the process must hold the fds, asyncio tasks and
fastinject objects it held before them.  The 20,000-cycle run is
``python -m benchmarks.attacks.churn`` (see ``benchmarks/README.md``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import os
import socket
import ssl
from collections.abc import AsyncIterator

import pytest

import fastinject
from echo_service import Recorder
from protocol.wire import H2Client
from serving import TIMEOUT, echo_server, eventually
from tls_material import TlsMaterial

CYCLES = 200
"""Cycles per transport: a few seconds in all, enough for a per-connection leak to show."""
WARM_UP = 21
"""Cycles before the baseline, so one-time allocations (caches, executors) are not leaks.

The last one completes a call (``index % 5 == 0``): by then every earlier connection has been
accepted (a listener accepts in order), so the baseline can wait for all of them to be gone."""
_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def snapshot(collect: bool = True) -> tuple[int, int, dict[str, int]]:
    """Open fds, asyncio tasks, and live fastinject objects by class (after a collection)."""
    if collect:
        gc.collect()
    objects = collections.Counter(
        type(o).__qualname__ for o in gc.get_objects()
        if str(type(o).__module__).startswith("fastinject")
    )
    return len(os.listdir("/proc/self/fd")), len(asyncio.all_tasks()), dict(objects)


class Churner:
    """Connects to a port over TCP or TLS and leaves in one of several ways per cycle."""

    def __init__(self, port: int, context: ssl.SSLContext | None) -> None:
        self.port = port
        self.context = context
        self.calls = 0

    async def cycle(self, index: int) -> None:
        """One connect/close cycle; which kind of leaving follows from ``index``."""
        kind = index % 5
        if kind == 4:  # TCP only: with TLS, not even a ClientHello
            with socket.create_connection(("127.0.0.1", self.port)):
                return
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", self.port, ssl=self.context,
            server_hostname="localhost" if self.context else None,
        )
        try:
            client = H2Client()
            if kind == 1:  # connected (and handshaken), nothing more
                return
            if kind == 2:  # half the preface
                writer.write(_PREFACE[:12])
                await writer.drain()
                return
            stream_id = client.start_call(b"/test.Echo/Unary", [b"churn"], end=kind == 0)
            writer.write(client.data_to_send())
            if kind == 3:  # a call still open, then the socket aborted
                await writer.drain()
                writer.transport.abort()
                return
            response = client.response(stream_id)
            async with asyncio.timeout(TIMEOUT):
                while not response.done:
                    data = await reader.read(65536)
                    assert data, "the server closed the connection before answering"
                    client.receive(data)
                    writer.write(client.data_to_send())
            assert response.messages == [(False, b"churn")]
            self.calls += 1
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await writer.wait_closed()


class InjectingAcceptor:
    """A listener of the test's own whose accepted sockets are injected into the server."""

    def __init__(self, injector: fastinject.ConnectionInjector) -> None:
        self.injector = injector
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.setblocking(False)
        self.task = asyncio.ensure_future(self._accept())

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            sock, _ = await loop.sock_accept(self.listener)
            self.injector.inject_connection(sock)

    @property
    def port(self) -> int:
        """The listening port."""
        return int(self.listener.getsockname()[1])

    def close(self) -> None:
        """Stop accepting."""
        self.task.cancel()
        self.listener.close()


@contextlib.asynccontextmanager
async def serving(
    transport: str, recorder: Recorder, tls: TlsMaterial
) -> AsyncIterator[tuple[int, ssl.SSLContext | None]]:
    """A started test.Echo server reached over ``transport``: its port and client TLS context."""
    secure = transport.endswith("tls")
    credentials = (
        fastinject.ServerCredentials.ssl([(tls.server_key_pem, tls.server_cert_pem)])
        if secure else fastinject.ServerCredentials.insecure()
    )
    server = echo_server(recorder, handshake_timeout=5.0)
    acceptor = None
    if transport.startswith("injected"):
        await server.start()
        acceptor = InjectingAcceptor(server.create_connection_injector(credentials))
        port = acceptor.port
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
        await server.start()
    try:
        yield port, tls.client_context() if secure else None
    finally:
        if acceptor is not None:
            acceptor.close()
        await server.stop(None)


async def warmed_up(churner: Churner) -> Churner:
    """``churner`` after its warm-up cycles, once every connection and task of them is gone.

    Tests take their baseline then: a warm-up connection or task (handshake, injection)
    still finishing would count as left behind.
    """
    tasks_at_start = asyncio.all_tasks()
    for index in range(WARM_UP):
        await churner.cycle(index)
    await eventually(lambda: "Connection" not in snapshot()[2] and not (
        asyncio.all_tasks() - tasks_at_start - {asyncio.current_task()}
    ))
    return churner


@pytest.mark.parametrize("transport", ["plaintext", "tls", "injected", "injected-tls"])
async def test_connect_close_cycles_leave_nothing_behind(
    transport: str, recorder: Recorder, tls: TlsMaterial
) -> None:
    """After many connect/close cycles the fds, tasks and fastinject objects are as before."""
    async with serving(transport, recorder, tls) as (port, context):
        churner = await warmed_up(Churner(port, context))
        before = snapshot()
        for index in range(CYCLES):
            await churner.cycle(index)
        assert churner.calls == len(range(0, WARM_UP + CYCLES, 5))  # one cycle in 5 calls
        assert await settled(before) == before


@pytest.mark.parametrize("transport", ["plaintext", "tls", "injected", "injected-tls"])
async def test_closed_connections_are_freed_without_the_garbage_collector(
    transport: str, recorder: Recorder, tls: TlsMaterial
) -> None:
    """Whichever way its client leaves, a connection is freed by reference counting alone.

    Nothing it made is left in a reference cycle: with the garbage collector off, the
    fastinject objects alive are those alive before.  (Cyclic garbage of every connection
    makes a busy server run collections, each of which walks the young objects.)
    """
    async with serving(transport, recorder, tls) as (port, context):
        churner = await warmed_up(Churner(port, context))
        before = snapshot()
        gc.disable()
        try:
            for index in range(10):  # every way of leaving, twice
                await churner.cycle(index)
            assert await settled(before, collect=False) == before
        finally:
            gc.enable()


async def settled(
    expected: tuple[int, int, dict[str, int]], collect: bool = True
) -> tuple[int, int, dict[str, int]]:
    """Poll :func:`snapshot` (from this task) until it equals ``expected`` or time runs out."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    while (now := snapshot(collect)) != expected and loop.time() < deadline:
        await asyncio.sleep(0.01)
    return now
