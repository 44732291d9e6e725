"""The frames every connection of a server may handle in one event-loop turn, shared.

A connection handles at most its *grant* of frames per read, and its *share* per loop turn,
then pauses reading until a later turn (``connection.py``), so that one connection cannot keep
the loop from the others.  A budget per connection alone would let a turn grow with the number
of busy connections (4 flooding connections x 256 frames made a turn of ~3 ms, and a unary call
takes about three turns); :class:`FrameTurns` bounds the turn instead:

- the turn's budget, ``max_frames_per_turn``, is spent by every connection's frames; once it is
  spent, a connection still reading gets ``min_frames_per_turn`` (each moves forward every turn);
- a connection that stops with frames left (its grant or share used) is *busy*; a turn's share
  is the budget split evenly among the connections busy in the turn before, never below
  ``min_frames_per_turn``: the connections read first in a turn do not take it all;
- a lone busy connection gets the whole budget, as if it were alone on the loop.

So a turn handles about the budget, plus the minimum of each connection reading once it is
spent, whatever the number of busy connections.

Turns are seen through the loop's ``call_soon``, and only while the budget matters: the first
connection to be busy, or to spend the last of the budget, schedules the end of the turn, which
sizes the next share and starts a new count; while turns are full or connections busy, every
turn ends that way.  Otherwise nothing is scheduled (a quiet server pays no callback per turn):
frames are counted, and each read gets the share, until they add up to the budget (over one
turn or several); from there, the rest of the turn is granted what is left, as above.
"""

from __future__ import annotations

from collections.abc import Callable

from .options import ServerSettings


class FrameTurns:
    """The frame budget of one loop turn, shared by a server's connections.

    Before reading, a connection asks for its :meth:`grant`; after, it reports what it
    handled with :meth:`charge`.  ``share`` is what a connection may handle in the current
    turn over all its reads; ``turn`` counts the turns seen (it moves only while they are
    counted), so a connection can tell that its frames belong to an earlier turn.
    """

    __slots__ = (
        "_busy", "_call_soon", "_counting", "budget", "minimum", "share", "turn", "used"
    )

    def __init__(
        self, budget: int, minimum: int, call_soon: Callable[[Callable[[], None]], object]
    ) -> None:
        self.budget = budget
        self.minimum = min(minimum, budget)
        self.share = budget
        self.used = 0  # frames handled in this turn (over several, while turns are not seen)
        self.turn = 0
        self._call_soon = call_soon
        self._busy = 0  # connections that stopped with frames left in this turn
        self._counting = False  # the end of this turn is scheduled

    @classmethod
    def for_settings(
        cls, settings: ServerSettings, call_soon: Callable[[Callable[[], None]], object]
    ) -> FrameTurns:
        """The budget ``settings`` ask for, turns seen through ``call_soon``."""
        return cls(settings.max_frames_per_turn, settings.min_frames_per_turn, call_soon)

    def grant(self) -> int:
        """Frames a connection may handle in its next read: its share, within what is left.

        While turns are not seen, frames counted may belong to earlier turns: the share.
        """
        left = self.budget - self.used
        if left >= self.share or not self._counting:
            return self.share
        return max(self.minimum, left)

    def charge(self, frames: int, busy: bool) -> None:
        """A connection handled ``frames``; ``busy``: it stopped with frames left."""
        self.used += frames
        if busy:
            self._busy += 1
        if not self._counting and (busy or self.used >= self.budget):
            self._counting = True
            self._call_soon(self._turn_over)

    def _turn_over(self) -> None:
        """A turn ended: split the budget among the connections busy in it."""
        busy, self._busy = self._busy, 0
        full = self.used >= self.budget
        self.used = 0
        self.share = max(self.minimum, self.budget // busy) if busy else self.budget
        self.turn += 1
        self._counting = busy > 0 or full  # one more end, to see whether that goes on
        if self._counting:
            self._call_soon(self._turn_over)
