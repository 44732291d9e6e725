"""Targets of a one-port router in the supervisor: connections routed there go to the workers.

``fastinject.router.ConnectionRouter`` evaluates its rules in the supervisor (it peeks at the
first bytes with ``MSG_PEEK``, so nothing is consumed) and hands the socket to the chosen
:class:`WorkerTarget`, which sends it to the least-loaded worker; that worker serves it with
the target's credentials.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

from ..errors import InjectorDestroyedError
from ..server import done_future

__all__ = ["WorkerTarget"]

HandOff = Callable[[socket.socket, int, bytes], None]


class WorkerTarget:
    """One set of credentials the workers serve with; use it as a router ``Rule``'s injector.

    Made by :meth:`fastinject.workers.Supervisor.add_target`.  Its connections live in the
    worker processes, so :meth:`drain` here has nothing to close: they are drained when
    their worker drains (reload, shutdown).
    """

    def __init__(self, index: int, hand_off: HandOff) -> None:
        self.index = index
        self._hand_off = hand_off
        self._destroyed = False

    @property
    def destroyed(self) -> bool:
        """Whether :meth:`destroy` was called."""
        return self._destroyed

    def inject_connection(
        self, connection: socket.socket, *, initial_data: bytes = b""
    ) -> Awaitable[None]:
        """Send ``connection`` (and bytes already read from it) to the least-loaded worker."""
        loop = asyncio.get_running_loop()
        if not isinstance(connection, socket.socket):
            raise TypeError(
                f"a worker target takes a connected socket.socket, not {type(connection).__name__}"
            )
        if self._destroyed:
            connection.close()
            raise InjectorDestroyedError("this worker target has been destroyed")
        self._hand_off(connection, self.index, bytes(initial_data))
        return done_future(loop)

    def drain(self, grace_time_ms: float) -> Awaitable[None]:
        """Nothing to do here: the connections are the workers' (they drain with them)."""
        if grace_time_ms < 0:
            raise ValueError(f"grace_time_ms must be >= 0, not {grace_time_ms}")
        return done_future(asyncio.get_running_loop())

    def destroy(self) -> Awaitable[None]:
        """Refuse connections from now on (the workers keep serving the ones they have)."""
        self._destroyed = True
        return done_future(asyncio.get_running_loop())
