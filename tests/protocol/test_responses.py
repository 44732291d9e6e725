"""What a real server puts on the wire for calls: headers, messages, trailers, errors.

Each test drives a started ``fastinject.Server`` over a TCP socket with a raw ``h2`` client
(grpc/grpc ``doc/PROTOCOL-HTTP2.md``, ``doc/statuscodes.md``, ``doc/compression.md``).
"""

from __future__ import annotations

import gzip
import json

from fastinject import StatusCode
from protocol.probe_service import ABORT_DETAILS, Probe, StartServer
from protocol.wire import (
    DATA,
    HEADERS,
    NO_ERROR,
    OpenWire,
    Wire,
    grpc_frame,
    parse_messages,
)

PROTOCOL_ERROR = 0x1


async def test_unary_response_is_headers_message_trailers(wire: Wire) -> None:
    """A unary response is HEADERS (:status 200, application/grpc), one message, then trailers."""
    stream_id = wire.client.start_call(b"/test.Echo/Unary", [b"hello"])
    response = await wire.finish(stream_id)
    assert response.headers is not None
    assert response.headers[:2] == [(b":status", b"200"), (b"content-type", b"application/grpc")]
    assert response.messages == [(False, b"hello")]
    assert response.trailers is not None
    assert response.status == StatusCode.OK.number
    assert b"grpc-message" not in response.status_map
    kinds = [f.type for f in wire.client.frames_on(stream_id) if f.type in (HEADERS, DATA)]
    assert kinds[0] == HEADERS
    assert kinds[-1] == HEADERS
    assert set(kinds[1:-1]) == {DATA}


async def test_requests_declaring_their_content_length_are_served(wire: Wire) -> None:
    """A request with content-length (h2load sends one) is served; a body breaking it is not.

    The broken one ends the connection with PROTOCOL_ERROR (RFC 9113 8.1.1).
    """
    body = grpc_frame(b"hello")
    length = (b"content-length", str(len(body)).encode())
    for _ in range(3):  # the first opens its stream on a decoded block, later ones remembered
        response = await wire.finish(wire.client.start_call(b"/test.Echo/Unary", [b"hello"],
                                                            extra=[length]))
        assert response.status == StatusCode.OK.number
        assert response.messages == [(False, b"hello")]
    wire.client.start_call(b"/test.Echo/Unary", [b"hello!"], extra=[length])
    await wire.wait_closed()
    assert [g.error_code for g in wire.client.goaways] == [PROTOCOL_ERROR]


async def test_server_streaming_messages_arrive_in_order(wire: Wire) -> None:
    """Every message a streaming handler yields is framed and delivered in order before trailers."""
    response = await wire.call(b"/test.Echo/ServerStream", b"12")
    assert response.messages == [(False, str(i).encode()) for i in range(12)]
    assert response.status == StatusCode.OK.number


async def test_error_before_any_message_is_trailers_only(wire: Wire) -> None:
    """A call failing before it sent anything is answered with one HEADERS frame."""
    stream_id = wire.client.start_call(b"/test.Echo/Abort", [b"PERMISSION_DENIED:go away"])
    response = await wire.finish(stream_id)
    assert response.trailers_only
    assert response.ended
    assert response.header_map[b":status"] == b"200"
    assert response.header_map[b"content-type"] == b"application/grpc"
    assert response.status == StatusCode.PERMISSION_DENIED.number
    assert response.message == "go away"
    assert response.header_map[b"why"] == b"because"
    assert wire.client.frames_on(stream_id, DATA) == []
    assert len(wire.client.frames_on(stream_id, HEADERS)) == 1


async def test_grpc_message_is_percent_encoded_in_trailers(wire: Wire) -> None:
    """grpc-message is sent percent-encoded (UTF-8, then %XX outside 0x20-0x7E and for '%')."""
    response = await wire.call(b"/test.Probe/MessageThenAbort", b"")
    assert response.messages == [(False, b"first")]
    assert response.trailers is not None
    assert response.status == StatusCode.NOT_FOUND.number
    raw = response.status_map[b"grpc-message"]
    assert raw == b"50%25 done: caf%C3%A9%0Asecond line"
    assert response.message == ABORT_DETAILS


