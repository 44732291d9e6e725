"""Connection injection (gRFC L114): serve gRPC on streams the server did not accept.

A :class:`ConnectionInjector` is made by :meth:`fastinject.Server.create_connection_injector`
with the credentials its connections get.  :meth:`~ConnectionInjector.inject_connection` takes a
connected socket, an asyncio ``(StreamReader, StreamWriter)`` pair or any
:class:`~fastinject.duplex.Duplex`; the TLS handshake (if the credentials ask for one) and then
HTTP/2 run exactly as for a connection accepted on a port: same handlers, interceptors,
limits, keepalive and shutdown.

All methods are plain functions that start the work and return at once (so they can be called
from callbacks); each returns an awaitable for callers who want to wait.  They must be called
on the server's event loop thread: from another thread they raise :class:`RuntimeError`
(use ``loop.call_soon_threadsafe``).
"""

from __future__ import annotations

import _socket
import asyncio
import contextlib
import contextvars
import logging
import socket
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

from .connection import format_peer
from .credentials import ServerCredentials
from .duplex import Duplex, DuplexTransport, StreamPairDuplex
from .errors import InjectorDestroyedError, ServerStoppedError
from .handlers import ServerInterceptor
from .server import ConnectionGroup, done_future

if TYPE_CHECKING:
    from .server import Server

logger = logging.getLogger(__name__)

Injectable = socket.socket | tuple[asyncio.StreamReader, asyncio.StreamWriter] | Duplex

# Tasks started here and possibly not awaited by anyone: the event loop keeps only weak
# references to tasks, so they are held until they finish.
_running: set[asyncio.Task[None]] = set()


def _keep(task: asyncio.Task[None]) -> asyncio.Task[None]:
    _running.add(task)
    task.add_done_callback(_running.discard)
    return task


class ConnectionInjector:
    """Serves injected connections with one set of credentials (gRFC L114)."""

    def __init__(
        self,
        server: Server,
        credentials: ServerCredentials,
        interceptors: Sequence[ServerInterceptor],
    ) -> None:
        self._server = server
        self._credentials: ServerCredentials | None = credentials
        self._interceptors = tuple(interceptors)
        self._group = ConnectionGroup(server)
        self._destroyed = False
        self._server_stopped = False

    @property
    def connections(self) -> int:
        """How many injected connections are open."""
        return len(self._group.connections)

    @property
    def active_calls(self) -> int:
        """How many calls are running on the injected connections (a load figure)."""
        return sum(conn.active_calls for conn in self._group.connections)

    @property
    def destroyed(self) -> bool:
        """Whether :meth:`destroy` was called."""
        return self._destroyed

    def inject_connection(
        self, connection: Injectable, *, initial_data: bytes = b""
    ) -> Awaitable[None]:
        """Serve gRPC on ``connection``, after the TLS handshake its credentials call for.

        ``initial_data`` holds bytes the caller already read from the stream (while sniffing
        it, say); they are processed before anything else.  Faults of the peer (failed
        handshake, garbage, disconnect) close the connection and are logged at debug level.
        Raises :class:`TypeError` for an object that is not a stream, and
        :class:`~fastinject.errors.InjectorDestroyedError` /
        :class:`~fastinject.errors.ServerStoppedError` (after closing the stream) when this
        injector or its server no longer serves.  The returned awaitable completes when the
        connection is attached.
        """
        loop = _loop_thread_check("inject_connection")
        kind = _classify(connection)
        if self._destroyed or self._server_stopped or self._server.stopped:
            _close_now(connection, loop)
            if self._destroyed:
                raise InjectorDestroyedError("this connection injector has been destroyed")
            raise ServerStoppedError("the server has been stopped")
        assert self._credentials is not None
        # A socket served by the loop gets its peer from its transport when first asked, as a
        # connection accepted on a port; a TLS layer over bytes already read has no such
        # transport.
        peer = None if kind == "socket" and not initial_data else _peer_of(connection, kind)
        protocol = self._server.connection_protocol(
            self._credentials, self._group, self._interceptors,
            initial_data=bytes(initial_data), peer=peer, native_tls=kind == "socket",
        )
        if kind == "socket":
            assert isinstance(connection, socket.socket)
            if isinstance(loop, asyncio.BaseEventLoop):  # see _send_without_delay
                _send_without_delay(connection)
            attached = loop.create_future()
            _attach_socket(loop.connect_accepted_socket(lambda: protocol, connection),
                           connection, attached, first=True)
            return attached
        duplex = StreamPairDuplex(*connection) if kind == "pair" else connection  # type: ignore[misc]
        extra = {"peername": getattr(duplex, "peername", None),
                 "socket": getattr(duplex, "socket", None)}
        DuplexTransport(duplex, protocol, extra)  # type: ignore[arg-type]
        return done_future(loop)

    def drain(self, grace_time_ms: float) -> Awaitable[None]:
        """Gracefully close the connections injected so far (like ``Server.drain``, gRFC L111).

        Each gets a graceful GOAWAY; running calls go on, no new ones start; calls still
        running after ``grace_time_ms`` are cancelled.  Connections injected later are not
        touched, and the injector keeps accepting injections.

        Milliseconds, because gRFC L114 names the argument so; the rest of fastinject's API
        (``Server.stop(grace)``, settings) takes seconds.
        """
        _loop_thread_check("drain")
        if grace_time_ms < 0:
            raise ValueError(f"grace_time_ms must be >= 0, not {grace_time_ms}")
        return self._group.drain(grace_time_ms / 1000.0)

    def destroy(self) -> Awaitable[None]:
        """Stop injecting and gracefully close this injector's connections (like ``unbind``).

        Idempotent.  Running calls are not cut short (``Server.stop`` still bounds them).
        """
        _loop_thread_check("destroy")
        if not self._destroyed:
            self._destroyed = True
            self._credentials = None
            self._server._injectors.discard(self)
            self._group.stop_accepting()
        return self._group.drain(None)

    def _server_stopping(self) -> None:
        """The server is stopping: refuse new injections (its stop closes the connections)."""
        self._server_stopped = True


