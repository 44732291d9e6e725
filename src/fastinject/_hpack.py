"""HPACK coders that remember blocks, across connections too.

Clients send the same request headers on every call and we send the same response headers
and ``grpc-status: 0`` trailers, so most header blocks repeat.  What a block means (or which
block a header list becomes) depends only on the bytes (the headers) and on the dynamic table,
and what it does to the table depends on the same two things.  A :class:`TableState` is one
content of a dynamic table and remembers, per block seen in it, the result and the state the
block led to: a coder in a known state decodes (encodes) a known block with one dict lookup,
and only materialises the table in hpack's ``HeaderTable`` when it meets a block it does not
know.

Every connection's coders start from the same state (an empty table of 4096 bytes), so the
states are shared by every connection of the process (:data:`DECODER_MEMO`,
:data:`ENCODER_MEMO`): the first request of a new connection from a client seen before is
decoded with lookups, where a table of its own would Huffman-decode every literal of it.

Bounds (``docs/SECURITY.md``): a memo holds at most its ``budget`` (an estimate of the bytes
its states and results hold); past it, it forgets everything and starts again.  One
connection adds at most :data:`SHARED_TRANSITIONS` blocks to a shared memo, then goes on with
a small memo of its own, so one peer cannot keep the shared one flushing.  Blocks with a
never-indexed field (RFC 7541 7.1.3, the peer's sensitive values) and large blocks are never
shared.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any

import hpack
from hpack.struct import NeverIndexedHeaderTuple

HARD_HEADER_LIST_FACTOR = 4
"""A request header block over this many times ``max_header_list_size`` ends the connection."""
SHARED_TRANSITIONS = 32
"""Blocks one connection's coder may add to a shared memo before it uses a memo of its own."""
SHARED_BUDGET = 1 << 20
"""What a shared memo may hold (estimated bytes) before it starts again."""
PRIVATE_BUDGET = 32 << 10
"""What a connection's own memo may hold before it starts again."""
MAX_SHARED_BLOCK = 2048
"""Longer header blocks are remembered per connection only."""
# Estimated bytes per remembered header field or table entry, beyond its name and value.
_FIELD_COST = 64

# (entries, size, maxsize): a dynamic table's content, newest entry first.
Snapshot = tuple[tuple[tuple[bytes, bytes], ...], int, int]


class HeaderBlock(tuple[Any, ...]):
    """A decoded header list, as :class:`CachingDecoder` returns it.

    The decoder returns the same object each time it decodes a block it remembers (the same
    bytes in the same table state): what consumers derive from a header list alone is computed
    once and kept on it, in these attributes (None until computed).  The memo's budget counts
    them as much again as the decoded fields.
    """

    request_length: int | None = None
    """h2's view of a request (:func:`fastinject._h2streams.request_length`)."""
    head: Any = None
    """The gRPC request head parsed from it, with the settings it was parsed under
    (:meth:`fastinject.protocol.ServerProtocol._head`)."""


class TableState:
    """One content of a dynamic table, and what the blocks met in it did."""

    __slots__ = ("epoch", "next", "snapshot")

    def __init__(self, snapshot: Snapshot, epoch: int) -> None:
        self.snapshot = snapshot
        self.epoch = epoch
        # block key -> (result, the state after the block)
        self.next: dict[Any, tuple[Any, TableState]] = {}


def _snapshot(table: Any) -> Snapshot:
    return (tuple(table.dynamic_entries), table._current_size, table._maxsize)


class HpackMemo:
    """Table states and the blocks seen in them, within ``budget`` estimated bytes.

    ``shared``: the memo of every connection of the process, to which one connection adds at
    most ``quota`` blocks (see the module docstring).
    """

    def __init__(
        self,
        budget: int,
        root: Snapshot = ((), 0, 4096),
        *,
        shared: bool,
        quota: int = SHARED_TRANSITIONS,
    ) -> None:
        self.budget = budget
        self.shared = shared
        self.quota = quota
        self.epoch = 0
        self.spent = 0
        self._root_snapshot = root
        self.root = TableState(root, 0)
        # The states that remember blocks, emptied when the memo starts again: a coder idling
        # in an old state would otherwise keep everything reachable from it alive.
        self._learning: list[TableState] = []

    def clear(self) -> None:
        """Forget every state and block (the states coders are in stay valid)."""
        self.epoch += 1
        self.spent = 0
        self.root = TableState(self._root_snapshot, self.epoch)
        for state in self._learning:
            state.next = {}
        self._learning = []

    def state_of(self, table: Any) -> TableState:
        """A new state for ``table``'s content, linked from no other."""
        return TableState(_snapshot(table), self.epoch)

    def learn(self, state: TableState, key: Any, result: Any, cost: int, table: Any) -> TableState:
        """Remember that block ``key`` took ``state`` to ``table``'s content, giving ``result``.

        Returns the state the coder is now in.  A state from before the memo last started
        again learns nothing more: the coder goes on from a new one.
        """
        snapshot = _snapshot(table)
        if state.epoch == self.epoch:
            same = snapshot == state.snapshot
            if not same:
                cost += _FIELD_COST * len(snapshot[0]) + snapshot[1]
            self.spent += cost
            if self.spent <= self.budget:
                after = state if same else TableState(snapshot, self.epoch)
                if not state.next:
                    self._learning.append(state)
                state.next[key] = (result, after)
                return after
            self.clear()
        return TableState(snapshot, self.epoch)


