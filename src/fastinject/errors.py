"""The one error hierarchy of fastinject.

Every exception the package raises on purpose derives from :class:`FastInjectError`.  Two
families matter to the server:

* :class:`RpcError` subclasses are *expected* failures of one RPC; each carries the gRPC
  :class:`~fastinject.status.StatusCode` it is reported with.
* :class:`ProtocolError` subclasses are violations by the peer (or by us) of HTTP/2 or of the
  gRPC framing; each carries the HTTP/2 error code used to reset the stream or close the
  connection.

The Cython framing module imports these classes, so both framing implementations raise the
very same types.
"""

from __future__ import annotations

from .status import StatusCode

# HTTP/2 error codes (RFC 9113 section 7) used below; h2.errors.ErrorCodes has the same values.
_PROTOCOL_ERROR = 0x1
_INTERNAL_ERROR = 0x2
_CANCEL = 0x8
_ENHANCE_YOUR_CALM = 0xB
# Longest cause quoted in a DeserializationError (a deserializer may quote the whole input).
_MAX_REASON = 200


class FastInjectError(Exception):
    """Base class of every error fastinject raises on purpose."""


class RpcError(FastInjectError):
    """An expected failure of one RPC, reported to the client with :attr:`status`."""

    status: StatusCode = StatusCode.UNKNOWN

    def __init__(self, message: str, status: StatusCode | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status

    @property
    def details(self) -> str:
        """The text sent as ``grpc-message``."""
        return str(self)


class DeserializationError(RpcError):
    """The request deserializer rejected a message (the peer sent something malformed).

    Reported with ``INTERNAL``, as grpc core, grpc-java and grpc-go do, with grpcio's details
    text followed by the deserializer's exception.
    """

    status = StatusCode.INTERNAL

    def __init__(self, cause: BaseException) -> None:
        reason = f"{type(cause).__name__}: {cause}"
        if len(reason) > _MAX_REASON:
            reason = reason[: _MAX_REASON - 3] + "..."
        super().__init__(f"Exception deserializing request! {reason}")


class ProtocolError(FastInjectError):
    """The peer broke HTTP/2 or gRPC framing rules; :attr:`http2_error_code` says how we answer."""

    http2_error_code: int = _PROTOCOL_ERROR
    status: StatusCode = StatusCode.INTERNAL


class FramingError(ProtocolError):
    """Base class of errors raised by the gRPC message deframer."""


class MessageTooLargeError(FramingError):
    """A message's declared (or decompressed) length exceeds the configured maximum."""

    status = StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, length: int, limit: int) -> None:
        super().__init__(f"received message larger than max ({length} vs. {limit})")
        self.length = length
        self.limit = limit


class InvalidFlagsError(FramingError):
    """A message's first byte is neither 0 (plain) nor 1 (compressed)."""

    def __init__(self, flags: int) -> None:
        super().__init__(f"invalid gRPC message flags byte 0x{flags:02x} (expected 0 or 1)")
        self.flags = flags


class IncompleteMessageError(FramingError):
    """The stream ended in the middle of a message."""

    def __init__(self, buffered: int, expected: int) -> None:
        super().__init__(
            f"stream ended inside a gRPC message: {buffered} of {expected} bytes received"
        )
        self.buffered = buffered
        self.expected = expected


class DecompressionError(ProtocolError):
    """A compressed message could not be decompressed."""


class InvalidMetadataError(FastInjectError, ValueError):
    """Metadata (a header) is malformed, reserved, or not valid for its kind."""

    status = StatusCode.INTERNAL


class InvalidTimeoutError(RpcError):
    """A request's ``grpc-timeout`` header is malformed.

    Reported with ``INTERNAL``, as grpc core does (it answers "Error parsing 'grpc-timeout'
    metadata" with status 13); :attr:`value` is the header as received.
    """

    status = StatusCode.INTERNAL

    def __init__(self, value: bytes) -> None:
        super().__init__(
            f"invalid grpc-timeout {value!r}: expected 1 to 8 ASCII digits followed by one "
            "of the units H, M, S, m, u, n"
        )
        self.value = value


class PingAbuseError(ProtocolError):
    """The peer pinged more often than the server's policy allows."""

    http2_error_code = _ENHANCE_YOUR_CALM


class FloodError(ProtocolError):
    """The peer made the server work without calls past a budget (a rapid-reset or frame flood).

    The connection ends with GOAWAY ENHANCE_YOUR_CALM carrying :attr:`debug` (e.g.
    ``too_many_resets``); see ``docs/SECURITY.md``.
    """

    http2_error_code = _ENHANCE_YOUR_CALM

    def __init__(self, debug: str, detail: str) -> None:
        super().__init__(detail)
        self.debug = debug.encode("ascii")


class ServerStateError(FastInjectError, RuntimeError):
    """The server or injector is in a state that does not allow the call (e.g. stopped)."""


class ServerStoppedError(ServerStateError):
    """The server has been stopped; it accepts no new ports, injectors or connections."""


class InjectorDestroyedError(ServerStateError):
    """The connection injector has been destroyed; it accepts no new connections."""


class BindError(FastInjectError, OSError, RuntimeError):
    """An address could not be bound by ``add_insecure_port``/``add_secure_port``.

    An :class:`OSError` (with the system's ``errno`` when it gave one) and also a
    :class:`RuntimeError`, which is what ``grpc.aio`` raises for a failed bind, so code
    written for either keeps catching it.  The message names the address.
    """


class InvalidAddressError(BindError, ValueError):
    """The address is not one the server can bind (``host:port``, ``unix:path``, ...)."""


class InvalidInterceptorError(FastInjectError, TypeError, ValueError):
    """An object given as a server interceptor has no ``intercept_service`` method.

    A :class:`TypeError` and also a :class:`ValueError`, which is what ``grpc.aio.server()``
    raises for one, so code (and tests) written for either keeps catching it.
    """


class HandshakeError(FastInjectError):
    """A connection's TLS handshake failed or timed out (a peer fault: logged, never raised)."""


class AbortError(FastInjectError):
    """Raised inside a handler by ``context.abort``; the server turns it into the final status."""

    def __init__(self, status: StatusCode, details: str) -> None:
        super().__init__(details)
        self.status = status
        self.details = details


__all__ = [
    "AbortError",
    "BindError",
    "DecompressionError",
    "DeserializationError",
    "FastInjectError",
    "FloodError",
    "FramingError",
    "HandshakeError",
    "IncompleteMessageError",
    "InjectorDestroyedError",
    "InvalidAddressError",
    "InvalidFlagsError",
    "InvalidInterceptorError",
    "InvalidMetadataError",
    "InvalidTimeoutError",
    "MessageTooLargeError",
    "PingAbuseError",
    "ProtocolError",
    "RpcError",
    "ServerStateError",
    "ServerStoppedError",
]
