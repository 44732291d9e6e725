"""Classify the first bytes of a new connection: TLS ClientHello, HTTP/2 preface, or neither.

Sans-IO and side-effect free: :func:`sniff` looks at the bytes a connection has sent so far
(read with ``MSG_PEEK``, so nothing is consumed) and says either "need more bytes" (``None``)
or what the connection is.  For TLS it parses the ClientHello properly (record and handshake
lengths, session id, cipher suites, compression methods, extensions) to report the SNI host
name and the ALPN protocols offered; for cleartext it recognises the HTTP/2 prior-knowledge
preface that gRPC clients send.

Every length is checked against the bytes it claims before they are read, and anything that
breaks the TLS grammar gives ``kind="unknown"``, never an exception.  The verdict for a byte
string never changes once given: feeding more bytes of the same stream only turns ``None``
into a verdict.  A ClientHello larger than :data:`MAX_CLIENT_HELLO`, or one spread over more
than :data:`MAX_SNIFF_BYTES` of records, is ``"unknown"``: peeking needs a bounded buffer.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

__all__ = [
    "HTTP2",
    "HTTP2_PREFACE",
    "MAX_CLIENT_HELLO",
    "MAX_SNIFF_BYTES",
    "UNKNOWN",
    "Sniffed",
    "sniff",
]

HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
"""The client connection preface of cleartext HTTP/2 with prior knowledge (RFC 9113 3.4)."""

MAX_CLIENT_HELLO = 16 * 1024
"""Largest ClientHello handshake message accepted (4-byte header included): one full record."""

MAX_SNIFF_BYTES = MAX_CLIENT_HELLO + 1024
"""Most bytes :func:`sniff` ever needs; the rest of the room is for the headers of a
ClientHello fragmented over several records."""

_RECORD_HEADER = 5
_MAX_RECORD_PAYLOAD = 16 * 1024  # RFC 8446 5.1: TLSPlaintext.length <= 2^14
_CONTENT_HANDSHAKE = 0x16
_HANDSHAKE_CLIENT_HELLO = 0x01
_EXT_SERVER_NAME = 0
_EXT_ALPN = 16
_SNI_HOST_NAME = 0


@dataclasses.dataclass(frozen=True, slots=True)
class Sniffed:
    """What a connection's first bytes are.

    ``server_name`` is the SNI ``host_name`` of a TLS ClientHello, lower-cased (DNS names are
    case-insensitive), or ``None`` when the client sent none.  ``alpn`` lists the ALPN
    protocols the ClientHello offers, in the client's order (bytes decoded as Latin-1, so any
    value survives).  Both are empty for ``"http2"`` and ``"unknown"``.
    """

    kind: Literal["tls", "http2", "unknown"]
    server_name: str | None = None
    alpn: tuple[str, ...] = ()


UNKNOWN = Sniffed("unknown")
"""The verdict for bytes that are neither a ClientHello nor the HTTP/2 preface."""

HTTP2 = Sniffed("http2")
"""The verdict for a connection that starts with :data:`HTTP2_PREFACE`."""


class _Malformed(Exception):
    """Internal: the ClientHello breaks the TLS grammar (never leaves this module)."""


def sniff(data: bytes | bytearray | memoryview) -> Sniffed | None:
    """Classify a connection from the bytes it has sent so far, without consuming them.

    Returns ``None`` while ``data`` is a proper prefix of something recognisable (more bytes
    are needed), otherwise the verdict.  Never raises for any input.
    """
    data = bytes(data[:MAX_SNIFF_BYTES])
    if not data:
        return None
    if data[0] == _CONTENT_HANDSHAKE:
        return _sniff_tls(data)
    if data.startswith(HTTP2_PREFACE):
        return HTTP2
    if HTTP2_PREFACE.startswith(data):
        return None
    return UNKNOWN


def _sniff_tls(data: bytes) -> Sniffed | None:
    """Reassemble the ClientHello from handshake records, then parse it."""
    handshake = bytearray()
    pos = 0
    while True:
        header = data[pos:pos + _RECORD_HEADER]
        if not _record_header_ok(header):
            return UNKNOWN
        if len(header) < _RECORD_HEADER:
            return None
        length = int.from_bytes(header[3:5], "big")
        end = pos + _RECORD_HEADER + length
        if length == 0 or length > _MAX_RECORD_PAYLOAD or end > MAX_SNIFF_BYTES:
            return UNKNOWN
        # Checks below also look at a record's first bytes before the rest has arrived, so a
        # hopeless stream is refused early.
        handshake += data[pos + _RECORD_HEADER:end]
        if handshake and handshake[0] != _HANDSHAKE_CLIENT_HELLO:
            return UNKNOWN
        total = 4 + int.from_bytes(handshake[1:4], "big") if len(handshake) >= 4 else None
        if total is not None:
            if total > MAX_CLIENT_HELLO:
                return UNKNOWN
            if len(handshake) > total:
                # The ClientHello is alone in the client's first flight: nothing may follow
                # it in its last record.
                return UNKNOWN
        if end > len(data):
            return None
        if total == len(handshake):
            try:
                return _parse_client_hello(bytes(handshake))
            except _Malformed:
                return UNKNOWN
        pos = end


def _record_header_ok(header: bytes) -> bool:
    """Whether the bytes present of a record header can start a handshake record."""
    if header[:1] not in (b"", bytes([_CONTENT_HANDSHAKE])):
        return False
    if header[1:2] not in (b"", b"\x03"):
        return False
    # legacy_record_version: 0x0300 (SSL 3.0) to 0x0304; TLS 1.3 clients send 0x0301/0x0303.
    return len(header) < 3 or header[2] <= 0x04


class _Reader:
    """A bounds-checked cursor over ``data[start:end]``; every over-read raises _Malformed.

    Offsets into one ``bytes`` object rather than slices or memoryviews: a ClientHello has a
    few dozen fields and this keeps each read to a comparison and an index.
    """

    __slots__ = ("_data", "_end", "_pos")

    def __init__(self, data: bytes, start: int, end: int) -> None:
        self._data = data
        self._pos = start
        self._end = end

    @property
    def remaining(self) -> int:
        return self._end - self._pos

    def skip(self, count: int) -> None:
        if count > self._end - self._pos:
            raise _Malformed
        self._pos += count

    def u8(self) -> int:
        if self._pos >= self._end:
            raise _Malformed
        self._pos += 1
        return self._data[self._pos - 1]

    def u16(self) -> int:
        pos = self._pos
        if pos + 2 > self._end:
            raise _Malformed
        self._pos = pos + 2
        return self._data[pos] << 8 | self._data[pos + 1]

    def vector(self, length_size: int, minimum: int = 0, maximum: int = 0xFFFF) -> _Reader:
        """A reader over a length-prefixed vector whose length lies in [minimum, maximum]."""
        length = self.u8() if length_size == 1 else self.u16()
        if not minimum <= length <= maximum:
            raise _Malformed
        start = self._pos
        self.skip(length)
        return _Reader(self._data, start, self._pos)

    def rest(self) -> bytes:
        """The unread bytes (consumed)."""
        chunk = self._data[self._pos:self._end]
        self._pos = self._end
        return chunk


def _parse_client_hello(data: bytes) -> Sniffed:
    """Parse a ClientHello handshake message (RFC 8446 4.1.2, RFC 5246 7.4.1.2)."""
    hello = _Reader(data, 4, len(data))  # after the handshake header
    hello.skip(2 + 32)  # legacy_version, random
    hello.vector(1, maximum=32)  # legacy_session_id
    cipher_suites = hello.vector(2, minimum=2)
    if cipher_suites.remaining % 2:
        raise _Malformed
    hello.vector(1, minimum=1)  # legacy_compression_methods
    if hello.remaining == 0:
        return Sniffed("tls")  # TLS 1.2 and older may omit the extensions block
    extensions = hello.vector(2)
    if hello.remaining:
        raise _Malformed
    seen: set[int] = set()
    server_name: str | None = None
    alpn: tuple[str, ...] = ()
    while extensions.remaining:
        kind = extensions.u16()
        content = extensions.vector(2)
        if kind in seen:
            raise _Malformed  # RFC 8446 4.2: at most one extension of each type
        seen.add(kind)
        if kind == _EXT_SERVER_NAME:
            server_name = _parse_server_name(content)
        elif kind == _EXT_ALPN:
            alpn = _parse_alpn(content)
    return Sniffed("tls", server_name, alpn)


def _parse_server_name(content: _Reader) -> str | None:
    """The host_name of a server_name extension (RFC 6066 3)."""
    names = content.vector(2, minimum=1)
    if content.remaining:
        raise _Malformed
    host: str | None = None
    while names.remaining:
        name_type = names.u8()
        name = names.vector(2, minimum=1).rest()
        if name_type != _SNI_HOST_NAME:
            continue
        if host is not None:
            raise _Malformed  # RFC 6066: no more than one name of the same type
        # A host name is ASCII letters, digits, hyphens and dots (no spaces or controls).
        if any(byte <= 0x20 or byte >= 0x7F for byte in name):
            raise _Malformed
        host = name.decode("ascii").lower()
    return host


def _parse_alpn(content: _Reader) -> tuple[str, ...]:
    """The protocol names of an ALPN extension (RFC 7301 3.1)."""
    names = content.vector(2, minimum=2)
    if content.remaining:
        raise _Malformed
    protocols: list[str] = []
    while names.remaining:
        protocols.append(names.vector(1, minimum=1, maximum=0xFF).rest().decode("latin-1"))
    return tuple(protocols)

