"""Message compression: identity, deflate and gzip, bounded decompression, negotiation.

On the wire (as grpc core does it) ``gzip`` is the gzip container (RFC 1952) and ``deflate``
is the *zlib* container (RFC 1950: a 2-byte header, the deflate stream, an Adler-32), not raw
deflate.  Each message is compressed on its own; no context is kept between messages.

Decompression never inflates more than the receive limit plus one byte, so a small
"decompression bomb" costs at most that much memory before it is rejected.
"""

from __future__ import annotations

import enum
import functools
import sys
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
    """``data`` decompressed with ``encoding``, at most ``max_length`` bytes long.

    Raises :class:`~fastinject.errors.MessageTooLargeError` (``RESOURCE_EXHAUSTED``) as soon as
    the output passes ``max_length`` (its ``length`` is then a lower bound of the real size),
    and :class:`~fastinject.errors.DecompressionError` (``INTERNAL``) for corrupt, truncated or
    trailing data or an unsupported encoding.
    """
    wbits = _WBITS.get(encoding)
    if wbits is None:
        if encoding == "identity":
            if len(data) > max_length:
                raise MessageTooLargeError(len(data), max_length)
            return bytes(data)
        raise DecompressionError(f"unsupported compression encoding {encoding!r}")
    parts: list[bytes] = []
    produced = 0
    remaining: bytes | bytearray | memoryview = data
    while True:
        inflater = zlib.decompressobj(wbits)
        bound = max_length - produced + 1
        if bound > sys.maxsize:
            bound = 0  # zlib's "no bound": the limit is beyond what memory could hold anyway
        try:
            part = inflater.decompress(remaining, bound)
        except zlib.error as exc:
            raise DecompressionError(f"corrupt {encoding} message: {exc}") from None
        produced += len(part)
        if produced > max_length:
            raise MessageTooLargeError(produced, max_length)
        if not inflater.eof:
            raise DecompressionError(f"truncated {encoding} message")
        parts.append(part)
        remaining = inflater.unused_data
        if not remaining:
            break
        if encoding != "gzip":  # only gzip allows several members back to back
            raise DecompressionError(
                f"{len(remaining)} unexpected bytes after the end of the {encoding} stream"
            )
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
    "SUPPORTED_ENCODINGS",
    "Compression",
    "accept_encoding_header",
    "choose_response_encoding",
    "coerce_compression",
    "compress",
    "decompress",
    "is_enabled",
    "is_supported",
]
