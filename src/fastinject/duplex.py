"""Byte streams that are not sockets: the :class:`Duplex` protocol and its asyncio transport.

Anything with ``async read(max_bytes)``, ``async write(data)`` and ``async close()`` can carry
a gRPC connection: a tunnel, an in-memory pipe, a wrapped transport.  :class:`DuplexTransport`
adapts one to :class:`asyncio.Transport`, so it is served by the same code as a socket,
with backpressure both ways: reading stops while the protocol has paused it, and the
protocol is paused while more than the high-water mark of written bytes wait for ``write``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from typing import Any, Protocol, runtime_checkable

logger = logging.getLogger(__name__)

_READ_SIZE = 64 * 1024
_HIGH_WATER = 256 * 1024
_LOW_WATER = 64 * 1024


@runtime_checkable
class Duplex(Protocol):
    """A bidirectional byte stream that fastinject can serve gRPC on.

    ``peer`` (optional attribute, a ``str``) is what ``context.peer()`` reports for calls on
    it; without one, calls see ``"duplex:<type name>"``.
    """

    async def read(self, max_bytes: int) -> bytes:
        """Up to ``max_bytes`` received bytes; ``b""`` once the peer has closed its side."""

    async def write(self, data: bytes) -> None:
        """Send ``data``; return when the stream has accepted it (that is the backpressure)."""

    async def close(self) -> None:
        """Close both directions."""


class StreamPairDuplex:
    """An asyncio ``(StreamReader, StreamWriter)`` pair seen as a :class:`Duplex`."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self.peername: Any = writer.get_extra_info("peername")
        self.socket: Any = writer.get_extra_info("socket")

    async def read(self, max_bytes: int) -> bytes:
        """Read from the reader."""
        return await self._reader.read(max_bytes)

    async def write(self, data: bytes) -> None:
        """Write and drain."""
        self._writer.write(data)
        await self._writer.drain()

    async def close(self) -> None:
        """Close the writer (and so the stream)."""
        self._writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.wait_closed()


class DuplexTransport(asyncio.Transport):
    """An :class:`asyncio.Transport` over a :class:`Duplex`, driven by two tasks."""

    def __init__(self, duplex: Duplex, protocol: asyncio.Protocol, extra: dict[str, Any]) -> None:
        super().__init__(extra)
        self._duplex = duplex
        self._protocol = protocol
        self._loop = asyncio.get_running_loop()
        self._outgoing: collections.deque[bytes] = collections.deque()
        self._outgoing_size = 0
        self._writer_wakeup = asyncio.Event()
        self._reading = asyncio.Event()
        self._reading.set()
        self._protocol_paused = False
        self._high_water = _HIGH_WATER
        self._low_water = _LOW_WATER
        self._closing = False
        self._lost = False
        protocol.connection_made(self)
        self._reader_task = self._loop.create_task(self._pump_in())
        self._writer_task = self._loop.create_task(self._pump_out())

    async def _pump_in(self) -> None:
        error: Exception | None = None
        try:
            while not self._closing:
                await self._reading.wait()
                data = await self._duplex.read(_READ_SIZE)
                if not data:
                    self._protocol.eof_received()
                    self.close()
                    return
                self._protocol.data_received(data)
        except Exception as exc:
            logger.debug("injected stream read failed: %r", exc)
            error = exc
        finally:
            # Also on a CancelledError the stream raised itself: the connection must end.
            if error is not None or not self._closing:
                self._connection_lost(error)

    async def _pump_out(self) -> None:
        error: Exception | None = None
        try:
            while True:
                while not self._outgoing:
                    if self._closing:
                        await self._duplex.close()
                        return
                    self._writer_wakeup.clear()
                    await self._writer_wakeup.wait()
                chunk = b"".join(self._outgoing)
                self._outgoing.clear()
                await self._duplex.write(chunk)
                self._outgoing_size -= len(chunk)
                if self._protocol_paused and self._outgoing_size <= self._low_water:
                    self._protocol_paused = False
                    self._protocol.resume_writing()
        except Exception as exc:
            logger.debug("injected stream write failed: %r", exc)
            error = exc
        finally:
            self._connection_lost(error)

    def _connection_lost(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._closing = True
        for task in (self._reader_task, self._writer_task):
            if task is not asyncio.current_task():
                task.cancel()
        if exc is not None:
            self._loop.create_task(self._close_quietly())
        self._protocol.connection_lost(exc)

    async def _close_quietly(self) -> None:
        try:
            await self._duplex.close()
        except Exception as exc:
            logger.debug("closing injected stream failed: %r", exc)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Send bytes to the peer."""
        if self._closing:
            return
        self._outgoing.append(bytes(data))
        self._outgoing_size += len(data)
        self._writer_wakeup.set()
        self._maybe_pause_protocol()

    def _maybe_pause_protocol(self) -> None:
        if not self._protocol_paused and self._outgoing_size > self._high_water:
            self._protocol_paused = True
            self._protocol.pause_writing()

    def close(self) -> None:
        """Close after sending what is buffered."""
        if self._closing:
            return
        self._closing = True
        self._writer_wakeup.set()
        self._reading.set()

    def abort(self) -> None:
        """Close at once, dropping buffered bytes."""
        self._outgoing.clear()
        self._connection_lost(None)
        self._loop.create_task(self._close_quietly())

    def is_closing(self) -> bool:
        """Whether the transport is closing or closed."""
        return self._closing

    def can_write_eof(self) -> bool:
        """False: a :class:`Duplex` has no half-close."""
        return False

    def pause_reading(self) -> None:
        """Stop delivering received bytes until resume_reading()."""
        self._reading.clear()

    def resume_reading(self) -> None:
        """Deliver received bytes again."""
        self._reading.set()

    def is_reading(self) -> bool:
        """Whether received bytes are being delivered."""
        return self._reading.is_set()

    def get_write_buffer_size(self) -> int:
        """Bytes written but not yet sent."""
        return self._outgoing_size

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        """Pause the protocol's writing above ``high`` buffered bytes, resume at ``low``."""
        if high is None:
            high = _HIGH_WATER if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high_water, self._low_water = high, low
        self._maybe_pause_protocol()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        """Replace the protocol receiving this transport's events."""
        assert isinstance(protocol, asyncio.Protocol)
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        """The protocol receiving this transport's events."""
        return self._protocol
