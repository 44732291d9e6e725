"""A plaintext connection before its client's HTTP/2 preface: the transport and 24 bytes at most.

A :class:`~fastinject.connection.Connection` costs ~10 KiB from the start (its h2 state, HPACK
tables, flow-control books, send queue and timers), made before the client sent a byte.  A
plaintext connection is therefore held first by a :class:`PrefaceWait`: its transport, its
:class:`~fastinject.pending.Arrival` (the one deadline, the count of connections not serving
yet) and what the client sent of the 24-byte preface.  A peer that sends nothing, or part of
the preface, costs that until the handshake deadline.

The connection is made, with the bytes read, and takes the transport over as soon as the
preface is whole or the bytes stop matching it (the connection answers a bad preface as it
always did).  A client sends its preface and SETTINGS at once: it is made in the first read.
TLS connections are made once their handshake ends (``tls.py`` waits for the ClientHello).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import cast

from .pending import Arrival

logger = logging.getLogger(__name__)

# A timer may fire this much before its time (uvloop counts whole milliseconds, asyncio runs
# what is due within its clock's resolution): what is due by then is due now.
_TIMER_SLACK = 0.001

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
"""The client connection preface (RFC 9113 3.4)."""


class PrefaceWait(asyncio.Protocol):
    """The protocol of a plaintext connection until its preface is here (or is not a preface).

    ``make_connection(data)`` makes the protocol that serves it, given the bytes read so far;
    ``initial_data`` were read before the transport was made (an injected connection's).
    ``deadlines`` closes it at its arrival's deadline.
    """

    __slots__ = ("_arrival", "_deadlines", "_head", "_make_connection", "_transport")

    def __init__(
        self,
        make_connection: Callable[[bytes], asyncio.Protocol],
        arrival: Arrival,
        deadlines: PrefaceDeadlines,
        initial_data: bytes = b"",
    ) -> None:
        self._make_connection = make_connection
        self._arrival = arrival
        self._deadlines = deadlines
        self._head = initial_data
        self._transport: asyncio.Transport | None = None

    @property
    def deadline(self) -> float:
        """Event-loop time by which the connection must have sent its preface (and SETTINGS)."""
        return self._arrival.deadline

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Count the connection as pending and wait for its preface until the deadline."""
        # uvloop's transports implement asyncio.Transport without subclassing it.
        plain = self._transport = cast(asyncio.Transport, transport)
        self._arrival.hold(self)
        if self._transport is not plain:
            return  # dropped at once: too many connections not serving yet, or stopping
        if self._head:
            head, self._head = self._head, b""
            self.data_received(head)
            if self._transport is not plain:
                return  # the preface was whole: the connection serves
        self._deadlines.add(self)

    def data_received(self, data: bytes) -> None:
        """Keep what is a part of the preface; hand the connection over once it is whole."""
        head = self._head + data if self._head else data
        if len(head) < len(PREFACE) and PREFACE.startswith(head):
            self._head = head
            return
        self._head = b""
        self._deadlines.discard(self)
        transport, self._transport = self._transport, None
        if transport is None:
            return
        connection = self._make_connection(head)
        transport.set_protocol(connection)
        connection.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        """The peer left (or was dropped) before its preface."""
        self._deadlines.discard(self)
        self._transport = None
        self._arrival.end()

    def abort(self) -> None:
        """Drop the connection at once (too many pending, or the server is stopping)."""
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.abort()

    def expire(self) -> None:
        """The deadline passed without a whole preface: drop the connection."""
        logger.debug("closing connection: no HTTP/2 preface within handshake_timeout of arrival")
        self.abort()


class PrefaceDeadlines:
    """The connections of one server waiting for their preface, by arrival, and one timer.

    A timer per connection would cost more than the rest of the wait (~8k instructions to make
    and cancel one on uvloop); every connection of a server has the same ``handshake_timeout``,
    so by arrival is by deadline, and one timer at the oldest one's deadline serves them all.
    """

    __slots__ = ("_timer", "_waits")

    def __init__(self) -> None:
        self._waits: dict[PrefaceWait, None] = {}  # oldest first
        self._timer: asyncio.TimerHandle | None = None

    def add(self, wait: PrefaceWait) -> None:
        """Close ``wait`` at its deadline unless it is discarded before."""
        self._waits[wait] = None
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_at(wait.deadline, self._expire)

    def discard(self, wait: PrefaceWait) -> None:
        """``wait`` no longer waits (its preface is here, or it closed)."""
        self._waits.pop(wait, None)

    def cancel(self) -> None:
        """Stop the timer (the server stopped: its connections were dropped)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        waits = self._waits
        loop = asyncio.get_running_loop()
        now = loop.time() + _TIMER_SLACK
        while waits:
            oldest = next(iter(waits))
            if oldest.deadline > now:
                self._timer = loop.call_at(oldest.deadline, self._expire)
                return
            del waits[oldest]
            oldest.expire()
