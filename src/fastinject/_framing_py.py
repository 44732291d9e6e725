"""Pure-Python gRPC message deframer and framer, the twin of the Cython module ``_framing``.

Use :mod:`fastinject.framing`, which picks the Cython module when it is available.  Both
modules have the same API and behaviour, and the same tests run against both.

A gRPC message on an HTTP/2 stream is a 5-byte header followed by its payload: one flags
byte (0 = plain, 1 = compressed) and the payload length as a 4-byte big-endian unsigned int.

Copies per received message: a message that arrives whole inside one ``feed`` call is copied
once (from the caller's buffer into its ``bytes``); a message whose body spans ``feed`` calls is
copied twice (the chunks into a growing ``bytearray``, then into the ``bytes``), plus what
growing the ``bytearray`` copies.  The Cython module copies every message once.
"""

from __future__ import annotations

import operator
import struct
from collections.abc import Iterable
from typing import final

from .errors import IncompleteMessageError, InvalidFlagsError, MessageTooLargeError

DEFAULT_MAX_MESSAGE_LENGTH = 4 * 1024 * 1024
"""Default limit on a received message's declared length (4 MiB, as in gRPC)."""

_HEADER = struct.Struct(">BI")
_HEADER_LENGTH = 5
_MAX_WIRE_LENGTH = 0xFFFFFFFF
_MIN_BODY_CAPACITY = 1024


def _capacity_for(received: int, length: int) -> int:
    """Size of the body buffer holding ``received`` of a ``length``-byte body.

    Twice what is here (at least 1 KiB), and the declared size once half of it is here: memory
    follows the bytes that actually arrive, not what a header claims.
    """
    if received >= length - received:
        return length
    return min(length, max(2 * received, _MIN_BODY_CAPACITY))


def _byte_view(data: bytes | bytearray | memoryview) -> memoryview:
    """Return a flat unsigned-byte view of any C-contiguous buffer (like ``PyBUF_SIMPLE``)."""
    view = memoryview(data)
    if not view.c_contiguous:
        raise BufferError("gRPC framing needs a C-contiguous buffer")
    if view.ndim != 1 or view.format != "B":
        view = view.cast("B")
    return view


def _flat(payload: bytes | bytearray | memoryview) -> tuple[bytes | memoryview, int]:
    """Return ``payload`` as a flat byte buffer and its length, checked against the wire limit."""
    flat: bytes | memoryview
    if type(payload) is bytes:  # the common case, without the cost of a memoryview
        flat, length = payload, len(payload)
    else:
        flat = _byte_view(payload)
        length = flat.nbytes
    if length > _MAX_WIRE_LENGTH:
        raise ValueError(f"a gRPC message holds at most {_MAX_WIRE_LENGTH} bytes, got {length}")
    return flat, length


