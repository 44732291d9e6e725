"""Conversion between HTTP/2 headers and gRPC metadata, and the gRPC-specific header values.

The rules come from gRPC's ``doc/PROTOCOL-HTTP2.md``; where it leaves room, we do what grpcio
(grpc core) does:

* **Which headers reach the application** (:data:`RESERVED_HEADERS` never do): the
  pseudo-headers and the headers gRPC itself consumes (``content-type``, ``te``,
  ``grpc-timeout``, ``grpc-encoding``, ``grpc-accept-encoding``, ``grpc-status``,
  ``grpc-message``, and the census/load-reporting headers grpc core's filters take), plus
  the HTTP/1 connection-specific headers HTTP/2 forbids.  ``user-agent``, ``host``,
  ``grpc-status-details-bin`` and any other ``grpc-*`` header *are* passed on, as grpcio does.
* **Keys** are 1+ characters of ``0-9 a-z _ - .``; anything else is an
  :class:`~fastinject.errors.InvalidMetadataError` (grpcio answers "Illegal header key").
* **Binary values** (keys ending in ``-bin``) are base64, padded or not; a value may hold
  several comma-separated values (the spec lets proxies join duplicates that way), each of
  which becomes its own metadata entry.
* **Text values** received are passed on as ``str``.  The spec says a receiver must not fail
  on a value that is a valid HTTP field value even if it is not a valid gRPC ASCII-Value, so
  horizontal tab and non-ASCII bytes are accepted (decoded as UTF-8, else Latin-1), as grpcio
  does; other control characters are rejected.  Values we *send* must be printable ASCII
  (0x20-0x7E), as grpcio requires.

The functions here run for every RPC, so they avoid regular expressions and cache the
conversion of header names, which repeat from call to call.
"""

from __future__ import annotations

import binascii
from collections.abc import Iterable
from typing import Any, NamedTuple
from urllib.parse import unquote_to_bytes

from .errors import InvalidMetadataError, InvalidTimeoutError


class Metadatum(NamedTuple):
    """One received metadata entry: a ``(key, value)`` tuple that also has ``.key``/``.value``.

    The same shape as grpcio's ``_Metadatum``: code that unpacks pairs and code that reads the
    attributes (OpenTelemetry's interceptors do) both work.
    """

    key: str
    value: str | bytes


Metadata = tuple[Metadatum, ...]
"""Metadata as handlers see it (``context.invocation_metadata()``), like ``grpc.aio``."""

# Builds a Metadatum without NamedTuple.__new__'s Python-level call (decode_metadata is hot).
_new_tuple = tuple.__new__

MetadataLike = Iterable[tuple[str, str | bytes]]
"""What applications may pass as metadata: any iterable of ``(key, value)`` pairs."""

RESERVED_HEADERS: frozenset[bytes] = frozenset(
    {
        # HTTP/2 pseudo-headers.
        b":authority",
        b":method",
        b":path",
        b":protocol",
        b":scheme",
        b":status",
        # Headers of the gRPC protocol itself.
        b"content-type",
        b"te",
        b"grpc-timeout",
        b"grpc-encoding",
        b"grpc-accept-encoding",
        b"grpc-status",
        b"grpc-message",
        # Consumed by grpc core's census / load-reporting filters; grpcio never surfaces them.
        b"grpc-trace-bin",
        b"grpc-tags-bin",
        b"grpc-server-stats-bin",
        b"grpc-internal-encoding-request",
        b"endpoint-load-metrics-bin",
        b"lb-cost-bin",
        # HTTP/1 connection-specific headers, forbidden in HTTP/2 (RFC 9113 section 8.2.2).
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"upgrade",
    }
)
"""Headers that never reach the application and that applications may not send."""

_KEY_CHARS = b"0123456789abcdefghijklmnopqrstuvwxyz_-."
_PRINTABLE = bytes(range(0x20, 0x7F))
# A valid HTTP field value (RFC 9110 section 5.5) may also hold HTAB and obs-text.
_FIELD_VALUE = _PRINTABLE + b"\t" + bytes(range(0x80, 0x100))

# Header names seen before, mapped to their validated str form and whether they are binary.
# Bounded, so a peer sending endless distinct names cannot grow it; past the bound names are
# simply checked and converted each time.
_KEY_CACHE_LIMIT = 4096
_decoded_keys: dict[bytes, tuple[str, bool]] = {}
_encoded_keys: dict[str, bytes] = {}


def _decode_key(name: bytes) -> tuple[str, bool]:
    if not name or name.translate(None, _KEY_CHARS):
        raise InvalidMetadataError(f"illegal metadata key {name!r}: keys are 1+ of 0-9 a-z _ - .")
    entry = (name.decode("ascii"), name.endswith(b"-bin"))
    if len(_decoded_keys) < _KEY_CACHE_LIMIT:
        _decoded_keys[name] = entry
    return entry


