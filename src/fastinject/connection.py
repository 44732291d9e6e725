"""The asyncio side of one connection: feed bytes in, flush once per loop turn, run RPCs.

:class:`Connection` is an :class:`asyncio.Protocol`.  Each ``data_received`` feeds the sans-IO
:class:`~fastinject.protocol.ServerProtocol`, dispatches its events to the calls, and writes
what the protocol produced in one ``transport.write``.  Handlers' sends between two turns are
gathered the same way (:meth:`Connection.schedule_flush`).  The connection also owns its
timers (keepalive, idle, maximum age) and its graceful close: a GOAWAY announcing
shutdown and a PING, then, once the PING returns, a GOAWAY naming the last stream served.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import socket
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import quote

from . import protocol as p
from .call import Call
from .credentials import auth_context
from .deadlines import Deadlines
from .decompressor import ConnectionDecompressor
from .errors import RpcError
from .handlers import HandlerRegistry, ServerInterceptor
from .linger import Linger
from .options import ServerSettings
from .peerlog import PeerLog
from .pending import Arrival
from .rpc import run_rpc
from .turns import FrameTurns

if TYPE_CHECKING:
    from .concurrency import ConcurrentRpcLimit
    from .memory import MessageMemory
    from .server import ConnectionGroup

logger = logging.getLogger(__name__)

_DRAIN_PING = b"fi-drain"
_KEEPALIVE_PING = b"fi-kping"
_ENHANCE_YOUR_CALM = 0xB
_NO_ERROR = 0x0
# Queued DATA beyond this is written at once rather than at the end of the loop turn.
_FLUSH_AT = 4 * 1024 * 1024
# How long phase one of a graceful close waits for its PING before phase two goes anyway.
_DRAIN_PING_TIMEOUT = 5.0
# grpc core's interval when a client pings with no calls and permit_without_calls is off.
_IDLE_PING_INTERVAL = 7200.0


def format_peer(address: Any, family: int | None) -> str:
    """``context.peer()`` for a socket address, in grpcio's form."""
    if family == socket.AF_UNIX:
        if isinstance(address, bytes):  # Linux reports abstract names as bytes
            address = address.decode("utf-8", "replace")
        if address and address[0] == "\0":
            return f"unix-abstract:{address[1:]}"
        return f"unix:{address or ''}"
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        if host.startswith("::ffff:") and "." in host:
            host = host[len("::ffff:"):]  # an IPv4 client of a dual-stack socket, as grpc reports
        if ":" not in host:
            return f"ipv4:{host}:{port}"
        # grpc core writes the peer as a URI, so the brackets (and a zone's %) are escaped
        return f"ipv6:{quote(f'[{host}]', safe=':')}:{port}"
    return "unknown"


def transport_peer(transport: asyncio.BaseTransport) -> str:
    """``context.peer()`` for a connection's transport."""
    sock = transport.get_extra_info("socket")
    family = getattr(sock, "family", None)
    address = transport.get_extra_info("peername")
    if family == socket.AF_UNIX and not address:
        address = transport.get_extra_info("sockname")
    return format_peer(address, family)


