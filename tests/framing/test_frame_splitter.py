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
    for pos, end in ((0, len(wire) + 1), (-1, len(wire)), (5, 4), (1, -(2**63))):
        with pytest.raises(ValueError, match="outside a buffer"):
            frames_impl.data_run(wire, pos, end, 1, 100, 100, 100)
        with pytest.raises(ValueError, match="outside a buffer"):
            frames_impl.deframe_data_run(deframer_for(frames_impl), wire, pos, end)
    # A view of a larger buffer: nothing beyond the view is read.
    beyond = b"\0" + frame(b"a" * 10) + frame(b"past the view")
    assert frames_impl.data_run(memoryview(beyond)[:20], 1, 20, 1, 100, 100, 100) == (20, 1)
    with pytest.raises(ValueError, match="ends after"):
        frames_impl.deframe_data_run(deframer_for(frames_impl), wire, 0, len(wire) - 1)


def test_limits_no_frame_can_meet_make_an_empty_run(frames_impl: ModuleType) -> None:
    """Stream ids no header holds and negative limits: no run; huge limits: no limit."""
    wire = frame(b"abc") + frame(b"de")
    run = frames_impl.data_run
    for stream_id in (-1, 2**32 + 1):
        assert run(wire, 0, len(wire), stream_id, 100, 100, 100) == (0, 0)
    for limits in ((-(2**70), 100, 100), (100, -1, 100), (100, 100, -5)):
        assert run(wire, 0, len(wire), 1, *limits) == (0, 0)
    assert run(wire, 0, len(wire), 1, 2**64, 2**70, 2**80) == (len(wire), 2)


def test_either_deframer_is_fed(frames_impl: ModuleType) -> None:
    """A deframer of the other implementation is fed through its ``feed``, with the same result."""
    wire = frame(message(b"one") + message(b"tw")[:3]) + frame(message(b"tw")[3:])
    for framing in ("fastinject._framing_py", "fastinject._framing"):
        try:
            deframer = importlib.import_module(framing).Deframer()
        except ImportError:
            continue
        assert frames_impl.deframe_data_run(deframer, wire, 0, len(wire)) == (
            [(b"one", False), (b"tw", False)], len(wire) - 18, None
        )
    with pytest.raises(AttributeError):
        frames_impl.deframe_data_run(None, wire, 0, len(wire))


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


@pytest.fixture(scope="module")
def twins(extensions_disabled: bool) -> tuple[ModuleType, ModuleType]:
    """The Python twin and the compiled module (which must be built, unless disabled)."""
    if extensions_disabled:
        pytest.skip("FASTINJECT_NO_EXTENSIONS is set: the Cython module is not under test")
    return (importlib.import_module("fastinject._frames_py"),
            importlib.import_module("fastinject._frames"))


@settings(max_examples=200, deadline=None)
@given(
    payloads=st.lists(st.binary(max_size=40), max_size=8),
    cuts=st.lists(st.integers(min_value=1, max_value=30), max_size=20),
    junk=st.binary(max_size=30),
    streams=st.lists(st.sampled_from([1, 1, 1, 3, 1 | 1 << 31]), min_size=30, max_size=30),
    start=st.integers(min_value=0, max_value=3),
    allowance=st.integers(min_value=-1, max_value=400),
    max_length=st.integers(min_value=0, max_value=40),
    budget=st.integers(min_value=0, max_value=12),
)
def test_both_twins_split_and_deframe_alike(
    twins: tuple[ModuleType, ModuleType], payloads: list[bytes], cuts: list[int], junk: bytes,
    streams: list[int], start: int, allowance: int, max_length: int, budget: int,
) -> None:
    """Any frames, any run limits, any start: the Cython module answers as the Python twin."""
    body = b"".join(message(p) for p in payloads) + junk
    pieces, offset = [], 0
    for cut in cuts:
        if offset < len(body):
            pieces.append(body[offset : offset + cut])
            offset += cut
    pieces.append(body[offset:] or b"z")
    frames = [frame(piece, stream_id=s) for piece, s in zip(pieces, streams, strict=False)]
    wire = b"".join(frames) + frame(b"end", flags=END_STREAM)
    pos = sum(len(f) for f in frames[: min(start, len(frames))])
    results = []
    for impl in twins:
        run_end, count = impl.data_run(wire, pos, len(wire), 1, allowance, max_length, budget)
        fed = impl.deframe_data_run(deframer_for(impl), wire, pos, run_end)
        results.append((run_end, count, fed[0], fed[1], type(fed[2])))
    assert results[0] == results[1]
