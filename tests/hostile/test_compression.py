"""Compressed requests that cost more to decompress than to send (issue 12, docs/SECURITY.md).

A raw HTTP/2 client sends gzip requests built to be expensive: thousands of concatenated gzip
members, or 4 KiB that inflate to nearly the 4 MiB limit.  Meanwhile a grpcio client calls the
same server on another connection; every one of its calls must succeed, and it must be served
while a large message is being decompressed (one slice per loop turn, not the whole message).
"""

from __future__ import annotations

import zlib

import grpc
import pytest

from fastinject import compression
from hostile.conftest import MIN_CALLS
from hostile.test_floods import StartLegitimate, target
from protocol.probe_service import StartServer
from protocol.wire import ENHANCE_YOUR_CALM, OpenWire, Response, Wire, grpc_frame
from serving import TIMEOUT

LIMIT = 4 * 1024 * 1024
BOMB = zlib.compress(bytes(LIMIT - 1024), 9, wbits=31)
"""4 KiB of gzip that inflate to 1 KiB under the default receive limit."""


def _gzip_call(wire: Wire, payload: bytes) -> int:
    """Start a Probe/Size call whose one message is ``payload`` (gzip, compressed flag set)."""
    stream_id = wire.client.start_call(
        b"/test.Probe/Size", end=False, extra=[(b"grpc-encoding", b"gzip")]
    )
    wire.client.send(stream_id, grpc_frame(payload, compressed=True), end=True)
    return stream_id


async def _calls(wire: Wire, payloads: list[bytes]) -> list[Response]:
    """Send every payload as its own call, all at once; their responses."""
    stream_ids = [_gzip_call(wire, payload) for payload in payloads]
    return [await wire.finish(stream_id) for stream_id in stream_ids]


async def test_many_gzip_members_are_refused_as_grpc_core_does(
    start_server: StartServer, open_wire: OpenWire, legitimate: StartLegitimate
) -> None:
    """Nearly 1 MiB of one-byte gzip members per message: INTERNAL after the first member."""
    served = await start_server()
    client = await legitimate(target(served.port))
    wire = await open_wire(served.port)
    member = zlib.compress(b"x", wbits=31)
    responses = await _calls(wire, [member * (((1 << 20) - 64) // len(member))] * 8)
    for response in responses:
        assert response.status == grpc.StatusCode.INTERNAL.value[0]
        assert response.message.startswith("Decompression failed due to not all input consumed")
    assert (await wire.call(b"/test.Echo/Unary", b"still serving")).messages == [
        (False, b"still serving")
    ]
    assert await client.finish() >= MIN_CALLS


async def test_bombs_are_inflated_a_slice_per_loop_turn(
    start_server: StartServer,
    open_wire: OpenWire,
    legitimate: StartLegitimate,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """4 KiB inflating to nearly 4 MiB, 16 at a time: grpcio calls complete mid-inflation.

    Each step of an inflation notes how many calls the grpcio client had completed; for some
    message that number grows between its first and last step, which cannot happen when a
    message is inflated in one go.
    """
    served = await start_server(max_decompression_rate=0)
    client = await legitimate(target(served.port))
    seen: dict[int, list[int]] = {}
    step = compression.Inflater.step

    def spying_step(inflater: compression.Inflater) -> int:
        seen.setdefault(id(inflater), []).append(client.calls)
        return step(inflater)

    monkeypatch.setattr(compression.Inflater, "step", spying_step)
    wire = await open_wire(served.port)
    responses = await _calls(wire, [BOMB] * 16)
    assert [r.messages for r in responses] == [[(False, b"%d" % (LIMIT - 1024))]] * 16
    assert min(len(calls) for calls in seen.values()) >= (LIMIT - 1024) // compression.OUT_SLICE
    assert max(calls[-1] - calls[0] for calls in seen.values()) > 0
    assert await client.finish() >= MIN_CALLS


async def test_over_the_budget_wait_then_resource_exhausted_then_enhance_your_calm(
    start_server: StartServer, open_wire: OpenWire, legitimate: StartLegitimate
) -> None:
    """Past max_decompression_rate messages wait, then fail RESOURCE_EXHAUSTED; then GOAWAY.

    The budget (10,000 bytes a second) is overdrawn by the first message, far beyond: the
    next ones wait a second for it and fail, until, max_decompression_overrun after the
    budget ran out, GOAWAY ENHANCE_YOUR_CALM ends the connection.  Other connections have
    their own budget: a grpcio client's gzip calls all succeed.
    """
    served = await start_server(max_decompression_rate=10_000, max_decompression_overrun=2.5)
    client = await legitimate(target(served.port))
    wire = await open_wire(served.port)
    first = await wire.finish(_gzip_call(wire, BOMB))
    assert first.messages == [(False, b"%d" % (LIMIT - 1024))]
    refused = [wire.client.response(_gzip_call(wire, BOMB)) for _ in range(10)]
    await wire.wait_for(lambda: bool(wire.client.goaways), "GOAWAY")
    goaway = wire.client.goaways[-1]
    assert (goaway.error_code, goaway.debug) == (ENHANCE_YOUR_CALM, b"too_much_decompression")
    await wire.wait_closed()
    answered = [response for response in refused if response.status is not None]
    assert answered  # refused before the overrun ran out
    for response in answered:
        assert response.status == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
        assert "max_decompression_rate" in response.message

    async with grpc.aio.insecure_channel(
        target(served.port), compression=grpc.Compression.Gzip
    ) as channel:
        size = channel.unary_unary("/test.Probe/Size")
        for _ in range(3):
            assert await size(b"a" * 500, timeout=TIMEOUT) == b"500"
    assert await client.finish() >= MIN_CALLS
