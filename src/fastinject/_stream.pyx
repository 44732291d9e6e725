# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""Cython per-stream core of a connection; the pure-Python twin is ``_stream_py``.

Use :mod:`fastinject.stream`, which picks this module when it is available.  The public API and
its documentation are in ``_stream.pyi``; both modules behave identically.

A response message is written once, header and payload, into its stream's buffer (payloads of
``KEEP_APART`` bytes or more are kept by reference, not copied) after a check against mirrors of
the send windows; :meth:`SendQueue.frame` then writes DATA frame headers and the queued bytes
into the connection's output buffer, and large pieces into its list of buffers as views.
On the inbound side, :class:`CreditBook` owns the flow-control credit owed to the peer and each
call's :class:`Inbox` its messages and their credit, so taking a message is one C call;
:class:`InboxReader` is a handler's request iterator, whose step for a message already here is
one C call too (taken, deserialized, returned through an awaitable that is already done).
"""

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.exc cimport PyErr_SetObject
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF, Py_REFCNT
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize
from libc.string cimport memcpy

cdef enum:
    KEEP_APART_BYTES = 4096
    MESSAGE_HEADER = 5
    DATA_HEADER = 9
    # An inbox's taken messages are compacted away once there are this many, and half of it.
    COMPACT_AFTER = 64

cdef unsigned long long MAX_WIRE_LENGTH = 0xFFFFFFFF

KEEP_APART = KEEP_APART_BYTES


cdef inline int _extend(bytearray out, const unsigned char* data, Py_ssize_t length) except -1:
    cdef Py_ssize_t size = PyByteArray_GET_SIZE(out)
    PyByteArray_Resize(out, size + length)
    memcpy(PyByteArray_AS_STRING(out) + size, data, length)
    return 0


@cython.final
@cython.auto_pickle(False)
cdef class _Outbound:
    """One stream's queued bytes: ``chunks`` from ``offset`` on; ``tail`` takes small writes."""

    def __init__(self, stream_id, Py_ssize_t window):
        self.stream_id = stream_id
        self.chunks = []
        self.window = window

    cdef int append(self, const unsigned char* data, Py_ssize_t length, object owner) except -1:
        """Queue ``length`` bytes at ``data``; ``owner`` (immutable, or None) is kept if long."""
        if length >= KEEP_APART_BYTES and owner is not None:
            self.chunks.append(owner)
            self.tail = None
            return 0
        if self.tail is None:
            self.tail = bytearray()
            self.chunks.append(self.tail)
        _extend(self.tail, data, length)
        return 0


