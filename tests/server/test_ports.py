"""Several listening addresses: each is kept, and drain/unbind act on all that share a number.

``add_*_port`` returns a number; unix sockets all return 1 (as grpcio), and one TCP port may
be bound on several hosts.  Every such address keeps serving, and L111 ``drain`` / L109
``unbind`` of a number act on every address bound with it.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from pathlib import Path

import grpc
import pytest

from echo_service import Recorder
from serving import TIMEOUT, echo_server, method


async def peer_of(target: str) -> str:
    """``context.peer()`` as the server reports it for a call through ``target``."""
    async with grpc.aio.insecure_channel(target) as channel:
        answer = await method(channel, "Peer")(b"", timeout=TIMEOUT)
    return str(json.loads(answer)["peer"])


async def refused(target: str) -> bool:
    """Whether a call through ``target`` fails with UNAVAILABLE (nothing listens)."""
    async with grpc.aio.insecure_channel(target) as channel:
        try:
            await method(channel, "Unary")(b"", timeout=TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            return exc.code() == grpc.StatusCode.UNAVAILABLE
    return False


async def test_two_unix_ports_both_serve_and_unbind_together(
    recorder: Recorder, tmp_path: Path
) -> None:
    """Two unix: sockets (both number 1) both serve; unbind(1) stops both."""
    server = echo_server(recorder)
    paths = [tmp_path / "first.sock", tmp_path / "second.sock"]
    assert [server.add_insecure_port(f"unix:{path}") for path in paths] == [1, 1]
    async with server:
        for path in paths:
            assert await peer_of(f"unix:{path}") == f"unix:{path}"
        await asyncio.wait_for(server.unbind(1), TIMEOUT)
        for path in paths:
            assert await refused(f"unix:{path}")


async def test_one_port_number_on_two_hosts_is_drained_as_one(recorder: Recorder) -> None:
    """127.0.0.1:N and [::1]:N both serve; drain(N) ends the calls on both; both still listen."""
    server = echo_server(recorder)
    number = server.add_insecure_port("127.0.0.1:0")
    assert server.add_insecure_port(f"[::1]:{number}") == number
    targets = [f"127.0.0.1:{number}", f"[::1]:{number}"]
    async with server:
        channels = [grpc.aio.insecure_channel(target) for target in targets]
        try:
            calls = [method(channel, "Sleep")(b"30") for channel in channels]
            # A later call answered on the same connection: the server has the Sleep call.
            for channel in channels:
                assert await method(channel, "Unary")(b"after", timeout=TIMEOUT) == b"after"
            await asyncio.wait_for(server.drain(number, 100), TIMEOUT)
            for call in calls:
                assert await call.code() == grpc.StatusCode.UNAVAILABLE
        finally:
            for channel in channels:
                await channel.close()
        # Drained, not unbound: both addresses still take new connections.
        assert (await peer_of(targets[0])).startswith("ipv4:127.0.0.1:")
        assert (await peer_of(targets[1])).startswith("ipv6:%5B::1%5D:")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="abstract sockets are Linux's")
async def test_unix_abstract_port_serves(recorder: Recorder) -> None:
    """unix-abstract:NAME binds no file, serves grpcio's unix-abstract: target, names the peer."""
    name = f"fastinject-test-{os.getpid()}-{uuid.uuid4().hex}"
    server = echo_server(recorder)
    assert server.add_insecure_port(f"unix-abstract:{name}") == 1
    async with server:
        assert await peer_of(f"unix-abstract:{name}") == f"unix-abstract:{name}"
        await asyncio.wait_for(server.unbind(1), TIMEOUT)
        assert await refused(f"unix-abstract:{name}")


@pytest.mark.skipif(sys.platform.startswith("linux"), reason="Linux has abstract sockets")
def test_unix_abstract_elsewhere_is_a_clear_error(recorder: Recorder) -> None:
    """Off Linux, unix-abstract: is refused with an error naming the address."""
    with pytest.raises(ValueError, match="unix-abstract"):
        echo_server(recorder).add_insecure_port("unix-abstract:nope")
