"""Write batching: the connection gathers what many calls send into few transport writes.

A :class:`fastinject.connection.Connection` runs on a fake transport that records each
``write``, fed by a real ``h2`` client; counting writes is deterministic (no timing involved).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
from collections.abc import Iterator
from typing import Any

import pytest

from echo_service import SERVICE, Recorder, handlers
from fastinject import StatusCode
from fastinject.connection import Connection
from fastinject.handlers import HandlerRegistry
from fastinject.options import ServerSettings
from fastinject.pending import Arrival
from protocol.wire import H2Client


class RecordingTransport(asyncio.Transport):
    """A transport that keeps every write and wakes waiters on each one."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False
        self.eof = False
        self.reading = True
        self.written = asyncio.Event()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Record one write."""
        self.writes.append(bytes(data))
        self.written.set()

    def is_closing(self) -> bool:
        """Whether close() or abort() was called."""
        return self.closed

    def close(self) -> None:
        """Mark the transport closed."""
        self.closed = True

    def abort(self) -> None:
        """Mark the transport closed."""
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """A loopback peer address; nothing else."""
        return ("127.0.0.1", 50000) if name == "peername" else default

    def get_write_buffer_size(self) -> int:
        """Every write is sent at once."""
        return 0

    def pause_reading(self) -> None:
        """Record that the connection wants no more bytes for now."""
        self.reading = False

    def resume_reading(self) -> None:
        """Record that the connection takes bytes again."""
        self.reading = True

    def can_write_eof(self) -> bool:
        """The transport half-closes (a TCP socket's does)."""
        return True

    def write_eof(self) -> None:
        """Record the half-close: the connection's output is over."""
        self.eof = True

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        """Every write is sent at once: no limits to keep."""


class NoGroup:
    """Stands in for the server's connection group."""

    def add(self, conn: Connection) -> None:
        """Nothing to track."""

    def discard(self, conn: Connection) -> None:
        """Nothing to forget."""

    def pending_started(self, arrival: Arrival) -> None:
        """Nothing to count."""

    def pending_ended(self, arrival: Arrival) -> None:
        """Nothing to forget."""

    accepting = True


@pytest.fixture
def pool() -> Iterator[concurrent.futures.ThreadPoolExecutor]:
    """A thread pool for sync handlers."""
    with concurrent.futures.ThreadPoolExecutor(2) as executor:
        yield executor


def connection(
    pool: concurrent.futures.Executor,
    registry: HandlerRegistry | None = None,
    **settings: Any,
) -> tuple[Connection, RecordingTransport]:
    """A connection serving ``registry`` (test.Echo by default) on a recording transport."""
    if registry is None:
        registry = HandlerRegistry()
        registry.add_registered(SERVICE, handlers(Recorder()))
    conn = Connection(
        settings=ServerSettings(**settings),
        registry=registry,
        interceptors=(),
        executor=lambda: pool,
        group=NoGroup(),  # type: ignore[arg-type]
        arrival=Arrival(NoGroup(), math.inf),
    )
    transport = RecordingTransport()
    conn.connection_made(transport)
    return conn, transport


async def feed_until(
    client: H2Client, transport: RecordingTransport, stream_ids: list[int]
) -> None:
    """Give the client everything written until every stream is done (bounded wait)."""
    seen = 0
    async with asyncio.timeout(10):
        while not all(client.response(s).done for s in stream_ids):
            transport.written.clear()
            for data in transport.writes[seen:]:
                client.receive(data)
            seen = len(transport.writes)
            if not all(client.response(s).done for s in stream_ids):
                await transport.written.wait()


async def test_many_calls_in_one_chunk_are_answered_in_few_writes(
    pool: concurrent.futures.Executor,
) -> None:
    """100 unary calls arriving in one read are answered with far fewer than 100 writes."""
    conn, transport = connection(pool)
    client = H2Client()
    client.receive(b"".join(transport.writes))
    conn.data_received(client.data_to_send())  # preface, settings
    calls = 100
    stream_ids = [client.start_call(b"/test.Echo/Unary", [str(i).encode()]) for i in range(calls)]
    before = len(transport.writes)
    conn.data_received(client.data_to_send())
    await feed_until(client, transport, stream_ids)
    writes = len(transport.writes) - before
    for index, stream_id in enumerate(stream_ids):
        response = client.response(stream_id)
        assert response.status == StatusCode.OK.number
        assert response.messages == [(False, str(index).encode())]
    assert writes < calls // 10
    conn.connection_lost(None)


async def test_streaming_response_produced_in_one_turn_takes_few_writes(
    pool: concurrent.futures.Executor,
) -> None:
    """A streaming response produced without pausing goes out in fewer writes than messages."""
    conn, transport = connection(pool)
    client = H2Client()
    client.receive(b"".join(transport.writes))
    conn.data_received(client.data_to_send())
    stream_id = client.start_call(b"/test.Echo/ServerStream", [b"200"])
    before = len(transport.writes)
    conn.data_received(client.data_to_send())
    await feed_until(client, transport, [stream_id])
    response = client.response(stream_id)
    assert response.status == StatusCode.OK.number
    assert len(response.messages) == 200
    assert len(transport.writes) - before < 200 // 10
    conn.connection_lost(None)


async def test_a_closing_transport_is_not_written_to(
    pool: concurrent.futures.Executor,
) -> None:
    """Once the transport closes (the peer's EOF), a graceful close writes nothing to it.

    asyncio closes a transport at EOF and calls ``connection_lost`` a loop turn later; a
    server stopping in between must not write (Python 3.12+'s selector transports raise).
    """
    conn, transport = connection(pool)
    client = H2Client()
    client.receive(b"".join(transport.writes))
    conn.data_received(client.data_to_send())
    transport.close()
    before = len(transport.writes)
    conn.close_gracefully()
    assert len(transport.writes) == before
    conn.connection_lost(None)
