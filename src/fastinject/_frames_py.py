"""Pure-Python inbound frame splitter of a server connection, the twin of the Cython ``_frames``.

Use :mod:`fastinject.frames`, which picks the Cython module when it is available.  Both modules
have the same API and behaviour, and the same tests run against both; the documentation of the
API is in ``_frames.pyi``.

:class:`FrameSplitter` walks the frame headers of the received bytes: it classifies each frame,
spends the turn's frame budget, finds a call's consecutive DATA frames and feeds their payloads
to its deframer straight from the read buffer, and hands everything h2 must judge to the
subclass in runs, through its hooks.
"""

from __future__ import annotations

import struct
import sys
from typing import TYPE_CHECKING, Any

from .errors import FramingError

if TYPE_CHECKING:
    from ._framing_py import Deframer
    from ._h2tuning import TunedH2Connection

HEADERS_FRAME_COST = 8
"""Frames of a turn's budget a HEADERS frame spends (see ``_frames.pyi``)."""

# A frame header: 24-bit length (high byte, low 16 bits), type, flags, stream id (whose reserved
# top bit a client leaves clear: h2 rejects it otherwise, so such a frame is left to h2).
_FRAME_HEADER = struct.Struct(">BHBBI")
_U32 = struct.Struct(">I")  # a WINDOW_UPDATE's increment, a GOAWAY's error code
_CLIENT_PREFACE_LENGTH = 24
_DATA = 0x0
_HEADERS = 0x1
_SETTINGS = 0x4
_GOAWAY = 0x7
_WINDOW_UPDATE = 0x8
_END_STREAM = 0x1
_ACK = 0x1
_END_HEADERS = 0x4
_PADDED_OR_PRIORITY = 0x8 | 0x20

Fed = tuple[list[tuple[bytes, bool]], int, FramingError | None]
"""What feeding DATA payloads to a deframer gave: messages, bytes fed before a failure, failure."""


def data_run(
    buf: bytes | bytearray | memoryview,
    pos: int,
    end: int,
    stream_id: int,
    allowance: int,
    max_length: int,
    budget: int,
) -> tuple[int, int]:
    """Where the consecutive DATA frames of ``stream_id`` from ``pos`` end, and how many."""
    _check_span(buf, pos, end)
    frames = 0
    unpack_header = _FRAME_HEADER.unpack_from
    while end - pos >= 9 and frames < budget:
        length_high, length_low, frame_type, flags, frame_stream = unpack_header(buf, pos)
        length = length_high << 16 | length_low
        if (frame_type or flags or frame_stream != stream_id or not length
                or length > max_length or length > allowance or end - pos - 9 < length):
            break
        allowance -= length
        pos += 9 + length
        frames += 1
    return pos, frames


def deframe_data_run(
    deframer: Deframer, buf: bytes | bytearray | memoryview, pos: int, end: int
) -> Fed:
    """Feed the payloads of the whole frames from ``pos`` to ``end`` to ``deframer``."""
    _check_span(buf, pos, end)
    view = memoryview(buf)
    messages: list[tuple[bytes, bool]] = []
    fed = 0
    while pos < end:
        length = int.from_bytes(view[pos : pos + 3], "big")
        if end - pos < 9 or end - pos - 9 < length:
            raise ValueError(f"the frame at {pos} ends after {end}")
        try:
            messages += deframer.feed(view[pos + 9 : pos + 9 + length])
        except FramingError as exc:
            return messages, fed, exc
        fed += length
        pos += 9 + length
    return messages, fed, None


def _check_span(buf: bytes | bytearray | memoryview, pos: int, end: int) -> None:
    size = memoryview(buf).nbytes
    if not 0 <= pos <= end <= size:
        raise ValueError(f"frames from {pos} to {end} lie outside a buffer of {size} bytes")


