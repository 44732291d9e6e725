"""Request validation and flow-control credit of the sans-IO ``ServerProtocol``, byte for byte.

A real ``h2`` client connection is fed the protocol's output, so each test sees exactly the
frames the server would put on the wire (grpc/grpc ``doc/PROTOCOL-HTTP2.md``).
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from fastinject import StatusCode, _hpack
from fastinject.options import ServerSettings
from fastinject.protocol import (
    CallFailed,
    CallStarted,
    Event,
    MessagesReceived,
    RequestEnded,
    ServerProtocol,
)
from protocol.wire import (
    WINDOW_UPDATE,
    H2Client,
    connected,
    exchange,
    grpc_frame,
    request_headers,
)


def without(name: bytes, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """``headers`` without ``name``."""
    return [(k, v) for k, v in headers if k != name]


def replaced(
    name: bytes, value: bytes, headers: list[tuple[bytes, bytes]]
) -> list[tuple[bytes, bytes]]:
    """``headers`` with ``name`` set to ``value`` (in place of any existing value)."""
    return [*without(name, headers), (name, value)]


def started(events: Sequence[Event]) -> list[CallStarted]:
    """The calls started among ``events``."""
    return [e for e in events if isinstance(e, CallStarted)]


@pytest.mark.parametrize("content_type", [b"text/html", b"application/json", None])
def test_non_grpc_content_type_is_http_415(content_type: bytes | None) -> None:
    """A request whose content-type is not application/grpc gets HTTP 415 and starts no call."""
    client, server = connected()
    headers = request_headers()
    headers = (
        without(b"content-type", headers)
        if content_type is None
        else replaced(b"content-type", content_type, headers)
    )
    stream_id = client.start_call(headers=headers)
    events = exchange(client, server)
    response = client.response(stream_id)
    assert started(events) == []
    assert response.ended
    assert response.header_map[b":status"] == b"415"


@pytest.mark.parametrize("content_type", [b"application/grpc", b"application/grpc+proto"])
def test_grpc_content_types_start_a_call(content_type: bytes) -> None:
    """application/grpc and its +format variants are accepted as gRPC requests."""
    client, server = connected()
    stream_id = client.start_call(
        headers=replaced(b"content-type", content_type, request_headers())
    )
    calls = started(exchange(client, server))
    assert [call.stream_id for call in calls] == [stream_id]
    assert calls[0].head.method == "/test.Echo/Unary"


@pytest.mark.parametrize("method", [b"GET", b"PUT"])
def test_method_other_than_post_is_http_405(method: bytes) -> None:
    """A gRPC request must be a POST; any other method gets HTTP 405 and starts no call."""
    client, server = connected()
    stream_id = client.start_call(headers=replaced(b":method", method, request_headers()))
    events = exchange(client, server)
    assert started(events) == []
    assert client.response(stream_id).header_map[b":status"] == b"405"
    assert client.response(stream_id).ended


@pytest.mark.parametrize("path", [None, b"", b"test.Echo/Unary", b"*"])
def test_missing_or_malformed_path_is_unimplemented(path: bytes | None) -> None:
    """A request without a ``/service/method`` :path ends trailers-only with UNIMPLEMENTED."""
    client, server = connected()
    headers = request_headers()
    headers = without(b":path", headers) if path is None else replaced(b":path", path, headers)
    stream_id = client.start_call(headers=headers)
    events = exchange(client, server)
    response = client.response(stream_id)
    assert started(events) == []
    assert response.ended
    assert response.trailers_only
    assert response.header_map[b":status"] == b"200"
    assert response.status == StatusCode.UNIMPLEMENTED.number


def test_unsupported_grpc_encoding_is_unimplemented_and_lists_accepted_encodings() -> None:
    """An unknown grpc-encoding is UNIMPLEMENTED, with grpc-accept-encoding naming what we take."""
    client, server = connected()
    stream_id = client.start_call(extra=[(b"grpc-encoding", b"snappy")])
    events = exchange(client, server)
    response = client.response(stream_id)
    assert started(events) == []
    assert response.trailers_only
    assert response.status == StatusCode.UNIMPLEMENTED.number
    assert "snappy" in response.message
    accepted = {e.strip() for e in response.header_map[b"grpc-accept-encoding"].split(b",")}
    assert {b"identity", b"gzip", b"deflate"} <= accepted
    assert b"snappy" not in accepted


@pytest.mark.parametrize(
    "timeout", [b"", b"5", b"S", b"123456789S", b"-1S", b"1.5S", b"10x", b"1 S"]
)
def test_malformed_grpc_timeout_fails_the_call_with_internal(timeout: bytes) -> None:
    """A malformed grpc-timeout ends the call with INTERNAL naming the header, as grpc core does."""
    client, server = connected()
    stream_id = client.start_call(extra=[(b"grpc-timeout", timeout)])
    events = exchange(client, server)
    response = client.response(stream_id)
    assert started(events) == []
    assert response.trailers_only
    assert response.status == StatusCode.INTERNAL.number
    assert "grpc-timeout" in response.message


@pytest.mark.parametrize(
    ("timeout", "seconds"),
    [
        (b"1H", 3600.0),
        (b"2M", 120.0),
        (b"3S", 3.0),
        (b"1500m", 1.5),
        (b"250u", 0.00025),
        (b"99999999n", 0.099999999),
    ],
)
def test_grpc_timeout_units_are_parsed(timeout: bytes, seconds: float) -> None:
    """Every grpc-timeout unit (H M S m u n) with up to 8 digits becomes the call's timeout."""
    client, server = connected()
    client.start_call(extra=[(b"grpc-timeout", timeout)])
    (call,) = started(exchange(client, server))
    assert call.head.timeout == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("header", "key"),
    [
        ((b"trace-bin", b"!!!not base64!!!"), "trace-bin"),
        ((b"bad!key", b"value"), "bad!key"),
        ((b"bad key", b"value"), "bad key"),
        ((b"x-ctl", b"a\x01b"), "x-ctl"),
    ],
)
def test_invalid_metadata_fails_the_call_naming_the_key(
    header: tuple[bytes, bytes], key: str
) -> None:
    """Bad -bin base64, illegal key characters or control characters fail with INTERNAL."""
    client, server = connected()
    stream_id = client.start_call(extra=[header])
    events = exchange(client, server)
    response = client.response(stream_id)
    assert started(events) == []
    assert response.trailers_only
    assert response.status == StatusCode.INTERNAL.number
    assert key in response.message


