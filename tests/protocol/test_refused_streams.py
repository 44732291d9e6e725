"""A stream beyond SETTINGS_MAX_CONCURRENT_STREAMS is refused alone (RFC 9113 section 5.1.2).

h2 treats it as a connection error, which would end every call on the connection; the server
answers RST_STREAM REFUSED_STREAM on that stream instead, as grpc core's server does.  grpcio
clients honour the limit they were sent, so the grpcio tests put a relay between client and
server that raises the limit in the server's SETTINGS: grpcio then behaves like a client that
opened streams before it saw the limit.
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import AsyncIterator, Callable

import grpc
import pytest

from fastinject import StatusCode
from fastinject.options import ServerSettings
from protocol.probe_service import Probe, StartServer
from protocol.wire import (
    ENHANCE_YOUR_CALM,
    GOAWAY,
    REFUSED_STREAM,
    RST_STREAM,
    SETTINGS,
    OpenWire,
)

_MAX_CONCURRENT_STREAMS = 0x3


async def test_one_stream_past_the_limit_is_refused_and_the_others_complete(
    start_server: StartServer, open_wire: OpenWire, probe: Probe
) -> None:
    """1,001 streams on one connection: the extra one is refused, the 1,000 calls complete."""
    limit = ServerSettings().max_concurrent_streams
    served = await start_server()
    wire = await open_wire(served.port)
    await wire.round_trip()  # the server has our SETTINGS acknowledgement: its limit binds
    running = [wire.client.start_call(b"/test.Probe/Gate", [b"%d" % i]) for i in range(limit)]
    await wire.round_trip()
    wire.client.lift_stream_limit()
    extra = wire.client.start_call(b"/test.Probe/Gate", [b"extra"])
    refused = await wire.finish(extra)
    assert refused.reset == REFUSED_STREAM
    assert refused.headers is None
    assert all(not wire.client.response(stream_id).done for stream_id in running)

    probe.gate.set()
    for index, stream_id in enumerate(running):
        response = await wire.finish(stream_id)
        assert response.status == StatusCode.OK.number
        assert response.messages == [(False, b"%d" % index)]
    after = await wire.call(b"/test.Echo/Unary", b"still serving")
    assert after.messages == [(False, b"still serving")]
    assert wire.client.goaways == []


async def test_refused_streams_spend_the_reset_budget(
    start_server: StartServer, open_wire: OpenWire, probe: Probe
) -> None:
    """A client that keeps opening streams past the limit is a rapid-reset attacker."""
    served = await start_server(max_concurrent_streams=1, stream_reset_burst=20,
                                stream_reset_rate=1.0)
    wire = await open_wire(served.port)
    await wire.round_trip()
    wire.client.start_call(b"/test.Probe/Gate", [b"running"])
    await wire.round_trip()
    wire.client.lift_stream_limit()
    refused = [wire.client.start_call(b"/test.Probe/Gate", end=False) for _ in range(200)]
    await wire.wait_for(lambda: bool(wire.client.goaways), "GOAWAY")
    goaway = wire.client.goaways[-1]
    assert (goaway.error_code, goaway.debug) == (ENHANCE_YOUR_CALM, b"too_many_resets")
    assert wire.client.response(refused[0]).reset == REFUSED_STREAM
    await wire.wait_closed()


class LimitHidingRelay:
    """A TCP relay that raises SETTINGS_MAX_CONCURRENT_STREAMS in what the server sends.

    It counts the connections it relays and the RST_STREAM REFUSED_STREAM and GOAWAY frames
    the server sends; ``on_refused`` runs (on the loop) as a refusal is passed on.
    """

    def __init__(self, server_port: int) -> None:
        self.server_port = server_port
        self.connections = 0
        self.refused = 0
        self.goaways = 0
        self.on_refused: Callable[[], None] = lambda: None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        """Start listening; return the relay's port."""
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        """Stop listening and drop every relayed connection."""
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self.server_port)
        for task in (self._pipe(client_r, server_w, False), self._pipe(server_r, client_w, True)):
            self._tasks.add(asyncio.ensure_future(task))

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, from_server: bool
    ) -> None:
        pending = bytearray()
        try:
            while data := await reader.read(65536):
                if from_server:
                    pending += data
                    data = self._rewrite(pending)
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    def _rewrite(self, pending: bytearray) -> bytes:
        """The whole frames at the start of ``pending`` (removed from it), limit raised."""
        out = bytearray()
        while len(pending) >= 9 and len(pending) >= 9 + int.from_bytes(pending[:3], "big"):
            length = int.from_bytes(pending[:3], "big")
            frame = bytearray(pending[: 9 + length])
            del pending[: 9 + length]
            kind, flags = frame[3], frame[4]
            if kind == SETTINGS and not flags & 0x1:
                for offset in range(9, 9 + length, 6):
                    if struct.unpack_from(">H", frame, offset)[0] == _MAX_CONCURRENT_STREAMS:
                        struct.pack_into(">I", frame, offset + 2, 1000)
            elif kind == RST_STREAM and struct.unpack_from(">I", frame, 9)[0] == REFUSED_STREAM:
                self.refused += 1
                self.on_refused()
            elif kind == GOAWAY:
                self.goaways += 1
            out += frame
        return bytes(out)


@pytest.fixture
async def relay(start_server: StartServer) -> AsyncIterator[LimitHidingRelay]:
    """A relay to a server that runs one call at a time (max_concurrent_streams=1)."""
    served = await start_server(max_concurrent_streams=1)
    relay = LimitHidingRelay(served.port)
    yield relay
    await relay.close()


def _retry_unavailable() -> list[tuple[str, object]]:
    policy = {
        "maxAttempts": 2,
        "initialBackoff": "0.01s",
        "maxBackoff": "0.01s",
        "backoffMultiplier": 1,
        "retryableStatusCodes": ["UNAVAILABLE"],
    }
    config = {"methodConfig": [{"name": [{"service": "test.Probe"}], "retryPolicy": policy}]}
    return [("grpc.enable_retries", 1), ("grpc.service_config", json.dumps(config))]


async def test_grpcio_call_refused_by_the_limit_fails_alone(
    relay: LimitHidingRelay, probe: Probe
) -> None:
    """Without a retry policy grpcio reports the refused call as UNAVAILABLE; nothing else fails.

    (grpc core retries transparently only streams above a GOAWAY's last stream id, not a
    REFUSED_STREAM reset.)  The running call completes and the channel keeps its connection.
    """
    port = await relay.start()
    relay.on_refused = probe.gate.set
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        gate = channel.unary_unary("/test.Probe/Gate")
        first = gate(b"first", timeout=10)
        await asyncio.wait_for(probe.started.wait(), 10)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await gate(b"second", timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert await first == b"first"
        assert await gate(b"third", timeout=10) == b"third"
    assert (relay.refused, relay.goaways, relay.connections) == (1, 0, 1)


async def test_grpcio_retries_a_refused_call(relay: LimitHidingRelay, probe: Probe) -> None:
    """With a retry policy on UNAVAILABLE, grpcio's refused call is retried and succeeds."""
    port = await relay.start()
    relay.on_refused = probe.gate.set  # the running call ends before the retry arrives
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=_retry_unavailable()) \
            as channel:
        gate = channel.unary_unary("/test.Probe/Gate")
        first = gate(b"first", timeout=10)
        await asyncio.wait_for(probe.started.wait(), 10)
        assert await gate(b"second", timeout=10) == b"second"
        assert await first == b"first"
    assert (relay.refused, relay.goaways, relay.connections) == (1, 0, 1)
