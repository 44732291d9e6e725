"""An idle TLS connection on asyncio's own loop costs tens of KiB, not asyncio's 256 KiB buffer.

``loop.start_tls`` on asyncio's loop allocates a 256 KiB read buffer per connection for its
life (~290 KiB traced per idle connection); fastinject serves sockets on that loop with its
own ``ssl.MemoryBIO`` layer instead (~30 KiB).  uvloop's TLS is its own matter (C, and its
buffer is malloc'ed without being touched), so this runs on asyncio's loop only.
"""

from __future__ import annotations

import gc
import os
import tracemalloc
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from serving import method
from tls_material import TlsMaterial

CONNECTIONS = 20
PER_CONNECTION = 128 * 1024
"""Generous: a quarter of what one connection held with asyncio's TLS."""

pytestmark = pytest.mark.skipif(
    os.environ.get("FASTINJECT_TEST_LOOP") == "uvloop", reason="asyncio's own loop only"
)


@pytest.fixture
def traced() -> Iterator[None]:
    """Trace Python allocations during the test."""
    tracemalloc.start()
    try:
        yield
    finally:
        tracemalloc.stop()


def traced_now() -> int:
    """Bytes Python has allocated and not freed, after a collection."""
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


async def test_idle_tls_connections_hold_no_large_read_buffer(
    tls_server: Any, tls: TlsMaterial, traced: None
) -> None:
    """20 grpcio TLS connections, one call each, then idle: under 128 KiB traced apiece."""
    _, port = await tls_server()
    credentials = grpc.ssl_channel_credentials(root_certificates=tls.ca_pem)
    channels: list[grpc.aio.Channel] = []

    async def connected() -> None:
        channel = grpc.aio.secure_channel(
            f"localhost:{port}", credentials, options=[("grpc.use_local_subchannel_pool", 1)]
        )
        channels.append(channel)
        assert await method(channel, "Unary")(b"idle", timeout=10) == b"idle"

    try:
        await connected()  # one-time allocations (caches, the executor) before the baseline
        before = traced_now()
        for _ in range(CONNECTIONS):
            await connected()
        assert traced_now() - before < CONNECTIONS * PER_CONNECTION
    finally:
        for channel in channels:
            await channel.close()
