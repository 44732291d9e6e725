"""Message compression: identity, deflate and gzip, bounded decompression, negotiation.

On the wire (as grpc core does it) ``gzip`` is the gzip container (RFC 1952) and ``deflate``
is the *zlib* container (RFC 1950: a 2-byte header, the deflate stream, an Adler-32), not raw
deflate.  Each message is compressed on its own; no context is kept between messages.

Decompression never inflates more than the receive limit plus one byte, so a small
"decompression bomb" costs at most that much memory before it is rejected, and it can be done
in bounded slices (:class:`Inflater`) so that a large message does not stall the event loop.
"""

from __future__ import annotations

import enum
import functools
import zlib
from typing import Final

from .errors import DecompressionError, MessageTooLargeError


class Compression(enum.IntEnum):
    """Compression algorithms, with the same values as ``grpc.Compression``."""

    NoCompression = 0
    Deflate = 1
    Gzip = 2


ENCODING_NAMES: Final[dict[Compression, str]] = {
    Compression.NoCompression: "identity",
    Compression.Deflate: "deflate",
    Compression.Gzip: "gzip",
}
"""The ``grpc-encoding`` name of each algorithm."""

SUPPORTED_ENCODINGS: Final[tuple[str, ...]] = ("identity", "deflate", "gzip")
"""Every encoding we can decompress, in the order we advertise them."""

ACCEPT_ENCODING_HEADER: Final[bytes] = ",".join(SUPPORTED_ENCODINGS).encode("ascii")
"""Our ``grpc-accept-encoding`` value."""

_BY_NAME = {name: algorithm for algorithm, name in ENCODING_NAMES.items()}
_NAMES_BY_VALUE = tuple(ENCODING_NAMES[Compression(value)] for value in range(len(Compression)))
_WBITS: Final[dict[str, int]] = {"deflate": 15, "gzip": 31}  # 15: zlib container, 31: gzip


def coerce_compression(value: object) -> Compression:
    """Our :class:`Compression` for ``value``.

    Accepts a :class:`Compression`, a ``grpc.Compression`` (or any int-valued enum member with
    the same numbering), a plain int, an encoding name (``"gzip"``) or ``None`` (no
    compression).  Anything else raises :class:`ValueError`.
    """
    if value is None:
        return Compression.NoCompression
    if isinstance(value, Compression):
        return value
    number = getattr(value, "value", value)
    if isinstance(number, int) and not isinstance(number, bool):
        try:
            return Compression(number)
        except ValueError:
            pass
    elif isinstance(value, str) and value.lower() in _BY_NAME:
        return _BY_NAME[value.lower()]
    raise ValueError(
        f"not a compression algorithm: {value!r} (expected NoCompression, Deflate or Gzip)"
    )


def is_supported(encoding: str) -> bool:
    """Whether we can decompress messages with ``grpc-encoding: encoding``."""
    return encoding in _WBITS or encoding == "identity"


def is_enabled(encoding: str, enabled: frozenset[Compression]) -> bool:
    """Whether the supported ``encoding`` is one of the ``enabled`` algorithms."""
    return _BY_NAME[encoding] in enabled


@functools.lru_cache(maxsize=8)
def accept_encoding_header(enabled: frozenset[Compression]) -> bytes:
    """The ``grpc-accept-encoding`` value advertising the ``enabled`` algorithms."""
    return ",".join(ENCODING_NAMES[a] for a in sorted(enabled)).encode("ascii")


def compress(encoding: str, data: bytes) -> bytes:
    """``data`` compressed with ``encoding`` (``"identity"`` returns it unchanged).

    ``data`` may be any bytes-like object.
    """
    wbits = _WBITS.get(encoding)
    if wbits is None:
        if encoding == "identity":
            return data
        raise ValueError(f"unsupported compression encoding {encoding!r}")
    return zlib.compress(data, wbits=wbits)


def decompress(encoding: str, data: bytes | bytearray | memoryview, max_length: int) -> bytes:
    """``data`` decompressed with ``encoding``, at most ``max_length`` bytes long, in one go.

    Raises :class:`~fastinject.errors.MessageTooLargeError` (``RESOURCE_EXHAUSTED``) as soon as
    the output passes ``max_length`` (its ``length`` is then a lower bound of the real size),
    and :class:`~fastinject.errors.DecompressionError` (``INTERNAL``) for what grpc core
    refuses: corrupt or truncated data, bytes after the end of the stream (a second gzip
    member included) or an unsupported encoding.  See :class:`Inflater` for doing it in slices.
    """
    if encoding == "identity":
        if len(data) > max_length:
            raise MessageTooLargeError(len(data), max_length)
        return bytes(data)
    inflater = Inflater(encoding, data, max_length)
    while not inflater.done:
        inflater.step()
    return inflater.result()


