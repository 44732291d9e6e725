"""Server-side TLS: the event loop's own TLS on sockets, ``ssl.MemoryBIO`` on anything else.

Two ways to run the handshake, with the same rules: the certificate used is the credentials'
*current* one when the connection arrives (so rotation applies to new handshakes), ALPN ``h2``
is required, a peer that does not finish by its connection's deadline (``handshake_timeout``
from arrival, which also covers the HTTP/2 preface after the handshake) is dropped, and a
handshake that completes after the server (or the connection's port or injector) stopped is
refused.  Every connection in its handshake is followed by its
:class:`~fastinject.pending.Arrival` from the moment it arrives, so ``stop`` reaches it and
the number of connections not serving yet stays capped.  Neither makes a TLS session before
the peer's first TLS record (its ClientHello) is whole: a peer that sends half of one, or
nothing, costs the server a few KiB, not OpenSSL's state and buffers; a first record that is
not a handshake, or is longer than TLS allows, closes the connection at once.

* :class:`NativeTlsHandshake` is for connections on a real socket transport of uvloop
  (accepted on a port, or an injected socket): the ClientHello waits unread in the kernel
  until it is whole (:mod:`~fastinject.first_record`), then ``loop.start_tls`` runs the
  handshake and the TLS records, which uvloop implements in C.
* :class:`TlsLayer` does TLS itself with ``ssl.MemoryBIO``, for any transport: every socket
  on asyncio's own loop (:func:`native_tls_pays`), injected :class:`~fastinject.duplex.Duplex`
  streams, connections whose first bytes the caller already read (``initial_data``), which
  ``start_tls`` has no way to take, and sockets whose ClientHello the kernel cannot hold back
  (Unix sockets, or bytes uvloop read before the pause held).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable
from typing import Any, cast

from .credentials import check_alpn
from .errors import HandshakeError
from .first_record import FirstRecordWait, first_record_size
from .pending import Arrival

logger = logging.getLogger(__name__)

_READ_SIZE = 256 * 1024

UpperFactory = Callable[[bytes], asyncio.Protocol]
"""Makes the HTTP/2 connection once the handshake is done, given bytes already decrypted."""


def native_tls_pays(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether a socket's TLS should be ``loop``'s own (:class:`NativeTlsHandshake`): on uvloop.

    uvloop does TLS records in C.  asyncio's own TLS protocol is Python, as :class:`TlsLayer`
    is, and allocates a 256 KiB read buffer per connection: an idle TLS connection holds
    ~300 KiB with it and ~45 KiB with a TlsLayer, for the same instructions per call and 12%
    fewer per new connection with the TlsLayer.
    """
    return type(loop).__module__.startswith("uvloop")


