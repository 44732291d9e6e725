"""data_run and deframe_data_run: a call's consecutive DATA frames, split and deframed (twins).

The walk of FrameSplitter itself is tested through ServerProtocol (tests/protocol), whose
base class it is, with both implementations.
"""

from __future__ import annotations

import importlib
import struct
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastinject.errors import InvalidFlagsError, MessageTooLargeError

DATA = 0x0
HEADERS = 0x1
END_STREAM = 0x1


def frame(payload: bytes, stream_id: int = 1, frame_type: int = DATA, flags: int = 0) -> bytes:
    """An HTTP/2 frame."""
    return struct.pack(">I", len(payload))[1:] + bytes((frame_type, flags)) + \
        struct.pack(">I", stream_id) + payload


def message(payload: bytes, flags: int = 0) -> bytes:
    """A gRPC message."""
    return struct.pack(">BI", flags, len(payload)) + payload


def deframer_for(frames_impl: ModuleType, max_message_length: int = 1 << 20) -> object:
    """A deframer of the implementation that ``frames_impl`` (a twin of ``_frames``) feeds."""
    framing = "fastinject._framing_py" if frames_impl.__name__.endswith("_py") \
        else "fastinject._framing"
    return importlib.import_module(framing).Deframer(max_message_length)


def test_a_run_is_the_frames_of_one_stream_without_flags(frames_impl: ModuleType) -> None:
    """The run ends at the first frame of another stream or type, or one with flags."""
    frames = [frame(b"a" * 10), frame(b"b" * 20), frame(b"c" * 5)]
    run = b"".join(frames)
    for stop in (frame(b"x", stream_id=3), frame(b"x", frame_type=HEADERS),
                 frame(b"x", flags=END_STREAM), frame(b"")):
        wire = run + stop + frame(b"after")
        assert frames_impl.data_run(wire, 0, len(wire), 1, 1 << 20, 16384, 100) == (len(run), 3)
    # Starting in the middle of a buffer, at a frame of the stream.
    wire = frame(b"zz", stream_id=3) + run
    assert frames_impl.data_run(wire, 11, len(wire), 1, 1 << 20, 16384, 100) == (len(wire), 3)
    # The first frame not of the run: an empty run at ``pos``.
    assert frames_impl.data_run(wire, 0, len(wire), 1, 1 << 20, 16384, 100) == (0, 0)


def test_a_run_stays_within_the_allowance_budget_size_and_buffer(frames_impl: ModuleType) -> None:
    """Windows (allowance), frame budget, max frame size and whole frames bound the run."""
    wire = b"".join(frame(bytes(10)) for _ in range(5))
    run = frames_impl.data_run
    assert run(wire, 0, len(wire), 1, 30, 16384, 100) == (57, 3)  # 30 payload bytes
    assert run(wire, 0, len(wire), 1, 29, 16384, 100) == (38, 2)  # a frame that would cross it
    assert run(wire, 0, len(wire), 1, 1 << 20, 16384, 2) == (38, 2)
    assert run(wire, 0, len(wire), 1, 1 << 20, 9, 100) == (0, 0)  # frames over max_length
    assert run(wire, 0, len(wire) - 1, 1, 1 << 20, 16384, 100) == (76, 4)  # the last one cut
    assert run(wire, 0, 8, 1, 1 << 20, 16384, 100) == (0, 0)  # not even a header


def test_a_run_outside_the_buffer_is_refused(frames_impl: ModuleType) -> None:
    """Spans outside the buffer, or frames cut by ``end``: ValueError, nothing read."""
    wire = frame(b"abc")
    with pytest.raises(ValueError, match="outside a buffer"):
        frames_impl.data_run(wire, 0, len(wire) + 1, 1, 100, 100, 100)
    with pytest.raises(ValueError, match="outside a buffer"):
        frames_impl.deframe_data_run(deframer_for(frames_impl), wire, -1, len(wire))
    with pytest.raises(ValueError, match="ends after"):
        frames_impl.deframe_data_run(deframer_for(frames_impl), wire, 0, len(wire) - 1)


