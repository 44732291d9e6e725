"""HPACK blocks remembered across connections decode and encode exactly as hpack would.

The coders of :mod:`fastinject._hpack` replay what a block did to the dynamic table from a memo
shared by every connection; these tests run many connections with shared, diverging and
evicting histories against plain hpack coders, then the same through real sockets.
"""

from __future__ import annotations

import json
from typing import Any

import grpc
import hpack
import pytest
from hpack.exceptions import HPACKDecodingError, InvalidTableSizeError, OversizedHeaderListError
from hpack.struct import NeverIndexedHeaderTuple
from hypothesis import given, settings
from hypothesis import strategies as st

from fastinject._hpack import CachingDecoder, CachingEncoder, HpackMemo
from protocol.wire import OpenWire, request_headers
from serving import Served, method

# A small pool, so that connections share histories; long values make the table evict.
_FIELDS = [
    (b":method", b"POST"),
    (b":path", b"/test.Echo/Unary"),
    (b":path", b"/test.Echo/Metadata"),
    (b"content-type", b"application/grpc"),
    (b"te", b"trailers"),
    (b"x-trace", b"a" * 700),
    (b"x-trace", b"b" * 1500),
    (b"user-bin", b"\x00\xff" * 300),
    (b"grpc-timeout", b"100m"),
    (b"x-small", b"1"),
]
_header_lists = st.lists(st.sampled_from(range(len(_FIELDS))), max_size=6)
# A connection: what it sends, in order; an int is a table size change, a list is a header list
# (an index below 0 marks the field never-indexed).
_operations = st.lists(
    st.one_of(
        _header_lists,
        st.lists(st.sampled_from(range(-len(_FIELDS), 0)), min_size=1, max_size=2),
        st.sampled_from([0, 100, 2048, 4096]),
    ),
    min_size=1,
    max_size=8,
)
_memos = st.builds(
    HpackMemo,
    st.sampled_from([300, 5000, 1 << 20]),
    shared=st.just(True),
    quota=st.sampled_from([1, 3, 32]),
)


def _fields(indices: list[int]) -> list[tuple[bytes, bytes]]:
    return [
        NeverIndexedHeaderTuple(*_FIELDS[~i]) if i < 0 else _FIELDS[i]
        for i in indices
    ]


def _outcome(decoder: hpack.Decoder, block: bytes) -> Any:
    """The decoded fields with their types, or the type of the error."""
    try:
        return [(type(header), tuple(header)) for header in decoder.decode(block, raw=True)]
    except HPACKDecodingError as exc:
        return type(exc)


@settings(max_examples=150, deadline=None)
@given(memo=_memos, connections=st.lists(_operations, min_size=1, max_size=6))
def test_decoding_matches_hpack_over_connections_sharing_a_memo(
    memo: HpackMemo, connections: list[list[Any]]
) -> None:
    """Request blocks decode as hpack decodes them, on connections run in turns on one memo."""
    peers = [(hpack.Encoder(), hpack.Decoder(), CachingDecoder(memo)) for _ in connections]
    for turn in range(max(map(len, connections))):
        for (client, reference, ours), operations in zip(peers, connections, strict=True):
            if turn >= len(operations):
                continue
            operation = operations[turn]
            if isinstance(operation, int):
                client.header_table_size = operation  # announced in the next block
                continue
            # (hpack's encoder can write blocks its decoder refuses: two equal size changes
            # in a row cancel the announcement of the first.)
            block = client.encode(_fields(operation))
            assert _outcome(ours, block) == _outcome(reference, block)


@settings(max_examples=150, deadline=None)
@given(memo=_memos, connections=st.lists(_operations, min_size=1, max_size=6))
def test_encoding_matches_hpack_over_connections_sharing_a_memo(
    memo: HpackMemo, connections: list[list[Any]]
) -> None:
    """Response blocks are the bytes hpack writes, and the peer decodes them to our headers."""
    peers = [(hpack.Encoder(), CachingEncoder(memo), hpack.Decoder()) for _ in connections]
    for turn in range(max(map(len, connections))):
        for (reference, ours, client), operations in zip(peers, connections, strict=True):
            if turn >= len(operations):
                continue
            operation = operations[turn]
            if isinstance(operation, int):
                # The client's SETTINGS_HEADER_TABLE_SIZE, as h2 applies it.  (hpack forgets a
                # pending size change when set to the same size again; same bytes, and a peer
                # that cannot decode them, with or without the memo.)
                if operation == reference.header_table_size:
                    continue
                reference.header_table_size = operation
                ours.header_table_size = operation
                continue
            headers = _fields([i if i >= 0 else ~i for i in operation])
            block = ours.encode(headers)
            assert block == reference.encode(headers)
            assert [tuple(h) for h in client.decode(block, raw=True)] == headers


