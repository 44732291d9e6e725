"""Waiting, reading nothing, until a socket's first TLS record is whole in the kernel.

``loop.start_tls`` makes a connection's TLS session at once, before the peer sent a byte:
OpenSSL's state and buffers, ~55 KiB on uvloop (~300 KiB on asyncio's own loop, whose sockets
therefore take ``tls.TlsLayer`` instead).  It cannot be given bytes already read, so a
connection on a socket waits with its transport paused and the peer's bytes unread in the
kernel until its first TLS record (the ClientHello) is whole, and only then starts TLS.  A
slowloris peer that sends half a ClientHello, or nothing, costs the server its transport and a
registration here, ~3 KiB, until its handshake deadline.

How: ``SO_RCVLOWAT`` tells the kernel to report the socket readable only once that many bytes
are queued (a record header's 5, then the whole record it announces), and ``MSG_PEEK`` reads
the header without taking it.  The sockets of all the connections waiting on a loop are
watched by one selector of their own (epoll on Linux, kqueue on the BSDs), whose descriptor
the loop watches: the loop refuses to watch a descriptor one of its transports owns, and a
``dup`` per connection would double the descriptors a slowloris peer holds.

A first record that is not a handshake record, or is longer than TLS allows, is refused at
once (:func:`first_record_size`).  When the kernel cannot wait (it reports the socket readable
below the low-water mark: the peer closed its side, memory pressure, or a socket whose poll
ignores ``SO_RCVLOWAT``, as a Unix socket's; or the loop cannot watch a selector), the owner
reads the bytes instead and holds them until the record is whole (``tls.TlsLayer``).
"""

from __future__ import annotations

import asyncio
import contextlib
import selectors
import socket
import weakref
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from .errors import HandshakeError

# TLS records: content type, version, 16-bit length; a handshake record's fragment is at most
# 2**14 bytes (RFC 8446 5.1).
_RECORD_HEADER_LENGTH = 5
_HANDSHAKE_RECORD = 0x16
_MAX_FRAGMENT = 2**14
_MAX_RECORD = _RECORD_HEADER_LENGTH + _MAX_FRAGMENT


def first_record_size(head: bytes | bytearray) -> int:
    """Bytes the peer's first TLS record takes, header included (5 until its header is here).

    Raises :class:`HandshakeError` if it is not a handshake record or is longer than TLS
    allows.
    """
    if len(head) < _RECORD_HEADER_LENGTH:
        return _RECORD_HEADER_LENGTH
    if head[0] != _HANDSHAKE_RECORD:
        raise HandshakeError(f"the first TLS record is not a handshake (type {head[0]})")
    length = head[3] << 8 | head[4]
    if length > _MAX_FRAGMENT:
        raise HandshakeError(f"the first TLS record is too long ({length} bytes)")
    return _RECORD_HEADER_LENGTH + length


class FirstRecordOwner(Protocol):
    """The connection a :class:`FirstRecordWait` works for; told once how the wait ended."""

    def first_record_whole(self) -> None:
        """The first record is whole in the kernel: start TLS on it now."""

    def first_record_unwaited(self) -> None:
        """The kernel cannot wait for this socket (see the module docstring): read instead."""

    def first_record_refused(self, reason: str) -> None:
        """Close the connection: a bad first record, or the peer closed or failed."""


