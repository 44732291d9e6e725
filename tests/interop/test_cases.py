"""The standard gRPC interop client cases, run with a grpcio client against every target.

Each test is one case of grpc/grpc ``doc/interop-test-descriptions.md``, with the requests and
the client assertions that document specifies.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence

import grpc
import pytest

from fastinject.interop import test_pb2_grpc
from fastinject.interop.empty_pb2 import Empty
from fastinject.interop.messages_pb2 import (
    COMPRESSABLE,
    BoolValue,
    EchoStatus,
    Payload,
    ResponseParameters,
    SimpleRequest,
    SimpleResponse,
    StreamingInputCallRequest,
    StreamingOutputCallRequest,
    StreamingOutputCallResponse,
)
from interop.targets import FASTINJECT_TARGETS

Stub = test_pb2_grpc.TestServiceStub

ECHO_INITIAL = ("x-grpc-test-echo-initial", "test_initial_metadata_value")
ECHO_TRAILING = ("x-grpc-test-echo-trailing-bin", b"\xab\xab\xab")


def zeros(size: int) -> Payload:
    """A payload of ``size`` zero bytes."""
    return Payload(body=bytes(size))


def assert_payload(response: SimpleResponse | StreamingOutputCallResponse, size: int) -> None:
    """The response carries a COMPRESSABLE payload of ``size`` zero bytes."""
    assert response.payload.type == COMPRESSABLE
    assert response.payload.body == bytes(size)


def large_request(extra: SimpleRequest | None = None) -> SimpleRequest:
    """The large_unary request (314159 bytes back for 271828 sent), plus the fields of ``extra``."""
    request = SimpleRequest(response_size=314159, payload=zeros(271828))
    if extra is not None:
        request.MergeFrom(extra)
    return request


def duplex_request(response_size: int, payload_size: int) -> StreamingOutputCallRequest:
    """A FullDuplexCall request asking for one response of ``response_size`` bytes."""
    return StreamingOutputCallRequest(
        response_parameters=[ResponseParameters(size=response_size)],
        payload=zeros(payload_size),
    )


async def requests_of(
    messages: Sequence[StreamingInputCallRequest],
) -> AsyncIterator[StreamingInputCallRequest]:
    """``messages`` as an async request iterator."""
    for message in messages:
        yield message


async def test_empty_unary(stub: Stub) -> None:
    """empty_unary: EmptyCall returns an empty message."""
    response = await stub.EmptyCall(Empty())
    assert isinstance(response, Empty)
    assert response.ByteSize() == 0


async def test_large_unary(stub: Stub) -> None:
    """large_unary: UnaryCall returns a payload of exactly response_size zero bytes."""
    response = await stub.UnaryCall(large_request())
    assert_payload(response, 314159)


@pytest.mark.parametrize("target", FASTINJECT_TARGETS, indirect=True)
async def test_client_compressed_unary(stub: Stub) -> None:
    """client_compressed_unary: an uncompressed request expecting compression is refused."""
    with pytest.raises(grpc.aio.AioRpcError) as probe:
        await stub.UnaryCall(large_request(SimpleRequest(expect_compressed=BoolValue(value=True))))
    assert probe.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    compressed = await stub.UnaryCall(
        large_request(SimpleRequest(expect_compressed=BoolValue(value=True))),
        compression=grpc.Compression.Gzip,
    )
    assert_payload(compressed, 314159)
    uncompressed = await stub.UnaryCall(
        large_request(SimpleRequest(expect_compressed=BoolValue(value=False)))
    )
    assert_payload(uncompressed, 314159)


@pytest.mark.parametrize("target", ["grpcio"], indirect=True)
async def test_expect_compressed_is_not_enforced_without_introspection(stub: Stub) -> None:
    """On grpcio's context, which cannot see request compression, expect_compressed is ignored."""
    response = await stub.UnaryCall(
        large_request(SimpleRequest(expect_compressed=BoolValue(value=True)))
    )
    assert_payload(response, 314159)


async def test_server_compressed_unary(stub: Stub) -> None:
    """server_compressed_unary: calls asking for compressed and plain responses both succeed."""
    for compressed in (True, False):
        response = await stub.UnaryCall(
            large_request(SimpleRequest(response_compressed=BoolValue(value=compressed)))
        )
        assert_payload(response, 314159)


async def test_client_streaming(stub: Stub) -> None:
    """client_streaming: StreamingInputCall returns the sum of the payload sizes (74922)."""
    sizes = (27182, 8, 1828, 45904)
    response = await stub.StreamingInputCall(
        requests_of([StreamingInputCallRequest(payload=zeros(size)) for size in sizes])
    )
    assert response.aggregated_payload_size == 74922