class Connection(asyncio.Protocol):
    """One HTTP/2 connection served by the server (accepted on a port or injected)."""

    def __init__(
        self,
        *,
        settings: ServerSettings,
        registry: HandlerRegistry,
        interceptors: Sequence[ServerInterceptor],
        executor: Callable[[], Executor],
        group: ConnectionGroup,
        peer: str | None = None,
        initial_data: bytes = b"",
        rpc_limit: ConcurrentRpcLimit | None = None,
        memory: MessageMemory | None = None,
        turns: FrameTurns | None = None,
        arrival: Arrival,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.rpc_limit = rpc_limit  # the server's maximum_concurrent_rpcs, shared
        # The interceptor chain is built once per connection, not per call.
        self.intercepted_lookup = (
            registry.intercepted_lookup(interceptors) if interceptors else None
        )
        self._executor_factory = executor
        self.group = group
        self.loop = asyncio.get_running_loop()
        # ``memory``: the server's budget of bytes held for partly received messages, shared.
        # ``turns``: the server's frame budget per loop turn, shared (see turns.py).
        self._turns = (
            FrameTurns.for_settings(settings, self.loop.call_soon) if turns is None else turns
        )
        self.protocol = p.ServerProtocol(settings, self.loop.time, memory, self._turns)
        self.protocol.on_shed = self._on_shed
        self._outbound = self.protocol.outbound
        self.protocol.credit.on_consumed = self._credit_owed
        self._shed_scheduled = False
        self._transport: asyncio.Transport | None = None
        self._peer = peer
        self._auth_context: dict[str, list[bytes]] | None = None
        self._calls: dict[int, Call] = {}
        self._window_waiters: dict[int, asyncio.Future[None]] = {}
        self._writable: asyncio.Future[None] | None = None
        self._flush_scheduled = False
        # Why reading is paused: "turn" (frames left for the next loop turn), "writing"
        # (the peer does not read what we send).  Reading resumes when no reason is left.
        self._read_pauses: set[str] = set()
        self._turn_scheduled = False
        self._turn_frames = 0  # frames handled since reading last yielded a loop turn
        self._turn = 0  # the FrameTurns.turn those frames were handled in
        self._closing = False  # a graceful close has begun
        self._final_goaway_sent = False
        self._linger: Linger | None = None  # the transport is closing (see linger.py)
        self._lost = False  # connection_lost() was called
        self._closed: asyncio.Future[None] | None = None  # made when someone waits for it
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._last_ping_received: float | None = None
        self._ping_strikes = 0
        self._initial_data = initial_data
        # Until the client's first SETTINGS: the connection's arrival (deadline, the count of
        # connections not serving yet).
        self._arrival: Arrival | None = arrival
        # Made on first use: most connections never need them.
        self._peer_log: PeerLog | None = None
        self._decompressor: ConnectionDecompressor | None = None
        self._deadlines: Deadlines | None = None

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Start serving the new transport."""
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        self.group.add(self)
        assert self._arrival is not None
        self._arrival.hold(self)  # counted among the connections not serving yet
        if self._transport is None or self._transport.is_closing():
            return  # dropped at once (too many of them, or the server is stopping)
        # Our SETTINGS leave with the first answer to the client's preface (its SETTINGS ACK),
        # not in a write of their own: one send (and TLS record) less per connection.  A
        # client sends its preface without waiting for ours (RFC 9113 3.4).
        if self._initial_data:
            data, self._initial_data = self._initial_data, b""
            self.data_received(data)
        s = self.settings
        if self._arrival is not None:
            # The deadline counts from arrival: a TLS handshake used part of it already.
            delay = self._arrival.deadline - self.loop.time()
            self._set_timer("handshake", delay, self._on_handshake_timeout)
        if 0 < s.keepalive_time < math.inf:
            self._set_timer("keepalive", s.keepalive_time, self._send_keepalive)
        if s.max_connection_idle is not None:
            self._set_timer("idle", s.max_connection_idle, self._on_idle)
        if s.max_connection_age is not None:
            age = s.max_connection_age * random.uniform(0.9, 1.1)  # jitter, as grpc does
            self._set_timer("age", age, self._on_max_age)

    def data_received(self, data: bytes) -> None:
        """Feed received bytes through the protocol and act on what they produced.

        The protocol handles at most the frames the turn's budget grants per call (see
        turns.py): the rest is handled on later loop turns, with reading paused meanwhile, so
        that the other connections' work runs in between.  Reading also yields a turn once the
        connection's share was handled over several calls: uvloop (libuv) reads a socket up to
        32 times per loop turn, each read a call here.
        """
        if self._linger is not None:
            self._linger.discard(data)
            return
        protocol = self.protocol
        self._handle(protocol.receive(data))
        turns = self._turns
        if self._turn != turns.turn:  # the frames counted were handled in an earlier turn
            self._turn = turns.turn
            self._turn_frames = 0
        frames = protocol.frames_handled
        self._turn_frames += frames
        busy = protocol.has_backlog or self._turn_frames >= turns.share
        turns.charge(frames, busy)
        if busy:
            self._schedule_turn()
        if self._arrival is not None and self.protocol.settings_received:
            self._arrival.end()  # the client's preface and SETTINGS are here: it serves
            self._arrival = None
            self._cancel_timer("handshake")

    def _schedule_turn(self) -> None:
        self._pause_reading("turn")
        if not self._turn_scheduled:
            self._turn_scheduled = True
            self.loop.call_soon(self._next_turn)

    def _next_turn(self) -> None:
        self._turn_scheduled = False
        if self._transport is None or self._writable is not None or self._linger is not None:
            return  # gone, resume_writing() takes over, or closing
        protocol = self.protocol
        self._handle(protocol.receive(b""))
        self._turn_frames = protocol.frames_handled
        self._turn = self._turns.turn
        self._turns.charge(self._turn_frames, protocol.has_backlog)
        if protocol.has_backlog:
            self._schedule_turn()
        else:
            self._resume_reading("turn")

    def _on_shed(self) -> None:
        """Another connection's bytes made the server shed calls of this one: report them."""
        if not self._shed_scheduled:
            self._shed_scheduled = True
            self.loop.call_soon(self._report_shed)

    def _report_shed(self) -> None:
        self._shed_scheduled = False
        shed = self.protocol.take_shed()
        if shed and self._transport is not None:
            self._handle(shed)

    def _pause_reading(self, reason: str) -> None:
        if not self._read_pauses and self._transport is not None:
            self._transport.pause_reading()
        self._read_pauses.add(reason)

    def _resume_reading(self, reason: str) -> None:
        if reason not in self._read_pauses:
            return
        self._read_pauses.discard(reason)
        if not self._read_pauses and self._transport is not None:
            self._transport.resume_reading()

    def _handle(self, events: list[p.Event]) -> None:
        for event in events:
            if isinstance(event, p.MessagesReceived):
                call = self._calls.get(event.stream_id)
                if call is not None:
                    call.deliver(event.messages, event.prepaid)
                else:
                    size = sum(len(payload) + 5 for payload, _ in event.messages)
                    self.protocol.consumed(event.stream_id, size - event.prepaid)
            elif isinstance(event, p.CallStarted):
                self._start_call(event.stream_id, event.head)
            elif isinstance(event, p.RequestEnded):
                call = self._calls.get(event.stream_id)
                if call is not None:
                    call.end_request()
            elif isinstance(event, p.WindowOpened):
                self._wake_writers(event.stream_id)
            else:
                self._on_rare_event(event)
        self._flush()
        if self._final_goaway_sent and not self._calls:
            self._close_when_answered()  # what held the last answers back may have opened

    def _on_rare_event(self, event: p.Event) -> None:
        if isinstance(event, p.CallReset):
            call = self._calls.get(event.stream_id)
            if call is not None:
                call.cancel_by_client()
            self._wake_writers(event.stream_id)
        elif isinstance(event, p.CallFailed):
            call = self._calls.get(event.stream_id)
            if call is not None:
                call.fail_request(RpcError(event.details, event.status))
        elif isinstance(event, p.PingReceived):
            self._police_ping()
        elif isinstance(event, p.PingAcked):
            if event.opaque == _DRAIN_PING:
                self._send_final_goaway()
            elif event.opaque == _KEEPALIVE_PING:
                self._cancel_timer("keepalive_timeout")
                self._set_timer("keepalive", self.settings.keepalive_time, self._send_keepalive)
        elif isinstance(event, p.ConnectionClosedByPeer):
            if logger.isEnabledFor(logging.DEBUG):  # naming the peer costs a few system calls
                logger.debug("peer %s closed the connection: %s", self.peer, event.reason)
            if event.error_code == _NO_ERROR:
                self._peer_leaving()
            else:
                self._end()

    def pause_writing(self) -> None:
        """The transport's buffer is full: senders wait, and nothing is read, until it drains.

        A peer that sends but does not read would otherwise make us queue answers without end.
        """
        if self._linger is not None:
            return  # closing: what it sends is discarded, and nothing waits to write
        if self._writable is None:
            self._writable = self.loop.create_future()
        self._pause_reading("writing")

    def resume_writing(self) -> None:
        """The transport's buffer drained: waiting senders go on, reading resumes."""
        writable, self._writable = self._writable, None
        if writable is not None and not writable.done():
            writable.set_result(None)
        if self._linger is not None:
            self._linger.output_left()
            return
        self._resume_reading("writing")
        if "turn" in self._read_pauses:  # a backlog, or a yield _next_turn() left to us
            self._schedule_turn()

    def connection_lost(self, exc: Exception | None) -> None:
        """The transport is gone: cancel the calls and forget the connection.

        What refers back to the connection (callbacks of its protocol and decompressor) lets go
        of it, so that reference counting alone frees it, without the garbage collector.
        """
        self._transport = None
        self._lost = True
        if self._arrival is not None:
            self._arrival.end()
        linger, self._linger = self._linger, None
        if linger is not None:
            linger.cancel()
        for name in list(self._timers):
            self._cancel_timer(name)
        for call in list(self._calls.values()):
            call.cancel_by_client()
        if self._deadlines is not None:
            self._deadlines.close()
        self.resume_writing()
        self._wake_writers(0)
        self.group.discard(self)
        self.protocol.release_memory()
        self.protocol.on_shed = None
        self.protocol.credit.close()
        self._decompressor = None
        if self._peer_log is not None:
            self._peer_log.close()
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)

    # -- calls -------------------------------------------------------------------------------

    def _start_call(self, stream_id: int, head: p.RequestHead) -> None:
        if self._linger is not None:
            # The connection ended in the read that opened it (its transport is closing): the
            # call could never answer, and would hold what it made until the close completed.
            return
        call = Call(self, stream_id, head)
        self._calls[stream_id] = call
        if len(self._calls) == 1:
            self._cancel_timer("idle")
        call.task = self.loop.create_task(run_rpc(self, call))

    def call_done(self, call: Call) -> None:
        """A call finished: forget it; close the connection if it was the last one draining."""
        self._calls.pop(call.stream_id, None)
        self._window_waiters.pop(call.stream_id, None)
        if not self._calls:
            if self._final_goaway_sent:
                self._close_when_answered()
            elif self.settings.max_connection_idle is not None and not self._closing:
                self._set_timer("idle", self.settings.max_connection_idle, self._on_idle)

    def reset_call(self, call: Call) -> None:
        """Abandon a call with RST_STREAM(CANCEL): the client sees CANCELLED."""
        self.protocol.reset(call.stream_id)
        self.schedule_flush()

    def _credit_owed(self) -> None:
        """Handlers took messages worth a flush: their credit leaves at the next one.

        Called at most once per flush, by the protocol's CreditBook (``flush_after``), not
        once per message.
        """
        self.reset_ping_policy()
        self.schedule_flush()

    @property
    def peer_log(self) -> PeerLog:
        """Where lines a peer can cause at WARNING or above are logged (rate-limited)."""
        if self._peer_log is None:
            self._peer_log = PeerLog(self.peer, self.settings.peer_log_interval)
        return self._peer_log

    @property
    def decompressor(self) -> ConnectionDecompressor:
        """Decompresses request messages: sliced, one at a time, within a budget."""
        if self._decompressor is None:
            self._decompressor = ConnectionDecompressor(
                self.settings, self.loop.time, self._decompressed_too_much
            )
        return self._decompressor

    def _decompressed_too_much(self) -> None:
        self._calm_down(b"too_much_decompression")

    @property
    def deadlines(self) -> Deadlines:
        """Interrupts the calls whose deadline (``grpc-timeout``) passes: one timer for all."""
        if self._deadlines is None:
            self._deadlines = Deadlines(self.loop)
        return self._deadlines

    @property
    def executor(self) -> Executor:
        """The thread pool for sync handlers."""
        return self._executor_factory()

    @property
    def active_calls(self) -> int:
        """How many calls are running."""
        return len(self._calls)

    # -- peer --------------------------------------------------------------------------------

    @property
    def peer(self) -> str:
        """``context.peer()`` for calls on this connection."""
        if self._peer is None:
            self._peer = transport_peer(self._transport) if self._transport else "unknown"
        return self._peer

    @property
    def auth_context(self) -> dict[str, list[bytes]]:
        """``context.auth_context()`` for calls on this connection."""
        if self._auth_context is None:
            ssl_object = self._transport.get_extra_info("ssl_object") if self._transport else None
            self._auth_context = auth_context(ssl_object)
        return self._auth_context

    # -- sending -----------------------------------------------------------------------------

    def schedule_flush(self) -> None:
        """Write what the protocol holds at the end of this loop turn (one write per turn)."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        buffers = self.protocol.buffers_to_send()
        transport = self._transport
        if transport is not None:
            # A transport closes itself at the peer's EOF, a loop turn before connection_lost;
            # writing to it then is lost anyway (and a TypeError on Python 3.12+'s selector
            # transports, which clear their write callback on close).  A lingering one has
            # sent its last bytes and may be half-closed: what calls cancelled by the close
            # still produce (their RST_STREAMs) is dropped (RuntimeError after write_eof).
            if buffers and not transport.is_closing() and self._linger is None:
                transport.writelines(buffers)
            if self.protocol.answers_owed and not transport.get_write_buffer_size():
                self.protocol.output_drained()

    def send_message_now(self, stream_id: int, payload: bytes, compressed: bool) -> bool:
        """Queue one response message if the windows and the transport take it now.

        Returns False, queueing nothing, when the caller must wait: then it sends the message
        with :meth:`send_data`.  Not a coroutine: the common case costs no await.
        """
        outbound = self._outbound
        if (
            self._writable is not None
            or self._transport is None
            or not outbound.write_message(stream_id, payload, compressed)
        ):
            return False
        self.reset_ping_policy()
        if outbound.queued_bytes > _FLUSH_AT:
            self._flush()  # bound what waits in memory; the transport pushes back
        elif not self._flush_scheduled:
            self.schedule_flush()
        return True

    async def send_data(self, stream_id: int, data: bytes) -> None:
        """Send DATA for a call, waiting for flow-control window and transport room."""
        self.reset_ping_policy()
        view: memoryview | None = None
        offset = 0
        total = len(data)
        while True:
            if self._writable is not None:
                await self._writable
            window = self.protocol.send_window(stream_id)
            if window < 0 or self._transport is None:
                raise p.StreamGone(stream_id)
            remaining = total - offset
            if window >= remaining:
                self.protocol.send_data(stream_id, data if view is None else view[offset:])
                if self.protocol.queued_bytes > _FLUSH_AT:
                    self._flush()  # bound what waits in memory; the transport pushes back
                else:
                    self.schedule_flush()
                return
            if window > 0:
                view = view or memoryview(data)
                self.protocol.send_data(stream_id, view[offset : offset + window])
                offset += window
                self.schedule_flush()
            waiter = self._window_waiters.get(stream_id)
            if waiter is None or waiter.done():
                waiter = self._window_waiters[stream_id] = self.loop.create_future()
            await waiter

    def _wake_writers(self, stream_id: int) -> None:
        if stream_id == 0:
            waiters = list(self._window_waiters.values())
            self._window_waiters.clear()
        else:
            waiter = self._window_waiters.pop(stream_id, None)
            waiters = [waiter] if waiter is not None else []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # -- graceful close, drain and forced close -----------------------------------------------

    def close_gracefully(self) -> None:
        """Start a graceful close: no new calls after the GOAWAYs, running calls continue."""
        if self._closing or self._transport is None:
            return
        self._closing = True
        self._cancel_timer("idle")
        self.protocol.goaway(p.MAX_STREAM_ID, _NO_ERROR)
        if self.protocol.ping(_DRAIN_PING):
            self._set_timer("drain_ping", _DRAIN_PING_TIMEOUT, self._send_final_goaway)
            self._flush()
        else:
            self._send_final_goaway()

    def _peer_leaving(self) -> None:
        """The client sent GOAWAY(NO_ERROR): its calls finish, then the connection closes.

        Our final GOAWAY goes at once, without the PING round trip of :meth:`close_gracefully`:
        that round trip catches streams the client opened before reading our first GOAWAY,
        but a client that is leaving opens none, and every stream it opened before its GOAWAY
        was read before it (TCP keeps the order).  A stream opened after it anyway is refused.
        """
        if self._transport is None:
            return
        self._closing = True
        self._cancel_timer("idle")
        self._send_final_goaway()

    def _send_final_goaway(self) -> None:
        if self._final_goaway_sent or self._transport is None:
            return
        self._final_goaway_sent = True
        self._cancel_timer("drain_ping")
        self.protocol.goaway(self.protocol.highest_stream_id, _NO_ERROR)
        self._flush()
        if not self._calls:
            self._close_when_answered()

    def _close_when_answered(self) -> None:
        """Close, unless ended calls' answers still wait for the client's window.

        A client may shrink its window while a call's reply is queued (grpc core's BDP probes
        do); the reply and trailers leave when it grows again, within the grace that
        :meth:`cancel_calls` ends.
        """
        if not self.protocol.trailers_waiting:
            self._close_transport()

    def cancel_calls(self) -> None:
        """Grace ran out: cancel every running call (clients see UNAVAILABLE) and close."""
        for call in list(self._calls.values()):
            call.cancel_by_server()
        if not self._final_goaway_sent:
            self._send_final_goaway()
        self._close_transport()

    async def wait_closed(self) -> None:
        """Wait until the connection is gone."""
        if self._lost:
            return
        if self._closed is None:
            self._closed = self.loop.create_future()
        await asyncio.shield(self._closed)

    def _close_transport(self) -> None:
        """Send what is left, half-close, read and discard a while, close (``linger.py``)."""
        self._flush()
        transport = self._transport
        if transport is not None and self._linger is None and not transport.is_closing():
            self._read_pauses.clear()  # the linger reads (and drops) what the peer still sends
            self._linger = Linger(transport, self.loop)
            self._linger.start()

    def abort(self) -> None:
        """Drop the connection at once (also: pending too long, or the server stopping)."""
        self._flush()
        if self._transport is not None:
            self._transport.abort()

    # -- timers: keepalive, idle, age, ping policy ---------------------------------------------

    def _set_timer(self, name: str, delay: float, callback: Callable[[], Any]) -> None:
        self._cancel_timer(name)
        self._timers[name] = self.loop.call_later(delay, self._fire, name, callback)

    def _fire(self, name: str, callback: Callable[[], Any]) -> None:
        self._timers.pop(name, None)
        callback()

    def _cancel_timer(self, name: str) -> None:
        handle = self._timers.pop(name, None)
        if handle is not None:
            handle.cancel()

    def _send_keepalive(self) -> None:
        if self._transport is None or not self.protocol.ping(_KEEPALIVE_PING):
            return
        self._flush()
        self._set_timer("keepalive_timeout", self.settings.keepalive_timeout, self._keepalive_lost)

    def _keepalive_lost(self) -> None:
        logger.debug("peer %s did not answer a keepalive ping: closing", self.peer)
        self.abort()

    def _on_handshake_timeout(self) -> None:
        # grpc core's server handshake deadline, too, runs until the client's first SETTINGS.
        if not self.protocol.settings_received:
            logger.debug(
                "closing connection from %s: no HTTP/2 preface and SETTINGS within "
                "handshake_timeout (%s s) of its arrival",
                self.peer, self.settings.handshake_timeout,
            )
            self.abort()

    def _on_idle(self) -> None:
        if not self._calls:
            self.close_gracefully()

    def _on_max_age(self) -> None:
        self.close_gracefully()
        grace = self.settings.max_connection_age_grace
        if grace is not None:
            self._set_timer("age_grace", grace, self.cancel_calls)

    def reset_ping_policy(self) -> None:
        """We send HEADERS, DATA or WINDOW_UPDATE: forget the client's ping strikes.

        grpc core clears the strikes and restarts the ping clock whenever the server sends one
        of these, so a client's BDP pings during a long call are never strikes; only pings
        while the server sends nothing are policed.
        """
        self._ping_strikes = 0
        self._last_ping_received = None

    def _police_ping(self) -> None:
        """Apply grpc core's ping-abuse policy: too many strikes -> GOAWAY too_many_pings."""
        s = self.settings
        now = self.loop.time()
        idle = not self._calls and not s.keepalive_permit_without_calls
        interval = _IDLE_PING_INTERVAL if idle else s.min_ping_interval_without_data
        last, self._last_ping_received = self._last_ping_received, now
        if last is None or now - last >= interval:
            return
        self._ping_strikes += 1
        if s.max_ping_strikes and self._ping_strikes > s.max_ping_strikes:
            self._calm_down(b"too_many_pings")

    def _calm_down(self, reason: bytes) -> None:
        """GOAWAY ENHANCE_YOUR_CALM with ``reason``: its calls are cancelled, then it closes."""
        if self._final_goaway_sent or self._transport is None:
            return
        logger.debug("peer %s: GOAWAY ENHANCE_YOUR_CALM %s", self.peer, reason.decode())
        self.protocol.goaway(self.protocol.highest_stream_id, _ENHANCE_YOUR_CALM, reason)
        self._end()

    def _end(self) -> None:
        """The connection is over (a GOAWAY of ours, if any, says why): cancel its calls, close.

        The close lingers (``linger.py``), so that a peer still sending reads our GOAWAY.
        """
        self._final_goaway_sent = self._closing = True
        for call in list(self._calls.values()):
            call.cancel_by_client()
        self._close_transport()
