"""Cython gRPC message deframer and framer (compiled from ``_framing.pyx``).

Same API and behaviour as the pure-Python twin :mod:`fastinject._framing_py`; use
:mod:`fastinject.framing`, which picks this module when it is available.

A gRPC message on an HTTP/2 stream is a 5-byte header, one flags byte (0 = plain,
1 = compressed) and the payload length as a 4-byte big-endian unsigned int, then the payload.
Every received message is copied once from the fed buffers; memory held for a message being
received follows the bytes that arrived (see :attr:`Deframer.held`), never just a header's claim.
"""

from collections.abc import Iterable
from typing import Final, final

DEFAULT_MAX_MESSAGE_LENGTH: Final[int]
"""Default limit on a received message's declared length (4 MiB, as in gRPC)."""

@final
class Deframer:
    """Split the bytes of one gRPC stream into messages (sans-IO: bytes in, messages out).

    Feed the DATA frames' payloads in order with :meth:`feed`; call :meth:`close` when the
    stream ends.  A header declaring more than :attr:`max_message_length` bytes raises
    :class:`~fastinject.errors.MessageTooLargeError` as soon as its 5 bytes are in, before any
    of the body is buffered.  A flags byte other than 0 or 1 raises
    :class:`~fastinject.errors.InvalidFlagsError`.

    After an error the deframer is *poisoned*: it drops what it held and every later
    :meth:`feed` or :meth:`close` raises the same exception object again.  Messages completed
    earlier in the ``feed`` call that hit the error are discarded with it (the stream has
    failed as a whole).  Rejected input (not a buffer: ``TypeError``; not contiguous:
    ``BufferError``) consumes nothing and does not poison.

    Memory (:attr:`held`): the body buffer grows with the bytes that arrive, to twice what is
    here (at least 1 KiB), and takes the declared size only once half of the body is here; so a
    header alone costs at most 1 KiB, and a partial message at most twice its received bytes.
    """

    def __init__(self, max_message_length: int = ...) -> None: ...
    @property
    def max_message_length(self) -> int:
        """Largest accepted declared message length; applies to headers parsed after a change.

        Setting a negative value raises ``ValueError``; a non-integer raises ``TypeError``.
        """
    @max_message_length.setter
    def max_message_length(self, value: int) -> None: ...
    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned inside a message (header bytes included)."""
    @property
    def held(self) -> int:
        """Bytes held for the message being received: its header bytes and body buffer.

        The body buffer is at most twice the body bytes received (at least 1 KiB) until half of
        the body is here, then the declared length.
        """
    def feed(self, data: bytes | bytearray | memoryview) -> list[tuple[bytes, bool]]:
        """Consume ``data`` and return the messages it completes, in order.

        Each message is ``(payload, compressed)`` with ``payload`` always a new ``bytes``
        object (never a view of ``data``, which the caller may reuse at once).
        """
    def close(self) -> None:
        """Declare the end of the stream.

        Raises :class:`~fastinject.errors.IncompleteMessageError` if part of a message (even
        part of a header) is held; its ``buffered`` and ``expected`` count the whole message,
        header included (``expected`` is 5 while the header itself is incomplete).
        """

def frame_message(payload: bytes | bytearray | memoryview, compressed: bool = False) -> bytes:
    """Return ``payload`` framed as one gRPC message: the 5-byte header, then the payload.

    ``compressed`` sets the flags byte to 1 (the payload must already be compressed).
    Raises ``ValueError`` for a payload over 4 GiB - 1 bytes, the most the header can declare.
    """

def frame_messages(
    payloads: Iterable[bytes | bytearray | memoryview], compressed: bool = False
) -> bytes:
    """Return every payload framed as a gRPC message, concatenated into one ``bytes`` object."""

__all__ = ["DEFAULT_MAX_MESSAGE_LENGTH", "Deframer", "frame_message", "frame_messages"]