async def test_unknown_method_is_unimplemented(wire: Wire) -> None:
    """A well-formed call to a method nobody serves ends trailers-only with UNIMPLEMENTED."""
    response = await wire.call(b"/test.Echo/NoSuchMethod", b"")
    assert response.trailers_only
    assert response.status == StatusCode.UNIMPLEMENTED.number
    assert "/test.Echo/NoSuchMethod" in response.message


async def test_response_is_gzip_compressed_when_asked_and_accepted(wire: Wire) -> None:
    """A handler's gzip choice applies when the client's grpc-accept-encoding lists gzip."""
    stream_id = wire.client.start_call(
        b"/test.Echo/Compressed", [b"abc"], accept_encoding=b"identity,gzip"
    )
    response = await wire.finish(stream_id)
    assert response.header_map[b"grpc-encoding"] == b"gzip"
    [(compressed, payload)] = response.messages
    assert compressed
    assert gzip.decompress(payload) == b"abc" * 100
    assert response.status == StatusCode.OK.number


async def test_response_is_not_compressed_when_the_client_does_not_accept_gzip(
    wire: Wire,
) -> None:
    """Without gzip in the client's grpc-accept-encoding, responses go uncompressed."""
    for accept in (b"identity", b"identity,deflate", None):
        stream_id = wire.client.start_call(
            b"/test.Echo/Compressed", [b"abc"], accept_encoding=accept
        )
        response = await wire.finish(stream_id)
        assert response.header_map.get(b"grpc-encoding", b"identity") == b"identity"
        assert response.messages == [(False, b"abc" * 100)]
        assert response.status == StatusCode.OK.number


async def test_compressed_request_is_decompressed(wire: Wire) -> None:
    """A request message flagged compressed with grpc-encoding gzip reaches the handler inflated."""
    stream_id = wire.client.start_call(
        b"/test.Echo/Unary", end=False, extra=[(b"grpc-encoding", b"gzip")]
    )
    wire.client.send(stream_id, grpc_frame(gzip.compress(b"zipped"), compressed=True), end=True)
    response = await wire.finish(stream_id)
    assert response.messages == [(False, b"zipped")]
    assert response.status == StatusCode.OK.number


async def test_compressed_flag_without_grpc_encoding_is_internal(wire: Wire) -> None:
    """A message flagged compressed on a call with no grpc-encoding fails with INTERNAL."""
    stream_id = wire.client.start_call(b"/test.Echo/Unary", end=False)
    wire.client.send(stream_id, grpc_frame(gzip.compress(b"zipped"), compressed=True), end=True)
    response = await wire.finish(stream_id)
    assert response.status == StatusCode.INTERNAL.number
    assert "grpc-encoding" in response.message
    assert response.messages == []


async def test_unary_with_two_request_messages_is_unimplemented(wire: Wire) -> None:
    """Two requests on a unary method is a request cardinality violation: UNIMPLEMENTED.

    grpc ``doc/statuscodes.md``: "method requires exactly one request but client sent some
    other number of requests" -> UNIMPLEMENTED, generated at the server.
    """
    response = await wire.call(b"/test.Echo/Unary", b"one", b"two")
    assert response.status == StatusCode.UNIMPLEMENTED.number
    assert response.messages == []


async def test_unary_waits_for_the_half_close_after_its_message(wire: Wire) -> None:
    """A unary request half-closed after its message is answered once the half-close comes.

    A second message before the half-close is UNIMPLEMENTED instead.
    """
    single = wire.client.start_call(b"/test.Echo/Unary", [b"one"], end=False)
    double = wire.client.start_call(b"/test.Echo/Unary", [b"one"], end=False)
    await wire.round_trip()
    assert not wire.client.response(single).done
    wire.client.end(single)
    wire.client.send(double, grpc_frame(b"two"), end=True)
    response = await wire.finish(single)
    assert (response.status, response.messages) == (StatusCode.OK.number, [(False, b"one")])
    assert (await wire.finish(double)).status == StatusCode.UNIMPLEMENTED.number


