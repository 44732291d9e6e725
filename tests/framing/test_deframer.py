"""Deframer behaviour: messages come out whole and in order however the bytes are cut."""

from __future__ import annotations

import array
import itertools
import random
import struct
import tracemalloc
from collections.abc import Sequence
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastinject.errors import (
    FramingError,
    IncompleteMessageError,
    InvalidFlagsError,
    MessageTooLargeError,
)

Message = tuple[bytes, bool]

# Hypothesis deadlines are wall-clock limits; emulated CI runners are slow, so none here.
SETTINGS = settings(deadline=None, max_examples=150)

INPUT_KINDS = ["bytes", "bytearray", "memoryview", "offset_memoryview", "array"]


def encode(messages: Sequence[Message]) -> bytes:
    """The wire form of ``messages``, built independently of the framer under test."""
    return b"".join(
        struct.pack(">BI", int(flag), len(payload)) + payload for payload, flag in messages
    )


def split(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    """``data`` cut at the given offsets (duplicates and out-of-order cuts are fine)."""
    bounds = [0, *sorted({c for c in cuts if 0 < c < len(data)}), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def as_input(chunk: bytes, kind: str) -> bytes | bytearray | memoryview:
    """``chunk`` as the given kind of buffer."""
    if kind == "bytes":
        return chunk
    if kind == "bytearray":
        return bytearray(chunk)
    if kind == "memoryview":
        return memoryview(chunk)
    if kind == "offset_memoryview":
        # A slice that starts (and ends) inside a larger buffer.
        return memoryview(b"\xff\xfe\xfd" + chunk + b"\xee\xef")[3 : 3 + len(chunk)]
    return memoryview(array.array("B", chunk))


def feed_all(deframer: object, chunks: Sequence[bytes | bytearray | memoryview]) -> list[Message]:
    """Every message produced by feeding ``chunks`` in order."""
    out: list[Message] = []
    for chunk in chunks:
        out.extend(deframer.feed(chunk))  # type: ignore[attr-defined]
    return out


def _large_payload(size_and_seed: tuple[int, int]) -> bytes:
    size, seed = size_and_seed
    return random.Random(seed).randbytes(size)


payloads = st.one_of(
    st.binary(max_size=300),
    st.tuples(st.integers(1_000, 70_000), st.integers()).map(_large_payload),
)
messages_strategy = st.lists(st.tuples(payloads, st.booleans()), max_size=12)


@SETTINGS
@given(messages=messages_strategy, data=st.data())
def test_any_cut_of_the_stream_yields_the_same_messages(
    impl: ModuleType, messages: list[Message], data: st.DataObject
) -> None:
    """Messages of any size (incl. 0) and flag, cut at arbitrary points, come out unchanged."""
    wire = encode(messages)
    cuts = data.draw(st.lists(st.integers(0, len(wire)), max_size=40), label="cuts")
    kind = data.draw(st.sampled_from(INPUT_KINDS), label="kind")
    deframer = impl.Deframer(max_message_length=100_000)
    out = feed_all(deframer, [as_input(c, kind) for c in split(wire, cuts)])
    deframer.close()
    assert out == messages
    assert all(type(payload) is bytes and type(flag) is bool for payload, flag in out)


@SETTINGS
@given(messages=st.lists(st.tuples(st.binary(max_size=40), st.booleans()), max_size=6))
def test_one_byte_at_a_time_yields_the_same_messages(
    impl: ModuleType, messages: list[Message]
) -> None:
    """Feeding a single byte per call still yields every message, each exactly once."""
    wire = encode(messages)
    deframer = impl.Deframer()
    out = feed_all(deframer, [wire[i : i + 1] for i in range(len(wire))])
    deframer.close()
    assert out == messages


@SETTINGS
@given(messages=messages_strategy, data=st.data())
def test_buffered_counts_bytes_not_yet_returned(
    impl: ModuleType, messages: list[Message], data: st.DataObject
) -> None:
    """After every feed, ``buffered`` is the bytes fed minus the wire size of messages returned."""
    wire = encode(messages)
    cuts = data.draw(st.lists(st.integers(0, len(wire)), max_size=20), label="cuts")
    deframer = impl.Deframer(max_message_length=100_000)
    fed = returned = 0
    for chunk in split(wire, cuts):
        out = deframer.feed(chunk)
        fed += len(chunk)
        returned += sum(5 + len(payload) for payload, _ in out)
        assert deframer.buffered == fed - returned
    assert deframer.buffered == 0


# --- memory held for a message being received ----------------------------------------------


@SETTINGS
@given(messages=messages_strategy, data=st.data())
def test_held_memory_follows_the_bytes_that_arrived(
    impl: ModuleType, messages: list[Message], data: st.DataObject
) -> None:
    """``held`` covers what is buffered and is at most twice it (or the 1 KiB floor)."""
    wire = encode(messages)
    cuts = data.draw(st.lists(st.integers(0, len(wire)), max_size=20), label="cuts")
    deframer = impl.Deframer(max_message_length=100_000)
    for chunk in split(wire, cuts):
        deframer.feed(chunk)
        assert deframer.buffered <= deframer.held <= max(2 * deframer.buffered, 5 + 1024)
        if deframer.buffered == 0:
            assert deframer.held == 0
    assert deframer.held == 0


def test_a_header_alone_holds_one_kib_not_its_declared_length(impl: ModuleType) -> None:
    """A header declaring 4 MiB, with or without a few body bytes, holds 5 + 1024 bytes."""
    deframer = impl.Deframer()
    deframer.feed(struct.pack(">BI", 0, 4 * 1024 * 1024))
    assert deframer.held == 5 + 1024
    deframer.feed(b"x" * 100)
    assert (deframer.buffered, deframer.held) == (105, 5 + 1024)


def test_the_declared_size_is_allocated_once_half_is_here(impl: ModuleType) -> None:
    """A full body buffer doubles with what arrives; past half of the body, the final size."""
    length = 1 << 20
    payload = random.Random(7).randbytes(length)
    deframer = impl.Deframer()
    steps = [  # (body bytes received after the feed, held)
        (3000, 5 + 6000),
        (6000, 5 + 6000),
        (6001, 5 + 12_002),
        (length // 2, 5 + length),
        (length - 1, 5 + length),
    ]
    received = 0
    assert deframer.feed(struct.pack(">BI", 0, length)) == []
    for upto, held in steps:
        assert deframer.feed(payload[received:upto]) == []
        received = upto
        assert deframer.held == held
    assert deframer.feed(payload[received:]) == [(payload, False)]
    assert deframer.held == 0


def test_many_headers_declaring_4_mib_allocate_little(impl: ModuleType) -> None:
    """1,000 streams each sent a 4 MiB header (5 KB of input) allocate about 1 MiB, not 4 GiB."""
    header = struct.pack(">BI", 0, 4 * 1024 * 1024)
    tracemalloc.start()
    try:
        deframers = [impl.Deframer() for _ in range(1000)]
        for deframer in deframers:
            deframer.feed(header)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sum(d.held for d in deframers) == 1000 * (5 + 1024)
    assert peak < 4 * 1024 * 1024


def test_a_failed_deframer_holds_nothing(impl: ModuleType) -> None:
    """A framing error drops the partial message's buffer."""
    deframer = impl.Deframer()
    deframer.feed(struct.pack(">BI", 0, 100_000) + b"x" * 5000)
    assert deframer.held == 5 + 10_000
    with pytest.raises(IncompleteMessageError):
        deframer.close()
    assert deframer.held == 0


@pytest.mark.parametrize("kind", INPUT_KINDS)
def test_every_buffer_kind_is_accepted(impl: ModuleType, kind: str) -> None:
    """bytes, bytearray, memoryviews (also slices starting mid-buffer) and arrays all work."""
    messages = [(b"first", False), (b"second message", True), (b"", False)]
    wire = encode(messages)
    deframer = impl.Deframer()
    assert feed_all(deframer, [as_input(c, kind) for c in split(wire, [3, 11, 17])]) == messages


def test_multibyte_items_are_read_as_raw_bytes(impl: ModuleType) -> None:
    """A buffer of 4-byte items is consumed as its underlying bytes, not as items."""
    wire = encode([(b"abc", False)])  # 8 bytes = two 32-bit items
    items = array.array("I")
    items.frombytes(wire)
    assert impl.Deframer().feed(items) == [(b"abc", False)]


def test_payload_does_not_alias_the_callers_buffer(impl: ModuleType) -> None:
    """Payloads stay intact when the caller reuses its buffer right after ``feed``."""
    whole = bytearray(encode([(b"hello", False)]))
    spanning = bytearray(encode([(b"world!", True)]))
    deframer = impl.Deframer()
    out = deframer.feed(whole)
    whole[:] = b"\x00" * len(whole)
    first, second = spanning[:7], spanning[7:]
    assert deframer.feed(first) == []
    first[:] = b"\x00" * len(first)
    out += deframer.feed(second)
    assert out == [(b"hello", False), (b"world!", True)]


def test_non_buffer_input_raises_type_error_without_poisoning(impl: ModuleType) -> None:
    """A str (not a buffer) is rejected with TypeError and the deframer keeps working."""
    deframer = impl.Deframer()
    with pytest.raises(TypeError):
        deframer.feed("\x00\x00\x00\x00\x00")
    assert deframer.feed(encode([(b"ok", False)])) == [(b"ok", False)]


def test_non_contiguous_input_raises_buffer_error(impl: ModuleType) -> None:
    """A strided memoryview is rejected with BufferError and consumes nothing."""
    deframer = impl.Deframer()
    with pytest.raises(BufferError):
        deframer.feed(memoryview(encode([(b"abcdef", False)]) * 2)[::2])
    assert deframer.buffered == 0
    assert deframer.feed(encode([(b"ok", True)])) == [(b"ok", True)]


# --- limits -------------------------------------------------------------------------------


def test_default_limit_is_4_mib(impl: ModuleType) -> None:
    """Without an argument the limit is gRPC's default of 4 MiB."""
    assert impl.DEFAULT_MAX_MESSAGE_LENGTH == 4 * 1024 * 1024
    assert impl.Deframer().max_message_length == 4 * 1024 * 1024


@SETTINGS
@given(limit=st.integers(0, 2**32 - 2), excess=st.integers(1, 2**32))
def test_oversized_header_raises_before_the_body_arrives(
    impl: ModuleType, limit: int, excess: int
) -> None:
    """A header declaring more than the limit raises at once, carrying length and limit."""
    length = min(limit + excess, 2**32 - 1)
    deframer = impl.Deframer(max_message_length=limit)
    with pytest.raises(MessageTooLargeError) as caught:
        deframer.feed(struct.pack(">BI", 0, length))
    assert (caught.value.length, caught.value.limit) == (length, limit)


def test_oversized_header_fed_bytewise_raises_on_its_fifth_byte(impl: ModuleType) -> None:
    """Fed one byte at a time, the limit check fires exactly when the header is complete."""
    header = struct.pack(">BI", 1, 1_000_001)
    deframer = impl.Deframer(max_message_length=1_000_000)
    for i in range(4):
        assert deframer.feed(header[i : i + 1]) == []
        assert deframer.buffered == i + 1
    with pytest.raises(MessageTooLargeError) as caught:
        deframer.feed(header[4:])
    assert (caught.value.length, caught.value.limit) == (1_000_001, 1_000_000)


def test_huge_limit_accepts_the_largest_declarable_length(impl: ModuleType) -> None:
    """A limit beyond 2**32 - 1 accepts any header; the body is then awaited."""
    deframer = impl.Deframer(max_message_length=2**40)
    assert deframer.feed(struct.pack(">BI", 0, 10) + b"abc") == []
    assert deframer.buffered == 8
    assert deframer.max_message_length == 2**40


def test_length_equal_to_limit_is_accepted(impl: ModuleType) -> None:
    """The limit is inclusive: a message of exactly ``max_message_length`` bytes passes."""
    deframer = impl.Deframer(max_message_length=3)
    assert deframer.feed(encode([(b"abc", False)])) == [(b"abc", False)]


def test_zero_limit_allows_only_empty_messages(impl: ModuleType) -> None:
    """With a limit of 0, empty messages pass and a 1-byte message is rejected."""
    deframer = impl.Deframer(max_message_length=0)
    assert deframer.feed(encode([(b"", True)])) == [(b"", True)]
    with pytest.raises(MessageTooLargeError):
        deframer.feed(encode([(b"x", False)]))


def test_changed_limit_applies_to_the_next_header(impl: ModuleType) -> None:
    """Lowering ``max_message_length`` rejects later headers that the old limit allowed."""
    deframer = impl.Deframer(max_message_length=10)
    assert deframer.feed(encode([(b"12345", False)])) == [(b"12345", False)]
    deframer.max_message_length = 4
    assert deframer.max_message_length == 4
    with pytest.raises(MessageTooLargeError) as caught:
        deframer.feed(encode([(b"12345", False)]))
    assert caught.value.limit == 4


@pytest.mark.parametrize("bad", [-1, -(2**70)])
def test_negative_limit_is_rejected(impl: ModuleType, bad: int) -> None:
    """A negative ``max_message_length`` raises ValueError, in the constructor and setter."""
    with pytest.raises(ValueError, match="max_message_length"):
        impl.Deframer(max_message_length=bad)
    deframer = impl.Deframer()
    with pytest.raises(ValueError, match="max_message_length"):
        deframer.max_message_length = bad
    assert deframer.max_message_length == 4 * 1024 * 1024


@pytest.mark.parametrize("bad", [1.5, "10", None])
def test_non_integer_limit_is_rejected(impl: ModuleType, bad: object) -> None:
    """A ``max_message_length`` that is not an integer raises TypeError."""
    with pytest.raises(TypeError):
        impl.Deframer(max_message_length=bad)


# --- bad flags and poisoning --------------------------------------------------------------


@SETTINGS
@given(flags=st.integers(2, 255))
def test_flags_other_than_0_or_1_raise_with_the_flags_byte(impl: ModuleType, flags: int) -> None:
    """A flags byte other than 0 or 1 raises InvalidFlagsError carrying that byte."""
    with pytest.raises(InvalidFlagsError) as caught:
        impl.Deframer().feed(struct.pack(">BI", flags, 0))
    assert caught.value.flags == flags
    assert isinstance(caught.value, FramingError)


def test_error_poisons_every_later_call_with_the_same_error(impl: ModuleType) -> None:
    """After a framing error, later feeds (even empty or valid ones) and close re-raise it."""
    deframer = impl.Deframer()
    with pytest.raises(InvalidFlagsError) as caught:
        deframer.feed(b"\x07\x00\x00\x00\x01x")
    for _ in range(2):
        with pytest.raises(InvalidFlagsError) as again:
            deframer.feed(b"")
        assert again.value is caught.value
    with pytest.raises(InvalidFlagsError) as again:
        deframer.feed(encode([(b"valid", False)]))
    assert again.value is caught.value
    with pytest.raises(InvalidFlagsError) as again:
        deframer.close()
    assert again.value is caught.value
    assert deframer.buffered == 0


def test_bad_header_fails_the_whole_feed_call(impl: ModuleType) -> None:
    """Messages completed before a bad header in the same call are not returned: it raises."""
    deframer = impl.Deframer()
    with pytest.raises(InvalidFlagsError):
        deframer.feed(encode([(b"good", False)]) + b"\x02\x00\x00\x00\x00")


def test_bad_header_after_a_pending_body_raises(impl: ModuleType) -> None:
    """A bad header right after a body completed from held bytes is still detected."""
    wire = encode([(b"0123456789", False)])
    deframer = impl.Deframer(max_message_length=10)
    assert deframer.feed(wire[:8]) == []
    with pytest.raises(MessageTooLargeError):
        deframer.feed(wire[8:] + struct.pack(">BI", 0, 11))


# --- end of stream ------------------------------------------------------------------------


@pytest.mark.parametrize("held", [1, 2, 3, 4])
def test_close_inside_a_header_reports_header_bytes(impl: ModuleType, held: int) -> None:
    """close() with a partial header raises IncompleteMessageError(held, 5)."""
    deframer = impl.Deframer()
    deframer.feed(encode([(b"done", False)]) + struct.pack(">BI", 0, 9)[:held])
    with pytest.raises(IncompleteMessageError) as caught:
        deframer.close()
    assert (caught.value.buffered, caught.value.expected) == (held, 5)


@pytest.mark.parametrize("body_bytes", [0, 1, 99])
def test_close_inside_a_body_reports_message_bytes(impl: ModuleType, body_bytes: int) -> None:
    """close() with a partial body raises IncompleteMessageError(5 + received, 5 + length)."""
    deframer = impl.Deframer()
    deframer.feed(struct.pack(">BI", 1, 100) + b"z" * body_bytes)
    with pytest.raises(IncompleteMessageError) as caught:
        deframer.close()
    assert (caught.value.buffered, caught.value.expected) == (5 + body_bytes, 105)
    with pytest.raises(IncompleteMessageError) as again:
        deframer.feed(b"z")
    assert again.value is caught.value


def test_close_on_a_message_boundary_succeeds(impl: ModuleType) -> None:
    """close() after whole messages (or none) returns quietly and can be repeated."""
    deframer = impl.Deframer()
    deframer.close()
    assert deframer.feed(encode([(b"a", False), (b"", True)])) == [(b"a", False), (b"", True)]
    deframer.close()
    deframer.close()


def test_large_message_in_16k_chunks(impl: ModuleType) -> None:
    """A 4 MiB message fed in 16 KiB chunks arrives whole and only with its last chunk."""
    payload = random.Random(4).randbytes(4 * 1024 * 1024)
    wire = encode([(payload, True)])
    deframer = impl.Deframer()
    chunks = [wire[i : i + 16384] for i in range(0, len(wire), 16384)]
    for chunk in chunks[:-1]:
        assert deframer.feed(chunk) == []
    assert deframer.buffered == len(wire) - len(chunks[-1])
    assert deframer.feed(chunks[-1]) == [(payload, True)]
    assert deframer.buffered == 0