@final
class Deframer:
    """Split the bytes of one gRPC stream into messages (sans-IO: bytes in, messages out).

    Feed the DATA frames' payloads in order with :meth:`feed`; call :meth:`close` when the
    stream ends.  A header declaring more than :attr:`max_message_length` bytes raises
    :class:`~fastinject.errors.MessageTooLargeError` as soon as its 5 bytes are in, before any
    of the body is buffered, so memory stays bounded by the limit (plus 4 header bytes).

    After an error the deframer is *poisoned*: it drops what it held and every later
    :meth:`feed` or :meth:`close` raises the same exception object again.  Messages completed
    earlier in the ``feed`` call that hit the error are discarded with it (the stream has
    failed as a whole).  Rejected input (not a buffer, or not contiguous) raises
    ``TypeError``/``BufferError`` without consuming anything and does not poison.

    Memory (:attr:`held`): the body buffer grows with the bytes that arrive, to twice what is
    here (at least 1 KiB), and takes the declared size only once half of the body is here; so a
    header alone costs at most 1 KiB, and a partial message at most twice its received bytes.
    """

    __slots__ = (
        "_body",
        "_body_filled",
        "_body_len",
        "_compressed",
        "_error",
        "_header",
        "_header_len",
        "_limit",
    )

    def __init__(self, max_message_length: int = DEFAULT_MAX_MESSAGE_LENGTH) -> None:
        self._header = bytearray(_HEADER_LENGTH)
        # Bytes of the current header held; 5 while a body is pending.
        self._header_len = 0
        # The pending body's buffer (its length is the capacity), or None.
        self._body: bytearray | None = None
        self._body_len = 0  # the declared length
        self._body_filled = 0
        self._compressed = False
        self._error: BaseException | None = None
        self._limit = 0
        self.max_message_length = max_message_length

    @property
    def max_message_length(self) -> int:
        """Largest accepted declared message length; applies to headers parsed after a change.

        Setting a negative value raises ``ValueError``; a non-integer raises ``TypeError``.
        """
        return self._limit

    @max_message_length.setter
    def max_message_length(self, value: int) -> None:
        limit = operator.index(value)
        if limit < 0:
            raise ValueError(f"max_message_length must be >= 0, got {limit}")
        self._limit = limit

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned inside a message (header bytes included)."""
        return self._header_len + self._body_filled

    @property
    def held(self) -> int:
        """Bytes held for the message being received: its header bytes and body buffer.

        The body buffer is at most twice the body bytes received (at least 1 KiB) until half of
        the body is here, then the declared length.
        """
        body = self._body
        return self._header_len + (len(body) if body is not None else 0)

    def feed(self, data: bytes | bytearray | memoryview) -> list[tuple[bytes, bool]]:
        """Consume ``data`` and return the messages it completes, in order.

        Each message is ``(payload, compressed)`` with ``payload`` always a new ``bytes``
        object (never a view of ``data``, which the caller may reuse at once).  Raises
        :class:`~fastinject.errors.MessageTooLargeError` or
        :class:`~fastinject.errors.InvalidFlagsError` for a bad header (see the class notes).
        """
        if self._error is not None:
            raise self._error.with_traceback(None)
        view = _byte_view(data)
        try:
            return self._feed(view)
        except BaseException as exc:
            self._fail(exc)
            raise

    def close(self) -> None:
        """Declare the end of the stream.

        Raises :class:`~fastinject.errors.IncompleteMessageError` if part of a message (even
        part of a header) is held; its ``buffered`` and ``expected`` count the whole message,
        header included (``expected`` is 5 while the header itself is incomplete).
        """
        if self._error is not None:
            raise self._error.with_traceback(None)
        if self._header_len == 0:
            return
        expected = _HEADER_LENGTH + (self._body_len if self._body is not None else 0)
        error = IncompleteMessageError(self.buffered, expected)
        self._fail(error)
        raise error

    def _fail(self, exc: BaseException) -> None:
        self._error = exc
        self._body = None
        self._body_len = 0
        self._body_filled = 0
        self._header_len = 0

    def _feed(self, view: memoryview) -> list[tuple[bytes, bool]]:
        messages: list[tuple[bytes, bool]] = []
        end = len(view)
        pos = 0
        body = self._body
        if body is not None:
            filled = self._body_filled
            length = self._body_len
            take = min(end, length - filled)
            if filled + take > len(body):
                body += bytes(_capacity_for(filled + take, length) - len(body))
            body[filled : filled + take] = view[:take]
            self._body_filled = filled + take
            if self._body_filled < length:
                return messages
            messages.append((bytes(body), self._compressed))
            self._body = None
            self._body_len = 0
            self._body_filled = 0
            self._header_len = 0
            pos = take
        elif self._header_len:
            held = self._header_len
            take = min(end, _HEADER_LENGTH - held)
            self._header[held : held + take] = view[:take]
            self._header_len = held + take
            pos = take
            if self._header_len < _HEADER_LENGTH:
                return messages
            pos += self._begin(self._header, 0, view, pos, messages)
            if self._body is not None:
                return messages
        while end - pos >= _HEADER_LENGTH:
            pos += _HEADER_LENGTH + self._begin(view, pos, view, pos + _HEADER_LENGTH, messages)
            if self._body is not None:
                return messages
        if pos < end:
            self._header[: end - pos] = view[pos:]
            self._header_len = end - pos
        return messages

    def _begin(
        self,
        header: bytearray | memoryview,
        at: int,
        view: memoryview,
        start: int,
        messages: list[tuple[bytes, bool]],
    ) -> int:
        """Validate the header at ``header[at:]`` and start its body at ``view[start:]``.

        Returns how many body bytes were consumed from ``view``; leaves ``self._body`` set
        when the body is not complete yet.
        """
        flags, length = _HEADER.unpack_from(header, at)
        if flags > 1:
            raise InvalidFlagsError(flags)
        if length > self._limit:
            raise MessageTooLargeError(length, self._limit)
        available = len(view) - start
        if available >= length:
            messages.append((bytes(view[start : start + length]), flags == 1))
            self._header_len = 0
            return int(length)
        body = bytearray(_capacity_for(available, length))
        body[:available] = view[start:]
        self._body = body
        self._body_len = length
        self._body_filled = available
        self._compressed = flags == 1
        self._header_len = _HEADER_LENGTH
        return available


def frame_message(payload: bytes | bytearray | memoryview, compressed: bool = False) -> bytes:
    """Return ``payload`` framed as one gRPC message: the 5-byte header, then the payload.

    ``compressed`` sets the flags byte to 1 (the payload must already be compressed).
    Raises ``ValueError`` for a payload over 4 GiB - 1 bytes, the most the header can declare.
    """
    flat, length = _flat(payload)
    return _HEADER.pack(1 if compressed else 0, length) + flat


def frame_messages(
    payloads: Iterable[bytes | bytearray | memoryview], compressed: bool = False
) -> bytes:
    """Return every payload framed as a gRPC message, concatenated into one ``bytes`` object.

    Equivalent to ``b"".join(frame_message(p, compressed) for p in payloads)`` with one copy
    of each payload.
    """
    flags = 1 if compressed else 0
    pack = _HEADER.pack
    parts: list[bytes | memoryview] = []
    for payload in payloads:
        flat, length = _flat(payload)
        parts.append(pack(flags, length))
        parts.append(flat)
    return b"".join(parts)


__all__ = ["DEFAULT_MAX_MESSAGE_LENGTH", "Deframer", "frame_message", "frame_messages"]
