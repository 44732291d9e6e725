"""The supervisor's handle on one worker process: spawn, channel, load, readiness and exit."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from pathlib import Path

from .balancer import WorkerLoad
from .messages import Channel, ChannelClosed, Drain, Inject, Load, Ready, WorkerConfig

__all__ = ["WorkerBootError", "WorkerHandle"]

logger = logging.getLogger(__name__)

# The directory holding the fastinject package, so workers import the same fastinject even
# when the supervisor found it through sys.path rather than an installed distribution.
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


# Not ``-m fastinject.workers.worker``: runpy would import that module twice.
_WORKER_MAIN = "import sys; from fastinject.workers.worker import main; sys.exit(main())"


class WorkerBootError(Exception):
    """A worker exited before it was ready (its server could not be built)."""


class WorkerHandle:
    """One worker process and the supervisor's end of its channel.

    :attr:`ready` resolves when the worker says it serves (or fails with
    :class:`WorkerBootError` if it exits first); :attr:`exited` resolves to its exit status.
    """

    def __init__(self, generation: int, loop_name: str = "auto") -> None:
        self.generation = generation
        self._loop_name = loop_name
        self.load = WorkerLoad()
        self.pid = 0
        self.draining = False
        loop = asyncio.get_running_loop()
        self._loop = loop
        self.ready: asyncio.Future[None] = loop.create_future()
        self.exited: asyncio.Future[int] = loop.create_future()
        self._channel: Channel | None = None
        self._kill_timer: asyncio.TimerHandle | None = None

    @property
    def serving(self) -> bool:
        """Whether new connections may be sent to this worker."""
        return (
            self.ready.done() and not self.ready.cancelled() and self.ready.exception() is None
            and not self.exited.done() and not self.draining
        )

    async def spawn(self, config: WorkerConfig) -> None:
        """Start the process and send it ``config`` (readiness comes later, on :attr:`ready`)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p
        )
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-c", _WORKER_MAIN, str(theirs.fileno()), self._loop_name,
                pass_fds=(theirs.fileno(),), env=env,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.pid = process.pid
        self._channel = Channel(ours)
        self._loop.add_reader(ours.fileno(), self._on_readable)
        self._loop.create_task(self._wait(process))
        self._send(config)

    def inject(self, sock: socket.socket, serial: int, target: int, initial_data: bytes) -> bool:
        """Hand ``sock`` over (this handle closes it); False if the worker has gone."""
        self.load.sent += 1
        return self._send(Inject(serial, target, initial_data), sock)

    def drain(self, grace: float, kill_after: float) -> None:
        """Ask the worker to drain with ``grace``; SIGKILL it if it still runs ``kill_after`` s on.

        A second call with a shorter grace shortens the worker's grace and the kill timer.
        """
        self.draining = True
        self._send(Drain(grace))
        if self._kill_timer is not None:
            self._kill_timer.cancel()
        if not self.exited.done():
            self._kill_timer = self._loop.call_later(kill_after, self.kill)

    def kill(self) -> None:
        """SIGKILL the process (if it still runs)."""
        if self.pid and not self.exited.done():
            logger.warning("worker %d did not exit in time: killing it", self.pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    def _send(
        self, message: Drain | Inject | WorkerConfig, sock: socket.socket | None = None
    ) -> bool:
        channel = self._channel
        if channel is None or channel.closed:
            if sock is not None:
                sock.close()
            return False
        try:
            channel.send(message, sock)
        except ChannelClosed as exc:
            self._close_channel(exc)
            return False
        if channel.backlog:
            self._loop.add_writer(channel.sock.fileno(), self._on_writable)
        return True

    def _on_writable(self) -> None:
        channel = self._channel
        assert channel is not None
        try:
            if channel.flush():
                self._loop.remove_writer(channel.sock.fileno())
        except ChannelClosed as exc:
            self._close_channel(exc)

    def _on_readable(self) -> None:
        channel = self._channel
        assert channel is not None
        while True:
            try:
                received = channel.receive()
            except ChannelClosed as exc:
                self._close_channel(exc)
                return
            if received is None:
                return
            message, sock = received
            if sock is not None:
                sock.close()
            if isinstance(message, Load):
                self.load.report(message.received, message.connections, message.calls)
                logger.debug("worker %d load: %d connections, %d calls",
                             self.pid, message.connections, message.calls)
            elif isinstance(message, Ready) and not self.ready.done():
                self.ready.set_result(None)

    def _close_channel(self, reason: ChannelClosed | None = None) -> None:
        channel = self._channel
        if channel is None or channel.closed:
            return
        if reason is not None:
            logger.debug("channel of worker %d closed: %s", self.pid, reason)
        self._loop.remove_reader(channel.sock.fileno())
        self._loop.remove_writer(channel.sock.fileno())
        channel.close()

    async def _wait(self, process: asyncio.subprocess.Process) -> None:
        status = await process.wait()
        if self._kill_timer is not None:
            self._kill_timer.cancel()
        self._close_channel()
        if not self.ready.done():
            self.ready.set_exception(WorkerBootError(
                f"worker {self.pid} exited with status {status} before it was ready"
            ))
            self.ready.exception()  # retrieved: whoever waits sees it, nobody else is warned
        self.exited.set_result(status)
