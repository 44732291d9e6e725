"""Every call shape and status path, through a real grpcio client over a real socket."""

from __future__ import annotations

import asyncio
import gzip
import json

import grpc
import pytest

import fastinject
from echo_service import Recorder
from serving import Serve, Served, echo_server, eventually, method, sleeping


async def test_unary_async_and_sync_handlers(channel: grpc.aio.Channel) -> None:
    """Async handlers run on the loop and sync ones in the pool; both answer the request."""
    assert await method(channel, "Unary")(b"hello") == b"hello"
    assert await method(channel, "SyncUnary")(b"hello") == b"sync:hello"


async def test_empty_messages_round_trip(channel: grpc.aio.Channel) -> None:
    """A zero-length request message is delivered and echoed as a zero-length response."""
    assert await method(channel, "Unary")(b"") == b""


@pytest.mark.parametrize("name", ["ServerStream", "SyncServerStream"])
async def test_server_streaming(channel: grpc.aio.Channel, name: str) -> None:
    """Every message a streaming-response handler yields reaches the client in order."""
    call = method(channel, name, "unary_stream")(b"5")
    assert [m async for m in call] == [b"0", b"1", b"2", b"3", b"4"]
    assert await call.code() == grpc.StatusCode.OK


@pytest.mark.parametrize("name", ["ClientStream", "SyncClientStream"])
async def test_client_streaming(channel: grpc.aio.Channel, name: str) -> None:
    """A streaming-request handler sees every request message in order."""
    response = await method(channel, name, "stream_unary")(iter([b"a", b"b", b"c"]))
    assert response == b"a|b|c"


async def test_bidi_iterators(channel: grpc.aio.Channel) -> None:
    """A bidi handler answers each message as it comes (ping-pong)."""
    call = method(channel, "Bidi", "stream_stream")()
    for word in (b"ping", b"pong"):
        await call.write(word)
        assert await call.read() == word.upper()
    await call.done_writing()
    assert await call.read() == grpc.aio.EOF
    assert await call.code() == grpc.StatusCode.OK


async def test_bidi_context_read_write(channel: grpc.aio.Channel) -> None:
    """context.read() returns grpc.aio.EOF at half-close and context.write() sends."""
    call = method(channel, "BidiReadWrite", "stream_stream")(iter([b"abc", b"xyz"]))
    assert [m async for m in call] == [b"cba", b"zyx"]


async def test_many_concurrent_calls_on_one_connection(channel: grpc.aio.Channel) -> None:
    """Hundreds of concurrent calls on one connection all complete with their own answers."""
    payloads = [str(i).encode() * 10 for i in range(300)]
    results = await asyncio.gather(*(method(channel, "Unary")(p) for p in payloads))
    assert results == payloads


async def test_unknown_method_and_service_are_unimplemented(channel: grpc.aio.Channel) -> None:
    """A method nobody registered ends with UNIMPLEMENTED naming the method."""
    for path in ("/test.Echo/Nope", "/no.Such/Service"):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await channel.unary_unary(path)(b"")
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert path in (info.value.details() or "")


async def test_handler_exception_is_unknown(channel: grpc.aio.Channel) -> None:
    """An exception escaping a handler ends the call with UNKNOWN and says what it was."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await method(channel, "Fail")(b"")
    assert info.value.code() == grpc.StatusCode.UNKNOWN
    assert "ValueError" in (info.value.details() or "")
    assert "boom" in (info.value.details() or "")


async def test_abort_sends_status_details_and_trailers(channel: grpc.aio.Channel) -> None:
    """context.abort() ends the call with its code, details and trailing metadata."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await method(channel, "Abort")(b"PERMISSION_DENIED:not you, caf\xc3\xa9 100%")
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert info.value.details() == "not you, café 100%"
    assert ("why", "because") in tuple(info.value.trailing_metadata() or ())


