# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""Cython gRPC message deframer and framer; the pure-Python twin is ``_framing_py``.

Use :mod:`fastinject.framing`, which picks this module when it is available.  The public API
and its documentation are in ``_framing.pyi``; both modules behave identically.

Memory and copies: input buffers are taken with ``PyObject_GetBuffer`` and released before
``feed`` returns, so nothing refers to the caller's buffer afterwards.  Messages that lie whole
inside one ``feed`` call are copied straight from the caller's buffer into their ``bytes``.
The only leftovers are at most 4 bytes of a partial header (a fixed array) and a partial body,
which is copied straight into the ``bytes`` object that becomes the message.  That object grows
with the bytes that actually arrive (``_PyBytes_Resize``, to twice what is here) and takes its
declared size only once half of the body is here, so a 5-byte header declaring 4 MiB costs
1 KiB, not 4 MiB.  A message costs one copy from the caller's buffers, plus whatever the
allocator copies when it cannot grow a block in place (large blocks are remapped, not copied).
"""

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, _PyBytes_Resize
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.object cimport PyObject
from cpython.pyport cimport PY_SSIZE_T_MAX
from cpython.ref cimport Py_INCREF, Py_XDECREF
from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memcpy

from operator import index as _index

from fastinject.errors import IncompleteMessageError, InvalidFlagsError, MessageTooLargeError

DEFAULT_MAX_MESSAGE_LENGTH = 4 * 1024 * 1024

cdef enum:
    # Smallest body buffer allocated for a message that is not here whole yet.
    MIN_BODY_CAPACITY = 1024

cdef uint64_t MAX_WIRE_LENGTH = 0xFFFFFFFF
# A limit above what the header (or Py_ssize_t) can express behaves as "no limit".
cdef uint64_t MAX_EFFECTIVE_LIMIT = min(<uint64_t>0xFFFFFFFF, <uint64_t>PY_SSIZE_T_MAX)


cdef inline uint32_t _read_length(const unsigned char* p) noexcept nogil:
    return ((<uint32_t>p[0]) << 24) | ((<uint32_t>p[1]) << 16) | ((<uint32_t>p[2]) << 8) | p[3]


cdef inline void _write_header(unsigned char* p, bint compressed, uint32_t length) noexcept nogil:
    p[0] = 1 if compressed else 0
    p[1] = (length >> 24) & 0xFF
    p[2] = (length >> 16) & 0xFF
    p[3] = (length >> 8) & 0xFF
    p[4] = length & 0xFF


cdef inline Py_ssize_t _capacity_for(Py_ssize_t received, Py_ssize_t length) noexcept nogil:
    """Size of the body buffer holding ``received`` of ``length`` bytes (same rule as the twin)."""
    if received >= length - received:  # half or more is here: the final size
        return length
    return min(length, max(2 * received, <Py_ssize_t>MIN_BODY_CAPACITY))


cdef inline int _check_wire_length(Py_ssize_t length) except -1:
    if <uint64_t>length > MAX_WIRE_LENGTH:
        raise ValueError(f"a gRPC message holds at most {MAX_WIRE_LENGTH} bytes, got {length}")
    return 0


@cython.final
@cython.auto_pickle(False)
cdef class Deframer:
    """Split the bytes of one gRPC stream into messages; see ``_framing.pyi``."""


    def __init__(self, max_message_length=DEFAULT_MAX_MESSAGE_LENGTH):
        self.max_message_length = max_message_length

    def __dealloc__(self):
        Py_XDECREF(self._body)

    @property
    def max_message_length(self):
        """Largest accepted declared message length; applies to headers parsed after a change."""
        return self._limit

    @max_message_length.setter
    def max_message_length(self, value):
        limit = _index(value)
        if limit < 0:
            raise ValueError(f"max_message_length must be >= 0, got {limit}")
        self._limit = limit
        self._effective_limit = min(limit, MAX_EFFECTIVE_LIMIT)

    @property
    def buffered(self):
        """Bytes received and not yet returned inside a message (header bytes included)."""
        return self._header_len + self._body_filled

    @property
    def held(self):
        """Bytes held for the message being received: its header bytes and body buffer."""
        return self._header_len + self._body_capacity

    def feed(self, data):
        """Consume ``data`` and return the ``(payload, compressed)`` messages it completes."""
        cdef Py_buffer view
        cdef list messages = []
        if self._error is not None:
            raise self._error.with_traceback(None)
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            self.feed_into(<const unsigned char*>view.buf, view.len, messages)
        finally:
            PyBuffer_Release(&view)
        return messages

    cdef int feed_into(self, const unsigned char* data, Py_ssize_t length, list messages) except -1:
        """Consume ``length`` bytes at ``data``, appending the messages they complete.

        On an error the messages this call appended are removed again and the deframer is
        poisoned (see ``feed``).
        """
        cdef Py_ssize_t before = len(messages)
        if self._error is not None:
            raise self._error.with_traceback(None)
        try:
            self._feed(data, length, messages)
        except BaseException as exc:
            del messages[before:]
            self._fail(exc)
            raise
        return 0

    def close(self):
        """Declare the end of the stream; raise IncompleteMessageError inside a message."""
        if self._error is not None:
            raise self._error.with_traceback(None)
        if self._header_len == 0:
            return
        expected = HEADER_LENGTH + (self._body_len if self._body != NULL else 0)
        error = IncompleteMessageError(self._header_len + self._body_filled, expected)
        self._fail(error)
        raise error

    cdef int _fail(self, exc) except -1:
        self._error = exc
        self._drop_body()
        self._header_len = 0
        return 0

    cdef object _drop_body(self):
        """Forget the pending body and return it (a new reference), or None."""
        cdef object body = None
        if self._body != NULL:
            body = <object>self._body
            Py_XDECREF(self._body)
        self._body = NULL
        self._body_ptr = NULL
        self._body_len = 0
        self._body_capacity = 0
        self._body_filled = 0
        return body

    cdef int _reserve(self, Py_ssize_t received) except -1:
        """Grow the body buffer (in place when the allocator can) to hold ``received`` bytes."""
        cdef Py_ssize_t capacity
        if received <= self._body_capacity:
            return 0
        capacity = _capacity_for(received, self._body_len)
        _PyBytes_Resize(&self._body, capacity)  # frees it and sets NULL on failure
        self._body_ptr = <unsigned char*>PyBytes_AS_STRING(<object>self._body)
        self._body_capacity = capacity
        return 0

    cdef int _feed(self, const unsigned char* data, Py_ssize_t end, list messages) except -1:
        cdef Py_ssize_t pos = 0
        cdef Py_ssize_t take
        if self._body != NULL:
            take = min(end, self._body_len - self._body_filled)
            self._reserve(self._body_filled + take)
            memcpy(self._body_ptr + self._body_filled, data, take)
            self._body_filled += take
            if self._body_filled < self._body_len:
                return 0
            messages.append((self._drop_body(), self._compressed))
            self._header_len = 0
            pos = take
        elif self._header_len:
            take = min(end, HEADER_LENGTH - self._header_len)
            memcpy(self._header + self._header_len, data, take)
            self._header_len += take
            pos = take
            if self._header_len < HEADER_LENGTH:
                return 0
            pos += self._begin(self._header, data + pos, end - pos, messages)
            if self._body != NULL:
                return 0
        # Fast path: parse straight out of the caller's buffer.
        while end - pos >= HEADER_LENGTH:
            pos += HEADER_LENGTH + self._begin(
                data + pos, data + pos + HEADER_LENGTH, end - pos - HEADER_LENGTH, messages
            )
            if self._body != NULL:
                return 0
        if pos < end:
            memcpy(self._header, data + pos, end - pos)
            self._header_len = end - pos
        return 0

    cdef Py_ssize_t _begin(
        self,
        const unsigned char* header,
        const unsigned char* body,
        Py_ssize_t available,
        list messages,
    ) except -1:
        """Validate ``header`` and start its body; return the body bytes consumed."""
        cdef unsigned char flags = header[0]
        cdef uint32_t length = _read_length(header + 1)
        cdef bytes payload
        if flags > 1:
            raise InvalidFlagsError(flags)
        if length > self._effective_limit:
            raise MessageTooLargeError(length, self._limit)
        if available >= <Py_ssize_t>length:
            messages.append((PyBytes_FromStringAndSize(<const char*>body, length), flags == 1))
            self._header_len = 0
            return length
        self._body_capacity = _capacity_for(available, length)
        payload = PyBytes_FromStringAndSize(NULL, self._body_capacity)
        Py_INCREF(payload)
        self._body = <PyObject*>payload
        self._body_ptr = <unsigned char*>PyBytes_AS_STRING(payload)
        memcpy(self._body_ptr, body, available)
        self._body_len = length
        self._body_filled = available
        self._compressed = flags == 1
        self._header_len = HEADER_LENGTH
        return available


def frame_message(payload, bint compressed=False):
    """Return ``payload`` framed as one gRPC message: the 5-byte header, then the payload."""
    cdef Py_buffer view
    cdef bytes out
    cdef unsigned char* p
    PyObject_GetBuffer(payload, &view, PyBUF_SIMPLE)
    try:
        _check_wire_length(view.len)
        out = PyBytes_FromStringAndSize(NULL, HEADER_LENGTH + view.len)
        p = <unsigned char*>PyBytes_AS_STRING(out)
        _write_header(p, compressed, <uint32_t>view.len)
        memcpy(p + HEADER_LENGTH, view.buf, view.len)
        return out
    finally:
        PyBuffer_Release(&view)


def frame_messages(payloads, bint compressed=False):
    """Return every payload framed as a gRPC message, concatenated into one ``bytes``."""
    cdef list items = list(payloads)
    cdef Py_ssize_t count = len(items)
    cdef Py_ssize_t acquired = 0
    cdef Py_ssize_t total = 0
    cdef Py_ssize_t i
    cdef Py_buffer* views
    cdef bytes out
    cdef unsigned char* p
    if count == 0:
        return b""
    views = <Py_buffer*>PyMem_Malloc(count * sizeof(Py_buffer))
    if views == NULL:
        raise MemoryError()
    try:
        for i in range(count):
            PyObject_GetBuffer(items[i], &views[i], PyBUF_SIMPLE)
            acquired += 1
            _check_wire_length(views[i].len)
            total += HEADER_LENGTH + views[i].len
        out = PyBytes_FromStringAndSize(NULL, total)
        p = <unsigned char*>PyBytes_AS_STRING(out)
        for i in range(count):
            _write_header(p, compressed, <uint32_t>views[i].len)
            memcpy(p + HEADER_LENGTH, views[i].buf, views[i].len)
            p += HEADER_LENGTH + views[i].len
        return out
    finally:
        for i in range(acquired):
            PyBuffer_Release(&views[i])
        PyMem_Free(views)


__all__ = ["DEFAULT_MAX_MESSAGE_LENGTH", "Deframer", "frame_message", "frame_messages"]
