"""SendQueue (the outbound side of the stream core): messages in, DATA frames out, both twins."""

from __future__ import annotations

import struct
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastinject._stream_py

KEEP_APART = fastinject._stream_py.KEEP_APART


def grpc_message(payload: bytes, compressed: bool = False) -> bytes:
    """``payload`` framed as one gRPC message."""
    return struct.pack(">BI", int(compressed), len(payload)) + payload


def data_frames(wire: bytes) -> list[tuple[int, int, bytes]]:
    """``(stream_id, flags, payload)`` of every frame in ``wire``; every one must be DATA."""
    frames = []
    pos = 0
    while pos < len(wire):
        high, low, frame_type, flags, stream_id = struct.unpack_from(">BHBBI", wire, pos)
        length = high << 16 | low
        assert frame_type == 0
        frames.append((stream_id, flags, wire[pos + 9 : pos + 9 + length]))
        pos += 9 + length
    assert pos == len(wire)
    return frames


def flush(queue: Any, stream_id: int, size: int, max_frame_size: int = 16384) -> bytes:
    """The wire bytes of ``queue.frame`` for ``size`` bytes of ``stream_id``, in order."""
    out = bytearray()
    buffers: list[bytes | memoryview] = []
    queue.frame(stream_id, size, max_frame_size, out, buffers)
    return b"".join(bytes(b) for b in buffers) + bytes(out)


def test_messages_of_a_stream_leave_in_one_data_frame(stream_impl: ModuleType) -> None:
    """Small messages queued between two flushes become one DATA frame of framed messages."""
    queue = stream_impl.SendQueue(1000)
    queue.open(1, 1000)
    assert queue.write_message(1, b"abc")
    assert queue.write_message(1, b"zz", compressed=True)
    assert queue.queued(1) == queue.queued_bytes == 15
    assert queue.window(1) == 1000 - 15
    assert data_frames(flush(queue, 1, 15)) == [
        (1, 0, grpc_message(b"abc") + grpc_message(b"zz", compressed=True))
    ]
    assert queue.queued(1) == queue.queued_bytes == 0
    assert queue.pending() == []


def test_frames_are_cut_at_the_maximum_frame_size(stream_impl: ModuleType) -> None:
    """DATA frames never exceed max_frame_size; frame() returns how many it wrote."""
    queue = stream_impl.SendQueue(10**6)
    queue.open(3, 10**6)
    payload = bytes(range(256)) * 40  # 10,240 bytes
    assert queue.write_message(3, payload)
    out = bytearray()
    buffers: list[bytes | memoryview] = []
    assert queue.frame(3, 10_245, 4000, out, buffers) == 3
    wire = b"".join(bytes(b) for b in buffers) + bytes(out)
    frames = data_frames(wire)
    assert [len(body) for _, _, body in frames] == [4000, 4000, 2245]
    assert b"".join(body for _, _, body in frames) == grpc_message(payload)


def test_a_message_larger_than_a_window_is_not_queued(stream_impl: ModuleType) -> None:
    """write_message queues all of a message or nothing, against both windows."""
    queue = stream_impl.SendQueue(100)
    queue.open(1, 50)
    assert not queue.write_message(1, bytes(46))  # 51 bytes framed > the stream's 50
    assert queue.write_message(1, bytes(45))
    queue.open(5, 1000)
    assert queue.window(5) == 50  # the connection's window, less stream 1's 50 queued
    assert not queue.write_message(5, bytes(46))
    assert queue.queued_bytes == 50


def test_a_stream_that_is_not_open_takes_nothing(stream_impl: ModuleType) -> None:
    """Unknown streams: window -1, write_message False, write KeyError, close a no-op."""
    queue = stream_impl.SendQueue()
    assert queue.window(7) == -1
    assert not queue.write_message(7, b"x")
    with pytest.raises(KeyError):
        queue.write(7, b"\0\0\0\0\0")
    queue.close(7)
    assert queue.queued(7) == 0
    assert queue.stream_ids() == []


def test_window_updates_count_what_is_queued(stream_impl: ModuleType) -> None:
    """A window reported while bytes are queued is mirrored less those bytes."""
    queue = stream_impl.SendQueue(65535)
    queue.open(1, 100)
    assert queue.write_message(1, bytes(20))
    queue.update_window(1, 1000)
    queue.update_window(0, 500)
    assert queue.window(1) == 500 - 25
    queue.update_window(0, 10**6)
    assert queue.window(1) == 1000 - 25
    queue.update_window(9, 10)  # not open: ignored
    assert queue.window(9) == -1
    queue.update_window(1, 10)  # a lowered SETTINGS_INITIAL_WINDOW_SIZE: below what is queued
    assert queue.window(1) == 0  # the stream waits; -1 would mean it is gone
    assert not queue.write_message(1, b"")


def test_framing_leaves_the_mirrors_as_they_are(stream_impl: ModuleType) -> None:
    """What frame() writes leaves the queue; the caller takes it off the real windows."""
    queue = stream_impl.SendQueue(1000)
    queue.open(1, 1000)
    assert queue.write_message(1, bytes(95))
    flush(queue, 1, 100)
    assert queue.window(1) == 900
    queue.update_window(1, 900)  # the real window, after the caller took 100 off it
    queue.update_window(0, 900)
    assert queue.window(1) == 900


