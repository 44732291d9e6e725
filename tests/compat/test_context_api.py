"""ServicerContext and port errors as grpc.aio has them, through grpcio's client.

EOF identity, ``set_trailing_metadata`` type checks, ``cancelled()`` after a shutdown, failed
binds (RuntimeError) and grpcio credentials objects (TypeError naming our equivalent).
"""

from __future__ import annotations

import asyncio
import errno
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

import fastinject
from fastinject.errors import BindError, InvalidAddressError
from tls_material import TlsMaterial

SERVICE = "compat.Context"
TIMEOUT = 30.0

BAD_TRAILING_METADATA: list[Any] = [
    [("k", 1)],  # an int value
    {"k": "v"},  # a dict
    [["k", "v"]],  # a list, not a tuple
    [(b"k", "v")],  # a bytes key
    [("k", "v", "w")],  # not a pair
    7,  # not iterable
]


async def join_until_eof(requests: Any, context: Any) -> bytes:
    """JoinUntilEof: read with context.read() until it returns grpc.aio.EOF itself."""
    parts = []
    while (message := await context.read()) is not grpc.aio.EOF:
        parts.append(message)
    return b"|".join(parts)


async def bad_trailers(request: bytes, context: Any) -> bytes:
    """BadTrailers: try each bad trailing metadata; answer the exception types, as JSON."""
    raised = []
    for metadata in BAD_TRAILING_METADATA:
        try:
            context.set_trailing_metadata(metadata)
        except Exception as exc:
            raised.append(type(exc).__name__)
        else:
            raised.append("nothing")
    context.set_trailing_metadata((("good-key", "good value"),))
    return json.dumps(raised).encode()


async def fresh_status(request: bytes, context: Any) -> bytes:
    """FreshStatus: answer code() and details() before the handler set anything."""
    return json.dumps([repr(context.code()), context.details()]).encode()


class Held:
    """Hold: a handler that waits until cancelled, recording ``context.cancelled()`` then."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.cancelled_seen: list[bool] = []

    async def hold(self, request: bytes, context: Any) -> bytes:
        """Wait (for the server to cancel the call)."""
        self.entered.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.cancelled_seen.append(context.cancelled())
            raise
        return request


@pytest.fixture
async def served() -> AsyncIterator[tuple[fastinject.Server, Held, int]]:
    """A started server with the compat.Context methods."""
    held = Held()
    server = fastinject.Server()
    server.add_registered_method_handlers(SERVICE, {
        "JoinUntilEof": grpc.stream_unary_rpc_method_handler(join_until_eof),
        "BadTrailers": grpc.unary_unary_rpc_method_handler(bad_trailers),
        "FreshStatus": grpc.unary_unary_rpc_method_handler(fresh_status),
        "Hold": grpc.unary_unary_rpc_method_handler(held.hold),
    })
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield server, held, port
    await server.stop(None)


async def test_read_returns_grpc_aio_eof(served: Any) -> None:
    """context.read() ends with grpc.aio.EOF itself, and fastinject.EOF is that object."""
    assert fastinject.EOF is grpc.aio.EOF
    _, _, port = served
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        join = channel.stream_unary(f"/{SERVICE}/JoinUntilEof")
        assert await join(iter([b"a", b"b", b"c"]), timeout=TIMEOUT) == b"a|b|c"


async def test_set_trailing_metadata_type_errors(served: Any) -> None:
    """Wrong shapes raise TypeError at once, as grpc.aio; valid trailers still arrive."""
    _, _, port = served
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(f"/{SERVICE}/BadTrailers")(b"", timeout=TIMEOUT)
        raised = json.loads(await call)
        trailers = await call.trailing_metadata()
    assert raised == ["TypeError"] * len(BAD_TRAILING_METADATA)
    assert ("good-key", "good value") in list(trailers)


def test_set_trailing_metadata_type_error_message() -> None:
    """The message is grpc.aio's, with the offending metadata."""
    from fastinject.metadata import check_trailing_metadata

    with pytest.raises(TypeError) as error:
        check_trailing_metadata([("k", 1)])
    assert str(error.value) == (
        "Invalid trailing metadata type, expected Tuple[Tuple[str, Union[str, bytes]]...]: "
        "(('k', 1),)"
    )


async def test_code_and_details_before_any_are_none_and_empty(served: Any) -> None:
    """As grpc.aio: code() is None and details() is "" until the handler sets them."""
    _, _, port = served
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        answer = await channel.unary_unary(f"/{SERVICE}/FreshStatus")(b"", timeout=TIMEOUT)
    assert json.loads(answer) == ["None", ""]


async def test_cancelled_is_true_when_shutdown_cancels(served: Any) -> None:
    """A call cut off by stop()'s grace sees context.cancelled() True; the client UNAVAILABLE."""
    server, held, port = served
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(f"/{SERVICE}/Hold")(b"", timeout=TIMEOUT)
        await asyncio.wait_for(held.entered.wait(), TIMEOUT)
        await server.stop(0)
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await call
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    assert held.cancelled_seen == [True]


def test_failed_bind_is_runtime_error_and_os_error() -> None:
    """A port another socket holds: BindError, also RuntimeError (grpc.aio) and OSError."""
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # no SO_REUSEPORT: exclusive
    try:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        address = f"127.0.0.1:{holder.getsockname()[1]}"
        server = fastinject.Server()
        with pytest.raises(RuntimeError) as error:
            server.add_insecure_port(address)
    finally:
        holder.close()
    assert isinstance(error.value, BindError)
    assert isinstance(error.value, OSError)
    assert error.value.errno == errno.EADDRINUSE
    assert address in str(error.value)


@pytest.mark.parametrize("address", ["no port here", "127.0.0.1:http"])
def test_malformed_address_is_runtime_error_and_value_error(address: str) -> None:
    """A malformed address: InvalidAddressError, a RuntimeError and a ValueError."""
    with pytest.raises(RuntimeError) as error:
        fastinject.Server().add_insecure_port(address)
    assert isinstance(error.value, InvalidAddressError)
    assert isinstance(error.value, ValueError)
    assert repr(address) in str(error.value)


async def test_grpc_ssl_server_credentials_are_refused_naming_ours(tls: TlsMaterial) -> None:
    """grpc.ssl_server_credentials objects: TypeError naming ServerCredentials.ssl."""
    arguments: dict[str, Any] = {
        "root_certificates": tls.ca_pem, "require_client_auth": True,
    }
    theirs = grpc.ssl_server_credentials([tls.server_pair], **arguments)
    server = fastinject.Server()
    with pytest.raises(TypeError) as by_port:
        server.add_secure_port("127.0.0.1:0", theirs)
    with pytest.raises(TypeError) as by_injector:
        server.create_connection_injector(theirs)
    for error in (by_port, by_injector):
        assert "fastinject.ServerCredentials.ssl(" in str(error.value)
        assert "same arguments" in str(error.value)
    # The named call does take the same arguments.
    ours = fastinject.ServerCredentials.ssl([tls.server_pair], **arguments)
    try:
        assert server.add_secure_port("127.0.0.1:0", ours) > 0
    finally:
        await server.stop(None)