class FrameSplitter:
    """The frame walk of a server connection's received bytes; see ``_frames.pyi``."""

    _h2: TunedH2Connection
    _streams: dict[int, Any]
    _opened: list[tuple[int, list[tuple[bytes, bytes]], bool]]
    _preface_left: int
    _frames_left: int
    settings_received: bool

    def _scan(self, buf: bytes | bytearray | memoryview, events: list[Any]) -> int:
        """Handle the whole frames in ``buf``; return where the incomplete rest starts."""
        end = len(buf)
        view = memoryview(buf)
        h2 = self._h2
        pos = min(end, self._preface_left)
        handed = 0  # bytes before this offset went to h2 or were deframed
        if pos == _CLIENT_PREFACE_LENGTH and h2.receive_preface(view[:pos]):
            handed = pos  # the whole preface in the first read, as clients send it
        self._preface_left -= pos
        streams = self._streams
        unpack_header = _FRAME_HEADER.unpack_from
        max_length = h2.max_inbound_frame_size
        frames_left = self._frames_left
        while end - pos >= 9:
            length_high, length_low, frame_type, flags, stream_id = unpack_header(buf, pos)
            length = length_high << 16 | length_low
            if length > max_length:
                if handed < pos:
                    self._feed_h2(view[handed:pos], events)
                    handed = pos
                # Their SETTINGS acknowledgement, handed to h2 in this scan, may raise the limit.
                max_length = h2.max_inbound_frame_size
                if length > max_length:
                    h2.refuse_overlong_frame(length)
            frame_end = pos + 9 + length
            if frame_end > end or frames_left <= 0:
                break
            frames_left -= 1 if frame_type != _HEADERS else HEADERS_FRAME_COST
            if frame_type == _DATA:
                # The stream may be opened by HEADERS still waiting for h2 in this run, or
                # by one opened here whose call is not started yet.
                if stream_id not in streams and (handed < pos or self._opened):
                    self._feed_h2(view[handed:pos], events)
                    handed = pos
                state = streams.get(stream_id)
                if state is None or (length == 0 and not flags & _END_STREAM):
                    self._spend_useless("DATA without a call or payload")
                    if state is None and h2.ignore_data(stream_id, length):
                        self._return_credit(stream_id, length)  # a stream we reset
                        handed = frame_end
                elif flags & ~_END_STREAM == 0 and not state.failed:
                    if handed < pos:
                        self._feed_h2(view[handed:pos], events)
                        handed = pos
                    end_stream = flags == _END_STREAM
                    run_end, frames = pos, 0
                    # (h2's events for the frames before may have failed the call meanwhile.)
                    if not flags and not state.failed:
                        # A lone frame needs no allowance: accept_data checks the windows.
                        run_end, frames = data_run(
                            buf, pos, end, stream_id, sys.maxsize, max_length,
                            min(2, frames_left + 1),
                        )
                        if frames > 1:
                            run_end, frames = data_run(
                                buf, pos, end, stream_id, h2.data_allowance(stream_id),
                                max_length, frames_left + 1,
                            )
                    payload = run_end - pos - 9 * frames
                    if frames and h2.accept_data(stream_id, payload, False):
                        # Consecutive DATA of this call (clients that send a DATA frame per
                        # message): one window update with h2 and one event for all of them.
                        frames_left -= frames - 1
                        frame_end = handed = run_end
                        self._deframe(stream_id, state,
                                      deframe_data_run(state.deframer, buf, pos, run_end),
                                      payload, events)
                    elif h2.accept_data(stream_id, length, end_stream):
                        self._on_data(stream_id, state, view[pos + 9 : frame_end], length, events)
                        if end_stream:
                            self._on_stream_ended(stream_id, events)
                        handed = frame_end
            elif frame_type == _SETTINGS and flags & _ACK and not length | stream_id:
                # The client acknowledges our SETTINGS: they bind it from here on.
                if handed < pos:
                    self._feed_h2(view[handed:pos], events)
                    handed = pos
                if h2.receive_settings_ack():
                    handed = frame_end
            elif frame_type == _SETTINGS and not flags & _ACK and not stream_id:
                self._police(frame_type, flags, length)
                if not self.settings_received:
                    if handed < pos:
                        self._feed_h2(view[handed:pos], events)
                        handed = pos
                    # The client's first SETTINGS is the same for many connections: from a memo.
                    if not self.settings_received and h2.receive_first_settings(
                        view[pos + 9 : frame_end]
                    ):
                        handed = frame_end
                        self._on_remote_settings(events)
            elif frame_type == _WINDOW_UPDATE and length == 4 and not stream_id:
                # The connection's window, widened (h2load sends one after its SETTINGS).
                self._police(frame_type, flags, length)
                if handed < pos or self._opened:  # what precedes it first, calls opened too
                    self._feed_h2(view[handed:pos], events)
                    handed = pos
                if h2.receive_window_update(_U32.unpack_from(buf, pos + 9)[0]):
                    handed = frame_end
                    self._on_connection_window(events)
            elif frame_type == _GOAWAY and length >= 8 and not stream_id:
                # The client leaves (most send GOAWAY before they close).
                self._police(frame_type, flags, length)
                if handed < pos or self._opened:
                    self._feed_h2(view[handed:pos], events)
                    handed = pos
                if h2.receive_goaway():
                    handed = frame_end
                    self._closed_by_peer(_U32.unpack_from(buf, pos + 13)[0], events)
            elif frame_type != _HEADERS or not flags & _END_HEADERS:
                self._police(frame_type, flags, length)
            elif not flags & _PADDED_OR_PRIORITY:
                # A whole request header block: a new call, unless h2 must judge the frame.
                if handed < pos:
                    self._feed_h2(view[handed:pos], events)
                    handed = pos
                end_stream = bool(flags & _END_STREAM)
                headers = h2.receive_request(stream_id, view[pos + 9 : frame_end], end_stream)
                if headers is not None:
                    handed = frame_end
                    self._opened.append((stream_id, headers, end_stream))
            pos = frame_end
        self._frames_left = frames_left
        if handed < pos or self._opened:
            self._feed_h2(view[handed:pos], events)
        return pos

    # -- hooks: what the subclass does with what the walk found ---------------------------

    def _feed_h2(self, frames: memoryview, events: list[Any]) -> None:
        """Hand a run of frames to h2 and start the calls in ``_opened``."""
        raise NotImplementedError

    def _police(self, frame_type: int, flags: int, length: int) -> None:
        """Count a frame other than DATA or a whole HEADERS block against the peer's budgets."""
        raise NotImplementedError

    def _spend_useless(self, what: str) -> None:
        """Count a frame that carries no call against the peer's budget."""
        raise NotImplementedError

    def _return_credit(self, stream_id: int, size: int) -> None:
        """Give ``size`` bytes of flow-control credit back to the peer at the next flush."""
        raise NotImplementedError

    def _deframe(
        self, stream_id: int, state: Any, fed: Fed, size: int, events: list[Any]
    ) -> None:
        """Account for ``size`` bytes of DATA payload of a live call fed to its deframer."""
        raise NotImplementedError

    def _on_data(
        self,
        stream_id: int,
        state: Any,
        data: bytes | memoryview,
        flow_controlled_length: int,
        events: list[Any],
    ) -> None:
        """A DATA frame's payload for ``stream_id``, h2's windows already moved."""
        raise NotImplementedError

    def _on_stream_ended(self, stream_id: int, events: list[Any]) -> None:
        """The client half-closed ``stream_id``."""
        raise NotImplementedError

    def _on_remote_settings(self, events: list[Any]) -> None:
        """The client's SETTINGS were applied (and acknowledged)."""
        raise NotImplementedError

    def _on_connection_window(self, events: list[Any]) -> None:
        """The client widened the connection's send window."""
        raise NotImplementedError

    def _closed_by_peer(self, error_code: int, events: list[Any]) -> None:
        """The client sent GOAWAY with ``error_code``."""
        raise NotImplementedError


__all__ = ["HEADERS_FRAME_COST", "FrameSplitter", "data_run", "deframe_data_run"]