def test_messages_across_frames_are_deframed_in_order(frames_impl: ModuleType) -> None:
    """Messages cut anywhere by frame boundaries come out whole, in order, as bytes."""
    body = message(b"first") + message(b"", flags=1) + message(b"x" * 300)
    cuts = [body[:3], body[3:12], body[12:200], body[200:]]
    wire = bytearray(frame(b"zz", stream_id=3) + b"".join(frame(piece) for piece in cuts))
    deframer = deframer_for(frames_impl)
    messages, fed, failure = frames_impl.deframe_data_run(deframer, wire, 11, len(wire))
    assert messages == [(b"first", False), (b"", True), (b"x" * 300, False)]
    assert all(type(payload) is bytes for payload, _ in messages)
    assert (fed, failure) == (len(body), None)
    wire[:] = bytes(len(wire))  # the messages do not refer to the buffer
    assert messages[0][0] == b"first"


def test_a_partial_message_waits_for_the_next_run(frames_impl: ModuleType) -> None:
    """A message cut at the end of a run is held by the deframer and finished by the next."""
    body = message(b"y" * 50)
    deframer = deframer_for(frames_impl)
    first = frame(body[:20])
    assert frames_impl.deframe_data_run(deframer, first, 0, len(first)) == ([], 20, None)
    assert deframer.buffered == 20  # type: ignore[attr-defined]
    rest = frame(body[20:])
    assert frames_impl.deframe_data_run(deframer, rest, 0, len(rest)) == (
        [(b"y" * 50, False)], 35, None
    )


def test_a_failing_frame_keeps_the_messages_before_it(frames_impl: ModuleType) -> None:
    """Messages of the frames before the failing one, their bytes and the error; then poisoned."""
    good = message(b"ok") + message(b"part")[:4]
    bad = message(b"part")[4:] + message(b"fine") + bytes((7, 0, 0, 0, 1, 0))  # flags byte 7
    after = message(b"never")
    wire = frame(good) + frame(bad) + frame(after)
    deframer = deframer_for(frames_impl)
    messages, fed, failure = frames_impl.deframe_data_run(deframer, wire, 0, len(wire))
    assert messages == [(b"ok", False)]  # "part" and "fine" were in the failing frame
    assert fed == len(good)
    assert isinstance(failure, InvalidFlagsError)
    with pytest.raises(InvalidFlagsError):
        deframer.feed(b"")  # type: ignore[attr-defined]


def test_a_message_over_the_limit_fails_at_its_header(frames_impl: ModuleType) -> None:
    """MessageTooLargeError from the frame with the header; the messages before are kept."""
    wire = frame(message(b"small")) + frame(struct.pack(">BI", 0, 1000))
    messages, fed, failure = frames_impl.deframe_data_run(
        deframer_for(frames_impl, max_message_length=100), wire, 0, len(wire)
    )
    assert (messages, fed) == ([(b"small", False)], 10)
    assert isinstance(failure, MessageTooLargeError)


@settings(max_examples=200, deadline=None)
@given(
    payloads=st.lists(st.binary(max_size=40), max_size=8),
    cuts=st.lists(st.integers(min_value=1, max_value=30), max_size=20),
    junk=st.binary(max_size=30),
    allowance=st.integers(min_value=0, max_value=400),
    budget=st.integers(min_value=0, max_value=12),
)
def test_both_twins_split_and_deframe_alike(
    payloads: list[bytes], cuts: list[int], junk: bytes, allowance: int, budget: int
) -> None:
    """Any frames, any run limits: the Cython module answers as the Python twin does."""
    try:
        cython = importlib.import_module("fastinject._frames")
    except ImportError:
        pytest.skip("the Cython module is not built")
    python = importlib.import_module("fastinject._frames_py")
    body = b"".join(message(p) for p in payloads) + junk
    pieces, start = [], 0
    for cut in cuts:
        if start < len(body):
            pieces.append(body[start : start + cut])
            start += cut
    pieces.append(body[start:] or b"z")
    wire = b"".join(frame(piece) for piece in pieces) + frame(b"end", flags=END_STREAM)
    results = []
    for impl in (python, cython):
        run_end, frames = impl.data_run(wire, 0, len(wire), 1, allowance, 32, budget)
        fed = impl.deframe_data_run(deframer_for(impl), wire, 0, run_end)
        results.append((run_end, frames, fed[0], fed[1], type(fed[2])))
    assert results[0] == results[1]
