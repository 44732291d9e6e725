# Declarations of the Cython per-stream core, for modules that ``cimport`` it (see _stream.pyx).

cdef class _Outbound:
    cdef object stream_id
    cdef list chunks             # bytes, bytearray or memoryview, sent from ``offset`` of the first
    cdef Py_ssize_t offset
    cdef Py_ssize_t queued
    cdef bytearray tail          # the last chunk while small writes may still be appended to it
    cdef Py_ssize_t window       # the stream's send window less what is queued (a mirror)

    cdef int append(self, const unsigned char* data, Py_ssize_t length, object owner) except -1


cdef class SendQueue:
    cdef dict _streams
    cdef dict _pending                  # the streams with bytes queued, as an ordered set
    cdef Py_ssize_t _connection_window  # the connection's send window less what is queued
    cdef readonly Py_ssize_t queued_bytes

    cdef int _drop(self, _Outbound stream) except -1
    cdef int _account(self, _Outbound stream, Py_ssize_t size) except -1


cdef class CreditBook:
    cdef dict _due
    cdef list _owing             # the inboxes owing credit since the last take
    cdef bint _notified
    cdef bint _closed            # the connection is gone: inboxes are not listed any more
    cdef Py_ssize_t _owed_total  # credit added or consumed since the last take
    cdef public object on_consumed
    cdef public Py_ssize_t flush_after

    cdef int _add(self, object stream_id, Py_ssize_t size) except -1
    cdef int _consumed(self, Py_ssize_t size) except -1
    cdef object _take_all(self)


cdef class Inbox:
    cdef readonly object stream_id
    cdef readonly bint last_compressed
    cdef CreditBook _book
    cdef list _messages          # from ``_head`` on: the messages not yet taken
    cdef Py_ssize_t _head
    cdef Py_ssize_t _debt        # credit returned early, still to be deducted
    cdef Py_ssize_t _owed        # credit of taken messages, until the book's next take
    cdef bint _owing             # listed in the book's ``_owing``

    cdef object _pop_plain(self)
    cdef tuple _take(self)
    cdef int _credit(self, Py_ssize_t size) except -1


cdef class InboxReader:
    cdef Inbox _inbox
    cdef object _deserializer
    cdef object _wait
    cdef object _failed
    cdef object _ready           # the last step's awaitable, used again once nobody holds it
