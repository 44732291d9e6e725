"""The deadlines of one connection's calls: one timer for the earliest, not one per call.

A call whose client sent ``grpc-timeout`` must be interrupted when its deadline passes.  A
timer per call (``loop.call_at`` then ``cancel``) costs about 8k instructions on uvloop (a
libuv timer made, started and stopped) and 18k on asyncio's loop: 2-4% of a small unary call,
almost always for a call that ends long before its deadline.  :class:`Deadlines` keeps the
calls in a heap ordered by deadline and one timer armed for the earliest.  A call that ends
first stays in the heap and is skipped when its deadline comes; once such entries are most of
the heap, it is rebuilt without them, so a connection with long deadlines and many short
calls does not pile them up.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
from typing import Protocol


class Interruptible(Protocol):
    """What :class:`Deadlines` needs of a call."""

    @property
    def done(self) -> bool:
        """Whether the call has ended."""

    def on_deadline(self) -> None:
        """The call's deadline passed."""


_COMPACT_AT = 64
"""Ended calls' entries tolerated before the heap may be rebuilt (when they are most of it)."""


class Deadlines:
    """Interrupts each call added with :meth:`add` when its deadline passes (loop time)."""

    __slots__ = ("_ended", "_heap", "_loop", "_order", "_timer", "_when")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._heap: list[tuple[float, int, Interruptible]] = []
        self._order = itertools.count()  # ties are broken by arrival: calls are never compared
        self._ended = 0  # entries of calls that ended before their deadline
        self._timer: asyncio.TimerHandle | None = None
        self._when = math.inf  # when the timer fires

    def add(self, when: float, call: Interruptible) -> None:
        """Call ``call.on_deadline()`` at loop time ``when`` unless the call is done by then."""
        heapq.heappush(self._heap, (when, next(self._order), call))
        if when < self._when:
            self._arm(when)

    def ended(self) -> None:
        """A call added here ended before its deadline."""
        self._ended += 1
        if self._ended > _COMPACT_AT and 2 * self._ended > len(self._heap):
            self._heap = [entry for entry in self._heap if not entry[2].done]
            heapq.heapify(self._heap)
            self._ended = 0

    def close(self) -> None:
        """The connection is gone: no more deadlines fire."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._when = math.inf
        self._heap.clear()
        self._ended = 0

    def __len__(self) -> int:
        """Entries held, ended calls' included."""
        return len(self._heap)

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._when = when
        self._timer = self._loop.call_at(when, self._fire, when)

    def _fire(self, when: float) -> None:
        # Every deadline up to the one the timer was set for is due, even if the loop fired
        # the timer a little early (loops round timers to their clock's resolution).
        self._timer = None
        self._when = math.inf
        due = max(when, self._loop.time())
        heap = self._heap
        while heap and heap[0][0] <= due:
            call = heapq.heappop(heap)[2]
            if call.done:
                self._ended -= 1
            else:
                call.on_deadline()
        if heap:
            self._arm(heap[0][0])


__all__ = ["Deadlines", "Interruptible"]