@cython.final
@cython.auto_pickle(False)
cdef class SendQueue:
    """A connection's outbound DATA, per stream; see ``_stream.pyi``."""

    def __init__(self, Py_ssize_t connection_window=65535):
        self._streams = {}
        self._pending = {}
        self._connection_window = connection_window

    def open(self, stream_id, Py_ssize_t window):
        """Start sending on ``stream_id``, whose send window is ``window``."""
        cdef _Outbound stream = self._streams.get(stream_id)
        if stream is None:
            self._streams[stream_id] = _Outbound(stream_id, window)
        else:
            stream.window = window - stream.queued

    def update_window(self, stream_id, Py_ssize_t window):
        """The send window of ``stream_id`` (0: the connection) is now ``window``."""
        cdef _Outbound stream
        if stream_id == 0:
            self._connection_window = window - self.queued_bytes
            return
        stream = self._streams.get(stream_id)
        if stream is not None:
            stream.window = window - stream.queued

    def close(self, stream_id):
        """Stop sending on ``stream_id``: what it has queued is dropped."""
        cdef _Outbound stream = self._streams.pop(stream_id, None)
        if stream is not None:
            self._drop(stream)

    def drop(self, stream_id):
        """Drop what ``stream_id`` has queued; it may send again."""
        cdef _Outbound stream = self._streams.get(stream_id)
        if stream is not None:
            self._drop(stream)

    cdef int _drop(self, _Outbound stream) except -1:
        self._pending.pop(stream.stream_id, None)
        self.queued_bytes -= stream.queued
        self._connection_window += stream.queued
        stream.window += stream.queued
        stream.queued = 0
        stream.offset = 0
        stream.chunks = []
        stream.tail = None
        return 0

    def stream_ids(self):
        """The open streams, in the order they were opened."""
        return list(self._streams)

    def pending(self):
        """The streams with queued bytes, in the order they began to queue them."""
        return list(self._pending)

    def queued(self, stream_id):
        """Bytes queued on ``stream_id`` (0 for a stream that is not open)."""
        cdef _Outbound stream = self._streams.get(stream_id)
        return 0 if stream is None else stream.queued

    def window(self, stream_id):
        """Bytes ``stream_id`` may queue now, or -1 when it is not open."""
        cdef _Outbound stream = self._streams.get(stream_id)
        if stream is None:
            return -1
        return max(0, min(stream.window, self._connection_window))

    def write_message(self, stream_id, payload, bint compressed=False):
        """Queue ``payload`` as one gRPC message if the windows take all of it; else False."""
        cdef _Outbound stream = self._streams.get(stream_id)
        cdef Py_buffer view
        cdef unsigned char header[MESSAGE_HEADER]
        cdef Py_ssize_t length, size
        if stream is None:
            return False
        PyObject_GetBuffer(payload, &view, PyBUF_SIMPLE)
        try:
            length = view.len
            if <unsigned long long>length > MAX_WIRE_LENGTH:
                raise ValueError(
                    f"a gRPC message holds at most {MAX_WIRE_LENGTH} bytes, got {length}"
                )
            size = length + MESSAGE_HEADER
            if size > stream.window or size > self._connection_window:
                return False
            header[0] = 1 if compressed else 0
            header[1] = (length >> 24) & 0xFF
            header[2] = (length >> 16) & 0xFF
            header[3] = (length >> 8) & 0xFF
            header[4] = length & 0xFF
            stream.append(header, MESSAGE_HEADER, None)
            if length >= KEEP_APART_BYTES and type(payload) is not bytes:
                payload = bytes(payload)  # the caller may change its buffer after we return
            stream.append(<const unsigned char*>view.buf, length, payload)
            self._account(stream, size)
            return True
        finally:
            PyBuffer_Release(&view)

    def write(self, stream_id, data):
        """Queue bytes already framed as gRPC messages (the caller checked :meth:`window`)."""
        cdef _Outbound stream = self._streams.get(stream_id)
        cdef Py_buffer view
        if stream is None:
            raise KeyError(stream_id)
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            stream.append(<const unsigned char*>view.buf, view.len, data)
            self._account(stream, view.len)
        finally:
            PyBuffer_Release(&view)

    cdef int _account(self, _Outbound stream, Py_ssize_t size) except -1:
        if size and not stream.queued:
            self._pending[stream.stream_id] = None
        stream.queued += size
        stream.window -= size
        self._connection_window -= size
        self.queued_bytes += size
        return 0

    def frame(self, stream_id, Py_ssize_t size, Py_ssize_t max_frame_size, bytearray out,
              list buffers):
        """Write the first ``size`` queued bytes of ``stream_id`` as DATA frames; see the .pyi."""
        cdef _Outbound stream = self._streams[stream_id]
        cdef list chunks = stream.chunks
        cdef Py_ssize_t first = 0, offset = stream.offset, frames = 0, left = size
        cdef Py_ssize_t length, take
        cdef unsigned long long sid = stream_id
        cdef unsigned char header[DATA_HEADER]
        cdef Py_buffer view
        cdef object chunk
        if not 0 <= size <= stream.queued or max_frame_size <= 0:
            raise ValueError(f"cannot frame {size} of {stream.queued} queued bytes")
        header[3] = header[4] = 0  # DATA, no flags
        header[5] = (sid >> 24) & 0xFF
        header[6] = (sid >> 16) & 0xFF
        header[7] = (sid >> 8) & 0xFF
        header[8] = sid & 0xFF
        while left:
            length = min(max_frame_size, left)
            header[0] = (length >> 16) & 0xFF
            header[1] = (length >> 8) & 0xFF
            header[2] = length & 0xFF
            _extend(out, header, DATA_HEADER)
            left -= length
            frames += 1
            while length:
                chunk = chunks[first]
                PyObject_GetBuffer(chunk, &view, PyBUF_SIMPLE)
                try:
                    take = min(view.len - offset, length)
                    if take >= KEEP_APART_BYTES:
                        buffers.append(bytes(out))
                        PyByteArray_Resize(out, 0)
                        buffers.append(memoryview(chunk)[offset : offset + take])
                    else:
                        _extend(out, <const unsigned char*>view.buf + offset, take)
                    length -= take
                    offset += take
                    if offset == view.len:
                        first += 1
                        offset = 0
                finally:
                    PyBuffer_Release(&view)
        del chunks[:first]
        stream.offset = offset
        stream.tail = None  # views may now refer to it: later writes start a new buffer
        stream.queued -= size
        if not stream.queued:
            self._pending.pop(stream_id, None)
        self.queued_bytes -= size  # the windows' mirrors stay: the caller takes ``size`` off
        return frames


