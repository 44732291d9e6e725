# Declarations of the Cython deframer, for modules that ``cimport`` it (see _framing.pyx).

from cpython.object cimport PyObject
from libc.stdint cimport uint64_t

cdef enum:
    HEADER_LENGTH = 5


cdef class Deframer:
    cdef unsigned char _header[HEADER_LENGTH]
    cdef Py_ssize_t _header_len       # bytes of the current header held; 5 while a body is pending
    # The pending message's payload object (our only reference, so it can be resized in place),
    # or NULL; it is _body_capacity bytes long until the message is complete.
    cdef PyObject* _body
    cdef unsigned char* _body_ptr
    cdef Py_ssize_t _body_len         # the declared length
    cdef Py_ssize_t _body_capacity
    cdef Py_ssize_t _body_filled
    cdef bint _compressed
    cdef object _limit                # the int the user set, as reported in errors
    cdef uint64_t _effective_limit
    cdef object _error

    cdef int feed_into(self, const unsigned char* data, Py_ssize_t length, list messages) except -1
    cdef int _feed(self, const unsigned char* data, Py_ssize_t end, list messages) except -1
    cdef int _fail(self, exc) except -1
    cdef object _drop_body(self)
    cdef int _reserve(self, Py_ssize_t received) except -1
    cdef Py_ssize_t _begin(
        self,
        const unsigned char* header,
        const unsigned char* body,
        Py_ssize_t available,
        list messages,
    ) except -1
