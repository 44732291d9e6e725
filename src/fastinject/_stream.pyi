"""Cython per-stream core of a connection (compiled from ``_stream.pyx``).

Same API and behaviour as the pure-Python twin :mod:`fastinject._stream_py`; use
:mod:`fastinject.stream`, which picks this module when it is available.  Sans-IO: bytes in,
bytes out; h2 keeps the authoritative flow-control windows and stream states.
"""

from collections.abc import Awaitable, Callable
from typing import Any, Final, final

KEEP_APART: Final[int]
"""Payload pieces at least this long (4 KiB) are kept and written as views, never copied."""

@final
class SendQueue:
    """A connection's outbound DATA: each stream's response messages, until the next flush.

    :meth:`write_message` writes a message's 5-byte gRPC header and its payload straight into
    the stream's buffer (a payload of :data:`KEEP_APART` bytes or more is kept by reference,
    not copied) if both send windows take all of it.  The windows are *mirrors*: the queue
    holds, per stream and for the connection, the HTTP/2 send window less what is queued; the
    caller reports every change of the real windows (:meth:`open`, :meth:`update_window`) and
    takes what :meth:`frame` wrote off the real windows, which leaves the mirrors as they are.
    """

    def __init__(self, connection_window: int = 65535) -> None: ...
    @property
    def queued_bytes(self) -> int:
        """Bytes queued on all streams together."""
    def open(self, stream_id: int, window: int) -> None:
        """Start sending on ``stream_id``, whose send window is ``window`` (or set it again)."""
    def update_window(self, stream_id: int, window: int) -> None:
        """The send window of ``stream_id`` (0: the connection) is now ``window``.

        A stream that is not open is ignored.
        """
    def close(self, stream_id: int) -> None:
        """Stop sending on ``stream_id``: what it queued is dropped (a stream not open: no-op)."""
    def drop(self, stream_id: int) -> None:
        """Drop what ``stream_id`` has queued (its windows get it back); it stays open."""
    def stream_ids(self) -> list[int]:
        """The open streams, in the order they were opened."""
    def pending(self) -> list[int]:
        """The open streams with queued bytes, in the order they began to queue them.

        Kept as they queue and send, not found by looking at every open stream.
        """
    def queued(self, stream_id: int) -> int:
        """Bytes queued on ``stream_id`` (0 for a stream that is not open)."""
    def window(self, stream_id: int) -> int:
        """Bytes ``stream_id`` may queue now, or -1 when it is not open.

        The least of its and the connection's window, less what is queued; 0 when a window
        is below that (a client that lowers SETTINGS_INITIAL_WINDOW_SIZE can make a stream's
        window negative, RFC 9113 section 6.9.2: the stream then waits, it is not gone).
        """
    def write_message(
        self, stream_id: int, payload: bytes | bytearray | memoryview, compressed: bool = False
    ) -> bool:
        """Queue ``payload`` as one gRPC message if the windows take all of it.

        Returns True if queued; otherwise, or when the stream is not open, queues nothing and
        returns False.  ``compressed`` sets the message's flag.  Raises ``ValueError`` for a
        payload over 4 GiB - 1 bytes.
        """
    def write(self, stream_id: int, data: bytes | memoryview) -> None:
        """Queue ``data``: bytes already framed as gRPC messages, or part of one.

        The caller checked them against :meth:`window`; ``data`` must not change afterwards.
        Raises ``KeyError`` when the stream is not open.
        """
    def frame(
        self,
        stream_id: int,
        size: int,
        max_frame_size: int,
        out: bytearray,
        buffers: list[bytes | memoryview],
    ) -> int:
        """Write the first ``size`` queued bytes of ``stream_id`` as DATA frames; count them.

        The frames have no flags and carry at most ``max_frame_size`` bytes each.
        Frame headers and pieces shorter than :data:`KEEP_APART` are appended to ``out``; a
        longer piece is not copied: ``out``'s bytes so far are moved to ``buffers`` (``out``
        is emptied in place), then a view of the piece.  The wire order is ``buffers`` then
        ``out``.  Raises ``KeyError`` when the stream is not open, ``ValueError`` when ``size``
        exceeds what is queued.  The caller must take ``size`` off the real send windows.
        """