class FirstRecordWait:
    """One connection's socket, watched until its first TLS record is whole.

    :meth:`start` checks at once, then the loop reports the socket readable; ``owner`` is told
    once how the wait ended, unless :meth:`cancel` came first.
    """

    __slots__ = ("_family", "_fd", "_mark", "_owner", "_type", "_watcher")

    def __init__(self, sock: Any, owner: FirstRecordOwner) -> None:
        # ``sock`` is the transport's socket (asyncio's TransportSocket or uvloop's
        # PseudoSocket, which refuse recv): peeking borrows its descriptor (see _borrowed).
        self._fd: int = sock.fileno()
        self._family: int = sock.family
        self._type: int = sock.type
        self._owner = owner
        self._mark = 0  # the SO_RCVLOWAT set on the socket (0: none yet)
        self._watcher: _Watcher | None = None

    def start(self) -> None:
        """Tell the owner at once if the first record is already whole (or bad), else wait."""
        self._check()

    def cancel(self) -> None:
        """Stop watching and let the socket wake readers at every byte again; no word follows."""
        if self._watcher is not None:
            self._watcher.forget(self._fd, self)
            self._watcher = None
        if self._mark > 1:
            self._mark = 1
            with contextlib.suppress(OSError), self._borrowed() as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)

    def readable(self) -> None:
        """The kernel reports the socket readable: look at what is queued now."""
        self._check()

    def _check(self) -> None:
        owner = self._owner
        try:
            with self._borrowed() as sock:
                try:
                    queued = sock.recv(_MAX_RECORD, socket.MSG_PEEK)
                except BlockingIOError:  # nothing queued
                    queued = None
                if queued == b"":
                    self._end(owner.first_record_refused, "closed before its first TLS record")
                    return
                size = first_record_size(queued or b"")
                have = len(queued or b"")
                if have >= size:
                    self._end(owner.first_record_whole)
                    return
                if have < self._mark:  # woken below the mark
                    self._end(owner.first_record_unwaited)
                    return
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, size)
                self._mark = size
        except HandshakeError as exc:
            self._end(owner.first_record_refused, str(exc))
            return
        except OSError as exc:
            self._end(owner.first_record_refused, f"connection failed: {exc}")
            return
        if self._watcher is None:
            self._watcher = _Watcher.of(asyncio.get_running_loop())
            if self._watcher is None:
                self._end(owner.first_record_unwaited)
                return
            self._watcher.watch(self._fd, self)

    def _end(self, tell: Callable[..., None], *args: str) -> None:
        self.cancel()
        tell(*args)

    @contextlib.contextmanager
    def _borrowed(self) -> Iterator[socket.socket]:
        """A socket object on the transport's descriptor, detached again (never closing it)."""
        sock = socket.socket(self._family, self._type, fileno=self._fd)
        try:
            sock.setblocking(False)
            yield sock
        finally:
            sock.detach()


class _Watcher:
    """The sockets of the connections waiting on one loop, in a selector the loop watches.

    Made when a first connection waits and closed when the last one stops.
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, selector: selectors.BaseSelector, fileno: int
    ) -> None:
        self._loop = loop
        self._selector = selector
        self._fileno = fileno

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> _Watcher | None:
        """The loop's watcher, made if needed; None where the loop cannot watch a selector."""
        watcher = _watchers.get(loop)
        if watcher is not None:
            return watcher
        selector = selectors.DefaultSelector()
        fileno = getattr(selector, "fileno", None)
        if fileno is None:  # select() or poll(): no descriptor to watch
            selector.close()
            return None
        watcher = cls(loop, selector, fileno())
        try:
            loop.add_reader(watcher._fileno, watcher._ready)
        except NotImplementedError:  # a proactor loop (Windows)
            selector.close()
            return None
        _watchers[loop] = watcher
        return watcher

    def watch(self, fd: int, wait: FirstRecordWait) -> None:
        """Report ``fd`` readable to ``wait``."""
        key = self._selector.get_map().get(fd)
        if key is not None:  # a descriptor closed under a wait, and reused since
            self._selector.unregister(fd)
        self._selector.register(fd, selectors.EVENT_READ, wait)

    def forget(self, fd: int, wait: FirstRecordWait) -> None:
        """Stop watching ``fd`` for ``wait``; the last one closes the watcher."""
        if _watchers.get(self._loop) is not self:
            return  # closed already (``wait`` lost its descriptor to another wait)
        key = self._selector.get_map().get(fd)
        if key is not None and key.data is wait:
            self._selector.unregister(fd)
        if not self._selector.get_map():
            self._loop.remove_reader(self._fileno)
            self._selector.close()
            del _watchers[self._loop]

    def _ready(self) -> None:
        for key, _ in self._selector.select(0):
            if _watchers.get(self._loop) is not self:
                return  # the last wait ended: closed
            if self._selector.get_map().get(key.fd) is key:  # not forgotten meanwhile
                wait: FirstRecordWait = key.data
                wait.readable()


_watchers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Watcher] = (
    weakref.WeakKeyDictionary()
)
