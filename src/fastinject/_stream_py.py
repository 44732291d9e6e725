"""Pure-Python per-stream core of a connection, the twin of the Cython module ``_stream``.

Use :mod:`fastinject.stream`, which picks the Cython module when it is available.  Both modules
have the same API and behaviour, and the same tests run against both; the documentation of the
API is in ``_stream.pyi``.

:class:`SendQueue` is the outbound side: the response messages of every stream, framed as gRPC
messages straight into the stream's buffer, checked against *mirrors* of the HTTP/2 send
windows, then cut into DATA frames once per flush.  On the inbound side, :class:`CreditBook`
owns the flow-control credit owed to the peer (returned once per flush) and each call's
:class:`Inbox` holds its received messages and the credit they owe until they are taken;
:class:`InboxReader` iterates them for a streaming-request handler.
"""

from __future__ import annotations

import collections
import struct
from collections.abc import Awaitable, Callable
from typing import Any, final

from ._framing_py import _flat

KEEP_APART = 4096
"""Payload pieces at least this long are not copied: they are kept (and written) as views."""

_MESSAGE_HEADER = struct.Struct(">BI")
_DATA_HEADER = struct.Struct(">BHBBI")  # length (high byte, low 16 bits), type, flags, stream


class _Outbound:
    """One stream's queued bytes: ``chunks`` from ``offset`` on; ``tail`` takes small writes."""

    __slots__ = ("chunks", "offset", "queued", "stream_id", "tail", "window")

    def __init__(self, stream_id: int, window: int) -> None:
        self.stream_id = stream_id
        self.chunks: list[bytes | bytearray | memoryview] = []
        self.offset = 0
        self.queued = 0
        self.tail: bytearray | None = None
        self.window = window

    def append(self, data: bytes | memoryview) -> None:
        if len(data) >= KEEP_APART:
            self.chunks.append(data)
            self.tail = None
            return
        tail = self.tail
        if tail is None:
            tail = self.tail = bytearray()
            self.chunks.append(tail)
        tail += data


