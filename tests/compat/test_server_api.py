"""fastinject.Server as grpc.aio.server() is made and used: arguments, options, registration.

Each behaviour is checked through grpcio's client over a loopback socket, against what
grpc.aio itself does (its texts are quoted where a user or a log scraper can see them).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
from grpc.experimental import aio as experimental_aio

import fastinject
from interop.h2_grpc import OutgoingMessage, call

SERVICE = "compat.Api"


class Gate:
    """A handler that holds its call until the test opens the gate."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.opened = asyncio.Event()

    async def hold(self, request: bytes, context: Any) -> bytes:
        """Hold: wait for the gate, then answer the request."""
        self.entered.set()
        await self.opened.wait()
        return request


async def echo(request: bytes, context: Any) -> bytes:
    """Echo: answer the request."""
    return request


def thread_name(request: bytes, context: Any) -> bytes:
    """ThreadName (sync): answer the name of the thread the handler runs in."""
    return threading.current_thread().name.encode()


def api_handlers(gate: Gate | None = None) -> dict[str, grpc.RpcMethodHandler]:
    """The compat.Api methods: Echo, Hold (held by ``gate``) and ThreadName (sync)."""
    handlers = {
        "Echo": grpc.unary_unary_rpc_method_handler(echo),
        "ThreadName": grpc.unary_unary_rpc_method_handler(thread_name),
    }
    if gate is not None:
        handlers["Hold"] = grpc.unary_unary_rpc_method_handler(gate.hold)
    return handlers


@pytest.fixture
async def start() -> AsyncIterator[Callable[..., Awaitable[tuple[fastinject.Server, int]]]]:
    """Make, fill (``fill(server)``), bind and start servers; stopped at teardown."""
    servers: list[fastinject.Server] = []

    async def make(
        *args: Any, fill: Callable[[fastinject.Server], None] | None = None, **kwargs: Any
    ) -> tuple[fastinject.Server, int]:
        server = fastinject.Server(*args, **kwargs)
        servers.append(server)
        if fill is None:
            server.add_registered_method_handlers(SERVICE, api_handlers())
        else:
            fill(server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server, port

    yield make
    for server in servers:
        await server.stop(None)


def unary(channel: grpc.aio.Channel, name: str) -> Any:
    """A raw-bytes unary multi-callable for ``/compat.Api/<name>``."""
    return channel.unary_unary(f"/{SERVICE}/{name}")


class RecordingInterceptor(grpc.aio.ServerInterceptor):
    """Records the method of every call it sees."""

    def __init__(self) -> None:
        self.methods: list[str] = []

    async def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        """Record the method, then look the handler up."""
        self.methods.append(handler_call_details.method)
        return await continuation(handler_call_details)


async def test_positional_arguments_in_grpc_aio_order(start: Any) -> None:
    """Server(pool, handlers, interceptors, options, maximum_concurrent_rpcs, compression)."""
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="compat-pool")
    interceptor = RecordingInterceptor()
    handlers = [grpc.method_handlers_generic_handler(SERVICE, api_handlers())]
    options = [(b"grpc.max_receive_message_length", 64)]  # a bytes name, as grpcio allows
    try:
        server, port = await start(
            pool, handlers, [interceptor], options, 5, grpc.Compression.Gzip, fill=lambda s: None
        )
        assert server.settings.max_receive_message_length == 64
        assert server.settings.default_compression == fastinject.Compression.Gzip
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            assert (await unary(channel, "ThreadName")(b"")).startswith(b"compat-pool")
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await unary(channel, "Echo")(b"x" * 100)
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert f"/{SERVICE}/ThreadName" in interceptor.methods
    finally:
        pool.shutdown()


