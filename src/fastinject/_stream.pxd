# Declarations of the Cython per-stream core, for modules that ``cimport`` it (see _stream.pyx).

cdef class _Outbound:
    cdef list chunks             # bytes, bytearray or memoryview, sent from ``offset`` of the first
    cdef Py_ssize_t offset
    cdef Py_ssize_t queued
    cdef bytearray tail          # the last chunk while small writes may still be appended to it
    cdef Py_ssize_t window       # the stream's send window less what is queued (a mirror)

    cdef int append(self, const unsigned char* data, Py_ssize_t length, object owner) except -1


cdef class SendQueue:
    cdef dict _streams
    cdef Py_ssize_t _connection_window  # the connection's send window less what is queued
    cdef readonly Py_ssize_t queued_bytes

    cdef int _drop(self, _Outbound stream) except -1
    cdef int _account(self, _Outbound stream, Py_ssize_t size) except -1
