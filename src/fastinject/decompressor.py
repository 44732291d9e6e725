"""Decompressing a connection's request messages without stalling the event loop.

A small compressed message can inflate to the receive limit (4 KiB of gzip make 4 MiB, ten
milliseconds of zlib), so one connection sending such messages could hold the loop for every
other client.  :class:`ConnectionDecompressor` (one per connection) therefore

* decompresses in slices (:class:`~fastinject.compression.Inflater`), one slice per loop
  turn, one message at a time per connection: other calls and connections run in between,
  and a connection with many compressed calls gets no more turns than one with a single call;
  a message that fits in one slice (almost all) is decompressed at once, without waiting;
* charges each slice's work (compressed bytes read plus bytes produced) to a per-connection
  budget of ``max_decompression_rate`` bytes per second, which a message may overdraw.  While
  the budget is overdrawn the connection's next message waits for it to refill; one that would
  wait more than :data:`MAX_BUDGET_WAIT` fails its call with ``RESOURCE_EXHAUSTED``, and a
  connection over its budget for ``max_decompression_overrun`` seconds is told to calm down
  (GOAWAY ENHANCE_YOUR_CALM ``too_much_decompression``).

Waiting rather than refusing at once is what keeps other clients served: refused calls end
at once and a peer sends the next (a cheap-call flood), and a peer cut off reconnects with a
fresh budget, while a peer whose calls wait is slowed down.  Slices on the loop measured
better than inflating large messages in a thread; see ``docs/SECURITY.md``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from .compression import Inflater
from .errors import RpcError
from .options import ServerSettings
from .status import StatusCode

MAX_BUDGET_WAIT = 1.0
"""Seconds a message may wait for its connection's decompression budget (one second's worth)."""


class ConnectionDecompressor:
    """The decompression of one connection's messages: sliced, serialised and budgeted.

    ``calm_down`` is called when the connection has been over its budget for longer than
    ``max_decompression_overrun``; ``clock`` is the loop's.
    """

    __slots__ = ("_calm_down", "_clock", "_limit", "_lock", "_over_since", "_overrun", "_rate",
                 "_refilled_at", "_tokens")

    def __init__(
        self,
        settings: ServerSettings,
        clock: Callable[[], float],
        calm_down: Callable[[], None],
    ) -> None:
        self._limit = settings.max_receive_message_length
        self._rate = float(settings.max_decompression_rate)
        self._tokens = self._rate  # a second's worth; a message may overdraw it
        self._clock = clock
        self._refilled_at = clock()
        self._overrun = settings.max_decompression_overrun
        self._over_since: float | None = None
        self._calm_down = calm_down
        self._lock = asyncio.Lock()

    async def decompress(self, encoding: str, data: bytes) -> bytes:
        """``data`` decompressed with ``encoding`` (gzip or deflate), at most the receive limit.

        Raises what :func:`~fastinject.compression.decompress` raises, and
        :class:`~fastinject.errors.RpcError` (``RESOURCE_EXHAUSTED``) when the connection's
        decompression budget stays spent.
        """
        inflater = Inflater(encoding, data, self._limit)
        if inflater.done:
            return inflater.result()
        started = not self._lock.locked() and self._within_budget()
        # The fast path: most messages are done in one step, at once.
        if started and self._step(inflater):
            return inflater.result()
        async with self._lock:
            if not started:
                await self._wait_for_budget()
                if self._step(inflater):
                    return inflater.result()
            while True:
                await asyncio.sleep(0)  # one slice per loop turn
                if self._step(inflater):
                    return inflater.result()

    def _step(self, inflater: Inflater) -> bool:
        """Decompress one slice and charge it; whether the message is done."""
        self._tokens -= inflater.step()
        return inflater.done

    def _within_budget(self) -> bool:
        """Refill the budget; whether it has something left (a new message may start)."""
        if not self._rate:
            return True
        now = self._clock()
        self._tokens = min(self._rate, self._tokens + (now - self._refilled_at) * self._rate)
        self._refilled_at = now
        if self._tokens > 0:
            self._over_since = None
            return True
        return False

    async def _wait_for_budget(self) -> None:
        """Wait until the budget refills; RESOURCE_EXHAUSTED after :data:`MAX_BUDGET_WAIT`."""
        if self._within_budget():
            return
        now = self._clock()
        if self._over_since is None:
            self._over_since = now
        deadline = now + MAX_BUDGET_WAIT
        while now < deadline and now - self._over_since < self._overrun:
            await asyncio.sleep(min(-self._tokens / self._rate, deadline - now))
            if self._within_budget():
                return
            now = self._clock()
        if now - self._over_since >= self._overrun:
            self._calm_down()
        raise RpcError(
            f"decompression budget of this connection spent: over {int(self._rate)} bytes of "
            "compressed and decompressed data per second (max_decompression_rate)",
            StatusCode.RESOURCE_EXHAUSTED,
        )


__all__ = ["MAX_BUDGET_WAIT", "ConnectionDecompressor"]