@final
class SendQueue:
    """A connection's outbound DATA, per stream; see ``_stream.pyi``."""

    __slots__ = ("_connection_window", "_pending", "_streams", "queued_bytes")

    def __init__(self, connection_window: int = 65535) -> None:
        self._streams: dict[int, _Outbound] = {}
        self._pending: dict[int, None] = {}  # the streams with bytes queued, as an ordered set
        self._connection_window = connection_window
        self.queued_bytes = 0

    def open(self, stream_id: int, window: int) -> None:
        """Start sending on ``stream_id``, whose send window is ``window``."""
        stream = self._streams.get(stream_id)
        if stream is None:
            self._streams[stream_id] = _Outbound(stream_id, window)
        else:
            stream.window = window - stream.queued

    def update_window(self, stream_id: int, window: int) -> None:
        """The send window of ``stream_id`` (0: the connection) is now ``window``."""
        if stream_id == 0:
            self._connection_window = window - self.queued_bytes
            return
        stream = self._streams.get(stream_id)
        if stream is not None:
            stream.window = window - stream.queued

    def close(self, stream_id: int) -> None:
        """Stop sending on ``stream_id``: what it has queued is dropped."""
        stream = self._streams.pop(stream_id, None)
        if stream is not None:
            self._drop(stream)

    def drop(self, stream_id: int) -> None:
        """Drop what ``stream_id`` has queued; it may send again."""
        stream = self._streams.get(stream_id)
        if stream is not None:
            self._drop(stream)

    def _drop(self, stream: _Outbound) -> None:
        self._pending.pop(stream.stream_id, None)
        self.queued_bytes -= stream.queued
        self._connection_window += stream.queued
        stream.window += stream.queued
        stream.queued = stream.offset = 0
        stream.chunks = []
        stream.tail = None

    def stream_ids(self) -> list[int]:
        """The open streams, in the order they were opened."""
        return list(self._streams)

    def pending(self) -> list[int]:
        """The streams with queued bytes, in the order they began to queue them."""
        return list(self._pending)

    def queued(self, stream_id: int) -> int:
        """Bytes queued on ``stream_id`` (0 for a stream that is not open)."""
        stream = self._streams.get(stream_id)
        return 0 if stream is None else stream.queued

    def window(self, stream_id: int) -> int:
        """Bytes ``stream_id`` may queue now, or -1 when it is not open."""
        stream = self._streams.get(stream_id)
        if stream is None:
            return -1
        return max(0, min(stream.window, self._connection_window))

    def write_message(
        self, stream_id: int, payload: bytes | bytearray | memoryview, compressed: bool = False
    ) -> bool:
        """Queue ``payload`` as one gRPC message if the windows take all of it; else False."""
        stream = self._streams.get(stream_id)
        if stream is None:
            return False
        flat, length = _flat(payload)
        size = length + 5
        if size > stream.window or size > self._connection_window:
            return False
        stream.append(_MESSAGE_HEADER.pack(1 if compressed else 0, length))
        if length >= KEEP_APART and type(flat) is not bytes:
            flat = bytes(flat)  # the caller may change its buffer after we return
        stream.append(flat)
        self._account(stream, size)
        return True

    def write(self, stream_id: int, data: bytes | memoryview) -> None:
        """Queue bytes already framed as gRPC messages (the caller checked :meth:`window`)."""
        stream = self._streams.get(stream_id)
        if stream is None:
            raise KeyError(stream_id)
        stream.append(data)
        self._account(stream, len(data))

    def _account(self, stream: _Outbound, size: int) -> None:
        if size and not stream.queued:
            self._pending[stream.stream_id] = None
        stream.queued += size
        stream.window -= size
        self._connection_window -= size
        self.queued_bytes += size

    def frame(
        self,
        stream_id: int,
        size: int,
        max_frame_size: int,
        out: bytearray,
        buffers: list[bytes | memoryview],
    ) -> int:
        """Write the first ``size`` queued bytes of ``stream_id`` as DATA frames; see the .pyi."""
        stream = self._streams[stream_id]
        if not 0 <= size <= stream.queued or max_frame_size <= 0:
            raise ValueError(f"cannot frame {size} of {stream.queued} queued bytes")
        chunks = stream.chunks
        first = 0
        offset = stream.offset
        frames = 0
        left = size
        while left:
            length = min(max_frame_size, left)
            out += _DATA_HEADER.pack(length >> 16, length & 0xFFFF, 0, 0, stream_id)
            left -= length
            frames += 1
            while length:
                chunk = chunks[first]
                take = min(len(chunk) - offset, length)
                if take >= KEEP_APART:
                    buffers.append(bytes(out))
                    out.clear()
                    buffers.append(memoryview(chunk)[offset : offset + take])
                else:
                    out += memoryview(chunk)[offset : offset + take]
                length -= take
                offset += take
                if offset == len(chunk):
                    first += 1
                    offset = 0
        del chunks[:first]
        stream.offset = offset
        stream.tail = None  # views may now refer to it: later writes start a new buffer
        stream.queued -= size
        if not stream.queued:
            self._pending.pop(stream_id, None)
        self.queued_bytes -= size  # the windows' mirrors stay: the caller takes ``size`` off
        return frames


@final
class CreditBook:
    """Flow-control credit owed to the peer until the next flush; see ``_stream.pyi``."""

    __slots__ = (
        "_closed", "_due", "_notified", "_owed_total", "_owing", "flush_after", "on_consumed"
    )

    def __init__(
        self, on_consumed: Callable[[], None] | None = None, flush_after: int = 0
    ) -> None:
        self._due: dict[int, int] = {}
        self._owing: list[Inbox] = []  # the inboxes owing credit since the last take
        self._notified = False
        self._owed_total = 0  # credit added or consumed since the last take
        self._closed = False  # the connection is gone: inboxes are not listed any more
        self.on_consumed = on_consumed
        self.flush_after = flush_after

    @property
    def owed(self) -> int:
        """Bytes of credit owed since the last take (added and consumed)."""
        return self._owed_total

    def add(self, stream_id: int, size: int) -> None:
        """Owe ``size`` more bytes of credit on ``stream_id`` (and on the connection)."""
        self._add(stream_id, size)
        self._owed_total += size

    def _add(self, stream_id: int, size: int) -> None:
        due = self._due
        due[stream_id] = due.get(stream_id, 0) + size

    def consumed(self, stream_id: int, size: int) -> None:
        """Owe the credit of ``size`` bytes the application took; see the .pyi."""
        self._add(stream_id, size)
        self._consumed(size)

    def _consumed(self, size: int) -> None:
        self._owed_total += size
        if not self._notified and self._owed_total >= self.flush_after:
            self._notified = True
            if self.on_consumed is not None:
                self.on_consumed()

    def close(self) -> None:
        """The connection is gone: drop what is owed, and keep no inbox from now on."""
        self._take_all()
        self._closed = True
        self.on_consumed = None

    def take(self) -> dict[int, int] | None:
        """The credit owed per stream since the last take, or None; see ``_stream.pyi``."""
        if self._owed_total < self.flush_after:
            return None
        return self._take_all()

    def _take_all(self) -> dict[int, int] | None:
        self._notified = False
        self._owed_total = 0
        if self._owing:
            for inbox in self._owing:
                self._add(inbox.stream_id, inbox._owed)
                inbox._owed = 0
                inbox._owing = False
            self._owing = []
        if not self._due:
            return None
        due, self._due = self._due, {}
        return due