class TlsLayer(asyncio.Protocol, asyncio.Transport):
    """Terminates TLS between a lower transport and an upper protocol (made after the handshake)."""

    def __init__(
        self,
        context: ssl.SSLContext,
        upper_factory: UpperFactory,
        arrival: Arrival,
        initial_data: bytes = b"",
    ) -> None:
        asyncio.Transport.__init__(self)
        self._context = context
        self._upper_factory = upper_factory
        self._upper: asyncio.Protocol | None = None
        self._arrival = arrival
        self._initial_data = initial_data
        self._lower: asyncio.Transport | None = None
        # The TLS session is made once the peer's first record is whole (see data_received):
        # until then a connection holds its few bytes, not OpenSSL's state and buffers.
        self._first_record = bytearray()
        self._incoming: ssl.MemoryBIO | None = None
        self._outgoing = ssl.MemoryBIO()
        self._ssl: ssl.SSLObject  # set with _incoming
        self._timer: asyncio.TimerHandle | None = None
        self._closing = False
        self._eof_sent = False  # our close_notify is out: nothing more is written
        # The connection above paused reading: nothing is decrypted or delivered until it
        # resumes (records that arrive meanwhile wait, encrypted, in the TLS object).
        self._reading_paused = False
        self._loop = asyncio.get_running_loop()

    # -- protocol side (the transport below) ---------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Start serving the new transport."""
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._lower = cast(asyncio.Transport, transport)
        loop = asyncio.get_running_loop()
        self._timer = loop.call_at(self._arrival.deadline, self._on_handshake_timeout)
        self._arrival.hold(self)
        if self._closing:
            return  # dropped at once: too many connections not serving yet
        if self._initial_data:
            data, self._initial_data = self._initial_data, b""
            self.data_received(data)

    def data_received(self, data: bytes) -> None:
        """Feed received bytes through the protocol and act on what they produced."""
        incoming = self._incoming
        if incoming is None:
            incoming = self._start_session(data)
            if incoming is None:
                return
            data = bytes(self._first_record)
            self._first_record = bytearray()
        incoming.write(data)
        if self._upper is None and not self._handshake():
            return
        self._read_application_data()

    def _start_session(self, data: bytes) -> ssl.MemoryBIO | None:
        """The TLS session, made once the first record is whole; None while it is not.

        A first record that is not a handshake or is too long for one closes the connection.
        """
        first = self._first_record
        first += data
        try:
            size = first_record_size(first)
        except HandshakeError as exc:
            self._fail(str(exc))
            return None
        if len(first) < size:
            return None
        self._incoming = ssl.MemoryBIO()
        self._ssl = self._context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        return self._incoming

    def eof_received(self) -> bool | None:
        """The peer closed its sending side."""
        if self._incoming is None:
            return False  # before its first TLS record: close
        self._incoming.write_eof()
        if self._upper is not None:
            self._read_application_data()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        """The transport is gone: cancel the calls and forget the connection."""
        self._cancel_timer()
        self._lower = None
        if self._upper is not None:
            self._upper.connection_lost(exc)
        else:
            self._arrival.end()
            logger.debug("connection lost during the TLS handshake: %s", exc)

    def pause_writing(self) -> None:
        """The transport's buffer is full: senders wait until it drains."""
        if self._upper is not None:
            self._upper.pause_writing()

    def resume_writing(self) -> None:
        """The transport's buffer drained: waiting senders go on."""
        if self._upper is not None:
            self._upper.resume_writing()

    def _handshake(self) -> bool:
        """Advance the handshake; True once it completed and the upper protocol is attached."""
        try:
            self._ssl.do_handshake()
        except ssl.SSLWantReadError:
            self._send_outgoing()
            return False
        except (ssl.SSLError, ssl.CertificateError, OSError) as exc:
            self._send_outgoing()
            self._fail(f"TLS handshake failed: {exc}")
            return False
        self._send_outgoing()
        try:
            check_alpn(self._ssl)
        except HandshakeError as exc:
            self._fail(str(exc))
            return False
        self._cancel_timer()
        if not self._arrival.accepting:
            self._fail("TLS handshake completed after the server stopped accepting")
            return False
        # The connection, still pending until the client's SETTINGS, keeps its arrival.
        self._upper = self._upper_factory(b"")
        self._upper.connection_made(self)
        return True

    def _read_application_data(self) -> None:
        upper = self._upper
        while upper is not None and self._lower is not None and not self._reading_paused:
            try:
                chunk = self._ssl.read(_READ_SIZE)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self.close()
                break
            except ssl.SSLError as exc:
                logger.debug("TLS error from peer: %s", exc)
                self.abort()
                break
            if not chunk:
                self.close()
                break
            upper.data_received(chunk)
        self._send_outgoing()

    def _on_handshake_timeout(self) -> None:
        self._timer = None
        self._fail("TLS handshake timed out")

    def _fail(self, reason: str) -> None:
        logger.debug("closing connection: %s", reason)
        self._cancel_timer()
        self._arrival.end()
        if self._lower is not None:
            self._lower.abort()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _send_outgoing(self) -> None:
        data = self._outgoing.read()
        if data and self._lower is not None:
            self._lower.write(data)

    # -- transport side (the HTTP/2 connection above) ------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Send bytes to the peer."""
        if self._lower is None or self._closing or self._eof_sent:
            return
        self._ssl.write(data)
        self._send_outgoing()

    def can_write_eof(self) -> bool:
        """Whether the transport below can half-close (a socket can, a Duplex cannot)."""
        return self._lower is not None and self._lower.can_write_eof()

    def write_eof(self) -> None:
        """Send close_notify, then half-close the transport below; reading goes on."""
        if self._lower is None or self._closing or self._eof_sent:
            return
        self._eof_sent = True
        self._send_close_notify()  # the peer's records are still read after it
        self._lower.write_eof()

    def close(self) -> None:
        """Close after sending what is buffered."""
        if self._closing or self._lower is None:
            return
        self._closing = True
        self._send_close_notify()
        self._lower.close()

    def _send_close_notify(self) -> None:
        """Send our close_notify (and what precedes it); the peer's is not awaited."""
        with contextlib.suppress(ssl.SSLError):
            self._ssl.unwrap()
        self._send_outgoing()

    def abort(self) -> None:
        """Close at once, dropping buffered bytes."""
        self._closing = True
        if self._lower is not None:
            self._lower.abort()

    def is_closing(self) -> bool:
        """Whether the transport is closing or closed."""
        return self._closing or self._lower is None or self._lower.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """Transport information (``ssl_object``, ``peercert``, ``peername``, ...)."""
        if name in ("ssl_object", "peercert"):
            if self._incoming is None:
                return default
            return self._ssl if name == "ssl_object" else self._ssl.getpeercert()
        if name == "sslcontext":
            return self._context
        if self._lower is None:
            return default
        return self._lower.get_extra_info(name, default)

    def pause_reading(self) -> None:
        """Stop delivering received bytes until resume_reading(), at once.

        The transport below stops reading; records it already delivered, even in the middle
        of a read, wait undecrypted.
        """
        self._reading_paused = True
        if self._lower is not None:
            self._lower.pause_reading()

    def resume_reading(self) -> None:
        """Deliver received bytes again: those that waited first, on the next loop turn."""
        if not self._reading_paused:
            return
        self._reading_paused = False
        if self._lower is not None:
            self._lower.resume_reading()
            self._loop.call_soon(self._read_application_data)

    def get_write_buffer_size(self) -> int:
        """Bytes written but not yet sent."""
        return self._lower.get_write_buffer_size() if self._lower is not None else 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        """Set the high and low water marks of the write buffer."""
        if self._lower is not None:
            self._lower.set_write_buffer_limits(high, low)