@final
class CreditBook:
    """Flow-control credit owed to the peer, per stream, until the next flush.

    The one owner of received-data credit on a connection: bytes that need no reader
    (padding, streams that failed or ended, messages still being assembled) are added with
    :meth:`add`; messages the application took are added by their :class:`Inbox` through
    :meth:`consumed`.  The caller returns what :meth:`take` gives, once per flush: one
    WINDOW_UPDATE per stream and one for the connection.
    """

    on_consumed: Callable[[], None] | None
    """Called once an application consumes a message with :attr:`flush_after` bytes or more
    owed since the last :meth:`take` (the owner schedules a flush there), so at most once per
    flush, never per message.  Credit below that leaves with a later flush."""
    flush_after: int
    """Credit worth a flush of its own, and the least :meth:`take` gives (0: any).  A peer can
    be waiting for it only once it exceeds what the receive windows hold beyond h2's own
    threshold (half the window): a quarter of the smallest window is safe."""

    def __init__(
        self, on_consumed: Callable[[], None] | None = None, flush_after: int = 0
    ) -> None: ...
    @property
    def owed(self) -> int:
        """Bytes of credit owed since the last :meth:`take`, added and consumed."""
    def add(self, stream_id: int, size: int) -> None:
        """Owe ``size`` more bytes of credit on ``stream_id`` (and on the connection)."""
    def consumed(self, stream_id: int, size: int) -> None:
        """Owe the credit of ``size`` bytes the application took; may call :attr:`on_consumed`."""
    def take(self) -> dict[int, int] | None:
        """The credit owed per stream since the last take, or None; nothing is owed after.

        Less than :attr:`flush_after` owed is not taken (None): it stays for a later take.
        """
    def close(self) -> None:
        """The connection is gone: drop what is owed and :attr:`on_consumed`.

        Credit added later is never listed with its inbox: an inbox released after the close
        is not kept alive by the book, nor the book by it.
        """

@final
class Inbox:
    """One call's received messages, and the credit they still owe until they are taken.

    Credit of a message that was returned early (its bytes arrived while it was still being
    assembled, :attr:`~fastinject.protocol.MessagesReceived.prepaid`) is a debt deducted from
    the credit of the messages taken next, so each byte is credited exactly once.
    """

    @property
    def stream_id(self) -> int:
        """The stream whose messages these are (the credit is owed on it)."""
    @property
    def last_compressed(self) -> bool:
        """Whether the last message taken (:meth:`pop`, :meth:`pop_plain`) was compressed."""
    def __init__(self, stream_id: int, book: CreditBook) -> None: ...
    def __len__(self) -> int: ...
    def deliver(self, messages: list[tuple[bytes, bool]], prepaid: int) -> None:
        """Messages arrived; ``prepaid`` bytes of them were credited while being assembled."""
    def pop(self) -> tuple[bytes, bool] | None:
        """The oldest message ``(payload, compressed)``, its credit now owed; None if empty."""
    def pop_plain(self) -> bytes | None:
        """The oldest message's payload if it is not compressed, its credit now owed; else None.

        The fast path of a reader that would have to decompress (a coroutine) otherwise.
        """
    def release(self) -> None:
        """Drop every message, owing their credit (the call ended without reading them)."""

@final
class InboxReader:
    """A call's request messages, deserialized, as an async iterator over its :class:`Inbox`.

    A step whose message is here and uncompressed takes it (:meth:`Inbox.pop_plain`) and
    deserializes it at once: the awaitable it returns is already done and never suspends
    (no coroutine, in C with the extension).  Any other step is ``wait()``, the caller's
    coroutine (decompression, or waiting for the peer), whose ``StopAsyncIteration`` ends the
    iteration.
    """

    def __init__(
        self,
        inbox: Inbox,
        deserializer: Callable[[bytes], Any] | None,
        wait: Callable[[], Awaitable[Any]],
        failed: Callable[[Exception], BaseException],
    ) -> None:
        """Read ``inbox``'s messages with ``deserializer`` (None: the payloads as they are).

        When it raises ``exc``, the step raises ``failed(exc)`` (from ``exc``) instead; the
        message is taken all the same.
        """
    def __aiter__(self) -> InboxReader: ...
    def __anext__(self) -> Awaitable[Any]:
        """The next message; raises (at once) what ``failed`` made of a deserializer's error."""

__all__ = ["KEEP_APART", "CreditBook", "Inbox", "InboxReader", "SendQueue"]
