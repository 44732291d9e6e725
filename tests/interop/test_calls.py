"""Unit tests of the interop servicer's per-call plumbing, with a recording fake context."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NoReturn

import pytest

from fastinject.interop.calls import InteropCall
from fastinject.interop.messages_pb2 import BoolValue, EchoStatus
from fastinject.status import StatusCode


class Aborted(Exception):
    """Raised by the fake context's ``abort``."""

    def __init__(self, code: Any, details: str) -> None:
        super().__init__(code, details)
        self.code = code
        self.details = details


class FakeContext:
    """Records what the servicer asks of its context."""

    def __init__(self, metadata: Sequence[tuple[str, str | bytes]] = ()) -> None:
        self.metadata = tuple(metadata)
        self.events: list[tuple[str, object]] = []

    def invocation_metadata(self) -> Sequence[tuple[str, str | bytes]]:
        """The request metadata given to the constructor."""
        return self.metadata

    async def send_initial_metadata(self, initial_metadata: Sequence[tuple[str, Any]]) -> None:
        """Record the headers sent."""
        self.events.append(("headers", tuple(initial_metadata)))

    def set_trailing_metadata(self, trailing_metadata: Sequence[tuple[str, Any]]) -> None:
        """Record the trailing metadata set."""
        self.events.append(("trailers", tuple(trailing_metadata)))

    async def abort(
        self, code: Any, details: str = "", trailing_metadata: Sequence[Any] = ()
    ) -> NoReturn:
        """Raise :class:`Aborted`."""
        raise Aborted(code, details)

    def set_compression(self, compression: Any) -> None:
        """Record the compression chosen, as its number."""
        self.events.append(("compression", int(compression)))

    def disable_next_message_compression(self) -> None:
        """Record that the next message goes uncompressed."""
        self.events.append(("plain next", None))


class IntrospectingContext(FakeContext):
    """A fake context that can tell whether the last request arrived compressed."""

    def __init__(self, compressed: bool) -> None:
        super().__init__()
        self.compressed = compressed

    def request_was_compressed(self) -> bool:
        """Whether the last request arrived compressed (as given to the constructor)."""
        return self.compressed


EXPECT = BoolValue(value=True)


async def test_plain_request_expected_compressed_is_invalid_argument() -> None:
    """A request that had to arrive compressed but did not ends the call INVALID_ARGUMENT."""
    call = InteropCall(IntrospectingContext(compressed=False))
    with pytest.raises(Aborted) as aborted:
        await call.check_request_compression(EXPECT)
    assert aborted.value.code is StatusCode.INVALID_ARGUMENT


async def test_compressed_request_meets_expectation() -> None:
    """A compressed request satisfies expect_compressed, and a plain one satisfies false."""
    await InteropCall(IntrospectingContext(compressed=True)).check_request_compression(EXPECT)
    await InteropCall(IntrospectingContext(compressed=False)).check_request_compression(
        BoolValue(value=False)
    )


async def test_expectation_skipped_without_introspection() -> None:
    """A context that cannot report request compression leaves expect_compressed unchecked."""
    await InteropCall(FakeContext()).check_request_compression(EXPECT)


async def test_echo_metadata_routing() -> None:
    """The echo-initial header waits for the headers; the echo-trailing one is set at once."""
    context = FakeContext(
        [
            ("x-grpc-test-echo-initial", "a"),
            ("x-grpc-test-echo-trailing-bin", b"\x01"),
            ("other", "ignored"),
        ]
    )
    call = InteropCall(context)
    assert context.events == [("trailers", (("x-grpc-test-echo-trailing-bin", b"\x01"),))]
    await call.send_headers()
    await call.send_headers()
    assert context.events[1:] == [("headers", (("x-grpc-test-echo-initial", "a"),))]


async def test_compression_is_chosen_before_headers() -> None:
    """Compression is enabled before the headers go out, and plain messages opt out one by one."""
    context = FakeContext()
    call = InteropCall(context)
    await call.prepare_message(BoolValue(value=True))
    await call.prepare_message(BoolValue(value=False))
    assert context.events == [("compression", 2), ("headers", ()), ("plain next", None)]


async def test_compression_after_plain_headers_is_refused() -> None:
    """Asking for compression once uncompressed headers are out fails instead of lying."""
    call = InteropCall(FakeContext())
    await call.prepare_message(BoolValue(value=False))
    with pytest.raises(Aborted) as aborted:
        await call.prepare_message(BoolValue(value=True))
    assert aborted.value.code is StatusCode.INVALID_ARGUMENT


async def test_echo_status_ends_the_call_with_it() -> None:
    """A non-OK echo status ends the call with that code and message."""
    with pytest.raises(Aborted) as aborted:
        await InteropCall(FakeContext()).echo_status(EchoStatus(code=2, message="m"))
    assert aborted.value.code is StatusCode.UNKNOWN
    assert aborted.value.details == "m"


async def test_unknown_echo_status_code_is_invalid_argument() -> None:
    """An echo status code outside 0-16 ends the call INVALID_ARGUMENT, naming the code."""
    with pytest.raises(Aborted) as aborted:
        await InteropCall(FakeContext()).echo_status(EchoStatus(code=99, message="m"))
    assert aborted.value.code is StatusCode.INVALID_ARGUMENT
    assert "99" in aborted.value.details


async def test_ok_echo_status_does_not_end_the_call() -> None:
    """An echo status of 0 (OK) lets the call carry on normally."""
    context = FakeContext()
    await InteropCall(context).echo_status(EchoStatus(code=0, message="ignored"))
    assert context.events == []


@pytest.mark.parametrize(
    ("metadata", "expect", "status", "compressed", "plain"),
    [
        ((), None, None, None, True),
        ((), BoolValue(value=False), EchoStatus(code=0), BoolValue(value=False), True),
        ((("x-grpc-test-echo-initial", "v"),), None, None, None, False),
        ((), BoolValue(value=True), None, None, False),
        ((), None, EchoStatus(code=3, message="m"), None, False),
        ((), None, None, BoolValue(value=True), False),
    ],
)
def test_a_call_asks_nothing_only_when_every_check_would_pass_at_once(
    metadata: Sequence[tuple[str, str]], expect: BoolValue | None, status: EchoStatus | None,
    compressed: BoolValue | None, plain: bool,
) -> None:
    """The servicer skips the awaited checks only for calls none of them would act on."""
    call = InteropCall(FakeContext(metadata))
    assert call.asks_nothing(expect, status, compressed) is plain