_ATTACHING = contextvars.Context()


def _attach_socket(
    attaching: Coroutine[Any, Any, Any],
    sock: socket.socket,
    attached: asyncio.Future[None],
    first: bool = False,
) -> None:
    """Step ``loop.connect_accepted_socket``, which serves ``sock``; then complete ``attached``.

    The coroutine makes the transport at once and then waits for the transport to be
    connected; it is stepped here, as a task would, without the task (and the context copy,
    the entry in asyncio's set of tasks and the loop callbacks) a socket would cost.  During
    the ``first`` step a plain socket reads its family and type as ints (:class:`_IntSocket`).
    However the coroutine ends, ``attached`` completes: a failure (an OSError, its waiter
    cancelled, any other exception) closes the socket and is logged at debug level, instead
    of reaching the loop's exception handler with ``attached`` left pending.
    """
    plain = first and sock.__class__ is socket.socket
    if plain:
        sock.__class__ = _IntSocket
    try:
        waiting = attaching.send(None)
    except StopIteration:
        _settle(attached)
        return
    except BaseException as exc:
        logger.debug("injected socket could not be served: %r", exc)
        sock.close()
        _settle(attached)
        if not isinstance(exc, Exception | asyncio.CancelledError):
            raise  # KeyboardInterrupt, SystemExit: the process is to stop
        return
    finally:
        if plain:
            sock.__class__ = socket.socket
    if waiting is None:  # a bare yield: go on at the next loop turn
        attached.get_loop().call_soon(_attach_socket, attaching, sock, attached)
    else:
        # (its own context: the coroutine reads no context variable; a copy per socket costs)
        waiting.add_done_callback(
            lambda _: _attach_socket(attaching, sock, attached), context=_ATTACHING
        )


def _settle(attached: asyncio.Future[None]) -> None:
    if not attached.done():  # the caller may have cancelled it
        attached.set_result(None)


def _loop_thread_check(method: str) -> asyncio.AbstractEventLoop:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        raise RuntimeError(
            f"ConnectionInjector.{method} must be called on the server's event loop thread "
            f"(from another thread, use loop.call_soon_threadsafe)"
        ) from None


# A socket's family and type as plain ints: ``socket.socket``'s own properties convert them to
# enums, which cost more than the rest of an injection's checks together.
_family: Callable[[socket.socket], int] = _socket.socket.family.__get__
_type: Callable[[socket.socket], int] = _socket.socket.type.__get__


class _IntSocket(socket.socket):
    """A socket whose ``family`` and ``type`` are plain ints, as the event loop reads them.

    ``socket.socket`` converts them to enums on every read (several thousand instructions
    each); a loop attaching an injected socket reads them three times.  A plain socket is of
    this class only while the loop attaches it.
    """

    __slots__ = ()
    family = property(_family)
    type = property(_type)


def _classify(connection: Any) -> str:
    if isinstance(connection, socket.socket):
        if _type(connection) != socket.SOCK_STREAM:
            raise TypeError("only stream sockets (TCP or Unix SOCK_STREAM) can be injected")
        return "socket"
    if (
        isinstance(connection, tuple)
        and len(connection) == 2
        and isinstance(connection[0], asyncio.StreamReader)
        and isinstance(connection[1], asyncio.StreamWriter)
    ):
        return "pair"
    if isinstance(connection, Duplex):
        return "duplex"
    raise TypeError(
        "inject_connection takes a connected socket.socket, a (StreamReader, StreamWriter) "
        f"pair or a fastinject.Duplex, not {type(connection).__name__}"
    )


def _send_without_delay(sock: socket.socket) -> None:
    """Turn Nagle's algorithm off on a TCP socket, as for the sockets accepted on a port.

    asyncio does it only for sockets whose ``proto`` says TCP, which a socket accepted from a
    listener made with ``socket.socket()`` or ``socket.create_server()`` does not (its proto
    is 0).  With Nagle on, a response written in two parts waits for the peer's delayed ACK
    (40 ms on Linux) before its second part leaves.  Only for asyncio's own loops: uvloop's
    (libuv) turns it off on every TCP socket it opens.
    """
    if _family(sock) in (socket.AF_INET, socket.AF_INET6):
        # A socket already closed fails when served, and is logged as for any other peer.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _peer_of(connection: Any, kind: str) -> str:
    if kind == "socket":
        return _socket_peer(connection)
    if kind == "pair":
        sock = connection[1].get_extra_info("socket")
        return _socket_peer(sock) if sock is not None else "duplex:StreamWriter"
    peer = getattr(connection, "peer", None)
    return peer if isinstance(peer, str) else f"duplex:{type(connection).__name__}"


def _socket_peer(sock: socket.socket) -> str:
    try:
        address = sock.getpeername()
        if sock.family == socket.AF_UNIX and not address:
            address = sock.getsockname()
    except OSError:
        return "unknown"
    return format_peer(address, sock.family)


def _close_now(connection: Any, loop: asyncio.AbstractEventLoop) -> None:
    """Close a stream we refuse to serve."""
    if isinstance(connection, socket.socket):
        connection.close()
    elif isinstance(connection, tuple) and len(connection) == 2:
        connection[1].close()
    elif isinstance(connection, Duplex):
        _keep(loop.create_task(connection.close()))
