"""Connections not serving yet: from their arrival until the client's first SETTINGS frame.

A connection arrives (accepted on a port, or injected) and is served once its client has sent
the HTTP/2 preface and its first SETTINGS frame; before that it may run a TLS handshake.  An
:class:`Arrival` follows it through that time, whichever object is working on it (the TLS
handshake, or the wait for a plaintext preface, then the HTTP/2 connection), so that it has

* one deadline, ``handshake_timeout`` from arrival, covering the TLS handshake and the preface
  (grpc core's server handshake deadline does the same);
* one place, by arrival, in the server's count of pending connections
  (``max_pending_handshakes``: past it, the oldest is dropped);
* and is dropped by ``stop`` (and by its port's unbind or its injector's destroy).
"""

from __future__ import annotations

from typing import Protocol


class Holder(Protocol):
    """What works on a pending connection now (its TLS handshake, or its HTTP/2 connection)."""

    def abort(self) -> None:
        """Drop the connection at once."""


class PendingTracker(Protocol):
    """Where pending connections are counted (the connection group of their port or injector)."""

    def pending_started(self, arrival: Arrival) -> None:
        """``arrival`` is pending; it may be aborted at once (the cap, or the server stopping)."""

    def pending_ended(self, arrival: Arrival) -> None:
        """``arrival`` serves now, failed or closed."""

    @property
    def accepting(self) -> bool:
        """Whether a connection whose TLS handshake completes now may be served."""


class Arrival:
    """One connection from its arrival until it serves, fails or closes."""

    __slots__ = ("_counted", "_holder", "_over", "deadline", "tracker")

    def __init__(self, tracker: PendingTracker, deadline: float) -> None:
        self.tracker = tracker
        self.deadline = deadline
        """Event-loop time by which the client's first SETTINGS must have arrived."""
        self._holder: Holder | None = None
        self._counted = False
        self._over = False

    def hold(self, holder: Holder) -> None:
        """``holder`` works on the connection from now on; the first one makes it count.

        Counting it may drop it at once (``holder.abort()``) or drop an older one.
        """
        self._holder = holder
        if not self._counted:
            self._counted = True
            self.tracker.pending_started(self)

    def end(self) -> None:
        """The connection serves now, failed or closed: it no longer counts (idempotent)."""
        self._holder = None
        if self._counted and not self._over:
            self._over = True
            self.tracker.pending_ended(self)

    def abort(self) -> None:
        """Drop the connection (too many pending, or the server is stopping)."""
        if self._holder is not None:
            self._holder.abort()

    @property
    def accepting(self) -> bool:
        """Whether the connection may be served if its TLS handshake completes now."""
        return self.tracker.accepting