@final
class Inbox:
    """One call's received messages and the credit they still owe; see ``_stream.pyi``."""

    __slots__ = (
        "_book", "_debt", "_messages", "_owed", "_owing", "last_compressed", "stream_id"
    )

    def __init__(self, stream_id: int, book: CreditBook) -> None:
        self.stream_id = stream_id
        self.last_compressed = False
        self._book = book
        self._messages: collections.deque[tuple[bytes, bool]] = collections.deque()
        self._debt = 0
        self._owed = 0  # credit of taken messages, until the book's next take
        self._owing = False  # listed in the book's _owing

    def __len__(self) -> int:
        return len(self._messages)

    def deliver(self, messages: list[tuple[bytes, bool]], prepaid: int) -> None:
        """Messages arrived; ``prepaid`` bytes of them were credited while being assembled."""
        self._messages.extend(messages)
        self._debt += prepaid

    def pop(self) -> tuple[bytes, bool] | None:
        """The oldest message ``(payload, compressed)``, its credit now owed; None if empty."""
        if not self._messages:
            return None
        message = self._messages.popleft()
        self.last_compressed = message[1]
        self._credit(len(message[0]) + 5)
        return message

    def pop_plain(self) -> bytes | None:
        """The oldest message's payload if it is not compressed, its credit now owed; else None."""
        if not self._messages or self._messages[0][1]:
            return None
        payload = self._messages.popleft()[0]
        self.last_compressed = False
        self._credit(len(payload) + 5)
        return payload

    def release(self) -> None:
        """Drop every message, owing their credit (the call ended without reading them)."""
        for payload, _ in self._messages:
            self._credit(len(payload) + 5)
        self._messages.clear()

    def _credit(self, size: int) -> None:
        if self._debt:
            paid = min(size, self._debt)
            self._debt -= paid
            size -= paid
        if not size:
            return
        self._owed += size
        if not self._owing and not self._book._closed:
            self._owing = True
            self._book._owing.append(self)
        self._book._consumed(size)


async def _ready(value: Any) -> Any:
    return value


@final
class InboxReader:
    """A call's request messages as an async iterator; see ``_stream.pyi``."""

    __slots__ = ("_deserializer", "_failed", "_inbox", "_wait")

    def __init__(
        self,
        inbox: Inbox,
        deserializer: Callable[[bytes], Any] | None,
        wait: Callable[[], Awaitable[Any]],
        failed: Callable[[Exception], BaseException],
    ) -> None:
        self._inbox = inbox
        self._deserializer = deserializer
        self._wait = wait
        self._failed = failed

    def __aiter__(self) -> InboxReader:
        return self

    def __anext__(self) -> Awaitable[Any]:
        payload = self._inbox.pop_plain()
        if payload is None:
            return self._wait()
        if self._deserializer is None:
            return _ready(payload)
        try:
            message = self._deserializer(payload)
        except Exception as exc:
            raise self._failed(exc) from exc
        return _ready(message)


__all__ = ["KEEP_APART", "CreditBook", "Inbox", "InboxReader", "SendQueue"]
