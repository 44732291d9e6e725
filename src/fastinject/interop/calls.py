"""Per-call plumbing of the interop servicer: echoed metadata, compression, echoed status.

Everything here talks to the servicer context through :class:`ServicerContextLike`, the part
of the ``grpc.aio.ServicerContext`` API the interop server needs, so the same servicer runs on
grpcio's asyncio server and on fastinject's.  The one addition is optional:
``request_was_compressed()`` (fastinject's context has it, grpcio's does not) tells whether the
request message just received had its compressed flag set; without it the ``expect_compressed``
checks cannot be made and are skipped, as the interop messages allow ("nullable ... to
interoperate with servers not able to ... introspect the call").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NoReturn, Protocol

from fastinject.compression import Compression
from fastinject.status import StatusCode, coerce_status

from .messages_pb2 import BoolValue, EchoStatus

ECHO_INITIAL_KEY = "x-grpc-test-echo-initial"
"""A request header the server returns, key and value unchanged, in its initial metadata."""

ECHO_TRAILING_KEY = "x-grpc-test-echo-trailing-bin"
"""A request header the server returns, key and value unchanged, in its trailing metadata."""

MetadataValue = str | bytes
MetadataPairs = Sequence[tuple[str, MetadataValue]]


class ServicerContextLike(Protocol):
    """The subset of ``grpc.aio.ServicerContext`` the interop servicer uses."""

    def invocation_metadata(self) -> MetadataPairs | None:
        """The client's request metadata."""

    async def send_initial_metadata(self, initial_metadata: MetadataPairs) -> None:
        """Send response headers now, with ``initial_metadata``."""

    def set_trailing_metadata(self, trailing_metadata: MetadataPairs) -> None:
        """Metadata to send with the final status."""

    async def abort(
        self, code: Any, details: str = "", trailing_metadata: MetadataPairs = ()
    ) -> NoReturn:
        """End the call with ``code`` and ``details`` by raising."""

    def set_compression(self, compression: Any) -> None:
        """Compress the call's response messages with ``compression``."""

    def disable_next_message_compression(self) -> None:
        """Send the next response message uncompressed."""


def _request_compressed_probe(context: ServicerContextLike) -> Callable[[], bool] | None:
    probe = getattr(context, "request_was_compressed", None)
    return probe if callable(probe) else None


class InteropCall:
    """The state of one interop RPC between its handler and its context.

    Response headers are sent lazily, right before the first response message or the end of
    the call, because the call's compression has to be chosen before they go out and a
    streaming call only knows whether it needs compression once it has read a request.
    """

    def __init__(self, context: ServicerContextLike) -> None:
        self.context = context
        self._headers_sent = False
        self._compressing = False
        self._initial: list[tuple[str, MetadataValue]] = []
        echo_trailing: list[tuple[str, MetadataValue]] = []
        for key, value in context.invocation_metadata() or ():
            if key == ECHO_INITIAL_KEY:
                self._initial.append((key, value))
            elif key == ECHO_TRAILING_KEY:
                echo_trailing.append((key, value))
        if echo_trailing:
            context.set_trailing_metadata(echo_trailing)
        self._compressed_probe = _request_compressed_probe(context)

    def asks_nothing(
        self,
        expect_compressed: BoolValue | None,
        status: EchoStatus | None,
        compressed: BoolValue | None,
    ) -> bool:
        """Whether a call with one response needs nothing of its context before answering.

        No echoed initial metadata, no compression expected of the request or asked for the
        response, no status to echo: its checks would all pass without awaiting anything.
        """
        return not (
            self._initial
            or (expect_compressed is not None and expect_compressed.value)
            or (status is not None and status.code)
            or (compressed is not None and compressed.value)
        )

    def add_initial_metadata(self, pair: tuple[str, MetadataValue]) -> None:
        """Add ``pair`` to the response headers (which must not have been sent yet)."""
        if self._headers_sent:
            raise RuntimeError("response headers were already sent")
        self._initial.append(pair)

    async def send_headers(self, *, compress: bool = False) -> None:
        """Send the response headers unless already sent, enabling gzip when ``compress``.

        Once headers are out the call's compression is fixed; :meth:`prepare_message` then
        refuses a message that asks for compression on an uncompressed call.
        """
        if self._headers_sent:
            return
        self._headers_sent = True
        if compress:
            self.context.set_compression(Compression.Gzip)
            self._compressing = True
        # With compression the headers are sent explicitly even when empty: grpcio's asyncio
        # server ignores set_compression for a unary response whose headers go out implicitly
        # (grpc/grpc#34690).
        if self._initial or compress:
            await self.context.send_initial_metadata(self._initial)

    async def prepare_message(self, compressed: BoolValue | None) -> None:
        """Get ready to send one response message whose compression ``compressed`` asks for.

        Call it right before handing the message to the context.
        """
        want = compressed is not None and compressed.value
        await self.send_headers(compress=want)
        if want and not self._compressing:
            await self.context.abort(
                StatusCode.INVALID_ARGUMENT,
                "a response asked for compression after this call's headers were sent "
                "uncompressed; ask for it in the first request of the call",
            )
        if self._compressing and not want:
            self.context.disable_next_message_compression()

    async def check_request_compression(self, expect_compressed: BoolValue | None) -> None:
        """Fail with INVALID_ARGUMENT when the request should have arrived compressed but did not.

        Does nothing when the context cannot tell whether the request was compressed.
        """
        if expect_compressed is None or not expect_compressed.value:
            return
        if self._compressed_probe is None or self._compressed_probe():
            return
        await self.abort(
            StatusCode.INVALID_ARGUMENT,
            "expect_compressed is true but the request message was not compressed",
        )

    async def echo_status(self, status: EchoStatus | None) -> None:
        """End the call with ``status`` when one is given and it is not OK."""
        if status is None or status.code == 0:
            return
        try:
            code = coerce_status(status.code)
        except ValueError:
            await self.abort(
                StatusCode.INVALID_ARGUMENT,
                f"response_status.code {status.code} is not a gRPC status code (0-16)",
            )
        await self.abort(code, status.message)

    async def abort(self, code: StatusCode, details: str) -> NoReturn:
        """Send pending headers (echoed initial metadata) then end the call with ``code``."""
        await self.send_headers()
        await self.context.abort(code, details)
