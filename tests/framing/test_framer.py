"""Framer behaviour: exact wire bytes, batching, and round trips through the deframer."""

from __future__ import annotations

import ctypes
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

SETTINGS = settings(deadline=None, max_examples=100)


def test_known_message_has_exact_wire_bytes(impl: ModuleType) -> None:
    """A plain message is flags 0, a big-endian 4-byte length, then the payload."""
    # The protobuf encoding of field 1 = 150 (the example from the protobuf encoding guide).
    assert impl.frame_message(b"\x08\x96\x01") == b"\x00\x00\x00\x00\x03\x08\x96\x01"


def test_compressed_flag_sets_the_first_byte(impl: ModuleType) -> None:
    """``compressed=True`` sets the flags byte to 1 and changes nothing else."""
    assert impl.frame_message(b"zz", compressed=True) == b"\x01\x00\x00\x00\x02zz"
    assert impl.frame_messages([b"zz"], compressed=True) == b"\x01\x00\x00\x00\x02zz"


def test_length_is_big_endian(impl: ModuleType) -> None:
    """A 0x010203-byte payload is announced as 00 01 02 03."""
    framed = impl.frame_message(bytes(0x010203))
    assert framed[:5] == b"\x00\x00\x01\x02\x03"
    assert len(framed) == 5 + 0x010203


def test_empty_message(impl: ModuleType) -> None:
    """An empty payload is just the 5-byte header."""
    assert impl.frame_message(b"") == b"\x00\x00\x00\x00\x00"


@pytest.mark.parametrize(
    "payload",
    [bytearray(b"abc"), memoryview(b"xxabcxx")[2:5], memoryview(bytearray(b"abc"))],
)
def test_any_buffer_frames_to_bytes(impl: ModuleType, payload: bytearray | memoryview) -> None:
    """Payloads given as bytearray or memoryview (incl. offset slices) frame to ``bytes``."""
    framed = impl.frame_message(payload)
    assert type(framed) is bytes
    assert framed == b"\x00\x00\x00\x00\x03abc"


@SETTINGS
@given(payloads=st.lists(st.binary(max_size=200), max_size=20), compressed=st.booleans())
def test_frame_messages_equals_concatenated_frame_message(
    impl: ModuleType, payloads: list[bytes], compressed: bool
) -> None:
    """frame_messages is the concatenation of frame_message over the same payloads."""
    expected = b"".join(impl.frame_message(p, compressed) for p in payloads)
    batched = impl.frame_messages(payloads, compressed)
    assert type(batched) is bytes
    assert batched == expected


def test_frame_messages_accepts_any_iterable_of_buffers(impl: ModuleType) -> None:
    """A generator of mixed buffer kinds is consumed once and framed in order."""
    source = (p for p in [b"a", bytearray(b"bc"), memoryview(b"def")])
    assert impl.frame_messages(source) == (
        b"\x00\x00\x00\x00\x01a\x00\x00\x00\x00\x02bc\x00\x00\x00\x00\x03def"
    )
    assert impl.frame_messages([]) == b""


def test_frame_messages_rejects_a_non_buffer_item(impl: ModuleType) -> None:
    """A str among the payloads raises TypeError."""
    with pytest.raises(TypeError):
        impl.frame_messages([b"ok", "not bytes"])


def test_non_buffer_payload_is_rejected(impl: ModuleType) -> None:
    """frame_message refuses a str with TypeError."""
    with pytest.raises(TypeError):
        impl.frame_message("text")


def _fake_4gib_buffer() -> memoryview:
    # A buffer that *claims* 2**32 bytes over a real 1-byte allocation: the framer must reject
    # it from its length alone, before reading (or copying) any of it.
    anchor = ctypes.create_string_buffer(1)
    huge = (ctypes.c_char * 2**32).from_address(ctypes.addressof(anchor))
    view = memoryview(huge)
    _keepalive.append(anchor)
    return view


_keepalive: list[object] = []


def test_payload_over_4_gib_is_rejected(impl: ModuleType) -> None:
    """A payload longer than the 32-bit length field can declare raises ValueError."""
    huge = _fake_4gib_buffer()
    with pytest.raises(ValueError, match="4294967295"):
        impl.frame_message(huge)
    with pytest.raises(ValueError, match="4294967295"):
        impl.frame_messages([b"ok", huge])


@SETTINGS
@given(messages=st.lists(st.tuples(st.binary(max_size=500), st.booleans()), max_size=10))
def test_round_trip_through_the_deframer(
    impl: ModuleType, messages: list[tuple[bytes, bool]]
) -> None:
    """Whatever the framer writes, the deframer returns unchanged."""
    wire = b"".join(impl.frame_message(p, c) for p, c in messages)
    deframer = impl.Deframer()
    assert deframer.feed(wire) == messages
    deframer.close()