def test_a_partial_frame_keeps_the_rest_in_order(stream_impl: ModuleType) -> None:
    """Framing less than is queued (a smaller real window) sends the rest at the next flush."""
    queue = stream_impl.SendQueue(10**6)
    queue.open(1, 10**6)
    messages = [bytes([i]) * (i * 700) for i in range(1, 9)]
    for message in messages:
        assert queue.write_message(1, message)
    wire = b""
    for size in (3, 5000, 1, 9000):
        wire += flush(queue, 1, size, max_frame_size=2048)
    assert queue.write_message(1, b"last")
    wire += flush(queue, 1, queue.queued(1), max_frame_size=2048)
    body = b"".join(payload for _, _, payload in data_frames(wire))
    assert body == b"".join(grpc_message(m) for m in [*messages, b"last"])


def test_large_payloads_are_written_as_views_of_the_caller_bytes(stream_impl: ModuleType) -> None:
    """A payload of KEEP_APART bytes or more goes to the buffers as a view, not a copy."""
    queue = stream_impl.SendQueue(10**6)
    queue.open(1, 10**6)
    payload = bytes(range(256)) * 64  # 16 KiB
    assert queue.write_message(1, payload)
    out = bytearray(b"before")
    buffers: list[bytes | memoryview] = []
    queue.frame(1, len(payload) + 5, 16384, out, buffers)
    assert buffers[0][:6] == b"before"
    views = [b for b in buffers if isinstance(b, memoryview)]
    assert views
    assert all(view.obj is payload for view in views)
    frames = data_frames((b"".join(bytes(b) for b in buffers) + bytes(out))[6:])
    assert b"".join(body for _, _, body in frames) == grpc_message(payload)


def test_a_mutable_payload_is_copied(stream_impl: ModuleType) -> None:
    """Changing a bytearray payload after write_message does not change what is sent."""
    queue = stream_impl.SendQueue(10**6)
    queue.open(1, 10**6)
    small, large = bytearray(b"abc"), bytearray(KEEP_APART)
    assert queue.write_message(1, small)
    assert queue.write_message(1, memoryview(large))
    small[:] = b"xyz"
    large[:3] = b"xyz"
    body = b"".join(p for _, _, p in data_frames(flush(queue, 1, queue.queued(1))))
    assert body == grpc_message(b"abc") + grpc_message(bytes(KEEP_APART))


def test_close_and_drop_give_the_window_back(stream_impl: ModuleType) -> None:
    """Dropped bytes never left, so the windows get them back; close also ends the stream."""
    queue = stream_impl.SendQueue(1000)
    queue.open(1, 1000)
    queue.open(3, 1000)
    assert queue.write_message(1, bytes(95))
    assert queue.write_message(3, bytes(95))
    queue.drop(1)
    assert queue.queued(1) == 0
    assert queue.window(1) == 900  # the connection still has stream 3's 100 queued
    assert queue.pending() == [3]
    queue.close(3)
    assert queue.queued_bytes == 0
    assert queue.window(1) == 1000
    assert queue.stream_ids() == [1]


def test_framing_more_than_is_queued_is_refused(stream_impl: ModuleType) -> None:
    """frame() refuses a size beyond what the stream queued, touching nothing."""
    queue = stream_impl.SendQueue()
    queue.open(1, 1000)
    assert queue.write_message(1, b"x")
    with pytest.raises(ValueError, match="6 queued"):
        flush(queue, 1, 7)
    assert queue.queued(1) == 6


def _run(module: ModuleType, ops: list[tuple[Any, ...]]) -> list[object]:
    queue = module.SendQueue(5000)
    for stream_id in (1, 3):
        queue.open(stream_id, 3000)
    results: list[object] = []
    for op in ops:
        if op[0] == "message":
            results.append(queue.write_message(op[1], op[2], op[3]))
        elif op[0] == "window":
            results.append(queue.update_window(op[1], op[2]))
        elif op[0] == "drop":
            results.append(queue.drop(op[1]))
        else:
            size = min(op[2], queue.queued(op[1]))
            results.append(data_frames(flush(queue, op[1], size, max_frame_size=op[3])))
        pending = queue.pending()
        assert sorted(pending) == [s for s in (1, 3) if queue.queued(s)]
        results.append((queue.window(1), queue.window(3), queue.queued_bytes, pending))
    return results


_ops = st.lists(
    st.one_of(
        st.tuples(st.just("message"), st.sampled_from([1, 3]),
                  st.binary(max_size=64) | st.integers(0, 6000).map(bytes), st.booleans()),
        st.tuples(st.just("window"), st.sampled_from([0, 1, 3]), st.integers(-100, 20_000)),
        st.tuples(st.just("drop"), st.sampled_from([1, 3])),
        st.tuples(st.just("frame"), st.sampled_from([1, 3]), st.integers(0, 20_000),
                  st.integers(1, 9000)),
    ),
    max_size=20,
)


@settings(deadline=None, max_examples=200)
@given(ops=_ops)
def test_cython_and_python_agree_on_any_sequence(
    stream_impl: ModuleType, ops: list[tuple[Any, ...]]
) -> None:
    """Any sequence of writes, window changes and flushes gives the same frames in both twins.

    And the DATA payloads of each stream are exactly its accepted messages, framed, in order
    (less what a drop discarded), and pending() names exactly the streams with bytes queued.
    """
    results = _run(stream_impl, ops)
    assert results == _run(fastinject._stream_py, ops)
    sent = {1: b"", 3: b""}
    accepted = {1: b"", 3: b""}
    for op, result in zip(ops, results[::2], strict=False):
        if op[0] == "message" and result:
            accepted[op[1]] += grpc_message(op[2], op[3])
        elif op[0] == "frame":
            sent[op[1]] += b"".join(body for _, _, body in result)  # type: ignore[attr-defined]
        elif op[0] == "drop":  # what was queued and not sent never leaves
            accepted[op[1]] = sent[op[1]]
    for stream_id in (1, 3):
        assert accepted[stream_id].startswith(sent[stream_id])