@cython.final
@cython.auto_pickle(False)
cdef class CreditBook:
    """Flow-control credit owed to the peer until the next flush; see ``_stream.pyi``."""

    def __init__(self, on_consumed=None, Py_ssize_t flush_after=0):
        self._due = {}
        self._owing = []
        self.on_consumed = on_consumed
        self.flush_after = flush_after

    @property
    def owed(self):
        """Bytes of credit owed since the last take (added and consumed)."""
        return self._owed_total

    def add(self, stream_id, Py_ssize_t size):
        """Owe ``size`` more bytes of credit on ``stream_id`` (and on the connection)."""
        self._add(stream_id, size)
        self._owed_total += size

    cdef int _add(self, object stream_id, Py_ssize_t size) except -1:
        cdef object due = self._due.get(stream_id)
        self._due[stream_id] = size if due is None else due + size
        return 0

    def consumed(self, stream_id, Py_ssize_t size):
        """Owe the credit of ``size`` bytes the application took; see the .pyi."""
        self._add(stream_id, size)
        self._consumed(size)

    cdef int _consumed(self, Py_ssize_t size) except -1:
        self._owed_total += size
        if not self._notified and self._owed_total >= self.flush_after:
            self._notified = True
            if self.on_consumed is not None:
                self.on_consumed()
        return 0

    def close(self):
        """The connection is gone: drop what is owed, and keep no inbox from now on."""
        self._take_all()
        self._closed = True
        self.on_consumed = None

    def take(self):
        """The credit owed per stream since the last take, or None; see the .pyi."""
        if self._owed_total < self.flush_after:
            return None
        return self._take_all()

    cdef object _take_all(self):
        cdef dict due = self._due
        cdef Inbox inbox
        self._notified = False
        self._owed_total = 0
        if self._owing:
            # Inboxes count the credit of the messages taken in C, not in this dict.
            for inbox in self._owing:
                self._add(inbox.stream_id, inbox._owed)
                inbox._owed = 0
                inbox._owing = False
            self._owing = []
        if not due:
            return None
        self._due = {}
        return due


@cython.final
@cython.auto_pickle(False)
cdef class Inbox:
    """One call's received messages and the credit they still owe; see ``_stream.pyi``."""

    def __init__(self, stream_id, CreditBook book not None):
        self.stream_id = stream_id
        self._book = book
        self._messages = []

    def __len__(self):
        return len(self._messages) - self._head

    def deliver(self, list messages not None, Py_ssize_t prepaid):
        """Messages arrived; ``prepaid`` bytes of them were credited while being assembled."""
        self._messages.extend(messages)
        self._debt += prepaid

    def pop(self):
        """The oldest message ``(payload, compressed)``, its credit now owed; None if empty."""
        if self._head == len(self._messages):
            return None
        return self._take()

    def pop_plain(self):
        """The oldest message's payload if it is not compressed, its credit now owed; else None."""
        return self._pop_plain()

    cdef object _pop_plain(self):
        if self._head == len(self._messages) or (<tuple>self._messages[self._head])[1]:
            return None
        return self._take()[0]

    cdef tuple _take(self):
        """Remove the oldest message (there is one), owe its credit and return it."""
        cdef list messages = self._messages
        cdef Py_ssize_t head = self._head
        cdef tuple message = messages[head]
        messages[head] = None
        head += 1
        if head == len(messages):
            del messages[:]
            head = 0
        elif head >= COMPACT_AFTER and 2 * head >= len(messages):
            del messages[:head]
            head = 0
        self._head = head
        self.last_compressed = message[1]
        self._credit(len(message[0]) + MESSAGE_HEADER)
        return message

    def release(self):
        """Drop every message, owing their credit (the call ended without reading them)."""
        cdef Py_ssize_t i
        cdef list messages = self._messages
        for i in range(self._head, len(messages)):
            self._credit(len((<tuple>messages[i])[0]) + MESSAGE_HEADER)
        del messages[:]
        self._head = 0

    cdef int _credit(self, Py_ssize_t size) except -1:
        cdef Py_ssize_t paid
        if self._debt:
            paid = min(size, self._debt)
            self._debt -= paid
            size -= paid
        if not size:
            return 0
        self._owed += size
        if not self._owing and not self._book._closed:
            self._owing = True
            self._book._owing.append(self)
        self._book._consumed(size)
        return 0


