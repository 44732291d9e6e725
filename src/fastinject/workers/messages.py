"""What the supervisor and its workers say to each other, and the channel that carries it.

Each worker has one ``AF_UNIX``/``SOCK_SEQPACKET`` socket pair with the supervisor: message
boundaries are kept, a connection's file descriptor travels in the same message as the words
about it (``SCM_RIGHTS`` via :func:`socket.send_fds`), and a dead peer reads as end of file.
Messages are small frozen dataclasses, pickled: both ends are the same program run by the
same user, so nothing untrusted is ever unpickled.

Supervisor to worker: :class:`WorkerConfig` (first, once), :class:`Inject` (with one fd),
:class:`Drain`.  Worker to supervisor: :class:`Ready`, :class:`Load`.
"""

from __future__ import annotations

import dataclasses
import pickle
import socket
from collections import deque

__all__ = [
    "MAX_MESSAGE",
    "Channel",
    "ChannelClosed",
    "CredentialsSpec",
    "Drain",
    "Inject",
    "Load",
    "Message",
    "Ready",
    "WorkerConfig",
]

MAX_MESSAGE = 256 * 1024
"""Largest encoded message (a config with certificate chains, or ``initial_data`` of a sniffed
ClientHello, is far below this)."""


@dataclasses.dataclass(frozen=True, slots=True)
class CredentialsSpec:
    """Credentials a worker builds for itself (an ``SSLContext`` cannot cross processes).

    ``None`` PEM fields mean plaintext; ``client_ca_pem`` turns on mutual TLS.
    """

    key_pem: bytes | None = None
    cert_pem: bytes | None = None
    client_ca_pem: bytes | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class WorkerConfig:
    """Everything a new worker needs: the user's factory and the credentials of each target.

    ``targets[i]`` are the credentials of the connections :class:`Inject` sends with
    ``target=i``; the worker makes one ``ConnectionInjector`` per target.
    """

    factory: str
    targets: tuple[CredentialsSpec, ...]
    grace: float
    log_level: str
    generation: int
    sys_path: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class Inject:
    """Serve the connection whose fd travels with this message, with ``targets[target]``."""

    serial: int
    target: int
    initial_data: bytes = b""


@dataclasses.dataclass(frozen=True, slots=True)
class Drain:
    """Stop: gracefully close every connection, give running calls ``grace`` s, then exit."""

    grace: float


@dataclasses.dataclass(frozen=True, slots=True)
class Ready:
    """The worker has built its server and serves whatever it is sent."""

    pid: int


@dataclasses.dataclass(frozen=True, slots=True)
class Load:
    """A worker's load: ``received`` counts the :class:`Inject` messages it has taken in."""

    received: int
    connections: int
    calls: int


Message = WorkerConfig | Inject | Drain | Ready | Load


class ChannelClosed(Exception):
    """The other end of a :class:`Channel` has gone (its process exited or closed it)."""


class Channel:
    """One end of a non-blocking ``SOCK_SEQPACKET`` pair: whole messages, optionally with fds.

    :meth:`send` never blocks: a message that does not fit in the socket buffer now waits in
    an outbox (with its fd still open) until :meth:`flush` can write it; :attr:`backlog` says
    how many wait.  Closing the channel closes the fds still waiting.
    """

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self._outbox: deque[tuple[bytes, socket.socket | None]] = deque()
        self.closed = False

    @property
    def backlog(self) -> int:
        """How many messages wait for room in the socket buffer."""
        return len(self._outbox)

    def send(self, message: Message, fd: socket.socket | None = None) -> None:
        """Send ``message`` (and ``fd``, which this channel then owns and closes once sent).

        Raises :class:`ChannelClosed` when the peer has gone (the owner then calls
        :meth:`close`, which closes ``fd`` too).
        """
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        if len(data) > MAX_MESSAGE:
            if fd is not None:
                fd.close()
            raise ValueError(f"message of {len(data)} bytes exceeds {MAX_MESSAGE}")
        self._outbox.append((data, fd))
        if len(self._outbox) == 1:
            self.flush()

    def flush(self) -> bool:
        """Write waiting messages; True once the outbox is empty.  Raises :class:`ChannelClosed`.

        The channel stays open on failure: its owner unregisters it from the loop, then closes.
        """
        while self._outbox:
            data, fd = self._outbox[0]
            try:
                if fd is None:
                    self.sock.send(data)
                else:
                    socket.send_fds(self.sock, [data], [fd.fileno()])
            except (BlockingIOError, InterruptedError):
                return False
            except OSError as exc:
                raise ChannelClosed(str(exc)) from exc
            self._outbox.popleft()
            if fd is not None:
                fd.close()  # the receiver holds its own copy now
        return True

    def receive(self) -> tuple[Message, socket.socket | None] | None:
        """The next message and its fd (as a socket), or ``None`` if nothing is waiting.

        Raises :class:`ChannelClosed` at end of file.
        """
        try:
            data, fds, flags, _ = socket.recv_fds(
                self.sock, MAX_MESSAGE, 1, socket.MSG_CMSG_CLOEXEC
            )
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as exc:
            raise ChannelClosed(str(exc)) from exc
        received = [socket.socket(fileno=fd) for fd in fds]
        if not data:
            for sock in received:
                sock.close()
            raise ChannelClosed("end of file")
        if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
            for sock in received:
                sock.close()
            raise ChannelClosed("a message or its fds were truncated")
        message = pickle.loads(data)
        if not isinstance(message, Message):
            raise TypeError(f"unexpected message {type(message).__name__}")
        return message, (received[0] if received else None)

    def close(self) -> None:
        """Close the socket and every fd still waiting in the outbox.  Idempotent."""
        if self.closed:
            return
        self.closed = True
        for _, fd in self._outbox:
            if fd is not None:
                fd.close()
        self._outbox.clear()
        self.sock.close()
