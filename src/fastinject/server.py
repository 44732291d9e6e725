"""The :class:`Server`: handlers, ports, connection groups and the lifecycle.

Every connection belongs to one :class:`ConnectionGroup`: the group of the listening port that
accepted it, or of the connection injector it was injected into.  Groups are what ``drain``
(gRFC L111), ``unbind`` (L109) and injector ``drain``/``destroy`` (L114) act on; the server
also keeps every connection in one set, so ``stop`` reaches them all whatever their group did.

Lifecycle: ``start`` begins accepting on the bound ports; ``stop(grace)`` stops accepting at
once, sends every connection a graceful GOAWAY, lets running calls finish for ``grace``
seconds, then cancels the rest; ``wait_for_termination`` waits for that to complete.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import functools
import logging
import os
import socket
import sys
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ._grpcio import register_server_class
from .concurrency import ConcurrentRpcLimit
from .connection import Connection
from .credentials import ServerCredentials, require_server_credentials
from .errors import BindError, InvalidAddressError, ServerStoppedError
from .handlers import (
    GenericRpcHandler,
    HandlerRegistry,
    ServerInterceptor,
    checked_interceptors,
)
from .memory import MessageMemory
from .options import ServerSettings
from .pending import Arrival
from .preface import PrefaceDeadlines, PrefaceWait
from .tls import NativeTlsHandshake, TlsLayer, native_tls_pays
from .turns import FrameTurns

if TYPE_CHECKING:
    from .injector import ConnectionInjector

logger = logging.getLogger(__name__)


class ConnectionGroup:
    """Connections of one origin (a port or an injector), drained and closed together.

    Connections not serving yet (in their TLS handshake, or waiting for the client's preface
    and SETTINGS) are tracked too (``pending``, as a :class:`~fastinject.pending.PendingTracker`):
    they are dropped when the group closes or the server stops, and a TLS handshake that
    completes after that is refused.
    """

    def __init__(self, server: Server) -> None:
        self._server = server
        self.connections: set[Connection] = set()
        self.pending: set[Arrival] = set()
        self.closed = False

    def pending_started(self, arrival: Arrival) -> None:
        """Track a connection that arrived and does not serve yet."""
        self.pending.add(arrival)
        self._server._pending_started(arrival)

    def pending_ended(self, arrival: Arrival) -> None:
        """Forget a pending connection (it serves now, failed or closed)."""
        self.pending.discard(arrival)
        self._server._pending.pop(arrival, None)

    @property
    def accepting(self) -> bool:
        """Whether a connection that completes its handshake now is served."""
        return not self.closed and not self._server.stopped

    def stop_accepting(self) -> None:
        """No more connections for this group: drop those not serving yet."""
        self.closed = True
        abort_pending(self.pending)

    def add(self, conn: Connection) -> None:
        """Track a new connection (called when it is made)."""
        self.connections.add(conn)
        self._server._connections.add(conn)

    def discard(self, conn: Connection) -> None:
        """Forget a closed connection."""
        self.connections.discard(conn)
        self._server._connections.discard(conn)

    def drain(self, grace: float | None) -> asyncio.Task[None]:
        """Gracefully close the connections open *now*; cancel their calls after ``grace`` s.

        Connections that join the group later are not touched.  ``None`` waits without limit.
        The returned task completes when every one of those connections has closed.
        """
        return self._server.loop.create_task(close_connections(list(self.connections), grace))


def abort_pending(pending: Iterable[Arrival]) -> None:
    """Drop every connection not serving yet (they have no calls to finish)."""
    for arrival in list(pending):
        arrival.abort()


async def close_connections(connections: Sequence[Connection], grace: float | None) -> None:
    """Graceful close of ``connections``; after ``grace`` seconds, cancel what still runs."""
    for conn in connections:
        conn.close_gracefully()
    if not connections:
        return
    waiting = asyncio.gather(*(conn.wait_closed() for conn in connections))
    try:
        await asyncio.wait_for(asyncio.shield(waiting), grace)
    except TimeoutError:
        for conn in connections:
            conn.cancel_calls()
        await waiting


class _Port:
    """A bound address: its sockets, credentials and (once started) asyncio servers."""

    def __init__(
        self, number: int, sockets: list[socket.socket], credentials: ServerCredentials,
        group: ConnectionGroup,
    ) -> None:
        self.number = number
        self.sockets = sockets
        self.credentials = credentials
        self.group = group
        self.servers: list[asyncio.Server] = []


class Server:
    """An asyncio gRPC server (the API of ``grpc.aio.Server``, plus connection injection).

    The arguments are ``grpc.aio.server()``'s, in its order:

    ``migration_thread_pool``
        The executor sync (non-``async``) handlers run in; a default thread pool if None.
    ``handlers``
        Generic handlers (objects with ``service(handler_call_details)``).
    ``interceptors``
        ``grpc.aio.ServerInterceptor`` objects (anything with ``intercept_service``), run in
        order around the method lookup; checked here (:class:`TypeError` naming the object).
    ``options``
        grpcio option tuples (``("grpc.max_receive_message_length", n)``, names as str or
        bytes); see :class:`~fastinject.options.ServerSettings` for the ones used.  Others are
        ignored with a WARNING.
    ``maximum_concurrent_rpcs``
        At most this many RPCs run at once, over all connections; a call beyond it gets
        ``RESOURCE_EXHAUSTED`` ("Concurrent RPC limit exceeded!") at once.  None: no limit.
    ``compression``
        The default compression of responses (a ``grpc.Compression``), as the
        ``default_compression`` setting.

    Keyword ``settings`` are :class:`~fastinject.options.ServerSettings` fields and win over
    ``options``.  Times are in seconds throughout fastinject's own API (``stop(grace)``,
    settings); only methods named by a gRFC keep its ``*_ms`` milliseconds
    (``drain(port, grace_time_ms)``, ``ConnectionInjector.drain(grace_time_ms)``).

    When grpcio is installed, ``isinstance(server, grpc.aio.Server)`` is true (a virtual
    subclass, registered when the first server is made), so packages that pick their asyncio
    servicer that way (grpcio-reflection) do so.
    """

    def __init__(
        self,
        migration_thread_pool: concurrent.futures.Executor | None = None,
        handlers: Sequence[GenericRpcHandler] | None = None,
        interceptors: Sequence[ServerInterceptor] | None = None,
        options: Sequence[tuple[str | bytes, Any]] | None = None,
        maximum_concurrent_rpcs: int | None = None,
        compression: Any = None,
        **settings: Any,
    ) -> None:
        register_server_class(Server)
        if compression is not None:
            if "default_compression" in settings:
                raise TypeError("give compression= or default_compression=, not both")
            settings["default_compression"] = compression
        self.settings = ServerSettings.from_options(options, **settings)
        self._rpc_limit = (
            None if maximum_concurrent_rpcs is None
            else ConcurrentRpcLimit(maximum_concurrent_rpcs)
        )
        # Bytes held for partly received messages, over every connection (ports, injectors).
        self._message_memory = MessageMemory.for_settings(self.settings)
        # Frames handled per loop turn over every connection, made on the loop (see turns.py).
        self._frame_turns: FrameTurns | None = None
        self.registry = HandlerRegistry(interceptors or ())
        if handlers:
            self.registry.add_generic(handlers)
        self._executor = migration_thread_pool
        self._owns_executor = migration_thread_pool is None
        # Listeners by the number add_*_port returned: several addresses may share one (the
        # same port on two hosts; every unix socket is 1, as in grpcio), so each keeps a list.
        self._ports: dict[int, list[_Port]] = {}
        self._connections: set[Connection] = set()
        # Every connection not serving yet, oldest first (a dict keeps insertion order).
        self._pending: dict[Arrival, None] = {}
        self._preface_deadlines = PrefaceDeadlines()  # of plaintext ones before their preface
        self._injectors: set[ConnectionInjector] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = False
        self._stopping: asyncio.Task[None] | None = None
        self._stop_deadline: float | None = None
        self._terminated: asyncio.Event | None = None

    # -- handlers ---------------------------------------------------------------------------

    def add_generic_rpc_handlers(self, generic_rpc_handlers: Iterable[GenericRpcHandler]) -> None:
        """Add generic handlers (objects with ``service(handler_call_details)``).

        As in grpc.aio, generic handlers added after :meth:`start` take effect at once.
        """
        self.registry.add_generic(list(generic_rpc_handlers))

    def add_registered_method_handlers(
        self, service_name: str, method_handlers: Mapping[str, Any]
    ) -> None:
        """Register method handlers (name -> handler) for ``service_name``.

        Only before :meth:`start`: afterwards they are refused with a WARNING, as grpc.aio
        does (code generated by grpcio-tools registers this way).
        """
        self.registry.add_registered(service_name, method_handlers)

    # -- ports ------------------------------------------------------------------------------

    def add_insecure_port(self, address: str) -> int:
        """Bind ``address`` without TLS; returns the port number (useful with port 0).

        A failed bind raises :class:`~fastinject.errors.BindError` (an ``OSError`` and a
        ``RuntimeError``, as grpc.aio raises); a malformed address its subclass
        :class:`~fastinject.errors.InvalidAddressError` (also a ``ValueError``).
        """
        return self._add_port(address, ServerCredentials.insecure())

    def add_secure_port(self, address: str, server_credentials: ServerCredentials) -> int:
        """Bind ``address`` with ``server_credentials``; returns the port number.

        ``server_credentials`` is a :class:`~fastinject.ServerCredentials`; grpcio's own
        (``grpc.ssl_server_credentials(...)``) are refused with a :class:`TypeError` naming
        ``fastinject.ServerCredentials.ssl``, which takes the same arguments.  A failed bind
        raises :class:`~fastinject.errors.BindError`, an ``OSError`` and a ``RuntimeError``
        (what grpc.aio raises).
        """
        credentials = require_server_credentials(server_credentials, "server_credentials")
        return self._add_port(address, credentials)

    def _add_port(self, address: str, credentials: ServerCredentials) -> int:
        self._check_not_stopped()
        sockets = bind_address(address, reuse_port=self.settings.so_reuseport)
        number = port_number(sockets)
        port = _Port(number, sockets, credentials, ConnectionGroup(self))
        self._ports.setdefault(number, []).append(port)
        if self._started:
            self.loop.create_task(self._serve_port(port))
        return number

    async def _serve_port(self, port: _Port) -> None:
        loop = self.loop
        for sock in port.sockets:
            server = await loop.create_server(
                functools.partial(self._accepted_protocol, port), sock=sock, backlog=1024
            )
            port.servers.append(server)

    def _accepted_protocol(self, port: _Port) -> asyncio.Protocol:
        return self.connection_protocol(
            port.credentials, port.group, self.registry.interceptors, native_tls=True
        )

    def connection_protocol(
        self,
        credentials: ServerCredentials,
        group: ConnectionGroup,
        interceptors: Sequence[ServerInterceptor],
        *,
        initial_data: bytes = b"",
        peer: str | None = None,
        native_tls: bool = False,
    ) -> asyncio.Protocol:
        """The protocol serving one new connection: TLS first if ``credentials`` ask for it.

        ``native_tls``: the connection will be a socket transport of this loop, so the loop's
        own TLS can run the handshake (unless ``initial_data`` was already read from it), where
        that pays (:func:`~fastinject.tls.native_tls_pays`: on uvloop).
        """
        # One deadline from arrival for the TLS handshake and the preface, as grpc core.
        arrival = Arrival(group, self.loop.time() + self.settings.handshake_timeout)
        if self._frame_turns is None:
            self._frame_turns = FrameTurns.for_settings(self.settings, self.loop.call_soon)
        turns = self._frame_turns

        def make_connection(data: bytes = b"") -> Connection:
            return Connection(
                settings=self.settings,
                registry=self.registry,
                interceptors=interceptors,
                executor=self._get_executor,
                group=group,
                peer=peer,
                initial_data=data,
                rpc_limit=self._rpc_limit,
                arrival=arrival,
                memory=self._message_memory,
                turns=turns,
            )

        context = credentials.ssl_context()
        if context is None:
            return PrefaceWait(make_connection, arrival, self._preface_deadlines, initial_data)
        if native_tls and not initial_data and native_tls_pays(self.loop):
            return NativeTlsHandshake(context, make_connection, arrival)
        return TlsLayer(context, make_connection, arrival, initial_data)

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop the server runs on (set by :meth:`start`)."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    async def start(self) -> None:
        """Start serving the bound ports (and injected connections)."""
        self._check_not_stopped()
        if self._started:
            return
        self._loop = asyncio.get_running_loop()
        self._terminated = asyncio.Event()
        self._started = True
        self.registry.frozen = True
        for port in self._listeners():
            await self._serve_port(port)

    async def stop(self, grace: float | None) -> None:
        """Stop: no new connections or calls; running calls get ``grace`` seconds, then cancelled.

        Seconds, as in grpc.aio and everywhere in fastinject's own API (only the gRFC-named
        ``grace_time_ms`` of :meth:`drain` and ``ConnectionInjector.drain`` are milliseconds).

        Calls cancelled this way end with UNAVAILABLE "Cancelling all calls" (retryable), as
        grpc.aio's do; their handlers are cancelled.

        Idempotent; a later call with a shorter grace shortens the wait (the shortest wins).
        ``None`` cancels running calls at once, like ``grpc.aio``.
        """
        loop = self.loop
        deadline = loop.time() + (grace or 0.0)
        if self._stop_deadline is None or deadline < self._stop_deadline:
            self._stop_deadline = deadline
        if self._stopping is None:
            self._stopping = loop.create_task(self._shutdown())
        await asyncio.shield(self._stopping)

    def _pending_started(self, arrival: Arrival) -> None:
        """Count a connection not serving yet; past ``max_pending_handshakes``, drop the oldest."""
        if self._stopping is not None:
            arrival.abort()
            return
        self._pending[arrival] = None
        if len(self._pending) > self.settings.max_pending_handshakes:
            oldest = next(iter(self._pending))
            del self._pending[oldest]
            logger.debug(
                "more than %d connections not serving yet: dropping the oldest",
                self.settings.max_pending_handshakes,
            )
            oldest.abort()

    async def _shutdown(self) -> None:
        for port in self._listeners():
            close_port(port)
        for injector in list(self._injectors):
            injector._server_stopping()
        abort_pending(self._pending)
        self._preface_deadlines.cancel()
        connections = list(self._connections)
        for conn in connections:
            conn.close_gracefully()
        waiting = asyncio.gather(*(conn.wait_closed() for conn in connections))
        # Waiting in short steps lets a later stop() with a shorter grace take effect.
        while not waiting.done():
            remaining = (self._stop_deadline or 0.0) - self.loop.time()
            if remaining <= 0:
                break
            await asyncio.wait([waiting], timeout=min(remaining, 0.05))
        for conn in list(self._connections):
            conn.cancel_calls()
        await waiting
        if self._executor is not None and self._owns_executor:
            self._executor.shutdown(wait=False, cancel_futures=True)
        if self._terminated is None:
            self._terminated = asyncio.Event()
        self._terminated.set()

    async def wait_for_termination(self, timeout: float | None = None) -> bool:
        """Wait until the server has stopped, or ``timeout`` seconds (None: no limit).

        Returns whether the wait *timed out*, as grpc.aio's does: True if ``timeout`` passed
        with the server still running, False once it has stopped.
        """
        if self._terminated is None:
            self._terminated = asyncio.Event()
        try:
            await asyncio.wait_for(self._terminated.wait(), timeout)
        except TimeoutError:
            return True
        return False

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop(None)

    @property
    def stopped(self) -> bool:
        """Whether :meth:`stop` has been called."""
        return self._stopping is not None

    def _check_not_stopped(self) -> None:
        if self._stopping is not None:
            raise ServerStoppedError("the server has been stopped")

    def _get_executor(self) -> concurrent.futures.Executor:
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=min(32, (os.cpu_count() or 1) + 4),
                thread_name_prefix="fastinject-handler",
            )
        return self._executor

    # -- L111 drain, L109 unbind -----------------------------------------------------------

    def drain(self, port: int, grace_time_ms: float) -> Awaitable[None]:
        """Gracefully close the connections of ``port`` (gRFC L111); the port keeps listening.

        ``port`` is the number ``add_*_port`` returned; every address bound with that number
        is drained (the same port on several hosts; all unix sockets, which are all 1).
        Calls still running after ``grace_time_ms`` are cancelled.  Returns an awaitable that
        completes when those connections have closed; the work starts at once either way.

        Milliseconds, because gRFC L111 names the argument so; the rest of fastinject's API
        (:meth:`stop`'s ``grace``, settings) takes seconds.
        """
        if grace_time_ms < 0:
            raise ValueError(f"grace_time_ms must be >= 0, not {grace_time_ms}")
        return self._close_connections_of(self._port(port), grace_time_ms / 1000.0)

    def unbind(self, port: int) -> Awaitable[None]:
        """Stop listening on ``port`` at once and gracefully close its connections (gRFC L109).

        Every address bound with that number stops listening (as for :meth:`drain`).  The
        addresses can be bound again immediately; other ports and injectors keep serving.
        A port that is not bound (or was unbound already) is left alone, as L109 specifies.
        """
        records = self._port(port)
        self._ports.pop(port, None)
        for record in records:
            close_port(record)
            record.group.stop_accepting()
        return self._close_connections_of(records, None)

    def _port(self, port: int) -> list[_Port]:
        """The listeners bound as ``port`` (L109/L111 name the bound number; 0 is an error)."""
        if not isinstance(port, int) or isinstance(port, bool):
            raise TypeError(f"port must be an int, not {type(port).__name__}")
        if port == 0:
            raise ValueError("port 0 is not a bound port: pass the number add_*_port returned")
        records = self._ports.get(port, [])
        if not records:
            logger.debug("port %d is not bound by this server: nothing to do", port)
        return records

    def _listeners(self) -> list[_Port]:
        """Every bound address, in the order bound."""
        return [record for records in self._ports.values() for record in records]

    def _close_connections_of(
        self, records: Sequence[_Port], grace: float | None
    ) -> asyncio.Task[None]:
        """Graceful close of the connections open now on ``records``, as one task."""
        connections = [conn for record in records for conn in record.group.connections]
        return self.loop.create_task(close_connections(connections, grace))

    # -- L114 connection injection -----------------------------------------------------------

    def create_connection_injector(
        self,
        credentials: ServerCredentials,
        interceptors: Sequence[ServerInterceptor] | None = None,
    ) -> ConnectionInjector:
        """A :class:`~fastinject.injector.ConnectionInjector` serving streams with ``credentials``.

        ``interceptors`` run after the server's own, for connections of this injector only.
        """
        from .injector import ConnectionInjector

        require_server_credentials(credentials, "credentials")
        self._check_not_stopped()
        own = checked_interceptors(interceptors or ())
        injector = ConnectionInjector(self, credentials, (*self.registry.interceptors, *own))
        self._injectors.add(injector)
        return injector


def done_future(loop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
    """An awaitable that is already complete (for calls with nothing to do)."""
    future = loop.create_future()
    future.set_result(None)
    return future


def close_port(port: _Port) -> None:
    """Stop listening on ``port`` and release its sockets (the address is free at once)."""
    for server in port.servers:
        server.close()
    port.servers.clear()
    for sock in port.sockets:
        sock.close()


def bind_address(address: str, *, reuse_port: bool = False) -> list[socket.socket]:
    """Bind listening sockets for a gRPC address.

    ``host:port``, ``[v6]:port``, ``unix:path`` (``unix:///abs/path`` too) or, on Linux,
    ``unix-abstract:name`` (the abstract socket namespace: no file, gone with the socket).  A
    host that resolves to several addresses (``localhost``) gets a socket each, on the same
    port; port 0 picks a free port.  ``reuse_port`` sets SO_REUSEPORT where the OS has it.
    """
    if address.startswith("unix-abstract:"):
        if not sys.platform.startswith("linux"):
            raise InvalidAddressError(
                f"address {address!r}: unix-abstract sockets exist only on Linux"
            )
        return [_listen_unix(address, "\0" + address[len("unix-abstract:"):])]
    if address.startswith("unix:"):
        path = address[len("unix:"):]
        if path.startswith("//"):
            path = path[2:]
        if os.path.exists(path) and not os.path.isfile(path):
            os.unlink(path)
        return [_listen_unix(address, path)]
    host, sep, port_text = address.rpartition(":")
    if not sep or not port_text.isdigit():
        raise InvalidAddressError(
            f"address {address!r} is not host:port, [ipv6]:port or unix:path"
        )
    host = host.strip("[]") or "::"
    port = int(port_text)
    try:
        if host in _WILDCARDS:
            return _bind_wildcard(port, reuse_port)
        if host == "localhost":
            return _bind_localhost(port, reuse_port)
        return _bind_host(host, port, reuse_port)
    except OSError as exc:
        raise _bind_error(address, exc) from exc


# As grpc core does: a wildcard host is one dual-stack socket (IPv6 clients reach 0.0.0.0 too),
# and localhost is both loopbacks whatever /etc/hosts says.
_WILDCARDS = ("::", "0.0.0.0")
_NO_IPV6 = (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL)


def _bind_wildcard(port: int, reuse_port: bool) -> list[socket.socket]:
    """One dual-stack socket on every address; IPv4 only where the host has no IPv6."""
    try:
        return _bind_host("::", port, reuse_port)
    except OSError as exc:
        if exc.errno not in _NO_IPV6:
            raise
        return _bind_host("0.0.0.0", port, reuse_port)


def _bind_localhost(port: int, reuse_port: bool) -> list[socket.socket]:
    """127.0.0.1 and ::1 on the same port (::1 skipped where the host has no IPv6)."""
    sockets = _bind_host("127.0.0.1", port, reuse_port)
    try:
        sockets += _bind_host("::1", port_number(sockets), reuse_port)
    except OSError as exc:
        if exc.errno not in _NO_IPV6:
            for sock in sockets:
                sock.close()
            raise
    return sockets


def _bind_host(host: str, port: int, reuse_port: bool) -> list[socket.socket]:
    """Listening sockets on every address ``host`` resolves to, on one port (0: a free one)."""
    sockets: list[socket.socket] = []
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        for family, kind, proto, _, sockaddr in infos:
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port and hasattr(socket, "SO_REUSEPORT"):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6 and host == "::":
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind((sockaddr[0], port, *sockaddr[2:]))
            sock.listen(1024)
            sock.setblocking(False)
            port = sock.getsockname()[1]
            if host == "::":
                break  # dual-stack socket covers IPv4 too
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _bind_error(address: str, exc: OSError) -> BindError:
    return BindError(exc.errno, f"cannot bind {address!r}: {exc.strerror or exc}")


def _listen_unix(address: str, name: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(name)
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        raise _bind_error(address, exc) from exc
    sock.setblocking(False)
    return sock


def port_number(sockets: Sequence[socket.socket]) -> int:
    """The TCP port of bound sockets (a negative-free stand-in for unix sockets)."""
    name = sockets[0].getsockname()
    if isinstance(name, tuple):
        return int(name[1])
    # Unix sockets have no port; grpcio returns 1 for them.
    return 1