def test_reserved_headers_never_reach_the_handler() -> None:
    """Pseudo-headers and gRPC's own headers are consumed; only application metadata remains."""
    client, server = connected()
    client.start_call(
        extra=[
            (b"grpc-timeout", b"10S"),
            (b"grpc-encoding", b"gzip"),
            (b"grpc-trace-bin", b"AAEC"),
            (b"user-agent", b"wire-test/1.0"),
            (b"x-custom", b"value"),
            (b"x-data-bin", b"AAH/"),
        ]
    )
    (call,) = started(exchange(client, server))
    assert call.head.metadata == (
        ("user-agent", "wire-test/1.0"),
        ("x-custom", "value"),
        ("x-data-bin", b"\x00\x01\xff"),
    )
    assert call.head.encoding == "gzip"
    assert call.head.authority == "localhost"


def test_message_over_the_limit_fails_as_soon_as_its_prefix_arrives() -> None:
    """A declared length over max_receive_message_length is RESOURCE_EXHAUSTED before the body."""
    client, server = connected(max_receive_message_length=1024)
    stream_id = client.start_call(end=False)
    client.send(stream_id, grpc_frame(b"x" * 1025)[:5])
    events = exchange(client, server)
    failures = [e for e in events if isinstance(e, CallFailed)]
    assert [(f.stream_id, f.status) for f in failures] == [
        (stream_id, StatusCode.RESOURCE_EXHAUSTED)
    ]
    assert "1025" in failures[0].details
    assert "1024" in failures[0].details


def test_message_at_the_limit_is_delivered() -> None:
    """A message exactly max_receive_message_length long is accepted."""
    client, server = connected(max_receive_message_length=1024)
    stream_id = client.start_call(messages=[b"y" * 1024])
    events = exchange(client, server)
    received = [e for e in events if isinstance(e, MessagesReceived)]
    assert [m.messages for m in received] == [[(b"y" * 1024, False)]]
    assert any(isinstance(e, RequestEnded) and e.stream_id == stream_id for e in events)


def test_credit_is_returned_only_when_messages_are_consumed() -> None:
    """Bytes of complete messages are not re-credited to the client until consumed() is called."""
    client, server = connected(initial_stream_window_size=4096)
    stream_id = client.start_call(end=False)
    body = b"".join(grpc_frame(b"m" * 95) for _ in range(30))  # 3000 bytes
    client.send(stream_id, body)
    events = exchange(client, server)
    assert sum(len(e.messages) for e in events if isinstance(e, MessagesReceived)) == 30
    assert [u for u in client.window_updates if u[0] == stream_id] == []
    assert client.window(stream_id) == 4096 - 3000

    server.consumed(stream_id, len(body))
    client.receive(server.data_to_send())
    assert client.window(stream_id) == 4096
    assert any(f.type == WINDOW_UPDATE and f.stream_id == stream_id for f in client.frames)


