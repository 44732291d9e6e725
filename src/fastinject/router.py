"""Per-connection security on one port (the gRFC A29 use case, built on L114 injection).

A :class:`ConnectionRouter` listens on one address.  It peeks at the first bytes of every new
connection with ``MSG_PEEK`` (so nothing is consumed), classifies them with
:func:`fastinject.sniff.sniff` (TLS ClientHello with its SNI and ALPN, or the cleartext HTTP/2
preface), and hands the untouched socket to the :class:`~fastinject.injector.ConnectionInjector`
of the first matching :class:`Rule`, or of a user ``choose`` function, or the ``default``.
The injector's own TLS handshake then sees the whole ClientHello.  A connection nothing
matches is closed without a byte sent.

Peeking cannot wait for "more bytes than already seen" with plain readiness: the bytes stay
queued, so the socket stays readable.  After an incomplete peek the router raises the socket's
``SO_RCVLOWAT`` above what is queued, so the kernel wakes it only when more arrives; where the
kernel ignores that (Unix sockets on Linux, some platforms) it falls back to polling with
backoff.  Sniffing is bounded: ``max_pending`` connections at once (the rest wait in the listen
backlog), ``sniff_timeout`` seconds each, :data:`~fastinject.sniff.MAX_SNIFF_BYTES` bytes each.

The routing table can be swapped at run time with :meth:`ConnectionRouter.set_rules`: new
connections follow the new table, and injectors the new table no longer mentions are drained
with a grace period and then destroyed (the router owns the injectors of its table).
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal, Protocol, runtime_checkable

from .errors import ServerStateError
from .server import bind_address, port_number
from .sniff import MAX_SNIFF_BYTES, Sniffed, sniff

__all__ = ["ConnectionInfo", "ConnectionRouter", "InjectionTarget", "Rule"]

logger = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_FIRST_POLL_DELAY = 0.005
_MAX_POLL_DELAY = 0.1
# Accepts per readiness callback, so a flood of connections cannot starve the loop.
_ACCEPT_BATCH = 64
# Out of file descriptors or memory: wait this long before accepting again (as asyncio does).
_ACCEPT_BACKOFF = 1.0
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


@runtime_checkable
class InjectionTarget(Protocol):
    """Where a router sends a connection: a ``ConnectionInjector``, or a worker pool's target.

    A worker pool's target (:meth:`fastinject.workers.Supervisor.add_target`) has its
    connections served by worker processes.
    """

    @property
    def destroyed(self) -> bool:
        """Whether the target refuses new connections for good."""

    def inject_connection(
        self, connection: socket.socket, *, initial_data: bytes = b""
    ) -> Awaitable[None]:
        """Serve ``connection`` (the target owns it from now on)."""

    def drain(self, grace_time_ms: float) -> Awaitable[None]:
        """Gracefully close the connections sent so far."""

    def destroy(self) -> Awaitable[None]:
        """Refuse new connections and close the existing ones gracefully."""


@dataclasses.dataclass(frozen=True, slots=True)
class ConnectionInfo:
    """What the router knows about a new connection when it chooses an injector.

    Addresses are ``None`` for Unix-socket connections (ports are then 0).  IPv4 clients of a
    dual-stack listener are reported as IPv4 addresses, not IPv4-mapped IPv6 ones.  ``kind``,
    ``server_name`` and ``alpn`` come from :func:`fastinject.sniff.sniff`.
    """

    source: IPAddress | None
    source_port: int
    destination: IPAddress | None
    destination_port: int
    kind: Literal["tls", "http2", "unknown"]
    server_name: str | None
    alpn: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Rule:
    """One row of a routing table: connections matching *every* given field go to ``injector``.

    ``source`` and ``destination`` are CIDR ranges (``"127.0.0.0/8"``, ``"::1/128"``; host bits
    are ignored) of the client's address and of the local address it connected to.
    ``server_name`` is the TLS SNI name, exact (``"api.example.com"``) or a wildcard on a dot
    border (``"*.example.com"`` matches one or more labels before ``example.com``); it is
    compared case-insensitively and never matches a connection without SNI.  ``transport``
    ``"tls"`` matches a TLS ClientHello, ``"plaintext"`` the cleartext HTTP/2 preface.  A field
    left ``None`` matches anything; a rule with no fields is a catch-all.
    """

    injector: InjectionTarget
    source: str | None = None
    destination: str | None = None
    server_name: str | None = None
    transport: Literal["tls", "plaintext"] | None = None
    _source: IPNetwork | None = dataclasses.field(init=False, repr=False, compare=False)
    _destination: IPNetwork | None = dataclasses.field(init=False, repr=False, compare=False)
    _server_name: str | None = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.injector, InjectionTarget):
            raise TypeError(
                f"Rule.injector must be a fastinject ConnectionInjector, "
                f"not {type(self.injector).__name__}"
            )
        if self.transport not in (None, "tls", "plaintext"):
            raise ValueError(
                f"Rule.transport must be 'tls', 'plaintext' or None, not {self.transport!r}"
            )
        object.__setattr__(self, "_source", _parse_cidr("source", self.source))
        object.__setattr__(self, "_destination", _parse_cidr("destination", self.destination))
        object.__setattr__(self, "_server_name", _parse_server_name(self.server_name))

    def matches(self, info: ConnectionInfo) -> bool:
        """Whether a connection described by ``info`` satisfies every field of this rule."""
        if self.transport == "tls" and info.kind != "tls":
            return False
        if self.transport == "plaintext" and info.kind != "http2":
            return False
        if self._source is not None and not _in_network(info.source, self._source):
            return False
        if self._destination is not None and not _in_network(info.destination, self._destination):
            return False
        return self._server_name is None or _name_matches(info.server_name, self._server_name)


def _parse_cidr(field: str, value: str | None) -> IPNetwork | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"Rule.{field} must be a CIDR string or None, not {type(value).__name__}")
    try:
        return ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(
            f"Rule.{field} must be a CIDR range such as '127.0.0.0/8' or '::1/128', "
            f"not {value!r}"
        ) from None


def _parse_server_name(value: str | None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"Rule.server_name must be a str or None, not {type(value).__name__}")
    name = value.lower()
    body = name[2:] if name.startswith("*.") else name
    if not body or "*" in body or any(c <= " " or c >= "\x7f" for c in body):
        raise ValueError(
            f"Rule.server_name must be a host name such as 'api.example.com' or a wildcard "
            f"such as '*.example.com', not {value!r}"
        )
    return name


def _in_network(address: IPAddress | None, network: IPNetwork) -> bool:
    return address is not None and address in network


def _name_matches(name: str | None, pattern: str) -> bool:
    if name is None:
        return False
    if pattern.startswith("*."):
        suffix = pattern[1:]  # ".example.com"
        return len(name) > len(suffix) and name.endswith(suffix)
    return name == pattern


Chooser = Callable[[ConnectionInfo], InjectionTarget | None]


class ConnectionRouter:
    """Listens on one address and routes each connection to an injector by what it sends first.

    The injector is the one of the first :class:`Rule` in ``rules`` that matches; if none
    does, ``choose(info)`` decides (when given); if that returns ``None``, ``default`` serves;
    if there is no default, the connection is closed without a byte sent.  A ``choose`` that
    raises or returns something else than an injector closes the connection (and is logged).

    ``sniff_timeout`` bounds how long a new connection may take to send enough bytes to be
    classified; ``max_pending`` bounds how many are classified at once.  All methods must be
    called on the event loop the router serves on.
    """

    def __init__(
        self,
        rules: Sequence[Rule] | None = None,
        *,
        choose: Chooser | None = None,
        default: InjectionTarget | None = None,
        sniff_timeout: float = 10.0,
        max_pending: int = 1024,
    ) -> None:
        if choose is not None and not callable(choose):
            raise TypeError(f"choose must be callable, not {type(choose).__name__}")
        if isinstance(sniff_timeout, bool) or not isinstance(sniff_timeout, int | float):
            raise TypeError(f"sniff_timeout must be a number, not {type(sniff_timeout).__name__}")
        if not sniff_timeout > 0:
            raise ValueError(f"sniff_timeout must be > 0 seconds, not {sniff_timeout}")
        if isinstance(max_pending, bool) or not isinstance(max_pending, int):
            raise TypeError(f"max_pending must be an int, not {type(max_pending).__name__}")
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, not {max_pending}")
        self._rules, self._default = _check_table(rules or (), default)
        self._choose = choose
        self._sniff_timeout = float(sniff_timeout)
        self._max_pending = max_pending
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listeners: list[socket.socket] = []
        self._accepting = False
        self._accept_backoff: asyncio.TimerHandle | None = None
        self._pending: set[_Sniffer] = set()
        self._attaching: set[asyncio.Future[None]] = set()
        self._retiring: dict[InjectionTarget, asyncio.Task[None]] = {}
        self._port: int | None = None
        self._started = False
        self._closed = False

    # -- table -----------------------------------------------------------------------------

    @property
    def rules(self) -> tuple[Rule, ...]:
        """The current routing table, first rule first."""
        return self._rules

    @property
    def default(self) -> InjectionTarget | None:
        """The injector of connections no rule (and no ``choose``) claimed, if any."""
        return self._default

    def set_rules(
        self,
        rules: Sequence[Rule],
        default: InjectionTarget | None = None,
        *,
        retire_grace: float = 30.0,
    ) -> None:
        """Replace the routing table; connections accepted from now on follow the new one.

        Injectors of the old table (rules and default) that the new table does not mention
        are retired: their connections get a graceful GOAWAY now, calls still running after
        ``retire_grace`` seconds are cancelled, and once those connections have closed the
        injector is destroyed.  An injector that comes back in a later table before that is
        kept (its connections still drain).  Connections being sniffed when the table changes
        are routed by the new table.  Raises :class:`~fastinject.errors.ServerStateError`
        once the router is closed.
        """
        if self._closed:
            raise ServerStateError("this connection router has been closed")
        if isinstance(retire_grace, bool) or not isinstance(retire_grace, int | float):
            raise TypeError(f"retire_grace must be a number, not {type(retire_grace).__name__}")
        if retire_grace < 0:
            raise ValueError(f"retire_grace must be >= 0 seconds, not {retire_grace}")
        new_rules, new_default = _check_table(rules, default)
        old = self._referenced()
        self._rules, self._default = new_rules, new_default
        current = self._referenced()
        for injector in current:
            task = self._retiring.pop(injector, None)
            if task is not None:
                task.cancel()
        for injector in old - current:
            if injector not in self._retiring and not injector.destroyed:
                # Starts now, even if kept later; L114's drain takes milliseconds.
                drained = injector.drain(retire_grace * 1000)
                self._retiring[injector] = asyncio.get_running_loop().create_task(
                    self._retire(injector, drained)
                )

    def _referenced(self) -> set[InjectionTarget]:
        injectors = {rule.injector for rule in self._rules}
        if self._default is not None:
            injectors.add(self._default)
        return injectors

    async def _retire(self, injector: InjectionTarget, drained: Awaitable[None]) -> None:
        # Shielded: cancelling this task (the injector came back) must not cut the drain short.
        await asyncio.shield(drained)
        self._retiring.pop(injector, None)
        injector.destroy()

    def choose_injector(self, info: ConnectionInfo) -> InjectionTarget | None:
        """The injector a connection described by ``info`` goes to, or ``None`` (closed)."""
        for rule in self._rules:
            if rule.matches(info):
                return rule.injector
        if self._choose is not None:
            try:
                chosen: object = self._choose(info)
            except Exception:
                logger.exception("the router's choose function failed; closing the connection")
                return None
            if chosen is not None:
                if isinstance(chosen, InjectionTarget):
                    return chosen
                logger.error(
                    "the router's choose function returned %s, not a ConnectionInjector or "
                    "None; closing the connection", type(chosen).__name__,
                )
                return None
        return self._default

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def port(self) -> int | None:
        """The port :meth:`start` bound (``None`` before)."""
        return self._port

    @property
    def pending(self) -> int:
        """How many accepted connections are being sniffed right now."""
        return len(self._pending)

    async def start(self, address: str) -> int:
        """Bind ``address`` (``host:port``, ``[v6]:port``, ``unix:path``), listen, return the port.

        Port 0 picks a free port.  A router starts once; after :meth:`close` it cannot restart.
        """
        if self._closed:
            raise ServerStateError("this connection router has been closed")
        if self._started:
            raise ServerStateError("this connection router has already been started")
        self._loop = asyncio.get_running_loop()
        self._listeners = bind_address(address)
        self._started = True
        self._port = port_number(self._listeners)
        self._resume_accepting()
        return self._port

    async def close(self) -> None:
        """Stop listening and drop the connections still being sniffed.  Idempotent.

        Connections already handed to injectors are not touched (``Server.stop`` or the
        injectors' ``drain``/``destroy`` end them); injectors being retired are destroyed now
        (their drain grace still applies to their running calls).
        """
        if self._closed:
            return
        self._closed = True
        self._pause_accepting()
        if self._accept_backoff is not None:
            self._accept_backoff.cancel()
        for listener in self._listeners:
            listener.close()
        for sniffer in list(self._pending):
            sniffer.abort()
        retiring = list(self._retiring.items())
        self._retiring.clear()
        for injector, task in retiring:
            task.cancel()
            injector.destroy()
        await asyncio.gather(*(task for _, task in retiring), return_exceptions=True)
        await asyncio.gather(*self._attaching, return_exceptions=True)

    # -- accepting: readiness callbacks on the listening sockets, no tasks ----------------------

    def _resume_accepting(self) -> None:
        if self._accepting or self._closed or self._accept_backoff is not None:
            return
        assert self._loop is not None
        self._accepting = True
        for listener in self._listeners:
            self._loop.add_reader(listener.fileno(), self._on_acceptable, listener)

    def _pause_accepting(self) -> None:
        if not self._accepting:
            return
        assert self._loop is not None
        self._accepting = False
        for listener in self._listeners:
            self._loop.remove_reader(listener.fileno())

    def _on_acceptable(self, listener: socket.socket) -> None:
        assert self._loop is not None
        for _ in range(_ACCEPT_BATCH):
            if len(self._pending) >= self._max_pending:
                # Full: further connections wait in the listen backlog until a slot frees.
                self._pause_accepting()
                return
            try:
                conn, address = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                logger.error("router accept failed on %s: %s", listener.getsockname(), exc)
                if exc.errno in _RESOURCE_ERRNOS:
                    self._pause_accepting()
                    self._accept_backoff = self._loop.call_later(
                        _ACCEPT_BACKOFF, self._end_accept_backoff
                    )
                return
            self._pending.add(_Sniffer(self, self._loop, conn, address))

    def _end_accept_backoff(self) -> None:
        self._accept_backoff = None
        self._resume_accepting()

    # -- called by _Sniffer ------------------------------------------------------------------

    def _sniffed(self, sniffer: _Sniffer, sock: socket.socket, verdict: Sniffed | None) -> None:
        """A connection finished sniffing: route it (``verdict``) or close it (``None``)."""
        self._pending.discard(sniffer)
        self._resume_accepting()
        if verdict is None:
            sock.close()
            return
        info = _connection_info(sock, sniffer.address, verdict)
        injector = self.choose_injector(info)
        if injector is None:
            logger.debug("no route for %s; closing it", info)
            sock.close()
            return
        try:
            attached = injector.inject_connection(sock)
        except ServerStateError as exc:  # the injector has closed the socket
            logger.warning("router could not serve %s: %s", info, exc)
            return
        except Exception:
            logger.exception("router could not hand %s to its injector", info)
            sock.close()
            return
        logger.debug("routed %s", info)
        self._keep(attached)

    def _keep(self, attached: Awaitable[None]) -> None:
        """Hold a reference to the attach task until it is done (the loop keeps weak ones)."""
        future = asyncio.ensure_future(attached)
        self._attaching.add(future)
        future.add_done_callback(self._attaching.discard)


def _check_table(
    rules: Sequence[Rule], default: InjectionTarget | None
) -> tuple[tuple[Rule, ...], InjectionTarget | None]:
    """Validate a routing table; every injector in it must still be alive."""
    if isinstance(rules, Rule) or not isinstance(rules, Sequence):
        raise TypeError(f"rules must be a sequence of Rule, not {type(rules).__name__}")
    table = tuple(rules)
    for rule in table:
        if not isinstance(rule, Rule):
            raise TypeError(f"rules must hold fastinject.router.Rule, not {type(rule).__name__}")
    if default is not None and not isinstance(default, InjectionTarget):
        raise TypeError(
            f"default must be a ConnectionInjector or None, not {type(default).__name__}"
        )
    for injector in (*(rule.injector for rule in table), default):
        if injector is not None and injector.destroyed:
            raise ValueError("a routing table cannot use a destroyed ConnectionInjector")
    return table, default


def _connection_info(sock: socket.socket, peer: Any, verdict: Sniffed) -> ConnectionInfo:
    source, source_port = _ip_and_port(peer)
    try:
        local = sock.getsockname()
    except OSError:
        local = None
    destination, destination_port = _ip_and_port(local)
    return ConnectionInfo(
        source=source,
        source_port=source_port,
        destination=destination,
        destination_port=destination_port,
        kind=verdict.kind,
        server_name=verdict.server_name,
        alpn=verdict.alpn,
    )


def _ip_and_port(address: Any) -> tuple[IPAddress | None, int]:
    """An IP address and port from a socket address (``(None, 0)`` for Unix sockets)."""
    if not isinstance(address, tuple) or len(address) < 2:
        return None, 0
    host, port = address[0], address[1]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None, 0
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip, int(port)


class _Sniffer:
    """Peeks at one accepted connection until :func:`sniff` has a verdict (or gives up)."""

    def __init__(
        self,
        router: ConnectionRouter,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        address: Any,
    ) -> None:
        self.address = address
        self._router = router
        self._loop = loop
        self._sock = sock
        self._fd = sock.fileno()
        self._seen = 0
        self._lowat = 1
        self._poll_delay: float | None = None  # set once readiness cannot wait for new bytes
        self._poll: asyncio.TimerHandle | None = None
        self._done = False
        sock.setblocking(False)
        self._timeout = loop.call_later(router._sniff_timeout, self._give_up)
        loop.add_reader(self._fd, self._on_readable)

    def _on_readable(self) -> None:
        try:
            data = self._sock.recv(MAX_SNIFF_BYTES, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            logger.debug("connection failed while being sniffed: %s", exc)
            self._finish(None)
            return
        if not data:
            self._finish(None)  # the peer closed before saying anything useful
            return
        verdict = sniff(data)
        if verdict is not None:
            self._finish(verdict)
            return
        grew = len(data) > self._seen
        self._seen = len(data)
        if grew and self._poll_delay is None and self._raise_lowat(len(data) + 1):
            return  # the kernel wakes us when more than len(data) bytes are queued
        # Readable without new bytes: the low-water mark is not honoured here (or the peer
        # half-closed).  Stop watching readiness and look again after a growing delay.
        if grew or self._poll_delay is None:
            self._poll_delay = _FIRST_POLL_DELAY
        else:
            self._poll_delay = min(self._poll_delay * 2, _MAX_POLL_DELAY)
        self._loop.remove_reader(self._fd)
        self._poll = self._loop.call_later(self._poll_delay, self._poll_again)

    def _poll_again(self) -> None:
        self._poll = None
        self._loop.add_reader(self._fd, self._on_readable)

    def _raise_lowat(self, size: int) -> bool:
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, size)
        except OSError:
            return False
        self._lowat = size
        return True

    def _give_up(self) -> None:
        logger.debug("connection sent no recognisable start within the sniff timeout")
        self._finish(None)

    def abort(self) -> None:
        """Close the connection now (the router is closing)."""
        self._finish(None)

    def _finish(self, verdict: Sniffed | None) -> None:
        if self._done:
            return
        self._done = True
        self._timeout.cancel()
        if self._poll is not None:
            self._poll.cancel()
        else:
            self._loop.remove_reader(self._fd)
        if verdict is not None and self._lowat != 1:
            # Whoever reads this socket next must be woken by every byte again.
            try:
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)
            except OSError:
                verdict = None
        self._router._sniffed(self, self._sock, verdict)