async def test_maximum_concurrent_rpcs_refuses_calls_beyond_it(start: Any) -> None:
    """Beyond the limit: RESOURCE_EXHAUSTED with grpc.aio's details; freed when calls end."""
    gate = Gate()
    _, port = await start(
        maximum_concurrent_rpcs=1,
        fill=lambda s: s.add_registered_method_handlers(SERVICE, api_handlers(gate)),
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        held = asyncio.ensure_future(unary(channel, "Hold")(b"held", timeout=30))
        await asyncio.wait_for(gate.entered.wait(), 30)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await unary(channel, "Echo")(b"over", timeout=30)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert refused.value.details() == "Concurrent RPC limit exceeded!"
        # As in grpc.aio, the method is looked up first: an unknown one is UNIMPLEMENTED.
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await unary(channel, "Nope")(b"", timeout=30)
        assert unknown.value.code() == grpc.StatusCode.UNIMPLEMENTED
        gate.opened.set()
        assert await held == b"held"
        # The held call's slot is free once its response has been sent.
        assert await unary(channel, "Echo")(b"again", timeout=30) == b"again"


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_maximum_concurrent_rpcs_must_be_positive(bad: object) -> None:
    """Like grpc.aio, a limit of 0 or less is refused when the server is made."""
    with pytest.raises(ValueError, match="maximum_concurrent_rpcs"):
        fastinject.Server(maximum_concurrent_rpcs=bad)  # type: ignore[arg-type]


async def test_compression_argument_compresses_responses(start: Any) -> None:
    """compression= is the default response compression (for clients that accept it)."""
    _, port = await start(compression=grpc.Compression.Gzip)
    result = await call(port, f"/{SERVICE}/Echo", [OutgoingMessage(b"z" * 200)])
    assert result.status == 0
    assert result.headers["grpc-encoding"] == "gzip"
    assert [(m.compressed, m.payload) for m in result.messages] == [(True, b"z" * 200)]


def test_compression_argument_conflicts_with_setting() -> None:
    """compression= and the default_compression setting are one thing: not both."""
    with pytest.raises(TypeError, match="not both"):
        fastinject.Server(compression=grpc.Compression.Gzip, default_compression="gzip")


async def test_compression_enabled_algorithms_bitset(start: Any) -> None:
    """Disabled algorithms: refused in requests, never advertised or used for responses."""
    identity_and_deflate = (1 << grpc.Compression.NoCompression) | (1 << grpc.Compression.Deflate)
    _, port = await start(
        compression=grpc.Compression.Gzip,
        options=[("grpc.compression_enabled_algorithms_bitset", identity_and_deflate)],
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await unary(channel, "Echo")(b"g" * 100, compression=grpc.Compression.Gzip)
        deflated = await unary(channel, "Echo")(b"d" * 100, compression=grpc.Compression.Deflate)
    # grpc core's status and text, word for word.
    assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert refused.value.details() == "Compression algorithm 'gzip' is disabled."
    assert deflated == b"d" * 100
    result = await call(port, f"/{SERVICE}/Echo", [OutgoingMessage(b"z" * 200)])
    assert result.headers["grpc-accept-encoding"] == "identity,deflate"
    assert "grpc-encoding" not in result.headers  # gzip is the default but disabled
    assert [m.compressed for m in result.messages] == [False]


def test_unknown_option_warns_once_per_name(caplog: pytest.LogCaptureFixture) -> None:
    """An option fastinject does not implement is logged at WARNING, once per name."""
    name = f"grpc.not_an_option_{uuid.uuid4().hex}"
    with caplog.at_level(logging.WARNING, logger="fastinject.options"):
        fastinject.Server(options=[(name, 1)])
        fastinject.Server(options=[(name.encode(), 2)])
    warnings = [r for r in caplog.records if name in r.getMessage()]
    assert [r.levelno for r in warnings] == [logging.WARNING]


def test_option_names_must_be_str_or_bytes() -> None:
    """A name of another type is a clear ValueError naming the option."""
    with pytest.raises(ValueError, match="str or bytes name"):
        fastinject.Server(options=[(7, 1)])  # type: ignore[list-item]


def test_interceptors_are_checked_at_construction() -> None:
    """Something that is not an interceptor is refused at once, named in a TypeError.

    The error is also the ValueError grpc.aio raises, so a switched test still catches it.
    """

    class NotAnInterceptor:
        def __repr__(self) -> str:
            return "<NotAnInterceptor 42>"

    with pytest.raises(TypeError, match="NotAnInterceptor 42"):
        fastinject.Server(interceptors=[RecordingInterceptor(), NotAnInterceptor()])
    with pytest.raises(ValueError, match="NotAnInterceptor 42"):
        fastinject.Server(interceptors=[NotAnInterceptor()])
    server = fastinject.Server()
    with pytest.raises(TypeError, match="NotAnInterceptor 42"):
        server.create_connection_injector(
            fastinject.ServerCredentials.insecure(), interceptors=[NotAnInterceptor()]
        )


async def test_handlers_registered_after_start(
    start: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """As grpc.aio: registered methods after start() are refused with a warning.

    Generic handlers added after start() serve at once (grpc.aio's behaviour too).
    """
    server, port = await start()
    with caplog.at_level(logging.WARNING):
        server.add_registered_method_handlers("compat.Late", api_handlers())
    assert any(
        r.levelno == logging.WARNING
        and "Cannot register method handlers once server has started" in r.getMessage()
        for r in caplog.records
    )
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("compat.LateGeneric", api_handlers())]
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await channel.unary_unary("/compat.Late/Echo")(b"x")
        assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert await channel.unary_unary("/compat.LateGeneric/Echo")(b"y") == b"y"


async def test_server_is_a_grpc_aio_server(start: Any) -> None:
    """With grpcio installed, isinstance(server, grpc.aio.Server) holds."""
    server, _ = await start()
    assert isinstance(server, grpc.aio.Server)
    assert isinstance(server, experimental_aio.Server)  # where grpcio-reflection looks


async def test_wait_for_termination_returns_whether_it_timed_out(start: Any) -> None:
    """As grpc.aio: True when the timeout passed first, False once the server has stopped."""
    server, _ = await start()
    assert await server.wait_for_termination(timeout=0.01) is True
    await server.stop(None)
    assert await server.wait_for_termination(timeout=30) is False