def test_message_larger_than_the_window_still_arrives() -> None:
    """A message bigger than the stream window is credited while being assembled, so it arrives."""
    client, server = connected(initial_stream_window_size=4096)
    stream_id = client.start_call(end=False)
    pending = grpc_frame(bytes(range(256)) * 40)  # 10245 bytes, 2.5 windows
    received: list[tuple[bytes, bool]] = []
    prepaid = 0
    for _ in range(100):
        if not pending:
            break
        allowed = min(client.window(stream_id), len(pending))
        assert allowed > 0, "the server left the client without window mid-message"
        client.send(stream_id, pending[:allowed])
        pending = pending[allowed:]
        for event in exchange(client, server):
            if isinstance(event, MessagesReceived):
                received.extend(event.messages)
                prepaid += event.prepaid
    assert received == [(bytes(range(256)) * 40, False)]
    # Consuming the message returns the rest of its credit: the window is whole again.
    server.consumed(stream_id, 10245 - prepaid)
    client.receive(server.data_to_send())
    assert client.window(stream_id) == 4096


def test_credit_of_many_messages_leaves_in_one_window_update_per_flush() -> None:
    """Consuming messages one by one returns their credit together, at the next flush."""
    client, server = connected(initial_stream_window_size=4096)
    stream_id = client.start_call(end=False)
    client.send(stream_id, b"".join(grpc_frame(b"m" * 95) for _ in range(30)))
    exchange(client, server)
    for _ in range(30):
        server.consumed(stream_id, 100)
    client.receive(server.data_to_send())
    updates = [u for u in client.window_updates if u[0] == stream_id]
    assert updates == [(stream_id, 3000)]
    assert client.window(stream_id) == 4096


def test_small_credit_waits_until_a_quarter_window_is_owed() -> None:
    """Credit below a quarter of the smallest window stays with the server, then leaves whole.

    h2 updates a window only past half of it: credit returned in small amounts would cost an
    h2 call per flush and write nothing.
    """
    client, server = connected(initial_stream_window_size=4096)
    stream_id = client.start_call(end=False)
    client.send(stream_id, b"".join(grpc_frame(b"m" * 95) for _ in range(30)))
    exchange(client, server)
    for taken in range(1, 31):
        server.consumed(stream_id, 100)
        client.receive(server.data_to_send())
        if taken < 1024 // 100 + 1:  # under 1,024 bytes owed: nothing handed to h2
            assert server.credit.owed == 100 * taken
    # Handed to h2 at 1,100 and 2,200 bytes; the second time past half the window: an update.
    assert [u for u in client.window_updates if u[0] == stream_id] == [(stream_id, 2200)]
    assert server.credit.owed == 800
    assert client.window(stream_id) == 4096 - 3000 + 2200


def test_credit_for_a_finished_call_still_reopens_the_connection_window() -> None:
    """A message consumed after its call ended gives its bytes back to the connection."""
    client, server = connected(initial_connection_window_size=65535, max_frame_size=65536)
    # One frame (nothing prepaid), over half the window (h2 updates windows past half).
    stream_id = client.start_call(messages=[b"z" * 40_000])
    exchange(client, server)
    server.send_trailers_only(stream_id, StatusCode.OK, None, ())
    client.receive(server.data_to_send())
    assert client.h2.outbound_flow_control_window == 65535 - 40_005
    server.consumed(stream_id, 40_005)
    client.receive(server.data_to_send())
    assert client.h2.outbound_flow_control_window == 65535


def test_repeated_request_headers_are_parsed_once_per_settings() -> None:
    """Calls whose header blocks repeat share one parsed head, within and across connections.

    The head is remembered with the block for the settings it was parsed under: a server whose
    limits differ judges the same block itself.
    """
    _hpack.DECODER_MEMO.clear()  # earlier tests may have nearly filled it
    extra = [(b"x-custom", b"v" * 600)]
    settings = ServerSettings()  # as a server's connections share theirs
    heads: list[list[object]] = []
    for _ in range(2):
        client, server = H2Client(), ServerProtocol(settings)
        exchange(client, server)
        exchange(client, server)  # SETTINGS acknowledgements
        heads.append([])
        for _ in range(3):  # the first block adds to the HPACK table, the next ones repeat
            client.start_call(extra=extra)
            (call,) = started(exchange(client, server))
            assert call.head.metadata == (("x-custom", "v" * 600),)
            heads[-1].append(call.head)
    first, second = heads
    assert [id(head) for head in first] == [id(head) for head in second]
    assert first[1] is first[2]
    client, strict = connected(max_header_list_size=512)
    stream_id = client.start_call(extra=extra)
    assert started(exchange(client, strict)) == []
    assert client.response(stream_id).status == StatusCode.RESOURCE_EXHAUSTED.number


def test_a_rejected_request_is_rejected_each_time() -> None:
    """A request refused for its headers is refused again when the same block repeats."""
    client, server = connected()
    headers = replaced(b"content-type", b"text/html", request_headers())
    for _ in range(3):
        stream_id = client.start_call(headers=headers)
        assert started(exchange(client, server)) == []
        assert client.response(stream_id).header_map[b":status"] == b"415"
