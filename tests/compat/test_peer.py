"""``context.peer()`` is the string grpc.aio gives, so log parsers and peer checks keep working."""

from __future__ import annotations

import re
from typing import Any

import grpc
import pytest

import fastinject


async def peer_of(request: bytes, context: Any) -> bytes:
    """Answer with the peer string the handler sees."""
    return str(context.peer()).encode()


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", r"ipv4:127\.0\.0\.1:\d+"),
        ("[::1]", r"ipv6:%5B::1%5D:\d+"),  # grpc core writes a URI: brackets escaped
    ],
)
async def test_peer_is_written_as_grpc_core_writes_it(host: str, expected: str) -> None:
    """An IPv4 client of a dual-stack port is ipv4:, an IPv6 one ipv6:%5B...%5D:."""
    server = fastinject.Server()
    server.add_registered_method_handlers(
        "compat.Peer", {"Get": fastinject.unary_unary_rpc_method_handler(peer_of)}
    )
    port = server.add_insecure_port("[::]:0")
    async with server, grpc.aio.insecure_channel(f"{host}:{port}") as channel:
        peer = (await channel.unary_unary("/compat.Peer/Get")(b"")).decode()
    assert re.fullmatch(expected, peer), peer