@pytest.mark.parametrize("target", FASTINJECT_TARGETS, indirect=True)
async def test_client_compressed_streaming(stub: Stub) -> None:
    """client_compressed_streaming: the uncompressed probe is refused, the compressed call sums."""
    with pytest.raises(grpc.aio.AioRpcError) as probe:
        await stub.StreamingInputCall(
            requests_of(
                [
                    StreamingInputCallRequest(
                        expect_compressed=BoolValue(value=True), payload=zeros(27182)
                    )
                ]
            )
        )
    assert probe.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    # grpcio compresses every message of a compressed call; the per-message case (a plain
    # message inside a compressed call) is covered by test_compression_flags.py.
    response = await stub.StreamingInputCall(
        requests_of(
            [
                StreamingInputCallRequest(
                    expect_compressed=BoolValue(value=True), payload=zeros(27182)
                ),
                StreamingInputCallRequest(
                    expect_compressed=BoolValue(value=False), payload=zeros(45904)
                ),
            ]
        ),
        compression=grpc.Compression.Gzip,
    )
    assert response.aggregated_payload_size == 73086


async def test_server_streaming(stub: Stub) -> None:
    """server_streaming: one response per ResponseParameters, with those sizes, in order."""
    sizes = [31415, 9, 2653, 58979]
    call = stub.StreamingOutputCall(
        StreamingOutputCallRequest(
            response_parameters=[ResponseParameters(size=size) for size in sizes]
        )
    )
    responses = [response async for response in call]
    assert [len(r.payload.body) for r in responses] == sizes
    for response, size in zip(responses, sizes, strict=True):
        assert_payload(response, size)
    assert await call.code() == grpc.StatusCode.OK


async def test_server_compressed_streaming(stub: Stub) -> None:
    """server_compressed_streaming: a compressed then a plain response arrive, sized in order."""
    call = stub.StreamingOutputCall(
        StreamingOutputCallRequest(
            response_parameters=[
                ResponseParameters(size=31415, compressed=BoolValue(value=True)),
                ResponseParameters(size=92653, compressed=BoolValue(value=False)),
            ]
        )
    )
    responses = [response async for response in call]
    assert [len(r.payload.body) for r in responses] == [31415, 92653]
    assert await call.code() == grpc.StatusCode.OK


async def test_ping_pong(stub: Stub) -> None:
    """ping_pong: FullDuplexCall answers each request before the next is sent."""
    call = stub.FullDuplexCall()
    for response_size, payload_size in ((31415, 27182), (9, 8), (2653, 1828), (58979, 45904)):
        await call.write(duplex_request(response_size, payload_size))
        response = await call.read()
        assert isinstance(response, StreamingOutputCallResponse)
        assert_payload(response, response_size)
    await call.done_writing()
    assert await call.read() == grpc.aio.EOF
    assert await call.code() == grpc.StatusCode.OK


async def test_empty_stream(stub: Stub) -> None:
    """empty_stream: a FullDuplexCall with no requests gets no responses and OK."""
    call = stub.FullDuplexCall()
    await call.done_writing()
    assert await call.read() == grpc.aio.EOF
    assert await call.code() == grpc.StatusCode.OK


async def test_custom_metadata(stub: Stub) -> None:
    """custom_metadata: echo headers come back as initial and trailing metadata."""
    metadata = (ECHO_INITIAL, ECHO_TRAILING)
    unary = stub.UnaryCall(large_request(), metadata=metadata)
    assert_payload(await unary, 314159)
    assert ECHO_INITIAL in tuple(await unary.initial_metadata())
    assert ECHO_TRAILING in tuple(await unary.trailing_metadata())

    duplex = stub.FullDuplexCall(metadata=metadata)
    await duplex.write(duplex_request(314159, 271828))
    response = await duplex.read()
    assert isinstance(response, StreamingOutputCallResponse)
    assert_payload(response, 314159)
    await duplex.done_writing()
    assert await duplex.read() == grpc.aio.EOF
    assert await duplex.code() == grpc.StatusCode.OK
    assert ECHO_INITIAL in tuple(await duplex.initial_metadata())
    assert ECHO_TRAILING in tuple(await duplex.trailing_metadata())


async def test_status_code_and_message(stub: Stub) -> None:
    """status_code_and_message: the requested status code and message are returned."""
    status = EchoStatus(code=2, message="test status message")
    unary = stub.UnaryCall(SimpleRequest(response_status=status))
    with pytest.raises(grpc.aio.AioRpcError):
        await unary
    assert await unary.code() == grpc.StatusCode.UNKNOWN
    assert await unary.details() == "test status message"

    duplex = stub.FullDuplexCall()
    await duplex.write(StreamingOutputCallRequest(response_status=status))
    await duplex.done_writing()
    assert await duplex.code() == grpc.StatusCode.UNKNOWN
    assert await duplex.details() == "test status message"


async def test_special_status_message(stub: Stub) -> None:
    """special_status_message: whitespace and non-ASCII in the status message survive intact."""
    message = "\t\ntest with whitespace\r\nand Unicode BMP \u263a and non-BMP \U0001f608\t\n"
    call = stub.UnaryCall(SimpleRequest(response_status=EchoStatus(code=2, message=message)))
    with pytest.raises(grpc.aio.AioRpcError):
        await call
    assert await call.code() == grpc.StatusCode.UNKNOWN
    assert await call.details() == message