def _decode_base64(key: str, value: bytes) -> bytes:
    missing = -len(value) % 4
    if missing:
        value += b"=" * missing
    try:
        return binascii.a2b_base64(value, strict_mode=True)
    except binascii.Error as exc:
        raise InvalidMetadataError(f"metadata {key!r}: value is not valid base64 ({exc})") from None


def _decode_unusual_text(key: str, value: bytes) -> str:
    """A text value with bytes outside printable ASCII: valid HTTP field values only."""
    if value.translate(None, _FIELD_VALUE):
        raise InvalidMetadataError(f"metadata {key!r}: value {value!r} has control characters")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


def decode_metadata(headers: Iterable[tuple[bytes, bytes]]) -> Metadata:
    """The application metadata in request ``headers`` (lowercase ``bytes`` pairs from h2).

    Reserved headers are dropped, ``-bin`` values are base64-decoded to ``bytes`` and other
    values decoded to ``str``; order is kept.  Raises
    :class:`~fastinject.errors.InvalidMetadataError` naming the key for an illegal key, bad
    base64 or a value with control characters.
    """
    # Called for every RPC: the common cases are inlined.
    out: list[Metadatum] = []
    new, entry_type = _new_tuple, Metadatum
    reserved = RESERVED_HEADERS
    known = _decoded_keys
    for name, value in headers:
        if name in reserved:
            continue
        entry = known.get(name)
        if entry is None:
            if name[:1] == b":":  # pseudo-headers are never cached
                continue
            entry = _decode_key(name)
        key, binary = entry
        if not binary:
            if value.translate(None, _PRINTABLE):
                out.append(new(entry_type, (key, _decode_unusual_text(key, value))))
            else:
                out.append(new(entry_type, (key, value.decode("ascii"))))
        elif b"," in value:
            out.extend(
                new(entry_type, (key, _decode_base64(key, part))) for part in value.split(b",")
            )
        else:
            out.append(new(entry_type, (key, _decode_base64(key, value))))
    return tuple(out)


def _encode_key(key: object) -> bytes:
    if isinstance(key, str):
        name = _encoded_keys.get(key)
        if name is not None:
            return name
        try:
            name = key.encode("ascii")
        except UnicodeEncodeError:
            raise InvalidMetadataError(f"illegal metadata key {key!r}") from None
    elif isinstance(key, bytes):
        name = key
    else:
        raise InvalidMetadataError(f"metadata key must be str, not {type(key).__name__}: {key!r}")
    if not name or name.translate(None, _KEY_CHARS):
        raise InvalidMetadataError(
            f"illegal metadata key {key!r}: keys are 1+ of lowercase a-z, 0-9, '_', '-', '.'"
        )
    if name in RESERVED_HEADERS:
        raise InvalidMetadataError(f"metadata key {key!r} is reserved for the gRPC protocol")
    if isinstance(key, str) and len(_encoded_keys) < _KEY_CACHE_LIMIT:
        _encoded_keys[key] = name
    return name


def encode_metadata(metadata: MetadataLike | None) -> list[tuple[bytes, bytes]]:
    """Header pairs for application ``metadata`` (initial or trailing).

    Keys must be legal (lowercase ``0-9 a-z _ - .``) and not reserved; other ``grpc-`` keys
    (such as ``grpc-status-details-bin``) are allowed, as in grpcio.  ``-bin`` values are
    ``bytes`` (a ``str`` is encoded as UTF-8) and are sent as unpadded base64; other values
    (``str`` or ``bytes``) must be printable ASCII.  Raises
    :class:`~fastinject.errors.InvalidMetadataError` (a :class:`ValueError`) naming the key.
    """
    if not metadata:
        return []
    out: list[tuple[bytes, bytes]] = []
    items: Iterable[Any] = metadata  # checked item by item: callers pass anything
    for item in items:
        try:
            key, value = item
        except (TypeError, ValueError):
            raise InvalidMetadataError(
                f"metadata items must be (key, value) pairs, not {item!r}"
            ) from None
        name = _encode_key(key)
        if name.endswith(b"-bin"):
            if isinstance(value, str):
                value = value.encode("utf-8")
            elif not isinstance(value, (bytes, bytearray, memoryview)):
                raise InvalidMetadataError(
                    f"metadata {key!r}: binary value must be bytes, not {type(value).__name__}"
                )
            out.append((name, binascii.b2a_base64(value, newline=False).rstrip(b"=")))
            continue
        if isinstance(value, str):
            try:
                raw = value.encode("ascii")
            except UnicodeEncodeError:
                raise InvalidMetadataError(
                    f"metadata {key!r}: value {value!r} is not printable ASCII "
                    "(use a '-bin' key for binary data)"
                ) from None
        elif isinstance(value, bytes):
            raw = value
        elif isinstance(value, (bytearray, memoryview)):
            raw = bytes(value)
        else:
            raise InvalidMetadataError(
                f"metadata {key!r}: value must be str or bytes, not {type(value).__name__}"
            )
        if raw.translate(None, _PRINTABLE):
            raise InvalidMetadataError(
                f"metadata {key!r}: value {value!r} is not printable ASCII "
                "(use a '-bin' key for binary data)"
            )
        out.append((name, raw))
    return out


