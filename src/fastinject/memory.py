"""The server-wide budget of bytes held for partly received request messages.

Flow-control credit for a message being assembled is returned early (a message larger than the
window must be able to arrive), so every stream of every connection can make the server hold
bytes that no handler has taken yet.  ``max_partial_message_bytes`` bounds that per connection;
:class:`MessageMemory` bounds the sum over every connection of a server, accepted and injected
alike (grpc core's resource quota idea: one counter that all transports draw from).

Past the budget, the connection holding the most gives up the call that has held bytes the
longest (it fails with ``RESOURCE_EXHAUSTED``), again until the sum is back within the budget.
The stream whose bytes crossed the line is not the one that pays unless it belongs to that
connection: an attacker holding half messages on many streams loses them, a client whose one
message arrives while the budget is full keeps it.

While the budget is nearly used up (:data:`PRESSED`), a connection holding at least its share
of it opens no new call (:meth:`MessageMemory.refuses`): its new streams are reset before a call
starts, as grpc core refuses new streams under memory pressure.  Shedding a call costs the loop
its start, task and status; a refused stream costs a RST_STREAM.
"""

from __future__ import annotations

from typing import Protocol

from .options import ServerSettings

PRESSED = 0.9
"""The share of the budget in use past which the largest holders open no new call (the
threshold of grpc core's ``MemoryQuota::IsMemoryPressureHigh`` when it began refusing streams)."""


class Holder(Protocol):
    """A connection that holds bytes of partly received messages (a ``ServerProtocol``)."""

    partial_message_bytes: int

    def shed_stream(self) -> None:
        """Fail one stream holding bytes, dropping its buffer."""


class MessageMemory:
    """Bytes held for partly received messages by every connection of a server, and the cap.

    Holders report every change with :meth:`change` (after updating their own
    ``partial_message_bytes``) and call :meth:`reclaim` when :attr:`over`.
    """

    __slots__ = ("_holders", "limit", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        # The holders with bytes held, as an insertion-ordered set.
        self._holders: dict[Holder, None] = {}

    @classmethod
    def for_settings(cls, settings: ServerSettings) -> MessageMemory:
        """The budget ``settings`` ask for: never below one message of the receive limit."""
        return cls(max(
            settings.max_server_partial_message_bytes, settings.max_receive_message_length + 5
        ))

    @property
    def over(self) -> bool:
        """Whether more bytes are held than the budget allows."""
        return self.used > self.limit

    @property
    def holders(self) -> int:
        """How many connections hold bytes now."""
        return len(self._holders)

    def refuses(self, holder: Holder) -> bool:
        """Whether a new stream of ``holder`` must be refused before its call starts.

        True while over :data:`PRESSED` of the budget is used and ``holder`` holds at least an
        even share of it (what is used, over the connections holding bytes): a connection
        holding nothing, or less than the others, is served.
        """
        used = self.used
        return used > self.limit * PRESSED and holder.partial_message_bytes * len(
            self._holders
        ) >= used

    def change(self, holder: Holder, delta: int) -> None:
        """``holder`` holds ``delta`` bytes more (or fewer, if negative) than before."""
        self.used += delta
        if holder.partial_message_bytes:
            self._holders[holder] = None
        else:
            self._holders.pop(holder, None)

    def reclaim(self) -> None:
        """Shed streams of the largest holders until the budget is kept."""
        holders = self._holders
        while self.used > self.limit and holders:
            largest = max(holders, key=_held_by)
            largest.shed_stream()


def _held_by(holder: Holder) -> int:
    return holder.partial_message_bytes


__all__ = ["PRESSED", "Holder", "MessageMemory"]