async def test_unimplemented_method(stub: Stub) -> None:
    """unimplemented_method: TestService/UnimplementedCall fails with UNIMPLEMENTED."""
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.UnimplementedCall(Empty())
    assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_unimplemented_service(channel: grpc.aio.Channel) -> None:
    """unimplemented_service: UnimplementedService/UnimplementedCall fails with UNIMPLEMENTED."""
    stub = test_pb2_grpc.UnimplementedServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.UnimplementedCall(Empty())
    assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_cancel_after_begin(stub: Stub) -> None:
    """cancel_after_begin: a StreamingInputCall cancelled before any message ends CANCELLED."""
    call = stub.StreamingInputCall()
    assert call.cancel()
    assert await call.code() == grpc.StatusCode.CANCELLED


async def test_cancel_after_first_response(stub: Stub) -> None:
    """cancel_after_first_response: a FullDuplexCall cancelled after one response ends CANCELLED."""
    call = stub.FullDuplexCall()
    await call.write(duplex_request(31415, 27182))
    response = await call.read()
    assert isinstance(response, StreamingOutputCallResponse)
    assert_payload(response, 31415)
    assert call.cancel()
    assert await call.code() == grpc.StatusCode.CANCELLED


async def test_timeout_on_sleeping_server(channel: grpc.aio.Channel, stub: Stub) -> None:
    """timeout_on_sleeping_server: a FullDuplexCall with a 1 ms timeout ends DEADLINE_EXCEEDED."""
    # On a channel still connecting, grpcio's client itself sometimes reports this call as
    # INTERNAL "Internal error from Core" (seen against grpc.aio's server too): connect first.
    await channel.channel_ready()
    for _ in range(5):
        call = stub.FullDuplexCall(timeout=0.001)
        # The deadline may pass before the write, which then fails; only the status matters.
        with contextlib.suppress(grpc.aio.AioRpcError, grpc.aio.UsageError):
            await call.write(StreamingOutputCallRequest(payload=zeros(27182)))
        if not await _client_write_raced_deadline(call):
            break
    assert await call.code() == grpc.StatusCode.DEADLINE_EXCEEDED


async def _client_write_raced_deadline(call: grpc.aio.StreamStreamCall) -> bool:
    """Whether grpcio's client ended ``call`` itself, as INTERNAL, on its own failed write.

    When the deadline passes while grpc.aio is sending a message, its send batch fails and it
    reports the call as INTERNAL "Internal error from Core" whatever the server answered (about
    1 call in 50 on a loaded machine, against any server): such a call says nothing of ours.
    """
    return (
        await call.code() == grpc.StatusCode.INTERNAL
        and await call.details() == "Internal error from Core"
        and "SendMessageOperation" in await call.debug_error_string()
    )


async def test_half_duplex(stub: Stub) -> None:
    """HalfDuplexCall answers the buffered requests in order after the client half-closes."""
    call = stub.HalfDuplexCall()
    await call.write(duplex_request(31415, 27182))
    await call.write(duplex_request(9, 8))
    await call.done_writing()
    responses = [response async for response in call]
    assert [len(r.payload.body) for r in responses] == [31415, 9]
    assert await call.code() == grpc.StatusCode.OK


async def test_cacheable_unary_is_marked_cacheable(stub: Stub) -> None:
    """CacheableUnaryCall returns a fresh timestamp payload with a public cache-control header."""
    first = stub.CacheableUnaryCall(SimpleRequest())
    second = stub.CacheableUnaryCall(SimpleRequest())
    first_body = (await first).payload.body
    second_body = (await second).payload.body
    assert first_body.isdigit()
    assert second_body.isdigit()
    assert first_body != second_body
    assert ("cache-control", "max-age=60, public") in tuple(await first.initial_metadata())


async def test_unsupported_payload_type_is_invalid_argument(stub: Stub) -> None:
    """UnaryCall refuses a response_type it does not know with INVALID_ARGUMENT."""
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.UnaryCall(SimpleRequest(response_type=7, response_size=1))  # type: ignore[arg-type]
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "payload type 7" in (error.value.details() or "")


async def test_oversized_response_is_invalid_argument(stub: Stub) -> None:
    """UnaryCall refuses a response_size over 16 MiB with INVALID_ARGUMENT, allocating nothing."""
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.UnaryCall(SimpleRequest(response_size=(16 << 20) + 1))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_unknown_echo_status_code_is_invalid_argument(stub: Stub) -> None:
    """An echo status code outside 0-16 is refused with INVALID_ARGUMENT naming the code."""
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.UnaryCall(SimpleRequest(response_status=EchoStatus(code=99, message="x")))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "99" in (error.value.details() or "")


async def test_requests_up_to_16_mib_are_accepted(stub: Stub) -> None:
    """The server accepts a request message just under 16 MiB (above grpc's 4 MiB default)."""
    size = (16 << 20) - 64
    response = await stub.UnaryCall(SimpleRequest(response_size=1, payload=zeros(size)))
    assert_payload(response, 1)


async def test_requests_over_16_mib_are_refused(stub: Stub) -> None:
    """The server refuses a request message over 16 MiB with RESOURCE_EXHAUSTED."""
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.UnaryCall(SimpleRequest(response_size=1, payload=zeros(16 << 20)))
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