IN_SLICE: Final = 64 * 1024
"""Compressed bytes an :meth:`Inflater.step` feeds to zlib at most."""
OUT_SLICE: Final = 256 * 1024
"""Decompressed bytes an :meth:`Inflater.step` produces at most."""


class Inflater:
    """One compressed message (gzip or deflate), decompressed a bounded slice at a time.

    Each :meth:`step` feeds zlib at most :data:`IN_SLICE` bytes and takes at most
    :data:`OUT_SLICE` bytes out, so a caller can let other work run between steps however
    large the message inflates.  What is accepted is what grpc core's ``grpc_msg_decompress``
    accepts: exactly one gzip member (RFC 1952) or zlib stream (RFC 1950) and nothing after
    it, a second gzip member included ("not all input consumed"); an empty payload is an empty
    message.  The output is bounded by ``max_length`` + 1 bytes, as :func:`decompress`.
    """

    __slots__ = ("_data", "_encoding", "_fed", "_limit", "_parts", "_produced", "_tail",
                 "_zlib", "done")

    def __init__(
        self, encoding: str, data: bytes | bytearray | memoryview, max_length: int
    ) -> None:
        wbits = _WBITS.get(encoding)
        if wbits is None:
            raise DecompressionError(f"unsupported compression encoding {encoding!r}")
        self._encoding = encoding
        self._data = memoryview(data)
        self._limit = max_length
        self._zlib = zlib.decompressobj(wbits)
        self._fed = 0  # bytes of ``data`` handed to zlib so far
        self._tail: bytes | memoryview = b""  # input zlib left for the next step
        self._parts: list[bytes] = []
        self._produced = 0
        self.done = not self._data
        """Whether the whole message is decompressed (:meth:`result` may be called)."""

    def step(self) -> int:
        """Decompress one slice; return the work it did (bytes fed in plus bytes produced)."""
        chunk = self._tail
        if not chunk:
            chunk = self._data[self._fed : self._fed + IN_SLICE]
            self._fed += len(chunk)
        bound = min(OUT_SLICE, self._limit - self._produced + 1)
        try:
            out = self._zlib.decompress(chunk, bound)
        except zlib.error as exc:
            raise DecompressionError(
                f"Decompression failed due to zlib error: not a {self._encoding} stream ({exc})"
            ) from None
        self._tail = self._zlib.unconsumed_tail
        self._produced += len(out)
        if self._produced > self._limit:
            raise MessageTooLargeError(self._produced, self._limit)
        self._parts.append(out)
        if self._zlib.eof:
            left = len(self._zlib.unused_data) + len(self._data) - self._fed
            if left:
                raise DecompressionError(
                    "Decompression failed due to not all input consumed: "
                    f"{left} bytes after the end of the {self._encoding} stream"
                )
            self.done = True
        elif not self._tail and self._fed == len(self._data) and len(out) < bound:
            raise DecompressionError(
                f"Decompression failed due to data error: truncated {self._encoding} stream"
            )
        return len(chunk) - len(self._tail) + len(out)

    def result(self) -> bytes:
        """The decompressed message (once :attr:`done`)."""
        parts = self._parts
        return parts[0] if len(parts) == 1 else b"".join(parts)


@functools.lru_cache(maxsize=64)
def _accepted(accept_encoding: bytes) -> frozenset[str]:
    # Clients send the same few values over and over, hence the cache.
    return frozenset(
        token.strip().lower() for token in accept_encoding.decode("latin-1").split(",")
    )


def choose_response_encoding(
    accept_encoding: bytes | None,
    requested: Compression,
    enabled: frozenset[Compression] = frozenset(Compression),
) -> str | None:
    """The encoding to compress responses with, or ``None`` to send them uncompressed.

    ``requested`` is the server's or the call's setting; it is used only if the client listed
    it in ``grpc-accept-encoding`` (a client that sent no such header gets no compression),
    as the gRPC compression spec asks, and if it is one of the server's ``enabled`` ones.
    """
    if not requested or accept_encoding is None or requested not in enabled:
        return None
    name = _NAMES_BY_VALUE[requested]
    return name if name in _accepted(accept_encoding) else None


__all__ = [
    "ACCEPT_ENCODING_HEADER",
    "ENCODING_NAMES",
    "IN_SLICE",
    "OUT_SLICE",
    "SUPPORTED_ENCODINGS",
    "Compression",
    "Inflater",
    "accept_encoding_header",
    "choose_response_encoding",
    "coerce_compression",
    "compress",
    "decompress",
    "is_enabled",
    "is_supported",
]
