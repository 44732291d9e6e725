"""Hosts given to ``add_insecure_port`` bind what grpc core binds for them.

grpc.aio servers commonly listen on ``localhost:PORT`` or ``0.0.0.0:PORT``; grpc core makes
``localhost`` both loopbacks (whatever the hosts file says) and ``0.0.0.0`` a dual-stack
wildcard, so IPv6 clients reach them.  A switched server must be reachable the same way.
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest

import fastinject


async def echo(request: bytes, context: Any) -> bytes:
    """Answer with the request."""
    return request


async def call_status(target: str) -> grpc.StatusCode:
    """The status of one grpcio call to ``target`` (a refused connection is UNAVAILABLE)."""
    async with grpc.aio.insecure_channel(target) as channel:
        try:
            await channel.unary_unary("/compat.Bind/Echo")(b"hi", timeout=10)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


@pytest.mark.parametrize(
    ("host", "reached_on"),
    [
        ("localhost", ("127.0.0.1", "[::1]")),
        ("0.0.0.0", ("127.0.0.1", "[::1]")),
        ("127.0.0.1", ("127.0.0.1",)),
    ],
)
async def test_host_binds_what_grpc_core_binds(host: str, reached_on: tuple[str, ...]) -> None:
    """Both loopbacks answer for localhost and 0.0.0.0; a literal address only on itself."""
    server = fastinject.Server()
    server.add_registered_method_handlers(
        "compat.Bind", {"Echo": fastinject.unary_unary_rpc_method_handler(echo)}
    )
    port = server.add_insecure_port(f"{host}:0")
    async with server:
        for loopback in ("127.0.0.1", "[::1]"):
            expected = grpc.StatusCode.OK if loopback in reached_on else grpc.StatusCode.UNAVAILABLE
            assert await call_status(f"{loopback}:{port}") == expected, loopback
