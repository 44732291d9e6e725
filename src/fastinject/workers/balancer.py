"""Least-loaded choice of a worker for a new connection (sans-IO: numbers in, a choice out).

A worker's load is what it last reported (live connections and in-flight calls) plus the
connections sent to it that its report did not count yet, so a burst of connections arriving
between two reports is still spread out.  Connections and calls weigh the same: a worker with
one connection running fifty streams is busier than one with ten idle connections.  Among
equally loaded workers the one that was sent the fewest connections in all wins, so short
connections to an idle pool go round the workers instead of all landing on the first.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

__all__ = ["WorkerLoad", "least_loaded"]


class WorkerLoad:
    """The supervisor's picture of one worker's load."""

    __slots__ = ("calls", "connections", "received", "sent")

    def __init__(self) -> None:
        self.sent = 0
        """Connections sent to the worker so far."""
        self.received = 0
        """Connections the worker had taken in at its last report."""
        self.connections = 0
        """Live connections at the last report."""
        self.calls = 0
        """In-flight calls at the last report."""

    def report(self, received: int, connections: int, calls: int) -> None:
        """Record a load report from the worker."""
        self.received = received
        self.connections = connections
        self.calls = calls

    @property
    def score(self) -> int:
        """Live connections (reported + sent since) plus in-flight calls: lower is idler."""
        return self.connections + (self.sent - self.received) + self.calls


T = TypeVar("T")


def least_loaded(candidates: Iterable[tuple[T, WorkerLoad]]) -> T | None:
    """The candidate whose load scores lowest (fewest connections ever sent breaks ties)."""
    best: T | None = None
    best_key: tuple[int, int] | None = None
    for candidate, load in candidates:
        key = (load.score, load.sent)
        if best_key is None or key < best_key:
            best, best_key = candidate, key
    return best
