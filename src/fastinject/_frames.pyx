# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""Cython inbound frame splitter of a server connection; the pure-Python twin is ``_frames_py``.

Use :mod:`fastinject.frames`, which picks this module when it is available.  The public API and
its documentation are in ``_frames.pyi``; both modules behave identically.

:class:`FrameSplitter` walks the frame headers of the received bytes in C: it classifies each
frame, spends the turn's frame budget, finds a call's consecutive DATA frames and feeds their
payloads to its deframer straight from the read buffer (``Deframer.feed_into``, no object per
frame), and hands everything h2 must judge to the subclass in runs, through its hooks.
"""

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.pyport cimport PY_SSIZE_T_MAX
from libc.stdint cimport uint32_t

from fastinject._framing cimport Deframer

from fastinject.errors import FramingError

cdef enum:
    FRAME_HEADER = 9
    CLIENT_PREFACE_LENGTH = 24
    DATA = 0x0
    HEADERS = 0x1
    SETTINGS = 0x4
    GOAWAY = 0x7
    WINDOW_UPDATE = 0x8
    END_STREAM = 0x1
    ACK = 0x1
    END_HEADERS = 0x4
    PADDED_OR_PRIORITY = 0x8 | 0x20
    HEADERS_COST = 8

HEADERS_FRAME_COST = HEADERS_COST


cdef inline Py_ssize_t _frame_length(const unsigned char* header) noexcept nogil:
    return (<Py_ssize_t>header[0] << 16) | (<Py_ssize_t>header[1] << 8) | header[2]


cdef inline uint32_t _read_u32(const unsigned char* p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


cdef inline int _acquire(object buf, Py_buffer* view, Py_ssize_t pos, Py_ssize_t end) except -1:
    PyObject_GetBuffer(buf, view, PyBUF_SIMPLE)
    if not 0 <= pos <= end <= view.len:
        PyBuffer_Release(view)
        raise ValueError(f"frames from {pos} to {end} lie outside a buffer of {view.len} bytes")
    return 0


cdef inline Py_ssize_t _clamped(object value) except? -2:
    """An int limit as a Py_ssize_t: any negative one is -1 (nothing fits), a huge one the max."""
    if value < 0:
        return -1
    return PY_SSIZE_T_MAX if value > PY_SSIZE_T_MAX else value


cdef Py_ssize_t _run_end(
    const unsigned char* data, Py_ssize_t pos, Py_ssize_t end, uint32_t stream_id,
    Py_ssize_t allowance, Py_ssize_t max_length, Py_ssize_t budget, Py_ssize_t* frames,
) noexcept nogil:
    """As ``data_run``, for ``0 <= pos <= end`` within ``data``."""
    cdef const unsigned char* header
    cdef Py_ssize_t length
    frames[0] = 0
    while end - pos >= FRAME_HEADER and frames[0] < budget:
        header = data + pos
        length = _frame_length(header)
        if (header[3] or header[4] or _read_u32(header + 5) != stream_id or not length
                or length > max_length or length > allowance or end - pos - FRAME_HEADER < length):
            break
        allowance -= length
        pos += FRAME_HEADER + length
        frames[0] += 1
    return pos


cdef tuple _deframe_run(object deframer, object buf, const unsigned char* data, Py_ssize_t pos,
                        Py_ssize_t end):
    """As ``deframe_data_run``, for ``0 <= pos <= end`` within ``data``, a view of ``buf``.

    A deframer of the compiled module is fed from ``data``; any other (the Python twin's) with
    its ``feed``, from views of ``buf``.
    """
    cdef list messages = []
    cdef Py_ssize_t fed = 0
    cdef Py_ssize_t length
    cdef bint compiled = type(deframer) is Deframer
    cdef object view = None if compiled else memoryview(buf)
    while pos < end:
        if end - pos < FRAME_HEADER or end - pos - FRAME_HEADER < _frame_length(data + pos):
            raise ValueError(f"the frame at {pos} ends after {end}")
        length = _frame_length(data + pos)
        try:
            if compiled:
                (<Deframer>deframer).feed_into(data + pos + FRAME_HEADER, length, messages)
            else:
                messages += deframer.feed(view[pos + FRAME_HEADER : pos + FRAME_HEADER + length])
        except FramingError as exc:
            return messages, fed, exc
        fed += length
        pos += FRAME_HEADER + length
    return messages, fed, None


def data_run(buf, Py_ssize_t pos, Py_ssize_t end, stream_id, allowance, max_length, budget):
    """Where the consecutive DATA frames of ``stream_id`` from ``pos`` end, and how many."""
    cdef Py_buffer view
    cdef Py_ssize_t frames = 0
    _acquire(buf, &view, pos, end)
    try:
        if 0 <= stream_id <= 0xFFFFFFFF:  # no frame header holds another
            pos = _run_end(<const unsigned char*>view.buf, pos, end, stream_id,
                           _clamped(allowance), _clamped(max_length), _clamped(budget),
                           &frames)
    finally:
        PyBuffer_Release(&view)
    return pos, frames


def deframe_data_run(deframer, buf, Py_ssize_t pos, Py_ssize_t end):
    """Feed the payloads of the whole frames from ``pos`` to ``end`` to ``deframer``."""
    cdef Py_buffer view
    _acquire(buf, &view, pos, end)
    try:
        return _deframe_run(deframer, buf, <const unsigned char*>view.buf, pos, end)
    finally:
        PyBuffer_Release(&view)


cdef class FrameSplitter:
    """The frame walk of a server connection's received bytes; see ``_frames.pyi``."""

    cdef public object _h2
    cdef public dict _streams
    cdef public list _opened
    cdef public Py_ssize_t _preface_left
    cdef public Py_ssize_t _frames_left
    cdef public bint settings_received

    def _scan(self, buf, list events):
        """Handle the whole frames in ``buf``; return where the incomplete rest starts."""
        cdef Py_buffer raw
        PyObject_GetBuffer(buf, &raw, PyBUF_SIMPLE)
        try:
            return self._walk(buf, <const unsigned char*>raw.buf, raw.len, events)
        finally:
            PyBuffer_Release(&raw)

    cdef Py_ssize_t _walk(self, object buf, const unsigned char* data, Py_ssize_t end,
                          list events) except -1:
        cdef object view = memoryview(buf)
        cdef object h2 = self._h2
        cdef dict streams = self._streams
        cdef const unsigned char* header
        cdef Py_ssize_t pos = min(end, self._preface_left)
        cdef Py_ssize_t handed = 0  # bytes before this offset went to h2 or were deframed
        cdef Py_ssize_t frames_left = self._frames_left
        cdef Py_ssize_t max_length = h2.max_inbound_frame_size
        cdef Py_ssize_t length, frame_end, run_end, frames, payload
        cdef unsigned char frame_type, flags
        cdef uint32_t sid
        cdef bint end_stream
        cdef object stream_id, state, headers
        if pos == CLIENT_PREFACE_LENGTH and h2.receive_preface(view[:pos]):
            handed = pos  # the whole preface in the first read, as clients send it
        self._preface_left -= pos
        while end - pos >= FRAME_HEADER:
            header = data + pos
            length = _frame_length(header)
            frame_type = header[3]
            flags = header[4]
            sid = _read_u32(header + 5)
            if length > max_length:
                if handed < pos:
                    self._feed_h2(view[handed:pos], events)
                    handed = pos
                # Their SETTINGS acknowledgement, handed to h2 in this scan, may raise the limit.
                max_length = h2.max_inbound_frame_size
                if length > max_length:
                    h2.refuse_overlong_frame(length)
            frame_end = pos + FRAME_HEADER + length
            if frame_end > end or frames_left <= 0:
                break
            frames_left -= 1 if frame_type != HEADERS else HEADERS_COST
            if frame_type == DATA:
                stream_id = sid
                # The stream may be opened by HEADERS still waiting for h2 in this run, or
                # by one opened here whose call is not started yet.
                if stream_id not in streams and (handed < pos or self._opened):
                    self._feed_h2(view[handed:pos], events)
                    handed = pos
                state = streams.get(stream_id)
                if state is None or (length == 0 and not flags & END_STREAM):
                    self._spend_useless("DATA without a call or payload")
                    if state is None and h2.ignore_data(stream_id, length):
                        self._return_credit(stream_id, length)  # a stream we reset
                        handed = frame_end
                elif flags & ~END_STREAM == 0 and not state.failed:
                    if handed < pos:
                        self._feed_h2(view[handed:pos], events)
                        handed = pos
                    end_stream = flags == END_STREAM
                    frames = 0
                    run_end = pos
                    # (h2's events for the frames before may have failed the call meanwhile.)
                    if not flags and not state.failed:
                        # A lone frame needs no allowance: accept_data checks the windows.
                        run_end = _run_end(data, pos, end, sid, PY_SSIZE_T_MAX, max_length,
                                           min(2, frames_left + 1), &frames)
                        if frames > 1:
                            run_end = _run_end(data, pos, end, sid, h2.data_allowance(stream_id),
                                               max_length, frames_left + 1, &frames)
                    payload = run_end - pos - FRAME_HEADER * frames
                    if frames and h2.accept_data(stream_id, payload, False):
                        # Consecutive DATA of this call (clients that send a DATA frame per
                        # message): one window update with h2 and one event for all of them.
                        frames_left -= frames - 1
                        frame_end = handed = run_end
                        self._deframe(stream_id, state,
                                      _deframe_run(state.deframer, buf, data, pos, run_end),
                                      payload, events)
                    elif h2.accept_data(stream_id, length, end_stream):
                        self._on_data(stream_id, state, view[pos + FRAME_HEADER : frame_end],
                                      length, events)
                        if end_stream:
                            self._on_stream_ended(stream_id, events)
                        handed = frame_end
            elif frame_type == SETTINGS and flags & ACK and not length and not sid:
                # The client acknowledges our SETTINGS: they bind it from here on.
                if handed < pos:
                    self._feed_h2(view[handed:pos], events)
                    handed = pos
                if h2.receive_settings_ack():
                    handed = frame_end
            elif frame_type == SETTINGS and not flags & ACK and not sid:
                self._police(frame_type, flags, length)
                if not self.settings_received:
                    if handed < pos:
                        self._feed_h2(view[handed:pos], events)
                        handed = pos
                    # The client's first SETTINGS is the same for many connections: from a memo.
                    if not self.settings_received and h2.receive_first_settings(
                        view[pos + FRAME_HEADER : frame_end]
                    ):
                        handed = frame_end
                        self._on_remote_settings(events)
            elif frame_type == WINDOW_UPDATE and length == 4 and not sid:
                # The connection's window, widened (h2load sends one after its SETTINGS).
                self._police(frame_type, flags, length)
                if handed < pos or self._opened:  # what precedes it first, calls opened too
                    self._feed_h2(view[handed:pos], events)
                    handed = pos
                if h2.receive_window_update(_read_u32(header + FRAME_HEADER)):
                    handed = frame_end
                    self._on_connection_window(events)
            elif frame_type == GOAWAY and length >= 8 and not sid:
                # The client leaves (most send GOAWAY before they close).
                self._police(frame_type, flags, length)
                if handed < pos or self._opened:
                    self._feed_h2(view[handed:pos], events)
                    handed = pos
                if h2.receive_goaway():
                    handed = frame_end
                    self._closed_by_peer(_read_u32(header + FRAME_HEADER + 4), events)
            elif frame_type != HEADERS or not flags & END_HEADERS:
                self._police(frame_type, flags, length)
            elif not flags & PADDED_OR_PRIORITY:
                # A whole request header block: a new call, unless h2 must judge the frame.
                if handed < pos:
                    self._feed_h2(view[handed:pos], events)
                    handed = pos
                end_stream = flags & END_STREAM
                headers = h2.receive_request(
                    sid, view[pos + FRAME_HEADER : frame_end], end_stream
                )
                if headers is not None:
                    handed = frame_end
                    self._opened.append((sid, headers, end_stream))
            pos = frame_end
        self._frames_left = frames_left
        if handed < pos or self._opened:
            self._feed_h2(view[handed:pos], events)
        return pos

    # -- hooks: what the subclass does with what the walk found (see _frames.pyi) ----------

    def _feed_h2(self, frames, events):
        raise NotImplementedError

    def _police(self, frame_type, flags, length):
        raise NotImplementedError

    def _spend_useless(self, what):
        raise NotImplementedError

    def _return_credit(self, stream_id, size):
        raise NotImplementedError

    def _deframe(self, stream_id, state, fed, size, events):
        raise NotImplementedError

    def _on_data(self, stream_id, state, data, flow_controlled_length, events):
        raise NotImplementedError

    def _on_stream_ended(self, stream_id, events):
        raise NotImplementedError

    def _on_remote_settings(self, events):
        raise NotImplementedError

    def _on_connection_window(self, events):
        raise NotImplementedError

    def _closed_by_peer(self, error_code, events):
        raise NotImplementedError


__all__ = ["HEADERS_FRAME_COST", "FrameSplitter", "data_run", "deframe_data_run"]