async def test_unary_with_no_request_message_is_unimplemented(wire: Wire) -> None:
    """A unary call half-closed without a request is a cardinality violation: UNIMPLEMENTED.

    grpc ``doc/statuscodes.md``, and grpcio's own server ("requires exactly one request
    message", status 12).
    """
    response = await wire.call(b"/test.Echo/Unary")
    assert response.status == StatusCode.UNIMPLEMENTED.number
    assert response.messages == []


async def test_server_streaming_with_two_request_messages_is_unimplemented(wire: Wire) -> None:
    """A server-streaming method takes exactly one request too; two is UNIMPLEMENTED."""
    response = await wire.call(b"/test.Echo/ServerStream", b"3", b"3")
    assert response.status == StatusCode.UNIMPLEMENTED.number


async def test_message_over_the_limit_is_rejected_before_the_body_arrives(
    start_server: StartServer, open_wire: OpenWire
) -> None:
    """A message over max_receive_message_length fails RESOURCE_EXHAUSTED before its body.

    The 5-byte prefix is enough: the client never has to send the body.
    """
    served = await start_server(max_receive_message_length=1000)
    wire = await open_wire(served.port)
    stream_id = wire.client.start_call(b"/test.Echo/Unary", end=False)
    wire.client.send(stream_id, grpc_frame(b"z" * 5000)[:5])
    response = await wire.finish(stream_id)
    assert response.status == StatusCode.RESOURCE_EXHAUSTED.number
    assert "5000" in response.message
    # Our request side is still open: the server tells us to stop sending (RFC 9113 8.1).
    await wire.wait_for(lambda: response.reset is not None, "RST_STREAM after the status")
    assert response.reset == NO_ERROR


async def test_reserved_headers_are_not_invocation_metadata(wire: Wire) -> None:
    """A handler's invocation_metadata() holds the application's headers and none of gRPC's own."""
    response = await wire.finish(
        wire.client.start_call(
            b"/test.Echo/Metadata",
            [b""],
            extra=[
                (b"grpc-timeout", b"10S"),
                (b"grpc-trace-bin", b"AAEC"),
                (b"x-custom", b"value"),
                (b"x-data-bin", b"AAH/"),
            ],
        )
    )
    assert response.status == StatusCode.OK.number
    [(_, payload)] = response.messages
    assert json.loads(payload) == [["x-custom", "value"], ["x-data-bin", "0001ff"]]


async def test_invalid_metadata_is_answered_and_the_connection_survives(wire: Wire) -> None:
    """A call with bad metadata fails alone: the next call on the connection succeeds."""
    bad = await wire.finish(
        wire.client.start_call(b"/test.Echo/Unary", [b"x"], extra=[(b"k-bin", b"*")])
    )
    assert bad.status == StatusCode.INTERNAL.number
    good = await wire.call(b"/test.Echo/Unary", b"still here")
    assert good.messages == [(False, b"still here")]


async def test_second_request_arriving_later_is_unimplemented(
    wire: Wire, probe: Probe
) -> None:
    """A second request message sent in a later frame, before the half-close, is a violation.

    The unary handler only runs once the client half-closes, so it never sees the call.
    """
    stream_id = wire.client.start_call(b"/test.Probe/Gate", [b"one"], end=False)
    await wire.round_trip()
    wire.client.send(stream_id, grpc_frame(b"two"), end=True)
    await wire.round_trip()
    probe.gate.set()
    response = await wire.finish(stream_id)
    assert not probe.started.is_set()
    assert response.status == StatusCode.UNIMPLEMENTED.number


async def test_small_streamed_messages_share_data_frames(wire: Wire) -> None:
    """Messages a handler writes within one loop turn leave in few DATA frames, all intact."""
    stream_id = wire.client.start_call(b"/test.Probe/Produce", [b"200:10"])
    response = await wire.finish(stream_id)
    assert response.status == StatusCode.OK.number
    expected = [(False, bytes([i % 256]) * 10) for i in range(200)]
    assert parse_messages(bytes(response.body)) == expected
    assert len(wire.client.frames_on(stream_id, DATA)) < 20
