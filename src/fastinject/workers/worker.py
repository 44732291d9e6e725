"""A worker process: builds the user's server and serves the connections the supervisor sends.

Started by the supervisor as ``main([FD, LOOP])`` in a new interpreter, where FD is its end of
a :class:`~fastinject.workers.messages.Channel`.  The first message is the
:class:`~fastinject.workers.messages.WorkerConfig`; the worker calls the user's factory, makes
one ``ConnectionInjector`` per target (so TLS handshakes run here, with the target's
credentials), says :class:`~fastinject.workers.messages.Ready`, then injects every connection
it is sent and reports its load whenever it changes.

It stops on :class:`~fastinject.workers.messages.Drain`, on SIGTERM, or when the supervisor
goes away: each injector is drained (gRFC L114: graceful GOAWAY, running calls go on for the
grace, then are cancelled), the server stops, and the process exits 0.  SIGINT and SIGHUP are
ignored: a terminal sends them to the whole process group, and the supervisor decides.
Exit status 3 means the server could not be built (a boot failure, not a crash).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Awaitable

from ..credentials import ServerCredentials
from ..injector import ConnectionInjector
from ..server import Server
from .factory import build_server
from .loops import check_loop, run
from .messages import (
    Channel,
    ChannelClosed,
    CredentialsSpec,
    Drain,
    Inject,
    Load,
    Ready,
    WorkerConfig,
)

__all__ = ["BOOT_FAILED", "REPORT_INTERVAL", "build_credentials", "main"]

logger = logging.getLogger(__name__)

BOOT_FAILED = 3
"""Exit status of a worker whose server could not be built."""

REPORT_INTERVAL = 0.05
"""Seconds between two looks at the worker's load (a report is sent only when it changed)."""

LOG_FORMAT = "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"
"""The log line format of the supervisor and its workers."""


def build_credentials(spec: CredentialsSpec) -> ServerCredentials:
    """The :class:`~fastinject.ServerCredentials` a :class:`CredentialsSpec` describes."""
    if spec.key_pem is None or spec.cert_pem is None:
        return ServerCredentials.insecure()
    return ServerCredentials.ssl(
        [(spec.key_pem, spec.cert_pem)],
        root_certificates=spec.client_ca_pem,
        require_client_auth=spec.client_ca_pem is not None,
    )


class Worker:
    """The life of one worker process, from its config to its exit status."""

    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self._injectors: list[ConnectionInjector] = []
        self._attaching: set[asyncio.Future[None]] = set()
        self._received = 0
        self._stop: asyncio.Future[float] | None = None
        self._server: Server | None = None
        self._shortened: list[asyncio.Task[None]] = []
        self._grace = 0.0

    async def run(self) -> int:
        """Serve until told to stop; the process exit status."""
        loop = asyncio.get_running_loop()
        self._stop = loop.create_future()
        config = await self._receive_config(loop)
        logging.basicConfig(level=config.log_level.upper(), format=LOG_FORMAT)
        sys.path[:0] = [p for p in config.sys_path if p not in sys.path]
        try:
            server = await build_server(config.factory)
            self._injectors = [
                server.create_connection_injector(build_credentials(spec))
                for spec in config.targets
            ]
            await server.start()
        except Exception:
            logger.exception("worker could not build its server with %s", config.factory)
            return BOOT_FAILED
        self._server = server
        self._grace = config.grace
        loop.add_signal_handler(signal.SIGTERM, self._request_stop, config.grace)
        loop.add_reader(self._channel.sock.fileno(), self._on_readable)
        reporter = loop.create_task(self._report_load())
        try:
            self._channel.send(Ready(os.getpid()))
        except ChannelClosed:
            self._request_stop(config.grace)
        grace = await self._stop
        loop.remove_reader(self._channel.sock.fileno())
        reporter.cancel()
        await self._drain(server, grace)
        self._channel.close()
        return 0

    async def _receive_config(self, loop: asyncio.AbstractEventLoop) -> WorkerConfig:
        readable = loop.create_future()
        fd = self._channel.sock.fileno()
        loop.add_reader(fd, _resolve, readable)
        try:
            await readable
        finally:
            loop.remove_reader(fd)
        received = self._channel.receive()
        if received is None or not isinstance(received[0], WorkerConfig):
            raise RuntimeError(f"a worker's first message must be its config, not {received}")
        return received[0]

    def _on_readable(self) -> None:
        while True:
            try:
                received = self._channel.receive()
            except ChannelClosed:
                logger.warning("the supervisor has gone: draining and exiting")
                self._request_stop(self._grace)
                return
            if received is None:
                return
            message, sock = received
            if isinstance(message, Inject) and sock is not None:
                self._inject(message, sock)
            elif isinstance(message, Drain):
                self._request_stop(message.grace)
                return
            else:
                logger.error("worker got an unexpected message %r", message)
                if sock is not None:
                    sock.close()

    def _inject(self, message: Inject, sock: socket.socket) -> None:
        self._received += 1
        try:
            attached: Awaitable[None] = self._injectors[message.target].inject_connection(
                sock, initial_data=message.initial_data
            )
        except Exception:
            logger.exception("worker could not serve connection %d", message.serial)
            sock.close()
            return
        future = asyncio.ensure_future(attached)
        self._attaching.add(future)
        future.add_done_callback(self._attaching.discard)

    def _request_stop(self, grace: float) -> None:
        if self._stop is not None and not self._stop.done():
            self._stop.set_result(grace)
        elif self._server is not None:
            # A second request (supervisor forcing a quick exit): shorten the grace.
            self._shortened.append(asyncio.ensure_future(self._server.stop(grace)))

    async def _report_load(self) -> None:
        last: Load | None = None
        while True:
            load = Load(
                received=self._received,
                connections=sum(i.connections for i in self._injectors) + len(self._attaching),
                calls=sum(i.active_calls for i in self._injectors),
            )
            if load != last and self._channel.backlog == 0:
                try:
                    self._channel.send(load)
                except ChannelClosed as exc:
                    logger.warning("cannot report load to the supervisor: %s", exc)
                    self._request_stop(self._grace)
                    return
                last = load
            await asyncio.sleep(REPORT_INTERVAL)

    async def _drain(self, server: Server, grace: float) -> None:
        await asyncio.gather(*self._attaching, return_exceptions=True)
        drained = [injector.drain(grace * 1000.0) for injector in self._injectors]
        # stop() bounds everything the injectors' drain did not reach (handshakes in progress).
        await server.stop(grace)
        await asyncio.gather(*drained, return_exceptions=True)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def main(argv: list[str] | None = None) -> int:
    """Run a worker on the channel fd and event loop given as arguments; the exit status."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or not args[0].isdigit() or check_loop(args[1]) is not None:
        print("usage: CHANNEL_FD LOOP (a worker is started by the supervisor)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    channel = Channel(socket.socket(fileno=int(args[0])))
    with contextlib.suppress(KeyboardInterrupt):
        return run(Worker(channel).run(), args[1])
    return 0