def test_a_known_block_under_a_lower_limit_still_fails() -> None:
    """A block decoded before is refused when the decoder's limits have since shrunk."""
    memo = HpackMemo(1 << 20, shared=True)
    block = hpack.Encoder().encode([(b"x-big", b"v" * 3000)])
    CachingDecoder(memo).decode(block, raw=True)
    strict = CachingDecoder(memo)
    strict.max_header_list_size = 500  # 4 x 500 decoded bytes at most
    with pytest.raises(OversizedHeaderListError):
        strict.decode(block, raw=True)
    resizing = hpack.Encoder()
    resizing.header_table_size = 2048
    block = resizing.encode([(b"x-small", b"1")])
    CachingDecoder(memo).decode(block, raw=True)
    shrunk = CachingDecoder(memo)
    shrunk.max_allowed_table_size = 1024  # our SETTINGS_HEADER_TABLE_SIZE, acknowledged
    with pytest.raises(InvalidTableSizeError):
        shrunk.decode(block, raw=True)


def test_a_broken_block_is_never_remembered() -> None:
    """A block hpack refuses is refused again on the next connection, not replayed."""
    memo = HpackMemo(1 << 20, shared=True)
    block = hpack.Encoder().encode([(b"x-key", b"value")])[:-2]  # truncated
    for _ in range(2):
        with pytest.raises(HPACKDecodingError):
            CachingDecoder(memo).decode(block, raw=True)
    assert not memo.root.next


def test_a_connection_adds_at_most_its_quota_to_the_shared_memo() -> None:
    """Past its quota a connection's blocks go to a memo of its own; the shared one stays."""
    memo = HpackMemo(1 << 20, shared=True, quota=4)
    client, ours = hpack.Encoder(), CachingDecoder(memo)
    for n in range(50):
        headers = [(b"x-count", str(n).encode())]
        assert list(ours.decode(client.encode(headers), raw=True)) == headers
    states, seen = [memo.root], set()
    while states:
        state = states.pop()
        if id(state) not in seen:
            seen.add(id(state))
            states += [after for _, after in state.next.values()]
    assert len(seen) == 5  # the root and four blocks' states



def test_a_coder_from_before_the_memo_started_again_holds_none_of_it() -> None:
    """A memo that starts again forgets the blocks of its old states too, still decoding right.

    An idle connection sits in the state it was last in (the root when it has decoded
    nothing): were the old states' blocks kept, each such connection would keep a whole old
    memo alive, up to its budget, for as long as it stays open.
    """
    memo = HpackMemo(5000, shared=True)
    idle = CachingDecoder(memo)
    old_root = memo.root
    client, busy = hpack.Encoder(), CachingDecoder(memo)
    n = 0
    while memo.epoch == 0:
        headers = [(b"x-count", str(n).encode())]
        assert list(busy.decode(client.encode(headers), raw=True)) == headers
        n += 1
    assert idle._state is old_root
    assert not old_root.next
    headers = [(b"x-after", b"1")]
    assert list(idle.decode(hpack.Encoder().encode(headers), raw=True)) == headers

# -- through real connections ---------------------------------------------------------------


async def _metadata_call(port: int, metadata: tuple[tuple[str, Any], ...]) -> list[Any]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = await method(channel, "Metadata")(b"", metadata=metadata)
    return [pair for pair in json.loads(reply) if not pair[0].startswith(("user-agent",))]


async def test_metadata_of_many_connections_arrives_exactly(served: Served) -> None:
    """Fifty grpcio connections each get exactly their metadata back.

    Each sends it in its own order and sizes (some long enough to evict table entries, ``-bin``
    included).
    """
    for n in range(50):
        pairs: list[tuple[str, Any]] = [
            ("x-order", str(n % 3)),
            ("x-long", "L" * (100 + 400 * (n % 4))),
            ("x-blob-bin", bytes([n % 7]) * (50 + n)),
            ("x-same", "same"),
        ]
        metadata = tuple(pairs[n % 4 :] + pairs[: n % 4])
        echoed = await _metadata_call(served.port, metadata)
        expected = [[key, value.hex() if key.endswith("-bin") else value]
                    for key, value in metadata]
        assert [pair for pair in echoed if pair[0].startswith("x-")] == expected


async def test_raw_connections_with_the_same_history_then_diverging(
    served: Served, open_wire: OpenWire
) -> None:
    """Connections with the same first blocks, then different ones, get their own answers.

    Raw h2 connections: their table is replayed from the memo, then changed.
    """
    for n in range(20):
        wire = await open_wire(served.port)
        first = wire.client.start_call(b"/test.Echo/Unary", [b"same"])
        response = await wire.finish(first)
        assert response.status == 0
        assert response.messages == [(False, b"same")]
        extra = [(b"x-n", str(n % 5).encode() * (n + 1))]
        headers = request_headers(b"/test.Echo/Metadata", extra=extra)
        second = wire.client.start_call(headers=headers, messages=[b""])
        response = await wire.finish(second)
        assert response.status == 0
        assert ["x-n", extra[0][1].decode()] in json.loads(response.messages[0][1])
        wire.close()


@pytest.fixture
async def served(start_server: Any) -> Served:
    """A server with default settings."""
    return await start_server()