cdef extern from "Python.h":
    # The slots of an awaitable: CPython 3.11 drives ``await`` through ``am_send`` (a result
    # without an exception object), later versions through ``tp_iternext``.
    ctypedef enum _SendResult "PySendResult":
        PYGEN_RETURN
    ctypedef _SendResult (*_sendfunc)(PyObject*, PyObject*, PyObject**) noexcept
    ctypedef PyObject* (*_iternextfunc)(PyObject*) noexcept
    ctypedef struct _AsyncSlots "PyAsyncMethods":
        _sendfunc am_send
    ctypedef struct _TypeSlots "PyTypeObject":
        _AsyncSlots* tp_as_async
        _iternextfunc tp_iternext
    bint PyExceptionInstance_Check(object)


@cython.final
@cython.freelist(8)
@cython.auto_pickle(False)
cdef class _Ready:
    """An awaitable that is already done: awaiting it gives ``value`` at once, never suspends."""

    cdef object value

    def __await__(self):
        return self

    def __next__(self):
        value, self.value = self.value, None
        raise StopIteration(value)

    def send(self, sent):
        """As a coroutine's ``send``: the first step ends the await with the value."""
        return self.__next__()

    def throw(self, error, value=None, traceback=None):
        """As a coroutine's ``throw``: the error is raised (there is nothing to clean up)."""
        self.value = None
        raise error if value is None else value

    def close(self):
        """As a coroutine's ``close``: the value is dropped."""
        self.value = None


cdef _SendResult _ready_send(PyObject* ready, PyObject* sent, PyObject** result) noexcept:
    cdef object value = (<_Ready>ready).value
    (<_Ready>ready).value = None
    Py_INCREF(value)
    result[0] = <PyObject*>value
    return PYGEN_RETURN


cdef PyObject* _ready_next(PyObject* ready) noexcept:
    # As _PyGen_SetStopIterationValue: the value itself, unless StopIteration would unpack it.
    cdef object value = (<_Ready>ready).value
    (<_Ready>ready).value = None
    if isinstance(value, tuple) or PyExceptionInstance_Check(value):
        value = StopIteration(value)
    PyErr_SetObject(StopIteration, value)
    return NULL


(<_TypeSlots*>_Ready).tp_as_async.am_send = _ready_send
(<_TypeSlots*>_Ready).tp_iternext = _ready_next


@cython.final
@cython.auto_pickle(False)
cdef class InboxReader:
    """A call's request messages as an async iterator; see ``_stream.pyi``."""

    def __init__(self, Inbox inbox not None, deserializer, wait, failed):
        self._inbox = inbox
        self._deserializer = deserializer
        self._wait = wait
        self._failed = failed

    def __aiter__(self):
        return self

    def __anext__(self):
        cdef object payload = self._inbox._pop_plain()
        cdef _Ready ready
        if payload is None:
            return self._wait()
        if self._deserializer is not None:
            try:
                payload = self._deserializer(payload)
            except Exception as exc:
                raise self._failed(exc) from exc
        ready = self._ready
        if ready is None or Py_REFCNT(ready) > 2:  # others hold it: it may not be awaited yet
            ready = _Ready.__new__(_Ready)
            self._ready = ready
        ready.value = payload
        return ready


__all__ = ["KEEP_APART", "CreditBook", "Inbox", "InboxReader", "SendQueue"]
