"""Closing a connection without losing its last frames: send, half-close, linger, close.

When the server ends a connection (a GOAWAY after a flood or a protocol error, or the last
GOAWAY of a graceful close) while the peer is still sending, closing the socket with unread
input makes the kernel answer with a TCP RST, and dropping what is still buffered (an abort)
loses the GOAWAY outright.  A peer that meets the RST while it writes may then never read the
GOAWAY that told it why.  So, as HTTP/2 servers on nghttp2 and grpc core do, a closing
connection first lets its output leave, then shuts down its sending side (TCP FIN: the peer
reads the GOAWAY, then end of stream), keeps reading and discarding what the peer still
sends for a short while, and only then closes.  The bounds:

* the output must leave within :data:`FLUSH_TIMEOUT` (a peer that does not read is aborted);
* after that, input is read and discarded for :data:`LINGER_TIME` at most, or until the peer
  closes its side;
* at most :data:`LINGER_BYTES` are read and discarded; past that, reading stops (the bytes
  left unread may then provoke the RST, but only once the GOAWAY has left).

Transports that cannot half-close (TLS run by the event loop; injected
:class:`~fastinject.duplex.Duplex` streams) do the same without the FIN: their output leaves,
they read and discard for :data:`LINGER_TIME`, then close, and are aborted if not gone within
:data:`FLUSH_TIMEOUT` more.  Closing the event loop's TLS at once is not enough: it sends its
close_notify, and when the peer's next record is application data its shutdown fails and
the socket transport is aborted, with the end of our output (the GOAWAY) still in it.
"""

from __future__ import annotations

import asyncio

FLUSH_TIMEOUT = 5.0
"""Seconds a closing connection's output may take to leave before it is aborted."""
LINGER_TIME = 1.0
"""Seconds input is read and discarded once the output has left, before the close."""
LINGER_BYTES = 1024 * 1024
"""Bytes read and discarded at most while lingering; past them, reading stops."""


class Linger:
    """The closing of one connection's transport; the connection hands it its input and drain.

    Made, then :meth:`start`-ed, so that the connection already knows it is closing when the
    transport calls it back (``pause_writing`` from :meth:`start`).
    """

    __slots__ = ("_discarded", "_drained", "_half_closed", "_loop", "_timer", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._discarded = 0
        self._drained = False
        self._half_closed = transport.can_write_eof()
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """Half-close once the output has left (where the transport can), and read on."""
        transport = self._transport
        self._timer = self._loop.call_later(FLUSH_TIMEOUT, transport.abort)
        if self._half_closed:
            try:
                transport.write_eof()  # once the buffered output has left
            except OSError:  # the peer is gone already (asyncio's write_eof lets this through)
                transport.abort()
                return
        # Learn when the last byte has left: resume_writing() at an empty buffer.
        transport.set_write_buffer_limits(high=0, low=0)
        transport.resume_reading()
        if not transport.get_write_buffer_size():
            self.output_left()

    def output_left(self) -> None:
        """Everything we sent has left the transport: linger for :data:`LINGER_TIME`, close."""
        if self._drained:
            return
        self._drained = True
        self.cancel()
        self._timer = self._loop.call_later(LINGER_TIME, self._close)

    def _close(self) -> None:
        self._transport.close()
        if not self._half_closed:
            # The event loop's TLS now sends its close_notify and waits for the peer's.
            self._timer = self._loop.call_later(FLUSH_TIMEOUT, self._transport.abort)

    def discard(self, data: bytes) -> None:
        """Bytes the peer sent after we closed: dropped; past the bound, reading stops."""
        self._discarded += len(data)
        if self._discarded > LINGER_BYTES:
            self._transport.pause_reading()

    def cancel(self) -> None:
        """The transport is gone."""
        if self._timer is not None:
            self._timer.cancel()