class NativeTlsHandshake(asyncio.Protocol):
    """Runs a socket connection's TLS handshake with ``loop.start_tls``, then hands it on.

    The protocol of the plain transport, which it pauses: the peer's bytes stay unread in the
    kernel until its first TLS record is whole there (:mod:`~fastinject.first_record`), so a
    peer that sends half a ClientHello, or nothing, never gets a TLS session made for it.  Then
    ``start_tls`` takes the transport over, with every byte still to read, and this is the
    application protocol of the TLS transport until the HTTP/2 connection replaces it: bytes
    decrypted in between are kept and given to the connection.

    uvloop starts reading a transport after ``connection_made`` whatever it did, so the pause
    holds from the loop turn after.  Bytes read before it, or when the kernel cannot wait for
    the record (``first_record_unwaited``), go to a :class:`TlsLayer` (``start_tls`` cannot
    be given them).
    """

    def __init__(
        self,
        context: ssl.SSLContext,
        upper_factory: UpperFactory,
        arrival: Arrival,
    ) -> None:
        self._context = context
        self._upper_factory = upper_factory
        self._arrival = arrival
        self._transport: asyncio.Transport | None = None
        self._wait: FirstRecordWait | None = None
        self._timer: asyncio.TimerHandle | None = None  # the deadline, until start_tls has it
        self._taken_over = False  # start_tls owns the plain transport
        self._decrypted = bytearray()  # application bytes before the connection is attached
        self._eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Track the new connection and wait for its first TLS record."""
        plain = self._transport = cast(asyncio.Transport, transport)
        self._arrival.hold(self)
        if self._transport is not plain:
            return  # dropped at once: too many connections not serving yet
        plain.pause_reading()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_at(self._arrival.deadline, self._on_timeout)
        # This call makes uvloop start reading on the next turn, before the one that follows.
        loop.call_soon(loop.call_soon, self._wait_for_first_record)

    def _wait_for_first_record(self) -> None:
        if self._transport is None:
            return  # closed, or handed to a TlsLayer
        self._transport.pause_reading()
        self._wait = FirstRecordWait(self._transport.get_extra_info("socket"), self)
        self._wait.start()

    def data_received(self, data: bytes) -> None:
        """Plain bytes read before the pause held, or decrypted bytes after the handshake."""
        if self._taken_over:
            self._decrypted += data
            return
        self._stop_waiting()
        transport, self._transport = self._transport, None
        if transport is None:
            return
        layer = TlsLayer(self._context, self._upper_factory, self._arrival, data)
        transport.set_protocol(layer)
        layer.connection_made(transport)

    def eof_received(self) -> bool | None:
        """The peer closed its sending side after the handshake (passed on to the connection)."""
        self._eof = True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        """The connection closed during its handshake."""
        self._stop_waiting()
        self._transport = None
        self._arrival.end()

    def abort(self) -> None:
        """Drop the connection at once (server stopping, or too many handshakes)."""
        self._stop_waiting()
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.abort()

    def first_record_whole(self) -> None:
        """The ClientHello is whole in the kernel: ``start_tls`` takes the transport now."""
        self._wait = None
        self._cancel_timer()
        if self._transport is not None:
            self._taken_over = True
            asyncio.get_running_loop().create_task(self._handshake(self._transport))

    def first_record_unwaited(self) -> None:
        """The kernel cannot wait for the ClientHello: read it, and a TlsLayer takes over."""
        self._wait = None
        if self._transport is not None:
            self._transport.resume_reading()

    def first_record_refused(self, reason: str) -> None:
        """Not a ClientHello, or the peer left: close."""
        self._wait = None
        logger.debug("closing connection: %s", reason)
        self.abort()

    def _on_timeout(self) -> None:
        self._timer = None
        logger.debug("closing connection: no whole ClientHello by the handshake deadline")
        self.abort()

    def _stop_waiting(self) -> None:
        self._cancel_timer()
        if self._wait is not None:
            self._wait.cancel()
            self._wait = None

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def _handshake(self, transport: asyncio.Transport) -> None:
        loop = asyncio.get_running_loop()
        try:
            tls = await loop.start_tls(
                transport,
                self,
                self._context,
                server_side=True,
                # What is left of the connection's deadline (start_tls wants more than 0).
                ssl_handshake_timeout=max(self._arrival.deadline - loop.time(), 1e-3),
            )
            ssl_object = None if tls is None else tls.get_extra_info("ssl_object")
            if tls is None or ssl_object is None:
                raise ConnectionError("the connection closed as its TLS handshake ended")
            check_alpn(ssl_object)
        except (OSError, TimeoutError, HandshakeError) as exc:  # ssl.SSLError is an OSError
            # Its traceback holds asyncio's start_tls frame, which holds the future holding it:
            # a cycle that would keep this handshake alive until a garbage collection.
            exc.__traceback__ = None
            logger.debug("closing connection: TLS handshake failed: %s", exc)
            self._arrival.end()
            transport.abort()
            return
        if self._transport is None or not self._arrival.accepting:
            logger.debug("closing connection: TLS handshake completed after the server stopped")
            tls.abort()
            return
        self._transport = None
        upper = self._upper_factory(bytes(self._decrypted))
        tls.set_protocol(upper)
        upper.connection_made(tls)
        if self._eof:
            upper.eof_received()
