"""The compression interop cases at the level of message flags, with a raw ``h2`` client.

grpcio's client can neither show a response message's compressed flag nor send a plain message
inside a compressed call, so these cases use :mod:`interop.h2_grpc` to assert what
``doc/interop-test-descriptions.md`` requires of the flags themselves.
"""

from __future__ import annotations

import pytest

from fastinject.interop.messages_pb2 import (
    BoolValue,
    Payload,
    ResponseParameters,
    SimpleRequest,
    SimpleResponse,
    StreamingInputCallRequest,
    StreamingInputCallResponse,
    StreamingOutputCallRequest,
    StreamingOutputCallResponse,
)
from interop import h2_grpc
from interop.h2_grpc import OutgoingMessage
from interop.targets import FASTINJECT_TARGETS, Target

UNARY = "/grpc.testing.TestService/UnaryCall"
STREAMING_INPUT = "/grpc.testing.TestService/StreamingInputCall"
STREAMING_OUTPUT = "/grpc.testing.TestService/StreamingOutputCall"

OK = 0
INVALID_ARGUMENT = 3


async def call(target: Target, path: str, *messages: OutgoingMessage) -> h2_grpc.CallResult:
    """One raw call to ``target``."""
    return await h2_grpc.call(target.port, path, messages, ssl_context=target.ssl_context())


def large_unary(extra: SimpleRequest) -> bytes:
    """The serialized large_unary request, with the fields set in ``extra`` added."""
    request = SimpleRequest(response_size=314159, payload=Payload(body=bytes(271828)))
    request.MergeFrom(extra)
    data: bytes = request.SerializeToString()
    return data


@pytest.mark.parametrize("compressed", [True, False])
async def test_server_compressed_unary_sets_message_flag(target: Target, compressed: bool) -> None:
    """server_compressed_unary: the response's compressed flag follows response_compressed."""
    result = await call(
        target,
        UNARY,
        OutgoingMessage(
            large_unary(SimpleRequest(response_compressed=BoolValue(value=compressed)))
        ),
    )
    assert result.status == OK
    assert [m.compressed for m in result.messages] == [compressed]
    response = SimpleResponse.FromString(result.messages[0].payload)
    assert response.payload.body == bytes(314159)


async def test_server_compressed_streaming_sets_message_flags(target: Target) -> None:
    """server_compressed_streaming: the first response is compressed, the second is not."""
    request = StreamingOutputCallRequest(
        response_parameters=[
            ResponseParameters(size=31415, compressed=BoolValue(value=True)),
            ResponseParameters(size=92653, compressed=BoolValue(value=False)),
        ]
    )
    result = await call(target, STREAMING_OUTPUT, OutgoingMessage(request.SerializeToString()))
    assert result.status == OK
    assert [m.compressed for m in result.messages] == [True, False]
    sizes = [
        len(StreamingOutputCallResponse.FromString(m.payload).payload.body) for m in result.messages
    ]
    assert sizes == [31415, 92653]


@pytest.mark.parametrize("target", FASTINJECT_TARGETS, indirect=True)
async def test_client_compressed_unary_checks_message_flag(target: Target) -> None:
    """client_compressed_unary: expect_compressed refuses a plain message, accepts a gzip one."""
    expect = large_unary(SimpleRequest(expect_compressed=BoolValue(value=True)))
    probe = await call(target, UNARY, OutgoingMessage(expect))
    assert probe.status == INVALID_ARGUMENT

    compressed = await call(target, UNARY, OutgoingMessage(expect, compress=True))
    assert compressed.status == OK
    assert len(SimpleResponse.FromString(compressed.messages[0].payload).payload.body) == 314159

    plain = await call(
        target,
        UNARY,
        OutgoingMessage(large_unary(SimpleRequest(expect_compressed=BoolValue(value=False)))),
    )
    assert plain.status == OK
    assert len(SimpleResponse.FromString(plain.messages[0].payload).payload.body) == 314159


@pytest.mark.parametrize("target", FASTINJECT_TARGETS, indirect=True)
async def test_client_compressed_streaming_checks_each_message_flag(target: Target) -> None:
    """client_compressed_streaming: a plain probe is refused; compressed then plain sums 73086."""

    def request(expect: bool, size: int) -> bytes:
        message = StreamingInputCallRequest(
            expect_compressed=BoolValue(value=expect), payload=Payload(body=bytes(size))
        )
        data: bytes = message.SerializeToString()
        return data

    probe = await call(target, STREAMING_INPUT, OutgoingMessage(request(True, 27182)))
    assert probe.status == INVALID_ARGUMENT

    result = await call(
        target,
        STREAMING_INPUT,
        OutgoingMessage(request(True, 27182), compress=True),
        OutgoingMessage(request(False, 45904), compress=False),
    )
    assert result.status == OK
    response = StreamingInputCallResponse.FromString(result.messages[0].payload)
    assert response.aggregated_payload_size == 73086


@pytest.mark.parametrize("target", FASTINJECT_TARGETS, indirect=True)
async def test_expect_compressed_is_checked_per_message(target: Target) -> None:
    """A plain message expecting compression is refused even inside a gzip call."""
    message = StreamingInputCallRequest(
        expect_compressed=BoolValue(value=True), payload=Payload(body=bytes(10))
    ).SerializeToString()
    result = await call(
        target,
        STREAMING_INPUT,
        OutgoingMessage(message, compress=True),
        OutgoingMessage(message, compress=False),
    )
    assert result.status == INVALID_ARGUMENT