# grpc-timeout units: value in seconds = digits * multiplier / divisor (dividing by an exact
# power of ten rounds correctly, multiplying by 0.001 does not).
_TIMEOUT_UNITS: dict[int, tuple[int, int]] = {
    ord("H"): (3600, 1),
    ord("M"): (60, 1),
    ord("S"): (1, 1),
    ord("m"): (1, 1_000),
    ord("u"): (1, 1_000_000),
    ord("n"): (1, 1_000_000_000),
}


def check_trailing_metadata(metadata: object) -> tuple[tuple[str, str | bytes], ...]:
    """``metadata`` as a tuple of ``(str, str | bytes)`` tuples; :class:`TypeError` otherwise.

    The shape ``grpc.aio`` demands of ``set_trailing_metadata`` and ``abort``, with its
    message: an iterable (not a dict) of 2-tuples with a ``str`` key and a ``str`` or
    ``bytes`` value.  Whether keys and values are valid *headers* is checked separately
    (:func:`encode_metadata`, :class:`~fastinject.errors.InvalidMetadataError`).
    """
    if isinstance(metadata, dict) or not isinstance(metadata, Iterable):
        raise TypeError(f"{_EXPECTED_METADATA}: {metadata!r}")
    items = tuple(metadata)
    for item in items:
        if not (
            isinstance(item, tuple)
            and len(item) == 2
            and isinstance(item[0], str)
            and isinstance(item[1], str | bytes)
        ):
            raise TypeError(f"{_EXPECTED_METADATA}: {items!r}")
    return items


_EXPECTED_METADATA = (
    "Invalid trailing metadata type, expected Tuple[Tuple[str, Union[str, bytes]]...]"
)


def parse_timeout(value: bytes) -> float:
    """Seconds in a ``grpc-timeout`` header value: 1 to 8 ASCII digits and a unit (H M S m u n).

    Anything else raises :class:`~fastinject.errors.InvalidTimeoutError`, an
    :class:`~fastinject.errors.RpcError` with status ``INTERNAL`` (what grpc core answers
    for a malformed ``grpc-timeout``).  A zero timeout is valid: the deadline has passed.
    """
    if 2 <= len(value) <= 9:
        unit = _TIMEOUT_UNITS.get(value[-1])
        digits = value[:-1]
        if unit is not None and digits.isdigit():  # bytes.isdigit: ASCII digits only
            multiplier, divisor = unit
            if divisor == 1:
                return float(int(digits) * multiplier)
            return int(digits) / divisor
    raise InvalidTimeoutError(bytes(value))


def _escape(byte: int) -> bytes:
    return bytes([byte]) if 0x20 <= byte <= 0x7E and byte != 0x25 else b"%%%02X" % byte


_MESSAGE_ESCAPES: tuple[bytes, ...] = tuple(_escape(byte) for byte in range(256))
_MESSAGE_UNESCAPED = bytes(byte for byte in range(0x20, 0x7F) if byte != 0x25)


def encode_grpc_message(message: str) -> bytes:
    """``message`` as a ``grpc-message`` value (PROTOCOL-HTTP2 "Percent-Encoded").

    The text is encoded as UTF-8, then every byte outside 0x20-0x7E, and ``%`` itself, is
    written as ``%XX``.  A lone surrogate (not encodable as UTF-8) is sent as ``?``.
    """
    raw = message.encode("utf-8", "replace")
    if not raw.translate(None, _MESSAGE_UNESCAPED):
        return raw
    escapes = _MESSAGE_ESCAPES
    return b"".join([escapes[byte] for byte in raw])


def decode_grpc_message(value: bytes) -> str:
    """The text of a ``grpc-message`` value.

    Lenient, as the spec requires: a ``%`` not followed by two hex digits is kept as is, and
    bytes that are not valid UTF-8 become U+FFFD.
    """
    if b"%" in value:
        value = unquote_to_bytes(value)
    return value.decode("utf-8", "replace")


__all__ = [
    "RESERVED_HEADERS",
    "Metadata",
    "MetadataLike",
    "Metadatum",
    "check_trailing_metadata",
    "decode_grpc_message",
    "decode_metadata",
    "encode_grpc_message",
    "encode_metadata",
    "parse_timeout",
]
