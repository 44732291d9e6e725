"""``maximum_concurrent_rpcs``: the server-wide cap on RPCs running at once, as grpc.aio has it.

A call that finds the cap reached is answered at once with ``RESOURCE_EXHAUSTED`` and the
details grpc.aio sends ("Concurrent RPC limit exceeded!"); it never runs and is not counted.
The check comes after the method lookup, so an unknown method is still ``UNIMPLEMENTED``.
Calls of every connection (accepted on a port or injected) share the one count.
"""

from __future__ import annotations

from typing import Any

LIMIT_EXCEEDED_DETAILS = "Concurrent RPC limit exceeded!"
"""The status details of a call refused for the cap (grpc.aio's text)."""


class ConcurrentRpcLimit:
    """Counts running RPCs against ``maximum``; :meth:`admit` says whether one more may run."""

    __slots__ = ("active", "maximum")

    def __init__(self, maximum: int) -> None:
        if not isinstance(maximum, int) or isinstance(maximum, bool) or maximum <= 0:
            raise ValueError(
                f"maximum_concurrent_rpcs must be a positive int or None, not {maximum!r}"
            )
        self.maximum = maximum
        self.active = 0

    def admit(self, call: Any) -> bool:
        """Count ``call`` until it is done, if the cap allows; else False."""
        if self.active >= self.maximum:
            return False
        self.active += 1
        call.add_done_callback(self._release)
        return True

    def _release(self, context: Any) -> None:
        self.active -= 1


__all__ = ["LIMIT_EXCEEDED_DETAILS", "ConcurrentRpcLimit"]