async def test_abort_is_visible_to_interceptors(serve: Serve) -> None:
    """After abort(), context.code()/details() report it, as metrics interceptors expect.

    The interceptor also reads the request metadata by ``.key``/``.value``, as grpc's do.
    """
    seen: list[tuple[object, object]] = []
    tenants: list[object] = []

    class Metrics:
        async def intercept_service(self, continuation, details):  # type: ignore[no-untyped-def]
            tenants.extend(m.value for m in details.invocation_metadata if m.key == "tenant")
            handler = await continuation(details)
            behavior = handler.unary_unary

            async def observed(request: bytes, context: fastinject.ServicerContext) -> bytes:
                try:
                    return await behavior(request, context)  # type: ignore[no-any-return]
                finally:
                    seen.append((context.code(), context.details()))

            return handler._replace(unary_unary=observed)

    served = await serve(interceptors=[Metrics()])
    async with grpc.aio.insecure_channel(served.target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await method(channel, "Abort")(b"NOT_FOUND:gone", metadata=(("tenant", "blue"),))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert seen == [(grpc.StatusCode.NOT_FOUND, "gone")]
    assert seen[0][0] is fastinject.StatusCode.NOT_FOUND
    assert {grpc.StatusCode.NOT_FOUND: "labelled"}[seen[0][0]] == "labelled"
    assert tenants == ["blue"]


async def test_abort_sends_the_status_at_once(channel: grpc.aio.Channel) -> None:
    """A handler that swallows abort's error sends nothing more: the client sees the abort.

    As grpc.aio: messages before the abort arrive, the one after it does not.
    """
    call = method(channel, "AbortSwallowed", "unary_stream")(b"")
    assert await call.read() == b"before"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call.read()
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert info.value.details() == "gone"


async def test_streaming_coroutine_returning_a_value_ends_ok(channel: grpc.aio.Channel) -> None:
    """A streaming handler coroutine that writes, then returns a value, ends OK (as grpc.aio)."""
    call = method(channel, "WriteThenReturn", "unary_stream")(b"written")
    assert [m async for m in call] == [b"written"]
    assert await call.code() == grpc.StatusCode.OK


async def test_set_code_without_abort(channel: grpc.aio.Channel) -> None:
    """A status set with set_code/set_details is sent when the handler returns."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await method(channel, "SetCode")(b"")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert info.value.details() == "nothing here"


async def test_metadata_both_ways(channel: grpc.aio.Channel) -> None:
    """Custom and -bin metadata reach the handler decoded; initial and trailing metadata return."""
    call = method(channel, "Metadata")(
        b"", metadata=(("custom-key", "custom value"), ("blob-bin", b"\x00\xfe"))
    )
    received = dict(json.loads(await call))
    assert received["custom-key"] == "custom value"
    assert received["blob-bin"] == "00fe"
    assert not any(k.startswith(":") or k in ("content-type", "te", "grpc-accept-encoding")
                   for k in received)
    assert ("initial-key", "initial-value") in tuple(await call.initial_metadata())
    assert ("trailing-bin", b"\x00\x01\xff") in tuple(await call.trailing_metadata())


async def test_deadline_cancels_handler(channel: grpc.aio.Channel, recorder: Recorder) -> None:
    """A call past its grpc-timeout ends DEADLINE_EXCEEDED and its handler is cancelled."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await method(channel, "Sleep")(b"30", timeout=0.3)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await eventually(lambda: bool(recorder.cancelled))
    assert recorder.cancelled == ["30"]
    assert recorder.done_callbacks == 1


async def test_time_remaining_reflects_timeout(channel: grpc.aio.Channel) -> None:
    """time_remaining() is near the client's timeout, and None without one."""
    remaining = float(await method(channel, "TimeRemaining")(b"", timeout=20))
    # grpc core rounds the grpc-timeout it sends up to a coarser unit (computed from a cached
    # clock), so a busy client may announce a little more than 20 s: never a whole second more.
    assert 10 < remaining < 21
    assert await method(channel, "TimeRemaining")(b"") == b"none"


async def test_client_cancel_cancels_handler(
    channel: grpc.aio.Channel, recorder: Recorder
) -> None:
    """Cancelling a call on the client cancels the handler and runs its done-callbacks."""
    call = await sleeping(channel, recorder, b"30")
    call.cancel()
    await eventually(lambda: bool(recorder.cancelled))
    assert recorder.cancelled == ["30"]
    assert recorder.done_callbacks == 1


async def test_oversized_request_is_resource_exhausted(serve: Serve) -> None:
    """A request above max_receive_message_length fails RESOURCE_EXHAUSTED; the connection lives."""
    served = await serve(max_receive_message_length=1024)
    async with grpc.aio.insecure_channel(served.target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await method(channel, "Unary")(b"x" * 5000)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "5000" in (info.value.details() or "")
        assert await method(channel, "Unary")(b"small") == b"small"


async def test_oversized_metadata_fails_only_its_call(serve: Serve, recorder: Recorder) -> None:
    """Request metadata over max_header_list_size is RESOURCE_EXHAUSTED for that call alone.

    A call already running on the same connection finishes, and the next call works (grpc
    core answers the same; h2 alone would end the connection).
    """
    served = await serve(max_header_list_size=4096)
    async with grpc.aio.insecure_channel(served.target) as channel:
        running = await sleeping(channel, recorder, b"0.3")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await method(channel, "Unary")(b"x", metadata=(("x-big", "v" * 5000),))
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "4096" in (info.value.details() or "")
        assert await running == b"slept 0.3"
        assert await method(channel, "Unary")(b"after") == b"after"


async def test_repeated_metadata_is_judged_by_each_servers_limits(serve: Serve) -> None:
    """Requests whose headers repeat (parsed once, remembered) meet each server's own limits.

    Two servers of one process share the HPACK memo: the same metadata, alternately, reaches
    the lenient one's handler every time and fails on the strict one every time.
    """
    lenient, strict = await serve(), await serve(max_header_list_size=4096)
    metadata = (("x-big", "v" * 3000), ("x-more", "w" * 1500))
    same = [("grpc.default_authority", "localhost")]  # the same header blocks on both
    async with grpc.aio.insecure_channel(lenient.target, options=same) as open_channel, \
            grpc.aio.insecure_channel(strict.target, options=same) as strict_channel:
        for _ in range(3):
            received = dict(json.loads(await method(open_channel, "Metadata")(
                b"", metadata=metadata)))
            assert (received["x-big"], received["x-more"]) == ("v" * 3000, "w" * 1500)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await method(strict_channel, "Metadata")(b"", metadata=metadata)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_grpcio_option_tuples_apply(serve: Serve) -> None:
    """Option tuples in grpcio's form set the same limits as keyword settings."""
    served = await serve(options=[("grpc.max_receive_message_length", 100)])
    async with grpc.aio.insecure_channel(served.target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await method(channel, "Unary")(b"x" * 101)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_compressed_requests_are_decompressed(served: Served) -> None:
    """Requests a grpcio client gzips or deflates arrive decompressed at the handler."""
    for algorithm in (grpc.Compression.Gzip, grpc.Compression.Deflate):
        async with grpc.aio.insecure_channel(served.target, compression=algorithm) as channel:
            payload = b"compress me " * 1000
            assert await method(channel, "Unary")(payload) == payload


async def test_decompression_bomb_is_refused(serve: Serve) -> None:
    """A compressed request inflating past the limit fails RESOURCE_EXHAUSTED."""
    served = await serve(max_receive_message_length=64 * 1024)
    assert len(gzip.compress(b"\0" * (1 << 20))) < 64 * 1024
    async with grpc.aio.insecure_channel(
        served.target, compression=grpc.Compression.Gzip
    ) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await method(channel, "Unary")(b"\0" * (1 << 20))
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_compressed_response_is_readable(channel: grpc.aio.Channel) -> None:
    """A handler that asks for gzip responses is understood by the grpcio client."""
    assert await method(channel, "Compressed")(b"ab") == b"ab" * 100


async def test_peer_is_ipv4_address(channel: grpc.aio.Channel) -> None:
    """context.peer() is ipv4:IP:PORT for an IPv4 client, and plaintext says so in auth."""
    info = json.loads(await method(channel, "Peer")(b""))
    assert info["peer"].startswith("ipv4:127.0.0.1:")
    assert info["identities"] is None


async def test_ipv6_and_unix_ports(recorder: Recorder, tmp_path: object) -> None:
    """IPv6 and unix: addresses bind, serve and report peers in grpcio's forms."""
    server = echo_server(recorder)
    v6_port = server.add_insecure_port("[::1]:0")
    path = f"{tmp_path}/grpc.sock"
    server.add_insecure_port(f"unix:{path}")
    async with server:
        async with grpc.aio.insecure_channel(f"[::1]:{v6_port}") as channel:
            info = json.loads(await method(channel, "Peer")(b""))
            assert info["peer"].startswith("ipv6:%5B::1%5D:")
        async with grpc.aio.insecure_channel(f"unix:{path}") as channel:
            info = json.loads(await method(channel, "Peer")(b""))
            assert info["peer"].startswith("unix:")


async def test_interceptors_wrap_every_call(serve: Serve) -> None:
    """Server interceptors see each call's method and metadata and may replace the handler."""
    seen: list[str] = []

    class Deny:
        async def intercept_service(self, continuation, details):  # type: ignore[no-untyped-def]
            seen.append(details.method)
            if ("token", "secret") not in tuple(details.invocation_metadata):
                async def deny(request: bytes, context: fastinject.ServicerContext) -> bytes:
                    await context.abort(fastinject.StatusCode.UNAUTHENTICATED, "no token")
                return fastinject.unary_unary_rpc_method_handler(deny)
            return await continuation(details)

    served = await serve(interceptors=[Deny()])
    async with grpc.aio.insecure_channel(served.target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await method(channel, "Unary")(b"x")
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert await method(channel, "Unary")(b"x", metadata=(("token", "secret"),)) == b"x"
    assert seen == ["/test.Echo/Unary", "/test.Echo/Unary"]


async def test_stop_lets_short_calls_finish_and_cancels_long_ones(
    serve: Serve, recorder: Recorder
) -> None:
    """stop(grace) finishes calls shorter than the grace; the rest get UNAVAILABLE (grpc.aio's)."""
    served = await serve()
    server = served.server
    async with grpc.aio.insecure_channel(served.target) as channel:
        short = await sleeping(channel, recorder, b"0.2")
        long = method(channel, "Sleep")(b"30")
        await asyncio.sleep(0.05)
        await server.stop(1.0)
        assert await short == b"slept 0.2"
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await long
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert info.value.details() == "Cancelling all calls"
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await method(channel, "Unary")(b"after", timeout=2)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert not await server.wait_for_termination(timeout=1)  # False: did not time out
    await server.stop(0)  # idempotent


async def test_shortest_grace_wins(serve: Serve, recorder: Recorder) -> None:
    """A second stop() with a shorter grace cuts the first one's wait short."""
    served = await serve()
    server = served.server
    async with grpc.aio.insecure_channel(served.target) as channel:
        long = await sleeping(channel, recorder, b"30")
        first = asyncio.ensure_future(server.stop(60))
        await asyncio.sleep(0.1)
        await server.stop(0)
        await asyncio.wait_for(first, 5)
        with pytest.raises(grpc.aio.AioRpcError):
            await long
    assert recorder.cancelled == ["30"]


async def test_messages_larger_than_the_flow_control_window(channel: grpc.aio.Channel) -> None:
    """A request bigger than the stream window still arrives (credit flows while it assembles)."""
    payload = bytes(range(256)) * (3 * 4096 + 7)  # ~3 MiB, over the 1 MiB stream window
    assert await method(channel, "Unary")(payload) == payload
    streamed = method(channel, "Bidi", "stream_stream")(iter([payload, payload]))
    assert [len(m) async for m in streamed] == [len(payload)] * 2


async def test_so_reuseport_setting(recorder: Recorder) -> None:
    """With so_reuseport (grpcio's default) two servers share a port; without it binding fails."""
    first = echo_server(recorder)
    port = first.add_insecure_port("127.0.0.1:0")
    second = echo_server(recorder)
    assert second.add_insecure_port(f"127.0.0.1:{port}") == port
    exclusive = echo_server(recorder, so_reuseport=False)
    with pytest.raises(OSError, match="cannot bind"):
        exclusive.add_insecure_port(f"127.0.0.1:{port}")
    await first.stop(None)
    await second.stop(None)
