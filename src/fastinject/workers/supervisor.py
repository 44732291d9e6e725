"""The supervisor: binds the ports, runs workers, hands each connection to the least-loaded.

One process accepts every connection (no ``SO_REUSEPORT`` lottery: the kernel spreads those
unevenly, and macOS not at all) and passes the socket to a worker over its Unix channel, where
the worker's ``ConnectionInjector`` serves it, TLS handshake included.  The supervisor never
reads a byte of a connection and keeps no fd once it is sent.

Lifecycle:

* a worker that exits while serving is replaced (only its own connections are lost); one that
  dies before it is ready is retried with a growing delay;
* :meth:`Supervisor.shutdown` (SIGTERM, SIGINT): stop accepting, every worker drains with the
  grace and exits; a second signal shortens the grace to zero;
* :meth:`Supervisor.reload` (SIGHUP): start a new generation (re-reading certificate files),
  and once all of it is ready send new connections there and drain the old generation.  If
  the new generation cannot boot, the old one keeps serving.

Workers that outlive their grace by :data:`KILL_MARGIN` seconds are killed.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Sequence

from ..router import ConnectionRouter
from ..server import bind_address
from .balancer import least_loaded
from .binds import Bind, TlsFiles, load_credentials
from .handle import WorkerBootError, WorkerHandle
from .loops import check_loop
from .messages import WorkerConfig
from .targets import WorkerTarget
from .worker import build_credentials

__all__ = ["KILL_MARGIN", "PLATFORM_SUPPORTED", "Supervisor", "WorkerBootError", "usable_cpus"]

logger = logging.getLogger(__name__)

KILL_MARGIN = 5.0
"""Seconds a draining worker may run past its grace before it is killed."""

_ACCEPT_BATCH = 64
_ACCEPT_BACKOFF = 1.0
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_FIRST_RESPAWN_DELAY = 0.5
_MAX_RESPAWN_DELAY = 30.0
_QUICK_DEATH = 5.0  # a worker dying sooner than this after starting makes the next wait longer


PLATFORM_SUPPORTED = sys.platform.startswith("linux")
"""Whether the worker pool runs here.  It needs ``AF_UNIX``/``SOCK_SEQPACKET`` and fd passing:
Linux is where it is built and tested (macOS lacks ``SOCK_SEQPACKET``, Windows fd passing)."""


def usable_cpus() -> int:
    """How many CPUs this process may run on (the default number of workers)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class Supervisor:
    """Runs ``workers`` processes of the server ``factory`` (``"module:function"``).

    ``grace`` is the seconds running calls get on shutdown and reload.  ``log_level``,
    ``sys_path`` (directories put first on the workers' ``sys.path``, to find the factory)
    and ``loop`` (the workers' event loop: ``auto`` = uvloop when installed, ``asyncio``,
    ``uvloop``) are passed to every worker.  All methods run on the supervisor's event loop.
    """

    def __init__(
        self,
        factory: str,
        binds: Sequence[Bind],
        *,
        workers: int | None = None,
        grace: float = 30.0,
        log_level: str = "info",
        sys_path: Sequence[str] = (),
        loop: str = "auto",
    ) -> None:
        if not PLATFORM_SUPPORTED:
            raise RuntimeError(
                f"the worker pool needs Linux (SOCK_SEQPACKET and fd passing), not "
                f"{sys.platform}; serve with --workers 1"
            )
        count = usable_cpus() if workers is None else workers
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"workers must be an int >= 1, not {workers!r}")
        if grace < 0:
            raise ValueError(f"grace must be >= 0 seconds, not {grace}")
        loop_problem = check_loop(loop)
        if loop_problem is not None:
            raise ValueError(loop_problem)
        self.loop = loop
        self.factory = factory
        self.binds = tuple(binds)
        self._tls: list[TlsFiles | None] = [bind.tls for bind in self.binds]
        self._routers: list[tuple[str, ConnectionRouter]] = []
        self.workers = count
        self.grace = float(grace)
        self.log_level = log_level
        self.sys_path = tuple(sys_path)
        self._listeners: list[tuple[socket.socket, int]] = []
        self._accepting = False
        self._accept_backoff: asyncio.TimerHandle | None = None
        self._generation = 0
        self._current: list[WorkerHandle] = []
        self._retiring: set[WorkerHandle] = set()
        self._serial = 0
        self._reloading: asyncio.Task[bool] | None = None
        self._stopping: asyncio.Task[None] | None = None
        self._stopped: asyncio.Future[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._serving = False  # start() has completed
        self._deferred: list[Callable[[], object]] = []  # signals that came during start()

    # -- public ------------------------------------------------------------------------------

    def add_target(self, tls: TlsFiles | None = None) -> WorkerTarget:
        """A target for a :class:`~fastinject.router.ConnectionRouter` rule (before start).

        Connections the router sends there are served by the workers with ``tls``
        (plaintext when ``None``).
        """
        self._check_not_started("add_target")
        self._tls.append(tls)
        return WorkerTarget(len(self._tls) - 1, self.hand_off)

    def add_router(self, address: str, router: ConnectionRouter) -> None:
        """Run ``router`` on ``address`` in the supervisor once the workers are ready.

        Its rules are evaluated here; their injectors are targets of :meth:`add_target`.
        """
        self._check_not_started("add_router")
        self._routers.append((address, router))

    def _check_not_started(self, method: str) -> None:
        if self._stopped is not None:
            raise RuntimeError(f"Supervisor.{method} must be called before start()")

    @property
    def addresses(self) -> list[str]:
        """The bound addresses, ports resolved (``127.0.0.1:50051``, ``[::]:50051``)."""
        return [_address_text(sock) for sock, _ in self._listeners]

    @property
    def router_ports(self) -> list[int]:
        """The ports of the routers of :meth:`add_router` (once started)."""
        return [router.port for _, router in self._routers if router.port is not None]

    @property
    def stopping(self) -> bool:
        """Whether :meth:`shutdown` has been called."""
        return self._stopping is not None

    @property
    def generation(self) -> int:
        """The number of the serving generation (1 at start, +1 per successful reload)."""
        return self._generation

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the serving generation."""
        return [worker.pid for worker in self._current]

    async def start(self) -> None:
        """Bind, start the first generation and wait until it is ready, then accept.

        Raises :class:`OSError` (cannot bind, unreadable certificate file),
        :class:`ValueError` (bad PEM) or :class:`WorkerBootError` (a worker could not build
        its server); nothing is left running then.
        """
        if not self.binds and not self._routers:
            raise ValueError("a supervisor needs at least one address to bind or router to run")
        loop = asyncio.get_running_loop()
        self._stopped = loop.create_future()
        config = self._config(1)
        try:
            for target, bind in enumerate(self.binds):
                for sock in bind_address(bind.address):
                    self._listeners.append((sock, target))
            generation = await self._boot(config)
        except BaseException:
            self._close_listeners()
            raise
        self._generation = 1
        self._current = generation
        for address in self.addresses:
            logger.info("listening on %s", address)
        self._resume_accepting()
        try:
            for address, router in self._routers:
                port = await router.start(address)
                logger.info("router listening on %s (port %d)", address, port)
        except BaseException:
            await self.shutdown(0.0)
            raise
        self._log_generation()
        self._serving = True
        for action in self._deferred:
            action()
        self._deferred.clear()

    def reload(self) -> asyncio.Task[bool]:
        """Start a new generation; once ready it takes new connections and the old drains.

        The task's result says whether the reload happened (False: it could not boot, or the
        supervisor is stopping; the old generation still serves).  A reload asked for while
        one runs joins it.
        """
        if self._reloading is None or self._reloading.done():
            self._reloading = asyncio.get_running_loop().create_task(self._reload())
        return self._reloading

    def shutdown(self, grace: float | None = None) -> asyncio.Task[None]:
        """Stop accepting, drain every worker with ``grace`` (default: :attr:`grace`), exit.

        A second call forces a quick end: workers get zero grace.
        """
        loop = asyncio.get_running_loop()
        if self._stopping is None:
            grace = self.grace if grace is None else grace
            self._stopping = loop.create_task(self._shutdown(grace))
        else:
            logger.info("stopping now: running calls are cancelled")
            for worker in self._all_workers():
                worker.drain(0.0 if grace is None else grace, KILL_MARGIN)
        return self._stopping

    async def wait_stopped(self) -> None:
        """Wait until :meth:`shutdown` has finished."""
        assert self._stopped is not None, "start() first"
        await asyncio.shield(self._stopped)

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT: :meth:`shutdown`; SIGHUP: :meth:`reload`.

        Install them before :meth:`start`: a signal that comes while the first generation
        boots is then acted on once it serves, instead of killing the process.
        """
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_stop_signal, signum)
        loop.add_signal_handler(signal.SIGHUP, self._on_reload_signal)

    def _on_stop_signal(self, signum: int) -> None:
        logger.info("%s: shutting down", signal.Signals(signum).name)
        self._when_serving(self.shutdown)

    def _on_reload_signal(self) -> None:
        logger.info("SIGHUP: reloading")
        self._when_serving(self.reload)

    def _when_serving(self, action: Callable[[], object]) -> None:
        if self._serving:
            action()
        else:
            self._deferred.append(action)

    # -- generations -------------------------------------------------------------------------

    def _config(self, generation: int) -> WorkerConfig:
        targets = tuple(load_credentials(tls) for tls in self._tls)
        for spec in targets:
            build_credentials(spec)  # bad PEM fails here, in the supervisor, with its message
        return WorkerConfig(
            factory=self.factory, targets=targets, grace=self.grace,
            log_level=self.log_level, generation=generation, sys_path=self.sys_path,
        )

    async def _boot(self, config: WorkerConfig) -> list[WorkerHandle]:
        """Start a whole generation; all ready, or none left running."""
        workers = [WorkerHandle(config.generation, self.loop) for _ in range(self.workers)]
        try:
            for worker in workers:
                await worker.spawn(config)
                self._watch(worker, config)
            await asyncio.gather(*(worker.ready for worker in workers))
        except BaseException:
            for worker in workers:
                worker.kill()
            await asyncio.gather(*(w.exited for w in workers if w.pid), return_exceptions=True)
            raise
        return workers

    async def _reload(self) -> bool:
        if self._stopping is not None:
            return False
        try:
            config = self._config(self._generation + 1)
            generation = await self._boot(config)
        except (OSError, ValueError, WorkerBootError) as exc:
            logger.error("reload failed, generation %d keeps serving: %s", self._generation, exc)
            return False
        if self.stopping:  # shut down while booting: the new ones go too
            for worker in generation:
                worker.drain(0.0, KILL_MARGIN)
            return False
        old, self._current = self._current, generation
        self._generation = config.generation
        self._log_generation()
        for worker in old:
            self._retire(worker, self.grace)
        self._resume_accepting()
        return True

    def _retire(self, worker: WorkerHandle, grace: float) -> None:
        self._retiring.add(worker)
        worker.drain(grace, grace + KILL_MARGIN)

    def _watch(self, worker: WorkerHandle, config: WorkerConfig) -> None:
        task = asyncio.get_running_loop().create_task(self._on_exit(worker, config))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _on_exit(self, worker: WorkerHandle, config: WorkerConfig) -> None:
        started = asyncio.get_running_loop().time()
        status = await worker.exited
        self._retiring.discard(worker)
        if worker not in self._current:
            logger.info("worker %d (generation %d) exited with status %d",
                        worker.pid, worker.generation, status)
            return
        if self._stopping is not None or worker.draining:
            return
        logger.warning("worker %d exited with status %d: replacing it", worker.pid, status)
        delay = 0.0
        while self._stopping is None and worker in self._current:
            lifetime = asyncio.get_running_loop().time() - started
            if lifetime < _QUICK_DEATH:
                delay = min(max(delay * 2, _FIRST_RESPAWN_DELAY), _MAX_RESPAWN_DELAY)
                await asyncio.sleep(delay)
            if self._stopping is not None or worker not in self._current:
                return
            replacement = WorkerHandle(config.generation, self.loop)
            started = asyncio.get_running_loop().time()
            try:
                await replacement.spawn(config)
                self._watch(replacement, config)
                await replacement.ready
            except (OSError, WorkerBootError) as exc:
                logger.error("replacement worker failed: %s", exc)
                continue
            if worker in self._current:
                self._current[self._current.index(worker)] = replacement
                logger.info("worker %d ready (generation %d), replacing %d",
                            replacement.pid, config.generation, worker.pid)
                self._resume_accepting()
            else:
                self._retire(replacement, 0.0)  # the generation changed meanwhile
            return

    def _log_generation(self) -> None:
        logger.info(
            "generation %d ready: %d workers (pids %s)", self._generation, len(self._current),
            " ".join(str(pid) for pid in self.worker_pids),
        )

    def _all_workers(self) -> list[WorkerHandle]:
        return [*self._current, *self._retiring]

    # -- shutdown ----------------------------------------------------------------------------

    async def _shutdown(self, grace: float) -> None:
        self._pause_accepting()
        self._close_listeners()
        for _, router in self._routers:
            await router.close()
        if self._reloading is not None:
            await asyncio.gather(self._reloading, return_exceptions=True)
        workers = self._all_workers()
        for worker in workers:
            worker.drain(grace, grace + KILL_MARGIN)
        await asyncio.gather(*(worker.exited for worker in workers))
        for task in list(self._tasks):
            task.cancel()
        logger.info("stopped")
        assert self._stopped is not None
        if not self._stopped.done():
            self._stopped.set_result(None)

    def _close_listeners(self) -> None:
        if self._accept_backoff is not None:
            self._accept_backoff.cancel()
            self._accept_backoff = None
        for sock, _ in self._listeners:
            sock.close()

    # -- accepting and dispatch ----------------------------------------------------------------

    def _resume_accepting(self) -> None:
        if self._accepting or self._stopping is not None or self._accept_backoff is not None:
            return
        loop = asyncio.get_running_loop()
        self._accepting = True
        for sock, target in self._listeners:
            loop.add_reader(sock.fileno(), self._on_acceptable, sock, target)

    def _pause_accepting(self) -> None:
        if not self._accepting:
            return
        self._accepting = False
        loop = asyncio.get_running_loop()
        for sock, _ in self._listeners:
            loop.remove_reader(sock.fileno())

    def _pick(self) -> WorkerHandle | None:
        return least_loaded((w, w.load) for w in self._current if w.serving)

    def _on_acceptable(self, listener: socket.socket, target: int) -> None:
        for _ in range(_ACCEPT_BATCH):
            worker = self._pick()
            if worker is None:
                # No worker can serve (all being replaced): connections wait in the backlog.
                self._pause_accepting()
                return
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                logger.error("accept failed on %s: %s", _address_text(listener), exc)
                if exc.errno in _RESOURCE_ERRNOS:
                    self._pause_accepting()
                    self._accept_backoff = asyncio.get_running_loop().call_later(
                        _ACCEPT_BACKOFF, self._end_accept_backoff
                    )
                return
            self.dispatch(worker, conn, target)

    def _end_accept_backoff(self) -> None:
        self._accept_backoff = None
        self._resume_accepting()

    def hand_off(self, conn: socket.socket, target: int, initial_data: bytes = b"") -> None:
        """Send ``conn`` to the least-loaded worker (closed if no worker can serve now)."""
        worker = self._pick()
        if worker is None:
            logger.warning("no worker can serve now: a routed connection is closed")
            conn.close()
            return
        self.dispatch(worker, conn, target, initial_data)

    def dispatch(
        self, worker: WorkerHandle, conn: socket.socket, target: int, initial_data: bytes = b""
    ) -> None:
        """Send ``conn`` to ``worker`` for ``binds[target]``'s credentials (closes our copy)."""
        self._serial += 1
        if not worker.inject(conn, self._serial, target, initial_data):
            logger.warning("worker %d has gone: a new connection was lost with it", worker.pid)


def _address_text(sock: socket.socket) -> str:
    name = sock.getsockname()
    if isinstance(name, tuple):
        host = name[0]
        return f"[{host}]:{name[1]}" if ":" in host else f"{host}:{name[1]}"
    return f"unix:{name}"
