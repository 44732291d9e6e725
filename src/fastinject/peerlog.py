"""Rate-limited logging of what one peer causes, so that a peer cannot fill the disk.

A peer can make the server log as often as it can send: a handler that fails on its input, a
policy it trips.  :class:`PeerLog` (one per connection) writes at most one such line per
interval; the lines in between are counted, and the count is reported with the next line
written or when the connection closes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class PeerLog:
    """At most one log line per ``interval`` seconds for one peer; the rest counted.

    ``interval`` 0 writes every line.  ``peer`` names the peer in the suppression report.
    """

    __slots__ = ("_clock", "_interval", "_last_level", "_last_logger", "_next_at", "_peer",
                 "_suppressed")

    def __init__(
        self,
        peer: str,
        interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._peer = peer
        self._interval = interval
        self._clock = clock
        self._next_at = -float("inf")
        self._suppressed = 0
        self._last_logger: logging.Logger | None = None
        self._last_level = logging.NOTSET

    def log(
        self,
        logger: logging.Logger,
        level: int,
        msg: str,
        *args: object,
        exc_info: bool = False,
    ) -> None:
        """Log ``msg % args`` at ``level`` unless a line was written less than an interval ago.

        A line that is written reports how many were suppressed before it.
        """
        if not logger.isEnabledFor(level):
            return
        now = self._clock()
        if now < self._next_at:
            self._suppressed += 1
            self._last_logger = logger
            self._last_level = max(level, self._last_level)
            return
        self._next_at = now + self._interval
        if self._suppressed:
            msg += " (%d more such lines from this peer were suppressed before this one)"
            args = (*args, self._suppressed)
            self._suppressed = 0
            self._last_level = logging.NOTSET
        logger.log(level, msg, *args, exc_info=exc_info)

    def close(self) -> None:
        """Report the lines suppressed since the last one written, if any."""
        if self._suppressed and self._last_logger is not None:
            self._last_logger.log(
                self._last_level, "peer %s: %d more log lines were suppressed (one per %g s)",
                self._peer, self._suppressed, self._interval,
            )
            self._suppressed = 0


__all__ = ["PeerLog"]
