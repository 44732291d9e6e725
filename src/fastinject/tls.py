"""Server-side TLS over any transport, with ``ssl.MemoryBIO``.

:class:`TlsLayer` is a protocol to the transport below (a TCP socket, or an injected byte
stream) and a transport to the HTTP/2 connection above.  Doing the handshake ourselves,
rather than through ``loop.create_server(ssl=...)``, gives every connection one code path,
whatever carried it: bytes the caller already read (``initial_data``) go in first, the
certificate used is the credentials' *current* one (so rotation applies to new handshakes),
ALPN ``h2`` is required, and a silent peer is dropped at the handshake timeout.
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

logger = logging.getLogger(__name__)

_READ_SIZE = 256 * 1024


class TlsLayer(asyncio.Protocol, asyncio.Transport):
    """Terminates TLS between a lower transport and an upper protocol (made after the handshake)."""

    def __init__(
        self,
        context: ssl.SSLContext,
        upper_factory: Callable[[], asyncio.Protocol],
        handshake_timeout: float,
        initial_data: bytes = b"",
    ) -> None:
        asyncio.Transport.__init__(self)
        self._context = context
        self._upper_factory = upper_factory
        self._upper: asyncio.Protocol | None = None
        self._handshake_timeout = handshake_timeout
        self._initial_data = initial_data
        self._lower: asyncio.Transport | None = None
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._timer: asyncio.TimerHandle | None = None
        self._closing = False

    # -- protocol side (the transport below) ---------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Start serving the new transport."""
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._lower = cast(asyncio.Transport, transport)
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._handshake_timeout, self._on_handshake_timeout)
        if self._initial_data:
            data, self._initial_data = self._initial_data, b""
            self.data_received(data)

    def data_received(self, data: bytes) -> None:
        """Feed received bytes through the protocol and act on what they produced."""
        self._incoming.write(data)
        if self._upper is None and not self._handshake():
            return
        self._read_application_data()

    def eof_received(self) -> bool | None:
        """The peer closed its sending side."""
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
        self._upper = self._upper_factory()
        self._upper.connection_made(self)
        return True

    def _read_application_data(self) -> None:
        upper = self._upper
        while upper is not None and self._lower is not None:
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
        if self._lower is None or self._closing:
            return
        self._ssl.write(data)
        self._send_outgoing()

    def close(self) -> None:
        """Close after sending what is buffered."""
        if self._closing or self._lower is None:
            return
        self._closing = True
        # The peer's close_notify is not awaited; ours goes out below.
        with contextlib.suppress(ssl.SSLError):
            self._ssl.unwrap()
        self._send_outgoing()
        self._lower.close()

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
        if name == "ssl_object":
            return self._ssl
        if name == "peercert":
            return self._ssl.getpeercert()
        if name == "sslcontext":
            return self._context
        if self._lower is None:
            return default
        return self._lower.get_extra_info(name, default)

    def pause_reading(self) -> None:
        """Stop delivering received bytes until resume_reading()."""
        if self._lower is not None:
            self._lower.pause_reading()

    def resume_reading(self) -> None:
        """Deliver received bytes again."""
        if self._lower is not None:
            self._lower.resume_reading()

    def get_write_buffer_size(self) -> int:
        """Bytes written but not yet sent."""
        return self._lower.get_write_buffer_size() if self._lower is not None else 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        """Set the high and low water marks of the write buffer."""
        if self._lower is not None:
            self._lower.set_write_buffer_limits(high, low)
