"""A token bucket: how much of some costly thing a peer may make us do, over time."""

from __future__ import annotations

from collections.abc import Callable


class TokenBucket:
    """``burst`` tokens at first, refilled at ``rate`` per second up to ``burst``.

    nghttp2 polices received RST_STREAM frames and its "glitches" this way; a bucket rather
    than a plain counter, so a long-lived connection that does the thing now and then is never
    punished, while one that does it in a tight loop runs dry within ``burst`` events.
    ``clock`` is read only when the bucket is empty, so the common case costs a decrement.
    """

    __slots__ = ("_burst", "_clock", "_rate", "_refilled_at", "_tokens")

    def __init__(self, burst: int, rate: float, clock: Callable[[], float]) -> None:
        self._burst = burst
        self._rate = rate
        self._clock = clock
        self._tokens = float(burst)
        self._refilled_at = clock()

    def spend(self) -> bool:
        """Take one token; False when none is left (the budget is exhausted)."""
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        now = self._clock()
        refill = (now - self._refilled_at) * self._rate
        self._tokens = min(float(self._burst), self._tokens + refill)
        self._refilled_at = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False