DECODER_MEMO = HpackMemo(SHARED_BUDGET, shared=True)
"""The request header blocks of every connection of this process."""
ENCODER_MEMO = HpackMemo(SHARED_BUDGET, shared=True)
"""The response header lists of every connection of this process."""


class _MemoCoder:
    """The state-tracking half of a memoising coder (mixed into hpack's Encoder/Decoder)."""

    header_table: Any

    def _attach(self, memo: HpackMemo) -> None:
        self._memo = memo
        self._state = memo.root
        self._loaded = True  # the HeaderTable holds the state's content
        self._shared_left = memo.quota

    def _recall(self, key: Any) -> Any:
        """What block ``key`` gives, if the memo knows it here (then in the state after it)."""
        state = self._state
        hit = state.next.get(key)
        if hit is None:
            return None
        self._state = hit[1]
        if hit[1] is not state:
            self._loaded = False
        return hit[0]

    def _load(self) -> None:
        """Make hpack's HeaderTable hold the current state's content."""
        if not self._loaded:
            entries, size, maxsize = self._state.snapshot
            table = self.header_table
            table.dynamic_entries = deque(entries)
            table._current_size = size
            table._maxsize = maxsize
            self._loaded = True

    def _learn(self, key: Any, result: Any, cost: int, shareable: bool) -> None:
        """After a block the memo did not know (the table is loaded and changed by it)."""
        memo = self._memo
        if memo.shared:
            if not shareable or self._shared_left <= 0:
                # A memo of its own from now on, starting from where the table is.
                self._memo = HpackMemo(PRIVATE_BUDGET, _snapshot(self.header_table), shared=False)
                self._state = self._memo.root
                return
            self._shared_left -= 1
        self._state = memo.learn(self._state, key, result, cost, self.header_table)

    def _rebase(self) -> None:
        """The table was changed outside a block (a resize): go on from its new content."""
        self._state = self._memo.state_of(self.header_table)


class CachingDecoder(_MemoCoder, hpack.Decoder):
    """An HPACK decoder that decodes the blocks its memo knows with a lookup.

    h2 gives the decoder our advertised SETTINGS_MAX_HEADER_LIST_SIZE, and a block over the
    decoder's limit ends the whole connection (the HPACK context cannot be trusted after a
    half-decoded block).  gRPC fails only the call whose metadata is too large, so that limit
    is checked per call by the protocol; the decoder stops only blocks over
    :data:`HARD_HEADER_LIST_FACTOR` times it, which are not worth decoding at all.
    """

    def __init__(self, memo: HpackMemo = DECODER_MEMO) -> None:
        super().__init__()
        self._attach(memo)

    @property
    def max_header_list_size(self) -> int:
        """The decoded size beyond which a header block ends the connection."""
        return self._decoding_limit

    @max_header_list_size.setter
    def max_header_list_size(self, advertised: int) -> None:
        self._decoding_limit = advertised * HARD_HEADER_LIST_FACTOR

    def decode(self, data: bytes, raw: bool = False) -> Any:
        """The header list of block ``data``, as hpack's ``decode`` (from the memo if known).

        A :class:`HeaderBlock` (a tuple), the same object for every decoding of a remembered
        block.
        """
        # The limits are in the key: a block decoded under a larger one may fail under this one.
        key = (bytes(data), raw, self._decoding_limit, self.max_allowed_table_size)
        known = self._recall(key)
        if known is not None:
            return known
        self._load()
        try:
            headers = HeaderBlock(super().decode(data, raw))
        except BaseException:
            self._rebase()  # whatever the half-decoded block left in the table
            raise
        shareable = len(key[0]) <= MAX_SHARED_BLOCK and not any(
            header.__class__ is NeverIndexedHeaderTuple for header in headers
        )
        # The fields, and what consumers derive from them (HeaderBlock) as much again.
        cost = len(key[0]) + 2 * sum(_FIELD_COST + len(n) + len(v) for n, v in headers)
        self._learn(key, headers, cost, shareable)
        return headers


class CachingEncoder(_MemoCoder, hpack.Encoder):
    """An HPACK encoder that encodes the header lists its memo knows with a lookup.

    Header lists must be lists of plain ``(name, value)`` byte tuples (any other iterable is
    encoded without the memo).
    """

    def __init__(self, memo: HpackMemo = ENCODER_MEMO) -> None:
        super().__init__()
        self._attach(memo)

    @property
    def header_table_size(self) -> int:
        """The dynamic table's size (the peer's SETTINGS_HEADER_TABLE_SIZE)."""
        return int(self._state.snapshot[2])

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        self._load()
        if value == self.header_table.maxsize and not self.header_table.resized:
            return  # hpack would change nothing either
        hpack.Encoder.header_table_size.fset(self, value)  # type: ignore[attr-defined]
        self._rebase()

    def encode(self, headers: Iterable[Any], huffman: bool = True) -> bytes:
        """The block for ``headers``, as hpack's ``encode`` (from the memo if known)."""
        if self.header_table.resized or not isinstance(headers, list):
            self._load()
            block = super().encode(headers, huffman)
            self._rebase()
            return block
        key = (tuple(headers), huffman)
        known = self._recall(key)
        if known is not None:
            return known  # type: ignore[no-any-return]
        self._load()
        block = super().encode(headers, huffman)
        cost = len(block) + sum(_FIELD_COST + len(n) + len(v) for n, v in key[0])
        self._learn(key, block, cost, len(block) <= MAX_SHARED_BLOCK)
        return block
